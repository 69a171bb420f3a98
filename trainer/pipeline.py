"""End-to-end training: image folder -> deep features -> fitted, calibrated ensemble -> bundle.

Plain functions in the style of torchvision's reference training script; one
:class:`trainer.config.TrainConfig` drives everything and is stored in the bundle.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import fingerprint, metrics
from .bundle import ModelBundle, save_bundle
from .config import TrainConfig
from .data import CLASS_NAMES, Dataset, load_dataset, split_train_val_test
from .errors import Cancelled, DataError
from .features import FeatureExtractor
from .model import AllModel, fit_model
from .progress import Progress, stage

INTENDED_USE = ("Research and education only. Not a medical device and not for clinical diagnosis: "
                "every result must be reviewed by a qualified haematologist or pathologist.")


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle_path: Path
    model: AllModel
    card: dict[str, Any]                       # the model card stored in the bundle
    metrics: dict[str, Any]                    # test-split metrics per classifier and ensemble
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)  # arrays for plots
    seconds: float = 0.0


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("Training was cancelled; nothing was written.")


def load_config_dataset(config: TrainConfig, progress=None, cancel=None) -> Dataset:
    """The dataset a config names, unreadable files skipped and reported."""
    if not config.data:
        raise DataError("No data folder was given.")
    return load_dataset(config.data, layout=config.layout, positive=config.positive,
                        labels_csv=config.labels_csv, group_column=config.group_column,
                        check_readable=True, progress=progress, cancel=cancel)


def make_extractor(config: TrainConfig, state_dicts=None, backbones=None) -> FeatureExtractor:
    return FeatureExtractor(backbones=tuple(backbones or config.backbones), weights=config.weights,
                            image_size=config.image_size, gamma=config.gamma,
                            batch_size=config.batch_size, num_workers=config.num_workers,
                            device=config.device, cache_dir=config.cache_dir,
                            state_dicts=state_dicts, seed=config.seed, precision=config.precision)


def resolve_protocol(config: TrainConfig, dataset: Dataset) -> str:
    if config.split == "auto":
        return "subject" if dataset.groups is not None else "image"
    if config.split not in ("subject", "image"):
        raise DataError(f"Unknown split protocol '{config.split}'; use subject, image or auto.")
    if config.split == "subject" and dataset.groups is None:
        raise DataError("A subject-level split needs subject or group ids, and this data has none. "
                        "Use --split image, or give a labels.csv with a group column.")
    return config.split


def split_dataset(samples, protocol: str, config: TrainConfig):
    """Train / validation / test indices of a Dataset (or list of Samples), stratified by source
    class where possible.

    Stratifying on the classes found in the data (e.g. Benign, Early, Pre, Pro, or the data
    sources of a combined set) puts every subtype into every part; when the groups make that
    impossible, the split is stratified on the binary label alone. Training and the evaluation
    report use this same split.
    """
    samples = list(samples)
    labels = np.array([s.label for s in samples])
    groups = np.array([s.group for s in samples], dtype=object) if protocol == "subject" else None
    kw = dict(protocol=protocol, fractions=tuple(config.fractions), seed=config.seed)
    strata = np.array([f"{s.label}:{getattr(s, 'class_name', '')}" for s in samples])
    if len(set(strata.tolist())) > 2:
        try:
            return split_train_val_test(strata, groups, **kw)
        except DataError:
            pass
    return split_train_val_test(labels, groups, **kw)


def image_kinds(paths, n_max: int = 200, seed: int = 0) -> dict[str, Any]:
    """Share of single-cell crops and smear fields among (up to ``n_max`` sampled) images.

    Stored in the model card so the app can warn when an image is of a kind the model hardly saw.
    """
    from .imageio import read_image
    from .segmentation import is_single_cell_crop

    paths = list(paths)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(n_max, len(paths)), replace=False) if paths else []
    single = checked = 0
    for i in pick:
        try:
            single += is_single_cell_crop(read_image(paths[int(i)]))
            checked += 1
        except Exception:  # unreadable files were reported already
            continue
    share = single / checked if checked else 0.0
    return {"single_cell": share, "field": 1.0 - share if checked else 0.0, "n_checked": checked}


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over every sample's file name, size and label (cheap; no image is read)."""
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: str(s.path)):
        size = s.path.stat().st_size if s.path.exists() else -1
        h.update(f"{Path(s.path).name}|{size}|{s.label}|{s.group}\n".encode())
    return h.hexdigest()


