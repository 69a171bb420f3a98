"""The domain check: is an image like the images a model was trained on.

A model's probabilities mean something only for images like its training images: the C-NMC crop
model calls most normal white cells of another laboratory "ALL blast" with high confidence. A
:class:`DomainCheck` is fitted on a model's own training rows and flags a row as *outside training*
when any of its checks fires:

``features``
    Mean Euclidean distance to the ``k`` nearest training rows in the model's fused feature space
    (per-block standardisation, L2, PCA: :class:`trainer.classical.fusion.FeatureFusion`), by
    scikit-learn's :class:`~sklearn.neighbors.NearestNeighbors`: it assumes no shape of the training
    cloud. ``benchmarks/domain_check.py`` compares it with a Mahalanobis distance and an isolation forest
    on the same fused rows (``benchmarks/README.md``): on its own the Mahalanobis distance separates
    another laboratory's cells better; together with the input checks below every check set flags
    them all, so the neighbours stay until a model is rebuilt with the other score.
``stain``, ``scale``, ``blur``
    Input statistics a laboratory would check, read from the hand-crafted nucleus block (the columns
    :data:`trainer.vision.input_checks.INPUT_CHECKS` names): the nucleus' and cytoplasm's mean Lab colour, the nucleus'
    equivalent diameter and the cell's area in pixels, and the chromatin's grey-level contrast at one
    pixel (blur removes it). Each is the largest robust z-score (median and inter-quartile range of
    the training rows, scikit-learn's :class:`~sklearn.preprocessing.RobustScaler`) of its columns.
    A model without the nucleus block has only the ``features`` check.

Thresholds are fitted on **held-out subjects**: the training rows are split into folds by subject
(:class:`~sklearn.model_selection.GroupKFold`), and every check is fitted (fusion included) on the
other folds and scores the held-out fold. Each check's threshold is the same upper quantile of its
out-of-fold scores, the quantile chosen so that ``target_rate`` of the out-of-fold rows is flagged by
at least one check. The final checks are then fitted on all training rows.

A row's ``novelty`` is its largest score-to-threshold ratio over the checks: above 1 it is outside
training.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GroupKFold, KFold
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import RobustScaler
from sklearn.utils.validation import check_is_fitted

from trainer.stats.intervals import wilson_lower

DOMAIN_FOLDS = 5
#: fewest decided rows whose accuracy a fitted band may rest on: the few most confident rows of a model
#: without skill can all be right by chance
MIN_DECIDED_ROWS = 30
#: a two-sided band's decided rows must reach its target with this one-sided confidence (Wilson's lower
#: bound, normal quantile): a band resting on few rows is not taken for one that is right
BAND_CONFIDENCE_Z = 1.645


class DomainCheck(BaseEstimator):
    """Flags feature rows unlike a model's training rows (see the module docstring).

    Parameters
    ----------
    fusion : FeatureFusion
        The model's (unfitted or fitted) fusion: cloned and refitted on each fold and on all rows.
    input_columns : dict of str to sequence of int
        Check name -> column indices of the stacked raw features that it reads (empty: no input checks).
    k : int
        Neighbours whose mean distance is the ``features`` score.
    target_rate : float
        Share of held-out subjects' rows to flag, in (0, 0.5).
    seed : int
        Seed of the folds where rows have no subject ids.

    Attributes
    ----------
    checks_ : list of str
        The checks in use, ``"features"`` first.
    thresholds_ : ndarray of shape (n_checks,)
        Each check's threshold on its score.
    oof_rate_ : float
        Share of out-of-fold rows flagged at the thresholds (about ``target_rate``).
    basis_ : dict
        ``{"held_out": "subjects" | "images", "n_groups": int | None, "n_rows": int, "folds": int}``.
    """

    def __init__(self, fusion=None, input_columns=None, k: int = 5, target_rate: float = 0.03, seed: int = 0):
        self.fusion = fusion
        self.input_columns = input_columns
        self.k = k
        self.target_rate = target_rate
        self.seed = seed

    def fit(self, X: np.ndarray, groups=None) -> DomainCheck:
        """Fit on (N, D) stacked raw feature rows (the model's blocks side by side); ``groups`` (N,) subject ids."""
        X = np.asarray(X, dtype=np.float32)
        if not 0 < self.target_rate < 0.5:
            raise ValueError(f"target_rate must lie in (0, 0.5), not {self.target_rate}")
        self.checks_ = ["features", *[c for c, cols in (self.input_columns or {}).items() if len(cols)]]
        folds, basis = self._folds(len(X), groups)
        oof = np.full((len(X), len(self.checks_)), np.nan)
        for tr, te in folds:
            oof[te] = _Scorer(self).fit(X[tr]).scores(X[te])
        self.thresholds_, self.oof_rate_ = _common_quantile(oof, self.target_rate)
        self.basis_ = dict(basis, n_rows=int(len(X)), folds=len(folds))
        self.scorer_ = _Scorer(self).fit(X)
        return self

    def _folds(self, n: int, groups) -> tuple[list, dict]:
        if groups is not None:
            g = np.asarray(groups)
            n_groups = len(np.unique(g))
            if n_groups >= 2:
                cv = GroupKFold(min(DOMAIN_FOLDS, n_groups))
                return list(cv.split(np.zeros(n), groups=g)), {"held_out": "subjects", "n_groups": n_groups}
        cv = KFold(min(DOMAIN_FOLDS, n), shuffle=True, random_state=self.seed)
        return list(cv.split(np.zeros(n))), {"held_out": "images", "n_groups": None}

    def novelty(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((N,) novelty, (N, n_checks) bool: which checks fired) of stacked raw feature rows.

        Novelty is the largest score / threshold over the checks; a row is outside training above 1.
        """
        check_is_fitted(self, "scorer_")
        ratios = self.scorer_.scores(np.asarray(X, dtype=np.float32)) / self.thresholds_
        return ratios.max(axis=1), ratios > 1.0

    def fired(self, flags_row) -> list[str]:
        """The names of the checks that fired in one row of :meth:`novelty`'s flags."""
        return [c for c, f in zip(self.checks_, flags_row) if f]


class _Scorer:
    """One fit of every check of a :class:`DomainCheck`: the fusion, the neighbours and the robust scalers."""

    def __init__(self, owner: DomainCheck):
        self.k, self.fusion = owner.k, clone(owner.fusion)
        self.columns = [list((owner.input_columns or {})[c]) for c in owner.checks_[1:]]

    def fit(self, X: np.ndarray) -> _Scorer:
        Z = self.fusion.fit(X).transform(X)
        self.neighbours = NearestNeighbors(n_neighbors=min(self.k, len(Z)), algorithm="brute").fit(Z)
        self.scalers = [RobustScaler(unit_variance=True).fit(X[:, cols]) for cols in self.columns]
        return self

    def scores(self, X: np.ndarray) -> np.ndarray:
        """(N, n_checks) scores: larger is further from the training rows."""
        dist, _ = self.neighbours.kneighbors(self.fusion.transform(X))
        out = [dist.mean(axis=1)]
        out += [np.abs(s.transform(X[:, cols])).max(axis=1) for s, cols in zip(self.scalers, self.columns)]
        return np.column_stack(out)


def _common_quantile(scores: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """(per-column thresholds at one common upper quantile, the share of rows flagged by any column).

    The quantile is found by bisection so that about ``target`` of the rows exceed at least one
    column's threshold.
    """
    lo, hi = 1.0 - target, 1.0
    for _ in range(30):
        q = (lo + hi) / 2
        rate = float(np.mean((scores > np.quantile(scores, q, axis=0)).any(axis=1)))
        lo, hi = (q, hi) if rate > target else (lo, q)
    thresholds = np.quantile(scores, hi, axis=0)
    return thresholds, float(np.mean((scores > thresholds).any(axis=1)))


def fit_band(y: np.ndarray, p: np.ndarray, threshold: float, target: float = 0.95) -> dict:
    """The narrowest band around ``threshold`` whose decided rows reach ``target`` accuracy.

    ``y`` (N,) labels and ``p`` (N,) calibrated probabilities of held-out subjects' rows. A row is
    decided when ``|p - threshold| >= band``; its decision is ALL where ``p >= threshold``. The band
    must decide at least :data:`MIN_DECIDED_ROWS` rows (all of fewer). Returns
    ``{"band", "target", "coverage", "accuracy_decided", "n_rows", "reached"}``; where no band reaches
    the target the band excludes every row (``reached`` False, coverage 0).
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    correct = ((p >= threshold).astype(int) == y).astype(int)
    d, right, n = _confident_first(correct, np.abs(p - threshold), 1)
    accuracy = right / np.maximum(n, 1)
    ok = np.flatnonzero((accuracy >= target) & (n >= min(MIN_DECIDED_ROWS, len(y))) & (n > 0))
    if not len(ok):
        return {"band": _deciding_nothing(p, threshold), "target": float(target), "coverage": 0.0,
                "accuracy_decided": None, "n_rows": int(len(y)), "reached": False}
    j = int(ok.max())                              # the widest coverage that still reaches the target
    return {"band": _half_width(d, j), "target": float(target), "coverage": float(n[j] / len(y)),
            "accuracy_decided": float(accuracy[j]), "n_rows": int(len(y)), "reached": True}


def _deciding_nothing(p: np.ndarray, threshold: float) -> float:
    """A half-width that leaves every row of ``p`` inside the band."""
    return float(np.abs(p - threshold).max() + 1e-9) if len(p) else 0.5


def _half_width(d: np.ndarray, k: int) -> float:
    """The half-width that decides the ``k`` first cuts of :func:`_confident_first`'s distances ``d``.

    Half-way to the next less confident row, so the band does not sit on a row's own score.
    """
    if k == 0:
        return float(d[1] + 1e-9) if len(d) > 1 else 0.0    # nothing decided on this side
    return float((d[k] + d[k + 1]) / 2) if k + 1 < len(d) else 0.0


def _confident_first(y: np.ndarray, dist: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances, right counts, row counts) of the rows on one side, most confident first, cut only at ties' ends.

    Index 0 is "no row decided" (distance inf); index i decides the i most confident rows.
    """
    order = np.argsort(-dist, kind="stable")
    d, right = dist[order], np.cumsum(y[order] == label)
    ends = np.flatnonzero(np.r_[d[1:] < d[:-1], True]) if len(d) else np.zeros(0, int)
    return np.r_[np.inf, d[ends]], np.r_[0, right[ends]], np.r_[0, ends + 1]


def fit_two_sided_band(y: np.ndarray, p: np.ndarray, threshold: float, target: float = 0.95) -> dict:
    """The band below and above ``threshold`` that decides the most rows at ``target`` accuracy.

    As :func:`fit_band`, but the two sides' half-widths are chosen separately: a row is decided *normal*
    when ``p <= threshold - below`` and *ALL* when ``p >= threshold + above``. Where one class is far
    commoner, or the model is surer of one, a band of one width on both sides gives up decisions it could
    make. With two widths to choose, the decided rows must reach ``target`` with one-sided 95 % confidence
    (:data:`BAND_CONFIDENCE_Z`, Wilson's lower bound), not just on average: measured on held-out subjects
    (``benchmarks/domain_check.py``), the point estimate let the bands promise more than they kept.
    Returns ``{"below", "above", "target", "coverage", "accuracy_decided", "n_rows", "reached"}``.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    lo = p < threshold
    dn, rn, nn = _confident_first(y[lo], threshold - p[lo], 0)     # decided normal, most confident first
    da, ra, na = _confident_first(y[~lo], p[~lo] - threshold, 1)   # decided ALL
    n = nn[:, None] + na[None, :]                                  # (i, j): i normal and j ALL rows decided
    right = rn[:, None] + ra[None, :]
    ok = (wilson_lower(right, n, BAND_CONFIDENCE_Z) >= target) & (n >= min(MIN_DECIDED_ROWS, len(y)))
    if not ok.any():
        width = _deciding_nothing(p, threshold)
        return {"below": width, "above": width, "target": float(target), "coverage": 0.0,
                "accuracy_decided": None, "n_rows": int(len(y)), "reached": False}
    i, j = np.unravel_index(np.argmax(np.where(ok, n, -1)), n.shape)
    return {"below": _half_width(dn, i), "above": _half_width(da, j), "target": float(target),
            "coverage": float(n[i, j] / len(y)), "accuracy_decided": float((rn[i] + ra[j]) / n[i, j]),
            "n_rows": int(len(y)), "reached": True}


def centred_band(y: np.ndarray, p: np.ndarray, youden: float, target: float = 0.95) -> tuple[float, dict]:
    """(decision threshold, band report): :func:`fit_two_sided_band` around ``youden``, as one width around its centre.

    The threshold is the centre of the two-sided band and ``band`` its half-width, so deciding
    ``|p - threshold| >= band`` by ``p >= threshold`` decides every row exactly as the two-sided band
    around ``youden`` does (normal up to ``youden - below``, ALL from ``youden + above``), and everything
    downstream (the app's slider and band, the CSV, the case file) keeps one threshold and one width.
    Where no band reaches the target, the threshold stays ``youden`` and the band spans every row.
    The report adds ``youden_threshold``, ``below`` and ``above`` to :func:`fit_two_sided_band`'s.
    """
    two = fit_two_sided_band(y, p, youden, target)
    report = {"band": (two["below"] + two["above"]) / 2, **two, "youden_threshold": float(youden)}
    return float(youden + (two["above"] - two["below"]) / 2), report
