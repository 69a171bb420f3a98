"""Binary classification metrics, pure functions of (y_true, scores) or (y_true, predictions).

Conventions: ``y`` is a 1-D array of labels in {0, 1} (1 = ALL blast, the positive class);
``s`` / ``p`` are 1-D scores of the same length where larger means "more likely ALL"
(probabilities in [0, 1] for Brier and the reliability curve); a sample is called positive
when ``s >= threshold``. Confusion matrices use scikit-learn's layout ``[[TN, FP], [FN, TP]]``.
Statistics come from scikit-learn / scipy where they exist; the bootstrap is seeded and
vectorised (rank-based AUC, identical to ``roc_auc_score`` including ties). Given subject/group
ids, the bootstrap resamples groups, not images (cluster bootstrap, see ``bootstrap_auc_ci``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from trainer.stats.intervals import (
    MIN_GROUPS,
    _ci_design,
    _group_bootstrap_aucs,
    group_counts,
    interval,
    not_estimable,
    subject_bootstrap_weights,
)
from trainer.util.errors import DataError

__all__ = [
    "accuracy", "precision", "recall", "sensitivity", "specificity", "f1", "confusion_matrix",
    "roc", "auc", "bootstrap_auc_ci", "bootstrap_auc_diff_test", "pr_curve", "average_precision",
    "MIN_GROUPS", "not_estimable", "interval", "group_counts", "subject_bootstrap_weights",
    "youden_threshold", "brier", "reliability_curve", "expected_calibration_error",
    "threshold_metrics", "binary_report",
]


# --------------------------------------------------------------------------- input checks
def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y).ravel()
    if y.size == 0:
        raise DataError("No samples to evaluate.")
    if not np.isin(y, (0, 1)).all():
        raise DataError("Labels must be 0 (normal) or 1 (ALL).")
    return y.astype(np.int64)


def _pair(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y)
    s = np.asarray(s, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise DataError(f"Got {y.size} labels but {s.size} scores.")
    if not np.isfinite(s).all():
        raise DataError("Scores contain NaN or infinite values.")
    return y, s


def _both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise DataError(f"{what} needs both classes (normal and ALL) among the samples; "
                        f"got {n_pos} ALL of {y.size}.")


def _preds(y: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y)
    pred = _labels(pred)
    if pred.shape != y.shape:
        raise DataError(f"Got {y.size} labels but {pred.size} predictions.")
    return y, pred


# --------------------------------------------------------------------------- threshold metrics
def confusion_matrix(y: Any, pred: Any) -> np.ndarray:
    """(2, 2) int counts ``[[TN, FP], [FN, TP]]`` for hard predictions in {0, 1}."""
    y, pred = _preds(y, pred)
    return skm.confusion_matrix(y, pred, labels=[0, 1])


def accuracy(y: Any, pred: Any) -> float:
    """Fraction of correct hard predictions."""
    y, pred = _preds(y, pred)
    return float(skm.accuracy_score(y, pred))


def precision(y: Any, pred: Any) -> float:
    """TP / (TP + FP); 0 when nothing is predicted positive."""
    y, pred = _preds(y, pred)
    return float(skm.precision_score(y, pred, zero_division=0))


def recall(y: Any, pred: Any) -> float:
    """Sensitivity, TP / (TP + FN); 0 when there are no positives."""
    y, pred = _preds(y, pred)
    return float(skm.recall_score(y, pred, zero_division=0))


sensitivity = recall


def specificity(y: Any, pred: Any) -> float:
    """TN / (TN + FP), the recall of the negative class; 0 when there are no negatives."""
    y, pred = _preds(y, pred)
    return float(skm.recall_score(y, pred, pos_label=0, zero_division=0))


def f1(y: Any, pred: Any) -> float:
    """Harmonic mean of precision and recall; 0 when both are 0."""
    y, pred = _preds(y, pred)
    return float(skm.f1_score(y, pred, zero_division=0))


# --------------------------------------------------------------------------- ranking metrics
def roc(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, each (K,), thresholds decreasing.

    ``thresholds[0]`` is +inf (nothing called positive), as in scikit-learn.
    """
    y, s = _pair(y, s)
    _both_classes(y, "A ROC curve")
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auc(y: Any, s: Any) -> float:
    """Area under the ROC curve (ties count one half)."""
    y, s = _pair(y, s)
    _both_classes(y, "AUC")
    return float(skm.roc_auc_score(y, s))


