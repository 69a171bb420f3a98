"""Stacked combiner: a regularised logistic regression on the base classifiers' probabilities.

The paper's eq. 8 weights each classifier by its validation accuracy; with five similar
classifiers those weights come out nearly uniform and the ensemble can fall below its best
member. A stacked combiner learns how far to trust each member instead. It is fitted on
out-of-fold probabilities of the training rows (each row scored by members that never saw it;
folds grouped by subject where subjects are known), never on validation or test rows.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from trainer.classical.kinds import STACK_EPS, stacked_score
from trainer.classical.kinds import logit as clipped_logit


def logit(p: np.ndarray) -> np.ndarray:
    """Element-wise log(p / (1 - p)) with p clipped to [1e-4, 1 - 1e-4] (``STACK_EPS``)."""
    return clipped_logit(p, STACK_EPS)


def inner_folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int = 5, seed: int = 0):
    """(train, test) index pairs for an internal cross-validation of (N,) labels ``y``.

    With ``groups`` (subject ids) the folds are grouped (no subject on both sides) and stratified;
    the fold count shrinks to what the subjects of the smaller class allow, and when fewer than 2
    grouped folds with both classes in every training part are possible the answer is [] (no
    folds): never folds of images, which would put one subject's images on both sides and reward
    recognising subjects. Callers then fall back to something that needs no folds and say so (see
    :func:`fold_report`). Without ``groups`` the folds are stratified by image; [] when fewer than 2
    are possible.
    """
    y = np.asarray(y).astype(int)
    if groups is not None:
        groups = np.asarray(groups)
        per_class = [len(set(groups[y == c].tolist())) for c in (0, 1)]
        for k in range(int(min(n_splits, *per_class)), 1, -1):
            cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
            folds = list(cv.split(np.zeros(len(y)), y, groups))
            if all(len(np.unique(y[tr])) == 2 for tr, _ in folds):
                return folds
        return []
    k = int(min(n_splits, np.bincount(y, minlength=2).min()))
    if k < 2:
        return []
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fold_report(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int = 0,
                folds: list | None = None) -> dict:
    """``{"requested", "realised", "grouped", "n_groups"}`` of :func:`inner_folds` on these rows, for the card.

    ``folds``: the folds already made (else they are made here); ``n_groups``: subjects of each class
    (None without subject ids).
    """
    y = np.asarray(y).astype(int)
    if folds is None:
        folds = inner_folds(y, groups, n_splits, seed)
    n_groups = (None if groups is None else
                {str(c): len(set(np.asarray(groups)[y == c].tolist())) for c in (0, 1)})
    return {"requested": int(n_splits), "realised": len(folds), "grouped": groups is not None,
            "n_groups": n_groups}


class StackedCombiner(BaseEstimator):
    """Logistic regression with non-negative weights on the logits of C member probabilities.

    Parameters
    ----------
    C : float
        Inverse L2 regularisation strength of the weights.

    ``fit(P, y)`` with ``P`` (N, C) out-of-fold member probabilities of P(ALL) and ``y`` (N,),
    classes weighted to balance. The weights are constrained to be >= 0 (Breiman's
    non-negative stacking): correlated members then cannot cancel each other with large
    weights of opposite sign, which fits the out-of-fold subjects and fails on new ones.
    Learned: ``coef_`` (C,) >= 0, ``intercept_`` (float).
    """

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, P, y) -> StackedCombiner:

        P = np.asarray(P, dtype=np.float64)
        y = np.asarray(y).astype(int)
        if P.ndim != 2 or len(P) != len(y):
            raise ValueError(f"expected (N, C) probabilities for {len(y)} labels, got {P.shape}")
        if len(np.unique(y)) < 2:
            raise ValueError("the stacked combiner needs both classes")
        Z = logit(P)
        sw = np.where(y == 1, 0.5 / max(y.mean(), 1e-12), 0.5 / max(1 - y.mean(), 1e-12))
        sw = sw / sw.sum()
        sign = 2.0 * y - 1.0
        c = Z.shape[1]

        def loss(theta):
            w, b = theta[:c], theta[c]
            m = sign * (Z @ w + b)
            # balanced log-loss and its gradient; log(1 + e^-m) computed stably
            value = np.sum(sw * np.logaddexp(0.0, -m)) + 0.5 / (self.C * len(y)) * (w @ w)
            g = -sw * sign * (1.0 - 1.0 / (1.0 + np.exp(-m)))  # d loss / d (Z w + b)
            grad = np.concatenate([Z.T @ g + w / (self.C * len(y)), [g.sum()]])
            return value, grad

        theta0 = np.concatenate([np.full(c, 1.0 / c), [0.0]])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None)] * c + [(None, None)])
        self.coef_ = np.asarray(res.x[:c], dtype=np.float64)
        self.intercept_ = float(res.x[c])
        return self

    def combine(self, P) -> np.ndarray:
        """(N,) combined P(ALL) of (N, C) member probabilities."""
        check_is_fitted(self, "coef_")
        return stacked_score(P, self.coef_, self.intercept_)
