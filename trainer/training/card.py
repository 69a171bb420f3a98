"""The model card `train` stores in the bundle: the data, the method and the metrics of each per-kind model."""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from trainer.classical.model import AllModel
from trainer.config import TrainConfig
from trainer.inference.results import MODEL_NAMES
from trainer.io.imageio import read_image
from trainer.io.samples import CLASS_NAMES, Dataset
from trainer.training.card_facts import group_kind
from trainer.training.domain_card import band_section, domain_section
from trainer.vision.features import FeatureExtractor
from trainer.vision.segmentation import is_single_cell_crop

INTENDED_USE = ("Research and education only. Not a medical device and not for clinical diagnosis: "
                "every result must be reviewed by a qualified haematologist or pathologist.")


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
            "threshold_rule": threshold_rule(model),
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


def threshold_rule(model) -> str:
    """How a model's default threshold was set, in words."""
    data = ("the out-of-fold training scores and the validation split"
            if getattr(model, "calibrated_on_", "validation") == "cross-fit" else "the validation split")
    if "youden_threshold" in (getattr(model, "band_report_", None) or {}):
        return (f"the centre of the uncertain band, whose two sides were fitted apart around the Youden J "
                f"threshold on {data}")
    return f"Youden J on {data}"
