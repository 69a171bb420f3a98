"""Evaluation runner and report: every reported number against an independent computation."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import accuracy_score, roc_auc_score

from trainer.classical.model import fit_model, subset
from trainer.config import FinetuneConfig, TrainConfig
from trainer.evaluation import (
    ENSEMBLE,
    ENSEMBLE_CAL,
    evaluate_ablation,
    evaluate_features,
    run_evaluation,
    write_report,
)
from trainer.io.samples import Sample
from trainer.io.splits import split_train_val_test
from trainer.util.errors import Cancelled

CLASSIFIERS = ("svm", "knn", "mlp")  # the slow tree ensembles are left out to keep tests fast
N_BOOT = 200


def _grouped_features(n_groups=12, per_group=5, signal=0.0, seed=0):
    """Features whose only structure is the group (subject) identity, plus optional class signal.

    Every group is one class (like one patient's cells); with ``signal`` 0 the class can only be
    "learned" by recognising subjects seen in training, i.e. by leakage.
    """
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per_group)
    y = (np.arange(n_groups) % 2)[g]
    centres = rng.normal(size=(n_groups, 12)) * 3.0
    base = centres[g] + rng.normal(size=(g.size, 12)) * 0.3
    base[:, 0] += signal * y
    feats = {"densenet121": base[:, :8].astype(np.float32),
             "resnet34": base[:, 8:].astype(np.float32)}
    samples = [Sample(Path(f"img{i:03d}.png"), int(y[i]), "ALL" if y[i] else "normal",
                      f"subject{g[i]:02d}") for i in range(g.size)]
    return feats, y, samples


@pytest.fixture(scope="module")
def leak_run():
    # 16 subjects of 8 images: enough that chance on new subjects stays well below what leakage gives
    feats, y, samples = _grouped_features(n_groups=16, per_group=8)
    cfg = TrainConfig(classifiers=CLASSIFIERS, seed=0, split="subject")
    res = evaluate_features(feats, samples, cfg, n_boot=N_BOOT, n_folds=3, ablation=False)
    return feats, y, samples, cfg, res


def test_holdout_numbers_match_an_independent_refit(leak_run):
    feats, y, samples, cfg, res = leak_run
    h = res["protocols"]["image"]["holdout"]
    tr, va, te = split_train_val_test(samples, protocol="image", fractions=cfg.fractions, seed=0)
    assert h["split"]["n_test"] == te.size and h["split"]["n_train"] == tr.size
    groups = np.array([s.group for s in samples], dtype=object)  # the fit is grouped in every protocol
    det = fit_model(feats, y, tr, va, cfg, groups=groups).predict_details(subset(feats, te))
    yt = y[te]
    for i, name in enumerate(h["classifier_names"]):
        r = h["rows"][name]
        assert r["auc"] == pytest.approx(roc_auc_score(yt, det["probabilities"][:, i]))
        assert r["accuracy"] == pytest.approx(accuracy_score(yt, det["votes"][:, i]))
        cm = r["confusion_matrix"]
        assert cm["tp"] + cm["fn"] == yt.sum() and sum(cm.values()) == yt.size
        k = r["n_groups"]  # no interval on fewer than 3 test subjects of a class
        assert (r["auc_ci"] is None) == (min(k.values()) < 3)
        assert r["auc_ci"] is None or r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
    ens = h["rows"][ENSEMBLE]
    assert ens["accuracy"] == pytest.approx(accuracy_score(yt, det["vote_share"] > 0.5))
    assert ens["auc"] == pytest.approx(roc_auc_score(yt, det["raw"]))
    cal = h["rows"][ENSEMBLE_CAL]
    assert cal["accuracy"] == pytest.approx(accuracy_score(yt, det["calibrated"] >= h["threshold"]))
    assert h["calibration"]["raw"]["brier"] == pytest.approx(np.mean((det["raw"] - yt) ** 2))
    assert h["calibration"]["calibrated"]["brier"] == pytest.approx(
        np.mean((det["calibrated"] - yt) ** 2))
    t = h["auc_tests"]["svm"]
    assert t["diff"] == pytest.approx(ens["auc"] - h["rows"]["svm"]["auc"])
    assert (t["p_value"] is None) == (t["warning"] is not None)  # no test on fewer than 3 subjects of a class
    assert t["p_value"] is None or 0 <= t["p_value"] <= 1


def test_cv_summary_and_tests_match_scipy(leak_run):
    *_, res = leak_run
    cv = res["protocols"]["subject"]["cv"]
    assert cv["n_folds"] == 3 and len(cv["folds"]) == 3
    assert sum(f["n_test"] for f in cv["folds"]) == res["meta"]["n"]
    acc_e = [f["metrics"][ENSEMBLE]["accuracy"] for f in cv["folds"]]
    acc_s = [f["metrics"]["svm"]["accuracy"] for f in cv["folds"]]
    s = cv["summary"][ENSEMBLE]["accuracy"]
    assert s["mean"] == pytest.approx(np.mean(acc_e))
    assert s["sd"] == pytest.approx(np.std(acc_e, ddof=1))
    t = cv["tests"]["accuracy"]["svm"]
    if np.ptp(np.subtract(acc_e, acc_s)) > 0:
        assert t["t_test"]["p_value"] == pytest.approx(sps.ttest_rel(acc_e, acc_s).pvalue)
    assert t["nadeau_bengio"]["n_test_over_n_train"] == pytest.approx(
        cv["n_test_mean"] / cv["n_train_mean"])


def test_image_split_leaks_subjects_and_flatters_scores(leak_run):
    *_, res = leak_run
    img, subj = res["protocols"]["image"], res["protocols"]["subject"]
    assert subj["holdout"]["split"]["test_in_train_groups"] == 0.0
    assert img["holdout"]["split"]["test_in_train_groups"] == 1.0
    # no class signal at all: only the leaky split can look good
    acc_img = img["cv"]["summary"]["knn"]["accuracy"]["mean"]
    acc_subj = subj["cv"]["summary"]["knn"]["accuracy"]["mean"]
    assert acc_img >= 0.85
    assert acc_subj <= 0.7
    assert acc_img - acc_subj >= 0.25
    assert res["meta"]["primary_protocol"] == "subject"


def test_subject_protocol_reported_unavailable_without_groups():
    feats, y, samples = _grouped_features(n_groups=8, per_group=5, signal=4.0)
    samples = [Sample(s.path, s.label, s.class_name, None) for s in samples]
    cfg = TrainConfig(classifiers=("knn",), seed=1)
    res = evaluate_features(feats, samples, cfg, protocols=("subject", "image"), n_boot=50,
                            n_folds=2, ablation=False)
    assert res["protocols"]["subject"]["available"] is False
    assert "group" in res["protocols"]["subject"]["reason"]
    assert res["meta"]["primary_protocol"] == "image"
    assert res["protocols"]["image"]["holdout"]["rows"]["knn"]["accuracy"] > 0.8


def test_ablation_uses_one_split_for_each_feature_set():
    feats, y, samples = _grouped_features(n_groups=10, per_group=4, signal=5.0, seed=2)
    cfg = TrainConfig(classifiers=("knn",), seed=0)
    split = split_train_val_test(samples, protocol="subject", seed=0)
    rows = evaluate_ablation(feats, y, split, cfg, n_boot=50)
    got = [(tuple(r["backbones"]), r["pca"]) for r in rows]
    assert got == [(("densenet121",), True), (("densenet121",), False), (("resnet34",), True),
                   (("resnet34",), False), (("densenet121", "resnet34"), True),
                   (("densenet121", "resnet34"), False)]
    for r in rows:
        assert r["rows"][ENSEMBLE]["n"] == split[2].size
        assert r["feature_dim"] == sum(feats[b].shape[1] for b in r["backbones"])
        if r["pca"]:
            assert 1 <= r["n_components"] <= r["feature_dim"]
        else:
            assert r["n_components"] == r["feature_dim"]
    # class signal lives in DenseNet column 0 only
    dense = rows[1]["rows"][ENSEMBLE]["accuracy"]
    assert dense >= rows[3]["rows"][ENSEMBLE]["accuracy"]


def test_cancel_stops_the_evaluation():
    feats, y, samples = _grouped_features(n_groups=6, per_group=4)
    with pytest.raises(Cancelled):
        evaluate_features(feats, samples, TrainConfig(classifiers=("knn",)), n_boot=10,
                          cancel=lambda: True)


def test_report_files_json_and_markdown_agree(leak_run, tmp_path):
    *_, res = leak_run
    paths = write_report(res, tmp_path)
    data = json.loads(paths["json"].read_text())  # strict JSON: would fail on NaN
    md = paths["markdown"].read_text()
    h = data["protocols"]["subject"]["holdout"]
    svm = h["rows"]["svm"]
    row = next(line for line in md.splitlines() if line.startswith("| SVM |"))
    assert f"{100 * svm['accuracy']:.1f}" in row
    k = svm["n_groups"]
    assert svm["ci_method"] == "group" and min(k.values()) < 3  # 16 subjects: 2 of each class in the test split
    assert svm["auc_ci"] is None and f"{svm['auc']:.3f} (not estimable: {k['0']} normal subjects" in row
    assert "group (cluster) bootstrap" in md
    assert "Nadeau-Bengio (p / Holm)" in md and "Wilcoxon (p / Holm)" in md
    assert "Split protocols side by side" in md
    for f in paths["figures"]:
        assert f.exists() and f.stat().st_size > 5000
        assert f"]({f.name})" in md
    kinds = {f.name for f in paths["figures"]}
    assert {"roc_subject.png", "pr_image.png", "reliability_subject.png", "confusion_image.png",
            "protocols.png"} <= kinds


def test_run_evaluation_end_to_end_on_synthetic_images(tmp_path):
    from trainer.io.synthetic import write_dataset
    root = write_dataset(tmp_path / "data", layout="cnmc", n_per_class=10, size=32, seed=0,
                         n_subjects=5)
    cfg = TrainConfig(data=str(root), backbones=("resnet34",), image_size=32, batch_size=8,
                      num_workers=0, device="cpu", classifiers=("knn", "svm"), seed=0)
    seen = []
    out = run_evaluation(cfg, tmp_path / "report", progress=lambda f, m: seen.append(f),
                         n_boot=100, n_folds=2, protocols=("subject",), ablation=False)
    assert out.json_path.exists() and out.markdown_path.exists()
    data = json.loads(out.json_path.read_text())
    # what `train` ships: the nucleus block beside the network, one model (the crop model) of the one image kind
    assert data["meta"]["n"] == 20 and data["meta"]["feature_dims"] == {"resnet34": 512, "nucleus": 85}
    assert list(data["models"]) == ["single_cell"] and data["models"]["single_cell"]["cv_headline"]["grouped"]
    assert data["protocols"]["subject"]["holdout"]["split"]["test_in_train_groups"] == 0.0
    assert seen[-1] == 1.0 and all(a <= b + 1e-9 for a, b in zip(seen, seen[1:]))
    assert str(out) == str(out.markdown_path)


def test_cv_folds_reduced_to_what_the_subjects_allow():
    feats, y, samples = _grouped_features(n_groups=6, per_group=4, signal=5.0, seed=3)
    res = evaluate_features(feats, samples, TrainConfig(classifiers=("knn",)), n_boot=50,
                            n_folds=5, protocols=("subject",), ablation=False)
    cv = res["protocols"]["subject"]["cv"]
    assert cv["n_folds"] == 3 and len(cv["folds"]) == 3
    assert "5 folds requested, 3 used" in cv["note"]


def test_report_compares_frozen_and_finetuned_features(tmp_path):
    from trainer.io.synthetic import write_dataset
    root = write_dataset(tmp_path / "data", layout="cnmc", n_per_class=10, size=32, seed=1,
                         n_subjects=5)
    cfg = TrainConfig(data=str(root), backbones=("resnet34",), image_size=32, batch_size=8,
                      num_workers=0, device="cpu", classifiers=("knn", "svm"), seed=0,
                      finetuning=FinetuneConfig(epochs=1))
    seen = []
    out = run_evaluation(cfg, tmp_path / "report", n_boot=50, n_folds=2, protocols=("subject",),
                         ablation=False, finetune_ablation=True, progress=lambda f, m: seen.append((f, m)))
    # the bar never moves backwards from the fine-tuning to the report, and the report comes last
    fractions = [f for f, _ in seen]
    assert all(a <= b for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0
    assert [m for _, m in seen].index("Writing the report") > max(i for i, (_, m) in enumerate(seen) if "epoch" in m)
    ft = json.loads(out.json_path.read_text())["finetune_ablation"]
    assert ft["protocol"] == "subject" and ft["classifiers"] == ["ensemble", "logreg"]
    assert set(ft["histories"]) == {"resnet34"} and len(ft["histories"]["resnet34"]["epoch"]) == 1
    for kind in ("frozen", "finetuned"):
        for clf in ("ensemble", "logreg"):
            assert 0.0 <= ft[kind][clf]["accuracy"] <= 1.0
    md = out.markdown_path.read_text()
    assert "## Ablation: frozen vs fine-tuned backbone features" in md
    acc = f"{100 * ft['finetuned']['logreg']['accuracy']:.1f}"
    assert f"| Logistic regression | fine-tuned | {acc} |" in md


def test_group_bootstrap_holm_and_source_warnings_reach_results_and_report(tmp_path):
    feats, y, samples = _grouped_features(n_groups=24, per_group=4, signal=3.0, seed=4)
    # two sources, each with normal and ALL subjects; the second has only 2 normal subjects
    source = {k: ("Benign", "Pre") if k >= 20 else ("hem", "all") for k in range(24)}
    samples = [Sample(s.path, s.label, source[int(s.group[-2:])][s.label], s.group) for s in samples]
    cfg = TrainConfig(classifiers=("knn", "svm"), seed=0, split="subject")
    res = evaluate_features(feats, samples, cfg, protocols=("subject",), n_boot=N_BOOT,
                            n_folds=4, ablation=False)
    e = res["protocols"]["subject"]
    h, cv = e["holdout"], e["cv"]
    from trainer.training.pipeline import split_dataset
    _, _, te = split_dataset(samples, "subject", cfg)
    g_test = np.array([s.group for s in samples])[te]
    y_test = y[te]
    n0 = len(set(g_test[y_test == 0]))
    n1 = len(set(g_test[y_test == 1]))
    for name, r in h["rows"].items():
        assert r["ci_method"] == "group" and r["n_groups"] == {"0": n0, "1": n1}
    t = h["auc_tests"]["svm"]
    assert t["ci_method"] == "group" and t["p_value_holm"] >= t["p_value"]
    # Holm over 2 classifiers x 2 metrics, for each kind of test
    fam = [cv["tests"][m][n]["nadeau_bengio"] for m in ("accuracy", "auc") for n in ("knn", "svm")
           if n in cv["tests"][m]]
    assert cv["n_comparisons"] == len(fam) == 4
    from trainer.stats.significance import holm
    assert [f["p_value_holm"] for f in fam] == pytest.approx(holm([f["p_value"] for f in fam]),
                                                             nan_ok=True)
    # the cells that cannot be split are named, in the results and the report
    assert cv["warnings"] and all(w in res["warnings"] for w in cv["warnings"])
    assert any("'Benign'" in w for w in res["warnings"])
    paths = write_report(res, tmp_path)
    md = paths["markdown"].read_text()
    data = json.loads(paths["json"].read_text())
    assert data["protocols"]["subject"]["holdout"]["rows"]["svm"]["n_groups"] == {"0": n0, "1": n1}
    assert "**Warnings**" in md and cv["warnings"][0] in md
    row = next(line for line in md.splitlines() if line.startswith("| SVM |"))
    assert f"; {n0}/{n1} groups)" in row
    assert "Holm p" in md


def test_variant_ablation_is_scored_per_image_kind_with_subject_intervals():
    """Every variant row of the grouped-CV ablation, for crops and fields separately, with AUC
    intervals that resample subjects, and the report's table."""
    from trainer.evaluation.report import _variants_md
    from trainer.evaluation.variants import VARIANTS, evaluate_variants

    rng = np.random.default_rng(0)
    n = 120
    y = np.array([i % 2 for i in range(n)])
    groups = np.array([f"{'A' if y[i] else 'N'}{(i // 2) % 6}" for i in range(n)])
    kinds = np.array(["single_cell" if i < 60 else "field" for i in range(n)])
    samples = [Sample(path=None, label=int(y[i]), class_name="all" if y[i] else "hem", group=str(groups[i]))
               for i in range(n)]
    subject_effect = {g: rng.normal(0, 0.3) for g in set(groups)}
    base = np.array([y[i] * 1.0 + subject_effect[groups[i]] for i in range(n)])[:, None]
    sets = {"networks": {"resnet34": (0.3 * base + rng.normal(0, 1.0, (n, 16))).astype(np.float32)},
            "nucleus": {"nucleus": (base + rng.normal(0, 0.5, (n, 8))).astype(np.float32)}}
    cfg = TrainConfig(seed=0, classifiers=("svm", "knn"))      # two classifiers keep the 3-fold CV of every row quick
    out = evaluate_variants(sets, samples, kinds, cfg, n_folds=3, n_boot=200)
    assert set(out["kinds"]) == {"single_cell", "field"}
    for kind, e in out["kinds"].items():
        assert e["n"] == 60 and e["n_groups"] == {"0": 6, "1": 6}
        # the Reinhard rows are skipped: no stain-normalised nucleus block was given
        labels = [r["variant"] for r in e["rows"]]
        assert labels == [v[0] for v in VARIANTS if "nucleus_stain" not in v[1]]
        for r in e["rows"]:
            assert r["ci_method"] == "group" and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
            assert r["n"] == 60 and 0 <= r["balanced_accuracy"] <= 1
        # the informative nucleus block helps on this data
        paper = e["rows"][0]["auc"]
        with_nucleus = next(r for r in e["rows"] if r["variant"] == "+ nucleus block, eq. 8")["auc"]
        assert with_nucleus > paper
    text = "\n".join(_variants_md(out))
    assert "single-cell crops: 60 images, 6 ALL / 6 normal subjects" in text and "group)" in text


def test_one_conversion_to_plain_values_for_json_and_for_the_app():
    from trainer.util.plain import to_jsonable, to_plain

    a = np.array([1.0, np.nan])
    data = {1: (np.int64(2), np.float32(np.inf), a, np.bool_(True), Path("p"))}
    assert to_jsonable(data) == {"1": [2, None, [1.0, None], True, "p"]}
    kept = to_plain(data, keep_arrays=True, strict_json=False)["1"]
    assert kept[2] is a and kept[1] == float("inf")
