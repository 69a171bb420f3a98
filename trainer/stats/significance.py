"""Significance tests comparing two models across cross-validation folds.

Inputs are per-fold scores ``a`` and ``b`` (same folds, same order, e.g. accuracy of the
ensemble and of SVM on each of 5 test folds). Differences are ``a - b``. All tests are
two-sided. Degenerate inputs are answered, not crashed on: when every difference is zero
there is no evidence of a difference (p = 1); when every difference is the same non-zero
value the t statistics are undefined (sd 0) and p is NaN with a note saying so.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from trainer.util.errors import DataError

__all__ = ["paired_t_test", "wilcoxon_test", "nadeau_bengio_test", "compare_folds", "holm"]


def _diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"Paired tests need the same folds for both models; got {a.size} and {b.size}.")
    if a.size < 2:
        raise DataError("Paired tests need at least 2 folds.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("Fold scores contain NaN or infinite values.")
    return a - b


def _degenerate(d: np.ndarray, out: dict[str, Any]) -> dict[str, Any] | None:
    """Fill ``out`` for zero-variance differences; None when the test can run."""
    if np.ptp(d) > 1e-12 * max(1.0, float(np.abs(d).max())):
        return None
    if np.all(np.abs(d) <= 1e-12):
        out.update(statistic=0.0, p_value=1.0, note="all differences are zero")
    else:
        out.update(statistic=float(np.sign(d[0]) * np.inf), p_value=float("nan"),
                   note="every fold has the same non-zero difference (sd 0); test undefined")
    return out


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Student's paired t-test (``scipy.stats.ttest_rel``) on per-fold scores.

    Returns ``{"test", "mean_diff", "sd_diff", "n", "df", "statistic", "p_value", "note"}``.
    """
    d = _diffs(a, b)
    out: dict[str, Any] = {"test": "paired t", "mean_diff": float(d.mean()),
                           "sd_diff": float(d.std(ddof=1)), "n": int(d.size),
                           "df": int(d.size - 1), "note": ""}
    if _degenerate(d, out) is not None:
        return out
    r = stats.ttest_rel(a, b)
    out.update(statistic=float(r.statistic), p_value=float(r.pvalue))
    return out


def wilcoxon_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped).

    Also returns ``min_p_value``: the smallest two-sided p the exact test can give with the
    number of non-zero differences (2 / 2**n; 0.0625 for 5 folds), so a reader can see when
    the test cannot reach significance at all.
    """
    d = _diffs(a, b)
    nz = int(np.sum(np.abs(d) > 1e-12))
    out: dict[str, Any] = {"test": "Wilcoxon signed-rank", "mean_diff": float(d.mean()),
                           "median_diff": float(np.median(d)), "n": int(d.size),
                           "n_nonzero": nz, "min_p_value": float(min(1.0, 2.0 / 2 ** nz)) if nz else 1.0,
                           "note": ""}
    if nz == 0:
        out.update(statistic=0.0, p_value=1.0, note="all differences are zero")
        return out
    r = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    out.update(statistic=float(r.statistic), p_value=float(r.pvalue))
    if nz < d.size:
        out["note"] = f"{d.size - nz} zero difference(s) dropped"
    return out


def nadeau_bengio_test(a: Sequence[float], b: Sequence[float], n_train: float,
                       n_test: float) -> dict[str, Any]:
    """Corrected resampled t-test (Nadeau & Bengio 2003) for overlapping training sets.

    ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d))`` with ``var`` the sample variance
    (ddof 1), ``k`` folds and ``k - 1`` degrees of freedom. ``n_train`` / ``n_test``: samples
    per training / test fold (means if folds differ). Larger p than the plain paired t-test,
    which ignores that CV training sets share most of their samples.
    """
    d = _diffs(a, b)
    if n_train <= 0 or n_test <= 0:
        raise DataError("Training and test fold sizes must be positive.")
    k = d.size
    ratio = float(n_test) / float(n_train)
    out: dict[str, Any] = {"test": "Nadeau-Bengio corrected t", "mean_diff": float(d.mean()),
                           "sd_diff": float(d.std(ddof=1)), "n": int(k), "df": int(k - 1),
                           "n_test_over_n_train": ratio, "note": ""}
    if _degenerate(d, out) is not None:
        return out
    se = np.sqrt((1.0 / k + ratio) * d.var(ddof=1))
    t = d.mean() / se
    out.update(statistic=float(t), p_value=float(2.0 * stats.t.sf(abs(t), k - 1)))
    return out


def compare_folds(a: Sequence[float], b: Sequence[float], n_train: float,
                  n_test: float) -> dict[str, dict[str, Any]]:
    """All three tests: ``{"t_test", "wilcoxon", "nadeau_bengio"}``."""
    return {"t_test": paired_t_test(a, b), "wilcoxon": wilcoxon_test(a, b),
            "nadeau_bengio": nadeau_bengio_test(a, b, n_train, n_test)}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (family-wise error control).

    The i-th smallest of the m valid p-values becomes ``max over j <= i of min(1, (m - j + 1) *
    p_(j))``; adjusted values are returned in the input order. None or NaN entries (tests that could
    not run) are returned as they are and do not count towards m.
    """
    p = np.array([np.nan if v is None else float(v) for v in pvalues], dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out: list[float | None] = list(pvalues)
    if ok.size == 0:
        return out
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise DataError("p-values must lie in [0, 1].")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    for i, v in zip(order, adj):
        out[int(i)] = float(v)
    return out
