"""Metrics checked against hand-worked answers and independent computations."""
import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from trainer.stats import metrics as M
from trainer.util.errors import DataError


def test_hand_worked_confusion_matrix_and_rates():
    # 10 samples: 4 ALL (1), 6 normal (0)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    # TP 3, FN 1, FP 1, TN 5
    assert M.confusion_matrix(y, pred).tolist() == [[5, 1], [1, 3]]
    assert M.accuracy(y, pred) == pytest.approx(8 / 10)
    assert M.precision(y, pred) == pytest.approx(3 / 4)
    assert M.recall(y, pred) == pytest.approx(3 / 4)
    assert M.sensitivity(y, pred) == pytest.approx(3 / 4)
    assert M.specificity(y, pred) == pytest.approx(5 / 6)
    assert M.f1(y, pred) == pytest.approx(2 * 0.75 * 0.75 / 1.5)


def test_perfect_classifier_auc_one_and_degenerate_ci():
    y = np.array([0] * 20 + [1] * 20)
    s = np.linspace(0, 1, 40)
    ci = M.bootstrap_auc_ci(y, s, n=1000, seed=1)
    assert ci["auc"] == 1.0
    assert ci["ci_low"] == 1.0 and ci["ci_high"] == 1.0
    assert ci["n_boot"] == 1000
    assert M.average_precision(y, s) == pytest.approx(1.0)


def test_random_classifier_auc_near_half_and_ci_covers_it():
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, n)
    s = rng.random(n)
    # sd of AUC under H0 ~ sqrt((n+1)/(12 n0 n1)) ~ 0.009; allow 4 sd
    a = M.auc(y, s)
    assert abs(a - 0.5) < 0.04
    ci = M.bootstrap_auc_ci(y, s, n=1000, seed=0)
    assert ci["ci_low"] < 0.5 < ci["ci_high"]
    width = ci["ci_high"] - ci["ci_low"]
    assert 0.02 < width < 0.05  # ~ 2 * 1.96 * 0.009


def test_auc_counts_ties_as_half_like_hand_count():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.5, 0.5, 0.5, 0.9])
    # pairs (pos, neg): 3 pos x 2 neg = 6; wins: 0.5>0.1 x2, 0.9>0.1, 0.9>0.5; ties 0.5=0.5 x2
    assert M.auc(y, s) == pytest.approx((4 + 0.5 * 2) / 6)
    boot = M._auc_rows(y[None, :], s[None, :])
    assert boot[0] == pytest.approx(5 / 6)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(size=200)
    assert M.bootstrap_auc_ci(y, s, n=500, seed=7) == M.bootstrap_auc_ci(y, s, n=500, seed=7)
    assert M.bootstrap_auc_ci(y, s, n=500, seed=7) != M.bootstrap_auc_ci(y, s, n=500, seed=8)


def test_paired_bootstrap_diff_test():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, n)
    strong = y * 2.0 + rng.normal(size=n)
    weak = y * 0.3 + rng.normal(size=n)
    r = M.bootstrap_auc_diff_test(y, strong, weak, n=1000, seed=0)
    assert r["diff"] == pytest.approx(M.auc(y, strong) - M.auc(y, weak))
    # every resample favours the strong scorer: the smallest p the bootstrap can give
    assert r["p_value"] == pytest.approx(2 / (r["n_boot"] + 1)) and r["ci_low"] > 0
    assert r["p_value_normal"] < 1e-3
    # identical scores: no difference at all
    same = M.bootstrap_auc_diff_test(y, strong, strong.copy(), n=200, seed=0)
    assert same["diff"] == 0 and same["p_value"] == 1.0 and same["p_value_normal"] == 1.0
    # two equally informative, independent scorers: not significant
    other = y * 2.0 + rng.normal(size=n)
    eq = M.bootstrap_auc_diff_test(y, strong, other, n=1000, seed=0)
    assert eq["p_value"] > 0.01


def test_youden_known_point():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    # s >= 0.7: sens 3/4, spec 4/4 -> J 0.75 ; s >= 0.4: sens 1, spec 3/4 -> J 0.75 (tie:
    # lower threshold wins, higher sensitivity); s >= 0.6: sens 3/4, spec 3/4 -> 0.5
    t, se, sp = M.youden_threshold(y, s)
    assert (t, se, sp) == (0.4, 1.0, 0.75)
    pred = (s >= t).astype(int)
    assert M.recall(y, pred) == se and M.specificity(y, pred) == sp


