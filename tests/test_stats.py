"""Fold-comparison tests against hand computations and known p-values."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from trainer.stats.intervals import wilson_lower
from trainer.stats.significance import compare_folds, nadeau_bengio_test, paired_t_test, wilcoxon_test
from trainer.util.errors import DataError

A = [0.90, 0.92, 0.88, 0.91, 0.93]
B = [0.87, 0.90, 0.88, 0.86, 0.89]  # d = 0.03, 0.02, 0.00, 0.05, 0.04


def _hand_t():
    d = np.array(A) - np.array(B)
    mean = d.sum() / 5
    var = ((d - mean) ** 2).sum() / 4
    return d, mean, var


def test_paired_t_matches_hand_computation():
    d, mean, var = _hand_t()
    t = mean / math.sqrt(var / 5)
    p = 2 * sps.t.sf(abs(t), 4)
    r = paired_t_test(A, B)
    assert r["mean_diff"] == pytest.approx(0.028)
    assert r["statistic"] == pytest.approx(t)
    assert r["p_value"] == pytest.approx(p)
    assert r["df"] == 4


def test_nadeau_bengio_matches_hand_formula_and_is_more_conservative():
    d, mean, var = _hand_t()
    n_train, n_test = 400, 100
    t = mean / math.sqrt((1 / 5 + n_test / n_train) * var)
    r = nadeau_bengio_test(A, B, n_train, n_test)
    assert r["statistic"] == pytest.approx(t)
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), 4))
    assert r["p_value"] > paired_t_test(A, B)["p_value"]


def test_wilcoxon_known_exact_p():
    # all 5 differences positive and distinct: exact two-sided p = 2 / 2**5 = 0.0625,
    # the smallest any 5-fold Wilcoxon test can give
    a = [0.91, 0.92, 0.93, 0.94, 0.95]
    b = [0.90, 0.90, 0.90, 0.90, 0.90]
    r = wilcoxon_test(a, b)
    assert r["p_value"] == pytest.approx(0.0625)
    assert r["min_p_value"] == pytest.approx(0.0625)
    assert r["statistic"] == 0.0
    ref = sps.wilcoxon(np.array(a) - np.array(b))
    assert r["p_value"] == pytest.approx(ref.pvalue)
    # with one zero difference dropped: 4 non-zero, exact p = 2 / 16
    r2 = wilcoxon_test(A, B)
    assert r2["n_nonzero"] == 4 and r2["p_value"] == pytest.approx(0.125)
    assert "dropped" in r2["note"]


def test_degenerate_inputs():
    same = compare_folds(A, A, 400, 100)
    for name in ("t_test", "wilcoxon", "nadeau_bengio"):
        assert same[name]["p_value"] == 1.0
        assert "zero" in same[name]["note"]
    shifted = paired_t_test(np.array(A) + 0.01, A)
    assert math.isnan(shifted["p_value"]) and "undefined" in shifted["note"]
    with pytest.raises(DataError, match="same folds"):
        paired_t_test([1, 2, 3], [1, 2])
    with pytest.raises(DataError, match="at least 2"):
        wilcoxon_test([1], [2])


def test_holm_known_answer():
    from trainer.stats.significance import holm
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])          # one test: unchanged
    out = holm([0.01, None, float("nan"), 0.02])          # untestable entries kept, not counted
    assert out[0] == pytest.approx(0.02) and out[3] == pytest.approx(0.02)
    assert out[1] is None and np.isnan(out[2])
    assert holm([]) == []
    with pytest.raises(DataError):
        holm([1.5])


def test_wilson_lower_bound_is_scipys():
    right, n = np.array([0, 3, 46, 95, 683]), np.array([10, 3, 48, 100, 720])
    want = [sps.binomtest(int(k), int(m)).proportion_ci(0.90, method="wilson").low for k, m in zip(right, n)]
    assert wilson_lower(right, n) == pytest.approx(want, abs=1e-3)
    assert wilson_lower(0, 0) == 0.0                       # no rows: no confidence