def evaluate_split(model: AllModel, feats, y: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, groups=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of every classifier and of the ensemble on one split, plus its score arrays.

    ``groups`` (len(y),) subject/group ids: AUC intervals resample subjects (group bootstrap,
    see :func:`trainer.metrics.bootstrap_auc_ci`), else images.

    Names follow the evaluation report: each classifier at its own decision rule; ``ensemble``
    is the paper's weighted hard vote (eq. 8) with AUC, AP and Brier from the weighted soft
    vote; ``ensemble_calibrated`` is the calibrated probability at the model's threshold, the
    rule the app applies.
    """
    det = model.predict_details(feats)
    out: dict[str, Any] = {}
    for j, name in enumerate(model.classifier_names_):
        out[name] = metrics.binary_report(y, det["probabilities"][:, j], 0.5, n_boot=n_boot, seed=seed,
                                          pred=det["votes"][:, j], groups=groups)
    out["ensemble"] = metrics.binary_report(y, det["raw"], 0.5, n_boot=n_boot, seed=seed,
                                            pred=(det["vote_share"] > 0.5).astype(int), groups=groups)
    out["ensemble_calibrated"] = metrics.binary_report(y, det["calibrated"], model.threshold_,
                                                       n_boot=n_boot, seed=seed, groups=groups)
    arrays = {"y": np.asarray(y, dtype=np.int64), "raw": det["raw"], "calibrated": det["calibrated"],
              "vote_share": det["vote_share"], "probabilities": det["probabilities"]}
    return out, arrays


def train(config: TrainConfig, progress: Progress | None = None,
          cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Train on ``config.data`` and write the bundle to ``config.output`` (atomically).

    Nothing is written unless every step succeeds; a cancel raises :class:`Cancelled`.
    Under ``torchrun`` with ``config.finetune`` every process fine-tunes, and only rank 0
    continues (the others return None).
    """
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    say(0.0, f"Reading {config.data}")
    dataset = load_config_dataset(config, stage(progress, 0.0, 0.05), cancel)
    protocol = resolve_protocol(config, dataset)
    train_idx, val_idx, test_idx = split_dataset(dataset, protocol, config)
    from .finetune import finetune_overlap
    overlap = finetune_overlap(config.weights, [dataset.paths[i] for i in test_idx],
                               allow=config.allow_finetune_overlap, what="held-out test")
    say(0.05, f"{dataset.summary()}; {protocol}-level split "
              f"{len(train_idx)}/{len(val_idx)}/{len(test_idx)}")
    check_cancel(cancel)

    state_dicts, finetune_history = None, None
    lo = 0.05
    if config.finetune:
        from .finetune import finetune_backbones  # torch training code, only when asked for
        paths, y_all = dataset.paths, dataset.labels
        state_dicts, finetune_history = finetune_backbones(
            [paths[i] for i in train_idx], y_all[train_idx], [paths[i] for i in val_idx], y_all[val_idx],
            cfg=config, backbones=config.backbones, device=config.device,
            progress=stage(progress, 0.05, 0.5), cancel=cancel)
        from .finetune import is_main_process
        if not is_main_process():  # under torchrun only rank 0 builds and saves the model
            return None  # type: ignore[return-value]
        lo = 0.5
    extractor = make_extractor(config, state_dicts)
    feats = extractor.extract(dataset.paths, progress=stage(progress, lo, 0.85), cancel=cancel)
    check_cancel(cancel)

    y = dataset.labels
    say(0.85, "Fitting the classifiers")
    model = fit_model(feats, y, train_idx, val_idx, config, progress=stage(progress, 0.85, 0.93))
    check_cancel(cancel)
    say(0.93, "Evaluating on the held-out test split")
    val_metrics, _ = evaluate_split(model, {k: v[val_idx] for k, v in feats.items()}, y[val_idx],
                                    n_boot=0, seed=config.seed)
    test_metrics, test_arrays = ({}, {})
    if len(test_idx):
        groups = dataset.groups
        test_metrics, test_arrays = evaluate_split(model, {k: v[test_idx] for k, v in feats.items()},
                                                   y[test_idx], seed=config.seed,
                                                   groups=None if groups is None else groups[test_idx])
    check_cancel(cancel)

    say(0.97, "Saving the model")
    arrays = fingerprint.compute(extractor)
    arrays.update({f"validation/{k}": np.asarray(v) for k, v in model.validation_.items()})
    arrays.update({f"test/{k}": np.asarray(v) for k, v in test_arrays.items()})
    card = model_card(config, dataset, protocol, (train_idx, val_idx, test_idx), model,
                      extractor, val_metrics, test_metrics, finetune_history)
    if overlap is not None:
        card["finetune_overlap"] = overlap
    bundle = ModelBundle(model=model, config=config, card=card, arrays=arrays,
                         backbone_state=_embedded_weights(config, state_dicts))
    check_cancel(cancel)
    path = save_bundle(config.resolved_output(), bundle)
    seconds = time.perf_counter() - t0
    say(1.0, f"Saved {path} in {seconds:.0f} s")
    return TrainResult(bundle_path=path, model=model, card=card, metrics=test_metrics,
                       evaluation=test_arrays, seconds=seconds)


def _embedded_weights(config: TrainConfig, state_dicts):
    """Weights the bundle must carry: fine-tuned ones, or a local weights file's."""
    if state_dicts:
        return state_dicts
    if config.weights not in ("none", "imagenet"):
        from .backbones import build_backbone
        return {b: build_backbone(b, config.weights).state_dict() for b in config.backbones}
    return None


def model_card(config: TrainConfig, dataset: Dataset, protocol: str, splits, model: AllModel,
               extractor: FeatureExtractor, val_metrics, test_metrics, finetune_history=None) -> dict:
    """JSON-able description of a model: data, method, split, metrics, intended use."""
    train_idx, val_idx, test_idx = splits
    groups = dataset.groups
    n_groups = None if groups is None else int(len(set(groups.tolist())))
    ens = model.ensemble_
    card = {
        "name": config.extra.get("name", Path(config.output).stem),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "class_names": list(CLASS_NAMES),
        "trained_on": {
            "data": config.extra.get("data_description", str(config.data)),
            "credits": config.extra.get("data_credits"),
            "layout": config.layout, "positive_classes": config.positive,
            "n_images": len(dataset), "class_counts": dataset.class_counts(),
            "source_class_counts": dataset.source_class_counts(), "n_groups": n_groups,
            "skipped_files": [[str(p), r] for p, r in dataset.skipped][:50],
            "n_skipped": len(dataset.skipped), "fingerprint": data_fingerprint(dataset),
            "image_kinds": image_kinds([dataset.paths[i] for i in train_idx], seed=config.seed),
        },
        "split": {"protocol": protocol, "seed": config.seed, "fractions": list(config.fractions),
                  "n_train": int(len(train_idx)), "n_validation": int(len(val_idx)),
                  "n_test": int(len(test_idx))},
        "method": {
            "backbones": {b: extractor.identities()[b] for b in model.backbones},
            "image_size": config.image_size, "gamma": config.gamma,
            "fusion": "per-backbone standardisation, concatenation, L2"
                      + (f", PCA {config.pca_variance:.0%} variance -> {model.fusion_.n_components_} components"
                         if config.pca else ""),
            "classifiers": list(model.classifier_names_),
            "validation_accuracy": ens.val_accuracy_,
            "ensemble_weights": dict(zip(ens.names_, map(float, ens.weights_))),
            "calibration": model.calibrator_.method_,
            "calibration_cv_brier": model.calibrator_.cv_brier_,
            "threshold": float(model.threshold_), "threshold_rule": "Youden J on the validation split",
            "finetuned": bool(config.finetune),
        },
        "metrics": {"validation": val_metrics, "test": test_metrics},
    }
    if finetune_history is not None:
        card["finetune"] = finetune_history
    return card
