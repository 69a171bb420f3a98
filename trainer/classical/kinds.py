"""What prediction needs of a bundle's models without scikit-learn.

The models per image kind, and the operating point of a threshold.
"""
from __future__ import annotations

import numpy as np


class KindModels:
    """One fitted :class:`AllModel` per image kind, as a model bundle stores them.

    ``models`` maps a model key to its AllModel: ``"single_cell"`` (single-cell crops),
    ``"field"`` (smear fields), or ``"any"`` (one model for every image, as in bundles written
    before per-kind models). A model may also be a :class:`trainer.classical.readout.ModelReadout`.
    A plain class (scikit-learn's conventions without its base class), so that prediction needs no
    scikit-learn.
    """

    def __init__(self, models: dict | None = None):
        self.models = models

    def keys(self) -> list[str]:
        return list(self.models or {})

    def route(self, image_kind: str) -> str:
        """The key of the model that judges an image of ``image_kind``.

        The model of that kind where there is one, else the only (or first) model.
        """
        models = self.models or {}
        if image_kind in models:
            return image_kind
        if "any" in models:
            return "any"
        return next(iter(models))


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``p >= threshold`` against labels ``y`` (N,).

    NaN for a class that is absent. Plain numpy: the app calls it on every slider move.
    """
    y, pred = np.asarray(y), np.asarray(p) >= threshold
    sens = float(np.mean(pred[y == 1])) if np.any(y == 1) else float("nan")
    spec = float(np.mean(~pred[y == 0])) if np.any(y == 0) else float("nan")
    return sens, spec
