"""The models of a bundle per image kind, the operating point and ROC of a threshold, and small formulas.

This module imports no scikit-learn, so that reading a bundle's manifest and routing an image to its
model do not import it; the formulas are those the fitted estimators (:mod:`trainer.classical.fusion`,
``calibration``, ``stacking``) compute with.
"""
from __future__ import annotations

import warnings

import numpy as np


class KindModels:
    """One fitted :class:`AllModel` per image kind, as a model bundle stores them.

    ``models`` maps a model key to its AllModel: ``"single_cell"`` (single-cell crops),
    ``"field"`` (smear fields), or ``"any"`` (one model for every image, as in bundles written
    before per-kind models). A plain class (scikit-learn's conventions without its base class).
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


def roc_points(y: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """ROC of (N,) scores against (N,) 0/1 labels: ``fpr``, ``tpr``, ``thresholds`` (capped at 1).

    ``sklearn.metrics.roc_curve``'s points; NaN rates for an absent class.
    """
    from sklearn.metrics import roc_curve  # imported with the fitted models that call this

    y = (np.asarray(y).ravel() == 1).astype(np.int64)
    with warnings.catch_warnings():  # an absent class: NaN rates, as documented, without the warning
        warnings.simplefilter("ignore")
        fpr, tpr, thresholds = roc_curve(y, np.asarray(score).ravel())
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.minimum(thresholds, 1.0)}


#: probabilities are clipped to [eps, 1 - eps] before their logit: by the Platt calibrator, and by the
#: stacked combiner
PLATT_EPS = 1e-6
STACK_EPS = 1e-4
#: isotonic plateaus are ordered by the raw score, so calibration keeps the ranking
TIE_BREAK = 1e-6


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """Element-wise log(p / (1 - p)) in float64, with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def stacked_score(P: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    """(N,) the stacked combiner's P(ALL) of (N, C) member probabilities: logistic in their logits."""
    z = logit(P, STACK_EPS) @ coef + intercept
    return 1.0 / (1.0 + np.exp(-z))


def tie_break(s: np.ndarray) -> np.ndarray:
    """What the isotonic calibrator adds to its step function at raw scores ``s`` (N,)."""
    return TIE_BREAK * (np.clip(s, 0.0, 1.0) - 0.5)


def join_blocks(blocks: list[np.ndarray], block_l2: bool) -> np.ndarray:
    """The fusion's (N, sum of widths) rows of standardised feature blocks, L2-normalised.

    Where ``block_l2``, each block's rows are L2-normalised first.
    """
    if block_l2:
        blocks = [b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12) for b in blocks]
    Z = np.hstack(blocks)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
