"""Selective classification: how accurate a model is on the images it decides, against how many it decides.

A model decides an image when its calibrated probability lies at least ``band`` from the threshold; the
others are left to a person ("uncertain, review"). :func:`risk_coverage` traces, as the band widens,
the share of images decided (coverage) and the accuracy on them, with intervals that resample subjects.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trainer.stats.metrics import MIN_GROUPS

#: band half-widths (absolute probability) at which the curve is traced
BANDS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def decided_accuracy(y: np.ndarray, p: np.ndarray, threshold: float, band: float,
                     weights: np.ndarray | None = None) -> tuple[float, float | None]:
    """(coverage, accuracy of the decided or None where none is decided) of (N,) labels and probabilities.

    ``weights`` (N,): bootstrap multiplicities of the rows (None: each row once).
    """
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    keep = np.abs(p - threshold) >= band
    total, kept = w.sum(), w[keep].sum()
    if total == 0:
        return 0.0, None
    right = w[keep & ((p >= threshold).astype(int) == y)].sum()
    return float(kept / total), (float(right / kept) if kept > 0 else None)


def risk_coverage(y: Any, p: Any, threshold: float, groups: Any = None, bands=BANDS, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Coverage and accuracy of the decided images at each band, with 95 % intervals resampling subjects.

    Subjects are drawn with replacement within each class (``n_boot`` times), so every resample keeps the
    data's mix of normal and ALL subjects.

    Returns ``{"bands", "coverage", "accuracy", "accuracy_ci", "coverage_ci", "n_groups", "note"}``: the
    intervals are ``None`` (and ``note`` says why) without subject ids or with fewer than
    :data:`~trainer.stats.metrics.MIN_GROUPS` subjects of a class.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    points = [decided_accuracy(y, p, threshold, b) for b in bands]
    out: dict[str, Any] = {"bands": [float(b) for b in bands], "coverage": [c for c, _ in points],
                           "accuracy": [a for _, a in points], "coverage_ci": None, "accuracy_ci": None,
                           "n_groups": None, "note": None}
    if groups is None:
        out["note"] = "not estimable: no subject ids"
        return out
    g = np.asarray(groups)
    n_groups = {str(c): int(len(set(g[y == c].tolist()))) for c in (0, 1)}
    out["n_groups"] = n_groups
    few = [f"{n_groups[str(c)]} {name} subjects" for c, name in ((0, "normal"), (1, "ALL"))
           if n_groups[str(c)] < MIN_GROUPS]
    if few:
        out["note"] = "not estimable: " + ", ".join(few)
        return out
    uniq, codes = np.unique(g, return_inverse=True)
    # subjects are resampled within their class (a subject's class: that of most of its images)
    label = np.array([np.bincount(y[codes == k], minlength=2).argmax() for k in range(len(uniq))])
    strata = [np.flatnonzero(label == c) for c in (0, 1)]
    rng = np.random.default_rng(seed)
    cov = np.full((n_boot, len(bands)), np.nan)
    acc = np.full((n_boot, len(bands)), np.nan)
    for i in range(n_boot):
        picks = np.zeros(len(uniq))
        for members in strata:
            np.add.at(picks, rng.choice(members, len(members)), 1)
        w = picks[codes]
        for j, b in enumerate(bands):
            c, a = decided_accuracy(y, p, threshold, b, w)
            cov[i, j], acc[i, j] = c, np.nan if a is None else a
    out["coverage_ci"] = [_interval(cov[:, j]) for j in range(len(bands))]
    out["accuracy_ci"] = [_interval(acc[:, j]) for j in range(len(bands))]
    return out


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return None if len(values) < 10 else [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]
