"""Calibration of the ensemble score: Platt (logistic) or isotonic, chosen by validation Brier."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from trainer.classical.kinds import PLATT_EPS, logit, tie_break
from trainer.classical.stacking import fold_report, inner_folds

METHODS = ("platt", "isotonic")


def _logit(s: np.ndarray) -> np.ndarray:
    return logit(s, PLATT_EPS).reshape(-1, 1)


def _fit_one(method: str, s: np.ndarray, y: np.ndarray):
    if method == "platt":
        return LogisticRegression(C=1.0).fit(_logit(s), y)  # mild L2 keeps tiny, separable sets finite
    if method == "isotonic":
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    raise ValueError(f"unknown calibration method {method!r}; choose auto, platt or isotonic")


def _apply(model, s: np.ndarray) -> np.ndarray:
    if isinstance(model, LogisticRegression):
        return model.predict_proba(_logit(s))[:, 1]
    s = np.asarray(s, dtype=float)
    return model.predict(s) + tie_break(s)


class ScoreCalibrator(BaseEstimator):
    """Map an uncalibrated score in [0, 1] to a calibrated P(ALL).

    ``method="auto"`` compares Platt scaling and isotonic regression by the Brier score of
    their out-of-fold predictions on the calibration data (stratified k-fold, grouped by subject
    where ``groups`` are given, so isotonic's flexibility is not rewarded for memorising a
    subject), keeps the lower one and refits it on all the data; with too few subjects for grouped
    folds it keeps Platt (two parameters) without comparing. Learned: ``method_``, ``model_``,
    ``cv_brier_`` (method -> Brier, where compared), ``folds_`` (the folds realised, see
    :func:`trainer.classical.stacking.fold_report`; None where not compared).
    """

    def __init__(self, method: str = "auto", n_splits: int = 5, seed: int = 0):
        self.method = method
        self.n_splits = n_splits
        self.seed = seed

    def fit(self, s, y, groups=None):
        s = np.asarray(s, dtype=float).ravel()
        y = np.asarray(y).astype(int).ravel()
        if len(np.unique(y)) < 2:
            raise ValueError("calibration data hold only one class")
        self.cv_brier_ = {}
        self.folds_ = None
        if self.method == "auto":
            folds = inner_folds(y, groups, self.n_splits, self.seed)
            self.folds_ = fold_report(y, groups, self.n_splits, self.seed, folds)
            if folds:
                oof = {m: np.empty_like(s) for m in METHODS}
                for tr, te in folds:
                    for m in METHODS:
                        oof[m][te] = _apply(_fit_one(m, s[tr], y[tr]), s[te])
                self.cv_brier_ = {m: float(np.mean((oof[m] - y) ** 2)) for m in METHODS}
                self.method_ = min(self.cv_brier_, key=self.cv_brier_.get)
            else:
                self.method_ = "platt"
        else:
            self.method_ = self.method
        self.model_ = _fit_one(self.method_, s, y)
        return self

    def transform(self, s) -> np.ndarray:
        """Calibrated probabilities, shape of ``s`` flattened to (N,)."""
        check_is_fitted(self, "model_")
        return np.clip(_apply(self.model_, np.asarray(s, dtype=float).ravel()), 0.0, 1.0)