def test_brier_of_constant_prediction():
    y = np.array([1] * 30 + [0] * 70)
    # constant p: Brier = prev (1-p)^2 + (1-prev) p^2
    assert M.brier(y, np.full(100, 0.3)) == pytest.approx(0.3 * 0.49 + 0.7 * 0.09)
    assert M.brier(y, np.full(100, 0.0)) == pytest.approx(0.3)


def test_ece_near_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)
    assert M.expected_calibration_error(y, p) < 0.02
    # overconfident: push probabilities towards 0/1
    p_bad = np.clip((p - 0.5) * 3 + 0.5, 0, 1)
    assert M.expected_calibration_error(y, p_bad) > 0.08


def test_reliability_curve_matches_sklearn():
    rng = np.random.default_rng(2)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(int)
    c = M.reliability_curve(y, p, n_bins=10)
    ok = c["count"] > 0
    frac, mean = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(c["fraction_positive"][ok], frac)
    np.testing.assert_allclose(c["mean_predicted"][ok], mean)
    assert c["count"].sum() == 500


def test_binary_report_bundle_and_errors():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
    r = M.binary_report(y, p, threshold=0.5, n_boot=200)
    assert r["confusion_matrix"] == {"tn": 5, "fp": 1, "fn": 1, "tp": 3}
    assert r["auc"] == pytest.approx(M.auc(y, p))
    assert r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
    assert r["brier"] == pytest.approx(np.mean((p - y) ** 2))
    with pytest.raises(DataError, match="both classes"):
        M.auc(np.ones(5), np.linspace(0, 1, 5))
    with pytest.raises(DataError, match="labels"):
        M.auc(np.ones(5), np.linspace(0, 1, 4))
    one_class = M.binary_report(np.ones(4), np.full(4, 0.9), n_boot=10)
    assert one_class["auc"] is None and one_class["accuracy"] == 1.0


