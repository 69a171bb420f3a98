"""Which of a model's images its backbones were fine-tuned on, and what the model does about it.

Features of images a network was trained on separate the classes better than features of new images. So:

* no test image, and no image or subject of the validation split that the networks were *trained* on,
  unless the user allows it (``--allow-finetune-overlap``; the card then says so);
* where the networks were trained on the training split (``--finetune``, or a weights file fine-tuned on
  these training images), the calibration and the threshold are fitted on the validation split alone:
  the cross-fit pool's out-of-fold training scores would come from features of fine-tuning images;
* weights that record nothing of their fine-tuning images are named as of unknown provenance.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import TrainConfig
from trainer.io.samples import Dataset
from trainer.training.weights import FINETUNE_IMAGES_KEY, finetune_overlap, weights_metadata
from trainer.util.errors import DataError


def _is_file(weights) -> bool:
    return str(weights).lower() not in ("none", "imagenet")


def finetune_check(config: TrainConfig, dataset: Dataset, splits) -> dict[str, Any] | None:
    """The card's ``finetune_provenance``; raises DataError on a test or validation overlap not allowed.

    ``{"finetuned_here", "weights", "known", "test", "validation", "training", "calibrate_on_validation",
    "notes"}``: each part's :func:`~trainer.training.weights.finetune_overlap` (by pixel hash and subject id).
    None when the backbones are not fine-tuned at all (``none``/``imagenet`` weights, no ``--finetune``).
    """
    if not _is_file(config.weights) and not config.finetune:
        return None
    tr, va, te = (np.asarray(a, dtype=int) for a in splits)
    out: dict[str, Any] = {"finetuned_here": bool(config.finetune), "weights": None, "known": None,
                           "test": None, "validation": None, "training": None, "notes": []}
    if config.finetune:
        out["notes"].append("The backbones were fine-tuned on the training split (early stopping on the "
                            "validation split): calibration and threshold were fitted on the validation split.")
    if _is_file(config.weights):
        out["weights"] = Path(config.weights).name
        out["known"] = isinstance(weights_metadata(config.weights).get(FINETUNE_IMAGES_KEY), dict)
        if not out["known"]:
            out["notes"].append(f"The weights {out['weights']} record no fine-tuning images: whether any test, "
                                "validation or training image (or subject) was among them is unknown, so the "
                                "figures may be optimistic.")
        else:
            samples, groups = dataset.samples, dataset.groups

            def check(idx, what, allow):
                return finetune_overlap(config.weights, [samples[i].path for i in idx], allow=allow, what=what,
                                        groups=None if groups is None else groups[idx],
                                        hashes=[samples[i].pixel_hash for i in idx])

            allow = config.allow_finetune_overlap
            out["test"] = check(te, "held-out test", allow) if len(te) else None
            out["training"] = check(tr, "training", True)
            out["validation"] = check(va, "validation", True)
            v = out["validation"]
            if (v["n_train"] or v["n_train_subjects"]) and not allow:
                raise DataError(
                    f"{v['n_train']} validation images ({v['n_train_subjects']} subjects) were used to train the "
                    f"backbone weights {out['weights']}: the ensemble weights, calibration and threshold set on "
                    "them would be optimistic. Use the split the weights were fine-tuned with (same data, seed "
                    "and fractions), or pass --allow-finetune-overlap (the card then says so).")
            if out["training"]["n_train"] or out["training"]["n_train_subjects"]:
                out["notes"].append(f"The weights {out['weights']} were fine-tuned on {out['training']['n_train']} "
                                    "of the training images: calibration and threshold were fitted on the "
                                    "validation split.")
    out["calibrate_on_validation"] = bool(config.finetune or (out["training"] or {}).get("n_train")
                                          or (out["training"] or {}).get("n_train_subjects"))
    return out


def finetune_calibration(config: TrainConfig, provenance: dict[str, Any] | None) -> TrainConfig:
    """The config the classical stage is fitted with: calibrated on the validation split where needed."""
    if provenance and provenance.get("calibrate_on_validation") and config.calibrate_on != "validation":
        return dataclasses.replace(config, calibrate_on="validation")
    return config