def _bootstrap_indices(y: np.ndarray, n: int, rng: np.random.Generator,
                       stratified: bool) -> np.ndarray:
    """(n, N) resampled row indices; stratified keeps the class counts of ``y``."""
    if not stratified:
        return rng.integers(0, y.size, size=(n, y.size))
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    return np.concatenate([pos[rng.integers(0, pos.size, size=(n, pos.size))],
                           neg[rng.integers(0, neg.size, size=(n, neg.size))]], axis=1)


def _auc_rows(yb: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Rank (Mann-Whitney) AUC of each row of (B, N) labels / scores; NaN for one-class rows."""
    ranks = stats.rankdata(sb, axis=1)
    n_pos = yb.sum(axis=1).astype(np.float64)
    n_neg = yb.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        u = (ranks * yb).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _bootstrap_aucs(y: np.ndarray, score_sets: list[np.ndarray], n: int, seed: int,
                    stratified: bool, chunk: int = 256) -> np.ndarray:
    """(len(score_sets), n') AUCs on the same n resamples, one-class resamples dropped."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, chunk):
        idx = _bootstrap_indices(y, min(chunk, n - start), rng, stratified)
        yb = y[idx]
        out.append(np.stack([_auc_rows(yb, s[idx]) for s in score_sets]))
    res = np.concatenate(out, axis=1)
    return res[:, np.isfinite(res).all(axis=0)]


def bootstrap_auc_ci(y: Any, s: Any, n: int = 2000, seed: int = 0, alpha: float = 0.05,
                     stratified: bool = True, groups: Any = None, unit: str = "subject") -> dict[str, Any]:
    """AUC with a percentile bootstrap confidence interval.

    Without ``groups``: ``n`` seeded resamples of the samples (``stratified``: positives and
    negatives resampled separately so every resample has both classes, as pROC does).
    With ``groups`` (N,) subject/group ids: a cluster bootstrap, because images of one subject are
    not independent. Each group is assigned to the class most of its images have (ties: ALL); the
    groups of each class are resampled with replacement (as many draws as that class has groups)
    and every image of a drawn group comes along, whatever its label. ``stratified`` is then
    ignored. Returns ``{"auc", "ci_low", "ci_high", "level", "n_boot", "seed", "ci_method",
    "n_groups", "warning"}`` with ``level = 1 - alpha``, ``ci_method`` "group" or "image",
    ``n_groups`` ``{"0": normal groups, "1": ALL groups}`` (None for "image"). With fewer than 3
    groups of a class there is no interval: ``ci_low`` and ``ci_high`` are None and ``warning`` says
    "not estimable: ..." (:func:`not_estimable`, in words of ``unit``).
    """
    y, s = _pair(y, s)
    _both_classes(y, "A bootstrap AUC interval")
    if n < 1:
        raise ValueError("n must be >= 1")
    design, codes, strata = _ci_design(y, groups, unit)
    out = {"auc": auc(y, s), "ci_low": None, "ci_high": None, "level": 1 - alpha, "n_boot": 0,
           "seed": int(seed), **design}
    if design["warning"] is not None:
        return out
    if codes is None:
        boots = _bootstrap_aucs(y, [s], n, seed, stratified)[0]
    else:
        boots = _group_bootstrap_aucs(y, [s], codes, strata, n, seed)[0]
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    out.update(ci_low=float(lo), ci_high=float(hi), n_boot=int(boots.size))
    return out


def bootstrap_auc_diff_test(y: Any, s1: Any, s2: Any, n: int = 2000, seed: int = 0,
                            alpha: float = 0.05, stratified: bool = True,
                            groups: Any = None, unit: str = "subject") -> dict[str, Any]:
    """Paired bootstrap test of AUC(s1) - AUC(s2) on the same samples (two-sided).

    Both score sets are evaluated on the same ``n`` resamples (of groups when ``groups`` is
    given, as in :func:`bootstrap_auc_ci`). ``p_value`` is the percentile
    bootstrap p-value ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` with the (count + 1) / (B + 1)
    correction, so it agrees with the percentile CI ``[ci_low, ci_high]`` of the difference
    (p < alpha exactly when the CI excludes 0, up to ties); its smallest value is 2 / (B + 1).
    ``p_value_normal`` is pROC's bootstrap ``roc.test`` variant: ``z = diff / sd(d)``,
    ``p = 2 * (1 - Phi(|z|))`` (1 when sd is 0 and diff is 0). Also returns ``ci_method``,
    ``n_groups`` and ``warning`` as :func:`bootstrap_auc_ci` does; on fewer than 3 groups of a class
    the interval, sd, z and both p-values are None.
    """
    y, s1 = _pair(y, s1)
    _, s2 = _pair(y, s2)
    _both_classes(y, "A bootstrap AUC test")
    a1, a2 = auc(y, s1), auc(y, s2)
    diff = a1 - a2
    design, codes, strata = _ci_design(y, groups, unit)
    if design["warning"] is not None:
        return {"auc1": a1, "auc2": a2, "diff": float(diff), "ci_low": None, "ci_high": None, "sd": None,
                "z": None, "p_value": None, "p_value_normal": None, "n_boot": 0, "seed": int(seed), **design}
    if codes is None:
        boots = _bootstrap_aucs(y, [s1, s2], n, seed, stratified)
    else:
        boots = _group_bootstrap_aucs(y, [s1, s2], codes, strata, n, seed)
    d = boots[0] - boots[1]
    b = d.size
    p_pct = min(1.0, 2.0 * min((np.sum(d <= 0) + 1) / (b + 1), (np.sum(d >= 0) + 1) / (b + 1)))
    sd = float(np.std(d, ddof=1)) if b > 1 else 0.0
    if sd > 1e-12:
        z = diff / sd
        p_norm = float(2.0 * stats.norm.sf(abs(z)))
    else:
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
        p_norm = 1.0 if diff == 0 else 0.0
    lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"auc1": a1, "auc2": a2, "diff": float(diff), "ci_low": float(lo), "ci_high": float(hi),
            "sd": sd, "z": float(z), "p_value": float(p_pct), "p_value_normal": p_norm,
            "n_boot": int(b), "seed": int(seed), **design}


def pr_curve(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve ``(precision, recall, thresholds)`` as scikit-learn returns it.

    Recall decreases; the last point (recall 0, precision 1) has no threshold.
    """
    y, s = _pair(y, s)
    _both_classes(y, "A precision-recall curve")
    return skm.precision_recall_curve(y, s)


def average_precision(y: Any, s: Any) -> float:
    """Average precision (step-wise area under the PR curve, no interpolation)."""
    y, s = _pair(y, s)
    _both_classes(y, "Average precision")
    return float(skm.average_precision_score(y, s))


def youden_threshold(y: Any, s: Any) -> tuple[float, float, float]:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Returns ``(threshold, sensitivity, specificity)`` where the threshold is one of the
    scores and the rule ``s >= threshold`` reproduces the sensitivity and specificity
    exactly. Among tied maxima the lowest threshold (highest sensitivity) is chosen,
    because a missed ALL case costs more than a false alarm.
    """
    fpr, tpr, thr = roc(y, s)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the +inf "all negative" point (J = 0)
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)[-1]
    return float(thr[best]), float(tpr[best]), float(1.0 - fpr[best])


# --------------------------------------------------------------------------- calibration
def _probs(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = _pair(y, p)
    if (p < 0).any() or (p > 1).any():
        raise DataError("Probabilities must lie in [0, 1].")
    return y, p


def brier(y: Any, p: Any) -> float:
    """Brier score, mean squared difference between probability of ALL and the label."""
    y, p = _probs(y, p)
    return float(skm.brier_score_loss(y, p, pos_label=1))


def reliability_curve(y: Any, p: Any, n_bins: int = 10,
                      strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Reliability diagram data over ``n_bins`` probability bins.

    ``strategy``: "uniform" (equal-width bins on [0, 1]) or "quantile" (equal counts).
    Returns ``{"bin_edges" (n_bins+1,), "mean_predicted", "fraction_positive", "count"}``
    (each (n_bins,)); empty bins have count 0 and NaN means. Bins are right-closed except
    the first, which includes 0, matching ``sklearn.calibration.calibration_curve``.
    """
    y, p = _probs(y, p)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    which = np.clip(np.searchsorted(edges[1:-1], p, side="left"), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    return {"bin_edges": edges, "mean_predicted": mean_p, "fraction_positive": frac,
            "count": count}


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    """ECE = sum over bins of (bin count / N) * |fraction positive - mean probability|."""
    c = reliability_curve(y, p, n_bins, strategy)
    ok = c["count"] > 0
    w = c["count"][ok] / c["count"].sum()
    return float(np.sum(w * np.abs(c["fraction_positive"][ok] - c["mean_predicted"][ok])))


# --------------------------------------------------------------------------- bundle
def threshold_metrics(y: Any, pred: Any) -> dict[str, Any]:
    """Threshold metrics of hard predictions, JSON-ready.

    Accuracy, precision, recall (= sensitivity), specificity, F1 and the confusion matrix ``{"tn", "fp",
    "fn", "tp"}``.
    """
    y, pred = _preds(y, pred)
    cm = confusion_matrix(y, pred)
    return {"accuracy": accuracy(y, pred), "precision": precision(y, pred),
            "recall": recall(y, pred), "sensitivity": recall(y, pred),
            "specificity": specificity(y, pred), "f1": f1(y, pred),
            "confusion_matrix": {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]),
                                 "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}}


def binary_report(y: Any, s: Any, threshold: float = 0.5, n_boot: int = 2000, seed: int = 0,
                  probabilities: bool | None = None, n_bins: int = 10,
                  pred: Any = None, groups: Any = None, unit: str = "subject") -> dict[str, Any]:
    """Every scalar metric for one score vector at one threshold, JSON-ready.

    Threshold metrics use ``s >= threshold``, or the hard predictions ``pred`` when given
    (e.g. a classifier's own votes; ``threshold`` is then only recorded). Ranking metrics (AUC with bootstrap CI when
    ``n_boot > 0``, AP, Youden) are included when both classes are present, else None.
    Brier and ECE are included when the scores are probabilities (``probabilities`` None:
    auto-detect values in [0, 1]). ``groups`` (N,) subject/group ids make the AUC interval a
    group (cluster) bootstrap, see :func:`bootstrap_auc_ci`; ``ci_method``, ``n_groups`` and
    ``ci_warning`` describe the interval (None without one). On fewer than 3 subjects of a class
    (``unit``: what a group is) ``auc_ci`` is None and ``ci_warning`` says "not estimable: ...".
    """
    y, s = _pair(y, s)
    out: dict[str, Any] = {
        "n": int(y.size), "n_positive": int(y.sum()), "prevalence": float(y.mean()),
        "threshold": float(threshold),
        **threshold_metrics(y, (s >= threshold).astype(np.int64) if pred is None else pred),
        "auc": None, "auc_ci": None, "average_precision": None, "youden": None,
        "brier": None, "ece": None, "ci_method": None, "n_groups": None, "ci_warning": None,
    }
    if 0 < y.sum() < y.size:
        out["auc"] = auc(y, s)
        if n_boot > 0:
            ci = bootstrap_auc_ci(y, s, n=n_boot, seed=seed, groups=groups, unit=unit)
            out["auc_ci"] = interval(ci["ci_low"], ci["ci_high"], ci["n_groups"], unit)["ci"]
            out.update(ci_method=ci["ci_method"], n_groups=ci["n_groups"], ci_warning=ci["warning"])
        out["average_precision"] = average_precision(y, s)
        t, se, sp = youden_threshold(y, s)
        out["youden"] = {"threshold": t, "sensitivity": se, "specificity": sp, "j": se + sp - 1}
    if probabilities is None:
        probabilities = bool((s >= 0).all() and (s <= 1).all())
    if probabilities:
        out["brier"] = brier(y, s)
        out["ece"] = expected_calibration_error(y, s, n_bins)
    return out
