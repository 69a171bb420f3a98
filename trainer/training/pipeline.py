"""End-to-end training: image folder -> deep features -> fitted, calibrated ensemble -> bundle.

Plain functions in the style of torchvision's reference training script; one
:class:`trainer.config.TrainConfig` drives everything and is stored in the bundle.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.cases.corrections import case_dataset, reviewed_summary
from trainer.classical.model import AllModel, KindModels, fit_model, subset
from trainer.classical.scoring import score_report
from trainer.config import PROTOCOLS, TrainConfig
from trainer.inference.bundle import ModelBundle, save_bundle
from trainer.inference.gradcam import reference_maps
from trainer.inference.probes import REFERENCE_IMAGES, fit_probes, probe_arrays
from trainer.inference.results import MODEL_NAMES
from trainer.io.data import load_dataset, merge_datasets
from trainer.io.imageio import read_image
from trainer.io.samples import CLASS_NAMES, Dataset
from trainer.io.splits import source_strata, split_train_val_test
from trainer.training.card_facts import group_kind, model_facts, part_facts
from trainer.training.crossval import cv_headline
from trainer.training.distributed import is_main_process
from trainer.training.domain_card import band_section, domain_section
from trainer.training.finetune import finetune_backbones
from trainer.training.provenance import finetune_calibration, finetune_check
from trainer.util import progress as _progress
from trainer.util.errors import DataError
from trainer.util.progress import Progress, stage
from trainer.util.threads import map_in_chunks
from trainer.vision import fingerprint
from trainer.vision.backbones import build_backbone
from trainer.vision.features import NUCLEUS, FeatureExtractor
from trainer.vision.input_checks import input_check_columns
from trainer.vision.segmentation import KIND_FIELD, KIND_SINGLE, is_single_cell_crop
from trainer.vision.stain import ReinhardNormalizer, lab_stats

INTENDED_USE = ("Research and education only. Not a medical device and not for clinical diagnosis: "
                "every result must be reviewed by a qualified haematologist or pathologist.")


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle_path: Path
    model: AllModel
    card: dict[str, Any]                       # the model card stored in the bundle
    metrics: dict[str, Any]                    # test-split metrics per classifier and ensemble
    evaluation: dict[str, np.ndarray] = field(default_factory=dict)  # arrays for plots (first model)
    seconds: float = 0.0
    per_model: dict[str, Any] = field(default_factory=dict)  # test metrics of each per-kind model


#: the one cancel check (:func:`trainer.util.progress.check_cancel`) with training's message
check_cancel = functools.partial(_progress.check_cancel, message="Training was cancelled; nothing was written.")


def load_config_dataset(config: TrainConfig, progress=None, cancel=None,
                        cases_info: list | None = None) -> Dataset:
    """The dataset a config names (one folder, or several merged by subject id), unreadable files skipped.

    Plus the reviewed images of ``config.cases``; what was used of each case is appended to ``cases_info``.
    """
    roots = [config.data] if isinstance(config.data, (str, Path)) else list(config.data or [])
    if not roots or not all(roots):
        raise DataError("No data folder was given.")
    parts = [load_dataset(r, layout=config.layout, positive=config.positive,
                          labels_csv=config.labels_csv if len(roots) == 1 else None,
                          group_column=config.group_column, check_readable=True,
                          progress=stage(progress, i / len(roots), (i + 1) / len(roots)), cancel=cancel)
             for i, r in enumerate(roots)]
    if config.cases:
        reviewed, info = case_dataset(config.cases)
        if cases_info is not None:
            cases_info.extend(info)
        if len(reviewed):
            parts.append(reviewed)
    return merge_datasets(parts)


def make_extractor(config: TrainConfig, state_dicts=None, backbones=None,
                   stain_reference=None) -> FeatureExtractor:
    """The feature extractor a config describes (``backbones``: feature blocks; default the config's networks)."""
    return FeatureExtractor(backbones=tuple(backbones or config.backbones), weights=config.weights,
                            image_size=config.image_size, gamma=config.gamma,
                            batch_size=config.batch_size, num_workers=config.num_workers,
                            device=config.device, cache_dir=config.cache_dir,
                            state_dicts=state_dicts, seed=config.seed, precision=config.precision,
                            stain_reference=stain_reference)


def resolve_protocol(config: TrainConfig, dataset: Dataset) -> str:
    if config.split == "auto":
        return "subject" if dataset.groups is not None else "image"
    if config.split not in PROTOCOLS:
        raise DataError(f"Unknown split protocol '{config.split}'; use subject, image or auto.")
    if config.split == "subject" and dataset.groups is None:
        raise DataError("A subject-level split needs subject or group ids, and this data has none. "
                        "Use --split image, or give a labels.csv with a group column.")
    return config.split


def split_dataset(samples, protocol: str, config: TrainConfig):
    """Train / validation / test indices of a Dataset (or list of Samples), stratified by source class where possible.

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


def _kind_shares(kinds: np.ndarray) -> dict[str, Any]:
    """:func:`image_kinds`'s shares from already detected kinds (N,)."""
    share = float(np.mean(kinds == "single_cell")) if kinds.size else 0.0
    return {"single_cell": share, "field": 1.0 - share if kinds.size else 0.0, "n_checked": int(kinds.size)}


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over every sample's file name, size and label (cheap; no image is read)."""
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: str(s.path)):
        size = s.path.stat().st_size if s.path.exists() else -1
        h.update(f"{Path(s.path).name}|{size}|{s.label}|{s.group}\n".encode())
    return h.hexdigest()


