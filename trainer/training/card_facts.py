"""What a model card says each figure rests on.

The parts of the split, the data that set calibration and threshold, and the uncertain band, named in
:mod:`trainer.inference.card_text`'s vocabulary (cross-validation, test split, validation split, cross-fit pool).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trainer.classical.kinds import operating_point
from trainer.config import TrainConfig
from trainer.inference.card_text import CROSS_FIT_POOL, VALIDATION_SPLIT
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND
from trainer.stats.intervals import MIN_GROUPS

PART_NAMES = ("train", "validation", "test")


def group_kind(key: str, config: TrainConfig) -> str:
    """What a group id of model ``key`` is: ``"image block"`` (``config.block_groups``) or ``"subject"``."""
    return "image block" if key in tuple(config.block_groups) else "subject"


def _per_class(values, y: np.ndarray) -> dict[str, int]:
    return {str(c): len(set(np.asarray(values, dtype=object)[y == c].tolist())) for c in (0, 1)}


def part_facts(y: np.ndarray, groups, parts, unit: str = "subject") -> dict[str, Any]:
    """Images and subjects of each class in each part, their shares, and the parts short of subjects.

    ``parts``: (train, validation, test) index arrays into ``y`` / ``groups``. ``short`` names every part
    with fewer than 3 subjects of a class and how many the data have: its figures rest on those few.
    """
    y = np.asarray(y).astype(int)
    g = None if groups is None else np.asarray(groups, dtype=object)
    total_img = {str(c): int(np.sum(y == c)) for c in (0, 1)}
    total_grp = None if g is None else _per_class(g, y)
    out: dict[str, Any] = {}
    short = []
    for name, idx in zip(PART_NAMES, parts):
        idx = np.asarray(idx, dtype=int)
        images = {str(c): int(np.sum(y[idx] == c)) for c in (0, 1)}
        entry: dict[str, Any] = {"images": images,
                                 "share_of_images": {c: images[c] / max(total_img[c], 1) for c in images}}
        if g is not None:
            subj = _per_class(g[idx], y[idx])
            entry["subjects"] = subj
            entry["share_of_subjects"] = {c: subj[c] / max(total_grp[c], 1) for c in subj}
            for c, label in (("0", "normal"), ("1", "ALL")):
                if len(idx) and subj[c] < MIN_GROUPS:
                    short.append(f"{name} split: {subj[c]} {label} {unit}{'' if subj[c] == 1 else 's'} (fewer than "
                                 f"{MIN_GROUPS}; the data have {total_grp[c]})")
        out[name] = entry
    out["short"] = short
    return out


def calibration_facts(model, y_train: np.ndarray, y_val: np.ndarray, g_train, g_val) -> dict[str, Any]:
    """The data that set a model's calibration and threshold, in words and counts.

    The cross-fit pool (out-of-fold training scores + validation split) or the validation split alone,
    its images, subjects and share of ALL (the prevalence the calibrated probability assumes), the
    sensitivity and specificity at the threshold there, the internal folds realised and any fallback.
    """
    pool = getattr(model, "calibrated_on_", "validation") == "cross-fit"
    y = np.concatenate([y_train, y_val]) if pool else np.asarray(y_val)
    g = None
    if g_val is not None and (g_train is not None or not pool):
        g = np.concatenate([np.asarray(g_train, dtype=object), np.asarray(g_val, dtype=object)]) if pool \
            else np.asarray(g_val, dtype=object)
    sens, spec = operating_point(model.validation_["y"], model.validation_["calibrated"], model.threshold_)
    return {"source": CROSS_FIT_POOL if pool else VALIDATION_SPLIT, "n_images": int(len(y)),
            "n_groups": None if g is None else _per_class(g, np.asarray(y).astype(int)),
            "prevalence": float(np.mean(y)), "at_threshold": {"sensitivity": float(sens), "specificity": float(spec)},
            "method": getattr(model.calibrator_, "method_", None),
            "inner_folds": getattr(model, "inner_folds_", None), "note": getattr(model, "calibration_note_", None)}


def band_facts(model) -> dict[str, Any]:
    """The uncertain band: its half-width around the threshold and whether it was fitted or is the default."""
    fitted = getattr(model, "band_", None)
    return {"half_width": float(DEFAULT_UNCERTAINTY_BAND if fitted is None else fitted),
            "source": "default" if fitted is None else "fitted"}


def model_facts(key: str, model, config: TrainConfig, y: np.ndarray, groups, splits) -> dict[str, Any]:
    """The additions to one model section of the card (``y`` / ``groups`` of the whole data set)."""
    tr, va, te = (np.asarray(a, dtype=int) for a in splits)
    g = None if groups is None else np.asarray(groups, dtype=object)
    kind = group_kind(key, config)
    return {"group_kind": kind, "parts": part_facts(y, g, (tr, va, te), kind),
            "calibration_data": calibration_facts(model, y[tr], y[va], None if g is None else g[tr],
                                                  None if g is None else g[va]),
            "uncertain_band": band_facts(model)}