def _clustered(n_groups=9, per_group=20, seed=0):
    """Scores dominated by a per-subject effect: images of one subject are far from independent."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    y = (np.arange(n_groups) % 2)[g]
    effect = rng.normal(size=n_groups) * 1.0 + 0.8 * (np.arange(n_groups) % 2)
    s = effect[g] + rng.normal(size=g.size) * 0.2
    return y, s, np.array([f"subject{k}" for k in g])


def test_group_bootstrap_resamples_whole_subjects():
    # 9 subjects, each 5 identical copies of one image: resampling subjects (with all their images)
    # gives the AUCs of resampling the 9 distinct images, exactly, draw for draw
    rng = np.random.default_rng(4)
    y9 = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0])
    s9 = y9 * 0.7 + rng.normal(size=9)
    y, s = np.repeat(y9, 5), np.repeat(s9, 5)
    g = np.repeat([f"g{k}" for k in range(9)], 5)
    grouped = M.bootstrap_auc_ci(y, s, n=1000, seed=3, groups=g)
    unique = M.bootstrap_auc_ci(y9, s9, n=1000, seed=3)
    assert grouped["ci_low"] == pytest.approx(unique["ci_low"], abs=1e-12)
    assert grouped["ci_high"] == pytest.approx(unique["ci_high"], abs=1e-12)
    assert grouped["ci_method"] == "group" and grouped["n_groups"] == {"0": 5, "1": 4}
    assert unique["ci_method"] == "image" and unique["n_groups"] is None
    # the image bootstrap of the 45 rows treats copies as independent evidence: far too narrow
    naive = M.bootstrap_auc_ci(y, s, n=1000, seed=3)
    assert naive["ci_high"] - naive["ci_low"] < 0.6 * (grouped["ci_high"] - grouped["ci_low"])


def test_group_bootstrap_with_one_image_per_group_is_the_image_bootstrap():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(size=300)
    g = [f"{i:04d}" for i in range(300)]  # sorted like the rows
    a = M.bootstrap_auc_ci(y, s, n=600, seed=5, groups=g)
    b = M.bootstrap_auc_ci(y, s, n=600, seed=5)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((b["ci_low"], b["ci_high"]), abs=1e-12)


def test_group_bootstrap_wider_on_clustered_scores_and_warns_on_few_groups():
    y, s, g = _clustered()
    img = M.bootstrap_auc_ci(y, s, n=2000, seed=0)
    grp = M.bootstrap_auc_ci(y, s, n=2000, seed=0, groups=g)
    assert grp["auc"] == img["auc"]
    assert grp["ci_high"] - grp["ci_low"] > 2.0 * (img["ci_high"] - img["ci_low"])
    assert grp["n_groups"] == {"0": 5, "1": 4} and grp["warning"] is None
    few = M.bootstrap_auc_ci(y[:100], s[:100], n=200, seed=0, groups=g[:100])  # 3 normal, 2 ALL
    assert few["n_groups"] == {"0": 3, "1": 2}
    # no interval on 2 subjects of a class: a note instead of a number pair
    assert few["warning"] == "not estimable: 2 ALL subjects"
    assert few["ci_low"] is None and few["ci_high"] is None and few["auc"] is not None
    # a subject with images of both classes goes with its majority class, all its images along
    mixed = g.copy()
    y2 = y.copy()
    y2[:3] = 1  # subject0 (normal) now has 3 ALL images of 20
    r = M.bootstrap_auc_ci(y2, s, n=200, seed=0, groups=mixed)
    assert r["n_groups"] == {"0": 5, "1": 4} and r["ci_low"] <= r["auc"] <= r["ci_high"]
    with pytest.raises(DataError, match="group ids"):
        M.bootstrap_auc_ci(y, s, groups=g[:10])


def test_paired_group_bootstrap_test_and_binary_report_record_the_method():
    y, s, g = _clustered()
    rng = np.random.default_rng(1)
    s2 = s + rng.normal(size=s.size) * 0.8
    img = M.bootstrap_auc_diff_test(y, s, s2, n=1000, seed=0)
    grp = M.bootstrap_auc_diff_test(y, s, s2, n=1000, seed=0, groups=g)
    assert grp["diff"] == img["diff"] and grp["sd"] > img["sd"]
    assert grp["ci_method"] == "group" and grp["n_groups"] == {"0": 5, "1": 4}
    r = M.binary_report(y, 1 / (1 + np.exp(-s)), n_boot=300, groups=g)
    assert r["ci_method"] == "group" and r["n_groups"] == {"0": 5, "1": 4}
    ci = M.bootstrap_auc_ci(y, 1 / (1 + np.exp(-s)), n=300, seed=0, groups=g)
    assert r["auc_ci"] == [ci["ci_low"], ci["ci_high"]]
    plain = M.binary_report(y, 1 / (1 + np.exp(-s)), n_boot=300)
    assert plain["ci_method"] == "image" and plain["n_groups"] is None


def test_no_interval_on_fewer_than_three_subjects_of_a_class_anywhere():
    """One normal subject (the shipped test splits had one): every interval is null with a note."""
    y, s, g = _clustered(n_groups=9)
    keep = (y == 1) | (g == "subject0")  # the only normal subject left
    y1, s1, g1 = y[keep], s[keep], g[keep]
    assert M.not_estimable({"0": 1, "1": 4}) == "not estimable: 1 normal subject"
    assert M.not_estimable({"0": 2, "1": 2}, "image block") == "not estimable: 2 normal image blocks and 2 ALL " \
                                                                "image blocks"
    assert M.not_estimable({"0": 3, "1": 3}) is None and M.not_estimable(None) is None
    assert M.interval(0.1, 0.9, {"0": 1, "1": 4}) == {"ci": None, "ci_note": "not estimable: 1 normal subject"}
    assert M.interval(0.1, 0.9, {"0": 3, "1": 4}) == {"ci": [0.1, 0.9], "ci_note": None}
    r = M.binary_report(y1, 1 / (1 + np.exp(-s1)), n_boot=300, groups=g1)
    assert r["auc"] is not None and r["auc_ci"] is None
    assert r["ci_warning"] == "not estimable: 1 normal subject"
    t = M.bootstrap_auc_diff_test(y1, s1, s1 + 1e-3 * np.arange(s1.size), n=300, groups=g1)
    assert t["ci_low"] is None and t["p_value"] is None and t["warning"] == "not estimable: 1 normal subject"
    fields = M.binary_report(y1, 1 / (1 + np.exp(-s1)), n_boot=300, groups=g1, unit="image block")
    assert fields["ci_warning"] == "not estimable: 1 normal image block"


def test_group_bootstrap_is_fast():
    import time
    rng = np.random.default_rng(0)
    g = rng.integers(0, 60, 4000)
    y = g % 2
    s = y + rng.normal(size=4000)
    t = time.perf_counter()
    M.bootstrap_auc_ci(y, s, n=2000, seed=0, groups=g)
    assert time.perf_counter() - t < 5.0  # about 0.3 s on one core