def evaluate_split(model: AllModel, feats, y: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, groups=None, unit: str = "subject") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of every classifier and of the ensemble on one split, plus its score arrays.

    The metrics are the evaluation report's :func:`~trainer.classical.scoring.score_report`.

    ``groups`` (len(y),) subject/group ids: AUC intervals resample subjects (``unit``: what a group is),
    else images.
    """
    det = model.predict_details(feats)
    out = score_report(model, det, y, n_boot=n_boot, seed=seed, groups=groups, unit=unit)
    arrays = {"y": np.asarray(y, dtype=np.int64), "raw": det["raw"], "calibrated": det["calibrated"],
              "vote_share": det["vote_share"], "probabilities": det["probabilities"]}
    return out, arrays


MIN_KIND_IMAGES = 2  # per class in each of the training and validation rows of a kind's model


def _image_kind(path) -> str:
    try:
        return KIND_SINGLE if is_single_cell_crop(read_image(path)) else KIND_FIELD
    except Exception:  # unreadable files were reported when the data was read
        return KIND_FIELD


def detect_kinds(paths, progress: Progress | None = None, cancel=None) -> np.ndarray:
    """(N,) str: ``"single_cell"`` or ``"field"`` for each image (unreadable ones: ``"field"``).

    The images are read in a few threads.
    """
    paths = list(paths)

    def between(done: int) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(done / max(len(paths), 1), f"Image kinds: {done}/{len(paths)}")

    return np.array(map_in_chunks(_image_kind, paths, between), dtype=object).astype(str)


def kind_parts(kinds: np.ndarray, y: np.ndarray, splits, per_kind: bool = True) -> tuple[dict, list[str]]:
    """``{model key: (train, val, test) index arrays}`` and notes on kinds left without a model.

    With ``per_kind`` every image kind that has at least ``MIN_KIND_IMAGES`` images of each class
    in its training and validation rows gets its own model; images of a kind too small for
    one are left out of both models, with a note. Without ``per_kind`` (or when no kind
    qualifies) one model (``"any"``) takes every image.
    """
    splits = [np.asarray(a, dtype=int) for a in splits]
    if not per_kind:
        return {"any": tuple(splits)}, []
    parts, notes = {}, []
    for kind in ("single_cell", "field"):
        rows = [a[kinds[a] == kind] for a in splits]
        if sum(len(r) for r in rows) == 0:
            continue
        ok = all(np.sum(y[rows[j]] == c) >= MIN_KIND_IMAGES for j in (0, 1) for c in (0, 1))
        if ok:
            parts[kind] = tuple(rows)
        else:
            notes.append(f"{MODEL_NAMES[kind].capitalize()} not trained: its {sum(len(r) for r in rows)} "
                         f"images have fewer than {MIN_KIND_IMAGES} of each class in the training or "
                         f"validation split; those images are left out.")
    if not parts:
        return {"any": tuple(splits)}, notes
    return parts, notes


def stain_reference(config: TrainConfig, paths, progress=None, cancel=None) -> np.ndarray | None:
    """The Reinhard reference (6,) fitted on ``paths`` (training images), or None without stain normalisation."""
    if config.stain == "none":
        return None
    if config.stain != "reinhard":
        raise DataError(f"Unknown stain normalisation '{config.stain}'; use none or reinhard.")

    stats = []
    for i, p in enumerate(paths):
        if i % 64 == 0:
            check_cancel(cancel)
            if progress is not None:
                progress(i / max(len(paths), 1), f"Stain reference: {i}/{len(paths)} training images")
        stats.append(lab_stats(read_image(p)))
    return ReinhardNormalizer().fit(np.array(stats)).reference_


def feature_blocks(config: TrainConfig) -> tuple[str, ...]:
    """The feature blocks a config asks for: its backbones, plus ``"nucleus"`` where enabled."""
    return tuple(config.backbones) + ((NUCLEUS,) if config.nucleus_features else ())


def train(config: TrainConfig, progress: Progress | None = None,
          cancel: Callable[[], bool] | None = None) -> TrainResult:
    """Train on ``config.data`` and write the bundle to ``config.output`` (atomically).

    With ``config.per_kind`` each image kind (single-cell crops, smear fields) in the data gets
    its own calibrated model on the rows of that kind of one shared subject-level split.

    Parameters
    ----------
    config : TrainConfig
        Everything that determines the run; validated first and stored in the bundle.
    progress : callable, optional
        ``progress(fraction, message)``.
    cancel : callable, optional
        ``cancel() -> bool``, asked between steps.

    Returns
    -------
    TrainResult or None
        The bundle's path, the fitted models, the model card and the test metrics. Under
        ``torchrun`` with ``config.finetune`` every process fine-tunes and only rank 0 goes on;
        the others return None.

    Raises
    ------
    Cancelled
        When ``cancel()`` turns True; nothing is written unless every step succeeds.
    ConfigError, DataError
        For settings or data that cannot work.
    """
    t0 = time.perf_counter()
    config.validate()
    say = progress or (lambda f, m: None)
    say(0.0, f"Reading {config.data}")
    cases_info: list = []
    dataset = load_config_dataset(config, stage(progress, 0.0, 0.05), cancel, cases_info)
    protocol = resolve_protocol(config, dataset)
    train_idx, val_idx, test_idx = split_dataset(dataset, protocol, config)
    provenance = finetune_check(config, dataset, (train_idx, val_idx, test_idx))
    say(0.05, f"{dataset.summary()}; {protocol}-level split "
              f"{len(train_idx)}/{len(val_idx)}/{len(test_idx)}")
    check_cancel(cancel)

    state_dicts, finetune_history = None, None
    lo = 0.05
    if config.finetune:
        paths, y_all = dataset.paths, dataset.labels
        state_dicts, finetune_history = finetune_backbones(
            [paths[i] for i in train_idx], y_all[train_idx], [paths[i] for i in val_idx], y_all[val_idx],
            cfg=config, backbones=config.backbones, device=config.device,
            progress=stage(progress, 0.05, 0.5), cancel=cancel)
        if not is_main_process():  # under torchrun only rank 0 builds and saves the model
            return None  # type: ignore[return-value]
        lo = 0.5
    y, paths = dataset.labels, dataset.paths
    groups = dataset.groups
    strata = source_strata(dataset)
    fit_cfg = finetune_calibration(config, provenance)  # fine-tuned features: calibrate on the validation split
    kinds = (detect_kinds(paths, stage(progress, lo, lo + 0.03), cancel) if config.per_kind
             else np.full(len(paths), "any"))
    parts, notes = kind_parts(kinds, y, (train_idx, val_idx, test_idx), config.per_kind)
    for note in notes:
        say(lo + 0.03, note)
    models, sections, arrays, test_all = {}, {}, {}, {}
    span = (0.93 - (lo + 0.03)) / len(parts)
    for j, (key, (tr, va, te)) in enumerate(parts.items()):
        a = lo + 0.03 + j * span
        name = MODEL_NAMES[key]
        ref = stain_reference(config, [paths[i] for i in tr], stage(progress, a, a + 0.05 * span), cancel)
        extractor = make_extractor(config, state_dicts, backbones=feature_blocks(config), stain_reference=ref)
        rows = np.concatenate([tr, va, te])
        feats = extractor.extract([paths[i] for i in rows], progress=stage(progress, a + 0.05 * span, a + 0.8 * span),
                                  cancel=cancel)
        local = np.arange(len(rows))
        ltr, lva, lte = local[:len(tr)], local[len(tr):len(tr) + len(va)], local[len(tr) + len(va):]
        check_cancel(cancel)
        say(a + 0.8 * span, f"Fitting the {name}'s classifiers")
        g = None if groups is None else groups[rows]
        model = fit_model(feats, y[rows], ltr, lva, fit_cfg, backbones=feature_blocks(config),
                          progress=stage(progress, a + 0.8 * span, a + 0.86 * span), groups=g,
                          domain_columns=input_check_columns(feature_blocks(config)))
        check_cancel(cancel)
        cv = cv_headline(feats, y[rows], g, fit_cfg, backbones=feature_blocks(config), cancel=cancel,
                         strata=None if strata is None else strata[rows], group_kind=group_kind(key, config),
                         domain_columns=input_check_columns(feature_blocks(config)),
                         progress=stage(progress, a + 0.86 * span, a + 0.95 * span))
        if cv is not None and (provenance or {}).get("calibrate_on_validation"):
            cv["notes"].append("The backbones were trained on images of these folds: the figures are optimistic.")
        val_metrics, _ = evaluate_split(model, subset(feats, lva), y[va], n_boot=0, seed=config.seed)
        test_metrics, test_arrays = ({}, {})
        if len(te):
            test_metrics, test_arrays = evaluate_split(model, subset(feats, lte), y[te], seed=config.seed,
                                                       groups=None if groups is None else groups[te],
                                                       unit=group_kind(key, config))
        models[key] = model
        # explanation probes: one logistic regression per backbone on its own training features
        probes, probe_report = fit_probes(subset(feats, ltr), y[tr], config.backbones,
                                          subset(feats, lva), y[va], seed=config.seed)
        say(a + 0.95 * span, f"Reference maps of the {name}'s explanation probes")
        pick = np.linspace(0, len(tr) - 1, min(REFERENCE_IMAGES, len(tr))).round().astype(int)
        references = reference_maps(extractor, [paths[i] for i in tr[np.unique(pick)]], cancel)
        arrays.update(probe_arrays(key, probes, references))
        if ref is not None:
            arrays[f"{key}/stain_reference"] = np.asarray(ref, dtype=np.float64)
        arrays.update({f"{key}/validation/{k}": np.asarray(v) for k, v in model.validation_.items()})
        arrays.update({f"{key}/test/{k}": np.asarray(v) for k, v in test_arrays.items()})
        sections[key] = model_section(key, config, (tr, va, te), dataset, model, extractor, val_metrics,
                                      test_metrics, ref)
        sections[key]["explanation_probes"] = probe_report
        sections[key].update(model_facts(key, model, config, y, groups, (tr, va, te)), cv=cv)
        test_all[key] = (test_metrics, test_arrays)
    check_cancel(cancel)

    say(0.97, "Saving the model")
    probe = make_extractor(config, state_dicts)  # the networks alone: their fingerprint
    probe.use_networks_of(extractor)             # the same networks, already built
    arrays.update(fingerprint.compute(probe))
    kind_model = KindModels(models=models)
    card = model_card(config, dataset, protocol, (train_idx, val_idx, test_idx), probe, sections,
                      finetune_history, notes, kinds=kinds if config.per_kind else None)
    card["split"]["realised"] = part_facts(y, groups, (train_idx, val_idx, test_idx))
    card["finetune_provenance"] = provenance
    if config.cases:
        card["trained_on"]["reviewed"] = reviewed_summary(dataset, (train_idx, val_idx, test_idx), cases_info)
    bundle = ModelBundle(model=kind_model, config=config, card=card, arrays=arrays,
                         backbone_state=_embedded_weights(config, state_dicts))
    check_cancel(cancel)
    path = save_bundle(config.resolved_output(), bundle)
    seconds = time.perf_counter() - t0
    say(1.0, f"Saved {path} in {seconds:.0f} s")
    first = next(iter(test_all))
    return TrainResult(bundle_path=path, model=kind_model, card=card, metrics=test_all[first][0],
                       evaluation=test_all[first][1], seconds=seconds,
                       per_model={k: v[0] for k, v in test_all.items()})


def _embedded_weights(config: TrainConfig, state_dicts):
    """Weights the bundle must carry: fine-tuned ones, or a local weights file's."""
    if state_dicts:
        return state_dicts
    if config.weights not in ("none", "imagenet"):
        return {b: build_backbone(b, config.weights).state_dict() for b in config.backbones}
    return None


def model_section(key: str, config: TrainConfig, splits, dataset: Dataset, model: AllModel,
                  extractor: FeatureExtractor, val_metrics, test_metrics, stain_ref=None) -> dict:
    """The model card's part for one per-kind model: its data, method and metrics."""
    tr, va, te = splits
    groups = dataset.groups
    ens = model.ensemble_

    def n_groups(idx):
        return None if groups is None else int(len(set(groups[idx].tolist())))

    return {
        "name": MODEL_NAMES[key], "image_kind": key,
        "data": {"n_images": int(len(tr) + len(va) + len(te)),
                 "class_counts": {CLASS_NAMES[c]: int(np.sum(dataset.labels[np.concatenate([tr, va, te])] == c))
                                  for c in (0, 1)},
                 "n_train": int(len(tr)), "n_validation": int(len(va)), "n_test": int(len(te)),
                 "n_groups": {"train": n_groups(tr), "validation": n_groups(va), "test": n_groups(te)}},
        "method": {
            "feature_blocks": {b: extractor.identities()[b] for b in model.backbones},
            "stain_normalisation": "none" if stain_ref is None else
            "Reinhard (Lab mean/std of the training images: "
            + ", ".join(f"{v:.2f}" for v in np.asarray(stain_ref)) + ")",
            "fusion": "per-block standardisation" + (", per-block L2" if model.block_l2 else "")
                      + ", concatenation, L2"
                      + (f", PCA {config.pca_variance:.0%} variance -> {model.fusion_.n_components_} components"
                         if model.pca else ""),
            "classifiers": list(model.classifier_names_),
            "validation_accuracy": ens.val_accuracy_,
            "ensemble_weights": dict(zip(ens.names_, map(float, ens.weights_))),
            "combiner": model.combiner_,
            "stacked_coefficients": (None if model.stacker_ is None else
                                     dict(zip(model.classifier_names_, map(float, model.stacker_.coef_)))),
            "calibration": model.calibrator_.method_,
            "calibration_cv_brier": model.calibrator_.cv_brier_,
            "threshold": float(model.threshold_),
            "threshold_rule": ("Youden J on the out-of-fold training scores and the validation split"
                               if getattr(model, "calibrated_on_", "validation") == "cross-fit"
                               else "Youden J on the validation split"),
            "uncertain_band": band_section(model, group_kind(key, config)),
            "domain_check": domain_section(model, group_kind(key, config)),
        },
        "metrics": {"validation": val_metrics, "test": test_metrics},
    }


def model_card(config: TrainConfig, dataset: Dataset, protocol: str, splits, extractor: FeatureExtractor,
               sections: dict[str, dict], finetune_history=None, notes=(), kinds=None) -> dict:
    """JSON-able description of a model: data, method, split, per-kind models, intended use.

    ``sections`` maps each model key (``"single_cell"``, ``"field"`` or ``"any"``) to its
    :func:`model_section`. The top-level ``method`` and ``metrics`` repeat the first model's, so
    readers of single-model cards keep working. ``kinds`` (N,): each image's detected kind, when
    already known; otherwise a sample of the training images is read to count them.
    """
    train_idx, val_idx, test_idx = splits
    groups = dataset.groups
    n_groups = None if groups is None else int(len(set(groups.tolist())))
    first = next(iter(sections.values()))
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
            "image_kinds": (image_kinds([dataset.paths[i] for i in train_idx], seed=config.seed) if kinds is None
                            else _kind_shares(np.asarray(kinds)[train_idx])),
        },
        "split": {"protocol": protocol, "seed": config.seed, "fractions": list(config.fractions),
                  "n_train": int(len(train_idx)), "n_validation": int(len(val_idx)),
                  "n_test": int(len(test_idx))},
        "models": sections,
        "method": dict(first["method"], backbones={b: extractor.identities()[b] for b in config.backbones},
                       image_size=config.image_size, gamma=config.gamma, finetuned=bool(config.finetune)),
        "metrics": first["metrics"],
    }
    if notes:
        card["notes"] = list(notes)
    if finetune_history is not None:
        card["finetune"] = finetune_history
    return card
