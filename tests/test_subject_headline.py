"""Numbers a reviewer accepts: every fit grouped by subject, a cross-validated headline with subject counts,
no interval on fewer than 3 subjects of a class, each figure named for the data it comes from."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from trainer.classical.ensemble import WeightedVotingEnsemble
from trainer.classical.model import AllModel
from trainer.config import FinetuneConfig, TrainConfig
from trainer.inference.card_text import headline_lines
from trainer.io.data import load_dataset
from trainer.io.splits import cv_folds, split_train_val_test
from trainer.io.synthetic import make_cell_image, write_dataset
from trainer.training.crossval import cv_headline
from trainer.util.errors import DataError

SIZE = 32


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One training run and one evaluation (ablations and frozen-vs-fine-tuned included) of generated C-NMC-style
    crops, every model fit recorded: (train result, evaluation output, [(what, groups, val_groups)])."""
    from trainer.evaluation import run_evaluation
    from trainer.training.pipeline import train
    tmp = tmp_path_factory.mktemp("grouped")
    root = write_dataset(tmp / "data", layout="cnmc", n_per_class=18, size=48, seed=3, n_subjects=9)
    cfg = TrainConfig(data=str(root), backbones=("resnet34",), image_size=SIZE, batch_size=16, num_workers=0,
                      device="cpu", classifiers=("svm", "knn"), seed=0, cv_repeats=2, cv_folds=3,
                      block_groups=("single_cell",), output=str(tmp / "m.allmodel"), cache_dir=str(tmp / "cache"),
                      finetuning=FinetuneConfig(epochs=1))
    calls = []
    fit, ens_fit = AllModel.fit, WeightedVotingEnsemble.fit

    def record_fit(self, *a, **k):
        calls.append(("AllModel", k.get("groups"), k.get("val_groups")))
        return fit(self, *a, **k)

    def record_ens(self, *a, **k):
        calls.append(("WeightedVotingEnsemble", k.get("groups"), "-"))
        return ens_fit(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AllModel, "fit", record_fit)
        mp.setattr(WeightedVotingEnsemble, "fit", record_ens)
        result = train(cfg)
        n_train = len(calls)
        report = run_evaluation(cfg, tmp / "report", n_boot=100, n_folds=3, protocols=("subject", "image"),
                                ablation=True, finetune_ablation=True)
    return result, report, calls, n_train


def test_every_model_fit_receives_the_subject_ids(recorded):
    """Training, its cross-validation, the evaluation's held-out split, its CV, the ablations and the frozen vs
    fine-tuned comparison all fit with subject ids: no inner fold (cross-fit calibration, Platt) is image-level."""
    _, _, calls, n_train = recorded
    assert n_train > 1 and len(calls) > n_train  # training (with its CV) and evaluation both fitted models
    missing = [what for what, g, gv in calls if g is None or gv is None]
    assert missing == [], f"{len(missing)} of {len(calls)} fits got no subject ids"


def test_the_card_headline_is_repeated_grouped_cross_validation_with_subject_counts(recorded):
    result, *_ = recorded
    ds = load_dataset(result.card["trained_on"]["data"])
    sec = result.card["models"]["single_cell"]
    cv = sec["cv"]
    assert cv["grouped"] and cv["repeats"] == 2 and cv["folds"] == 3
    assert cv["n_groups"] == {"0": 9, "1": 9} and cv["n_images"] == {"0": 18, "1": 18}
    assert cv["group_kind"] == "image block" and sec["group_kind"] == "image block"  # --block-groups single_cell
    assert cv["fits"] == 6 and cv["fits_failed"] == 0
    for key in ("auc", "sensitivity", "specificity", "balanced_accuracy", "coverage", "accuracy_decided"):
        m = cv[key]
        if key == "accuracy_decided" and cv["coverage"]["mean"] == 0:  # on 36 images no band reaches 95 %
            assert m["mean"] is None and m["ci"] is None
            continue
        assert 0.0 <= m["mean"] <= 1.0 and m["ci"][0] <= m["mean"] <= m["ci"][1], key
    assert len(ds) == 36
    lines = headline_lines(sec)
    assert lines[0].startswith("Cross-validation (2 \u00d7 3 image block-grouped folds; 9 normal / 9 ALL image "
                               "blocks, 36 images): AUC")
    assert lines[1].startswith("Test split, one split (") and "image block" in lines[1]
    assert any(x.startswith("Threshold") and "cross-fit pool" in x for x in lines)


def test_the_card_says_what_set_calibration_and_threshold_and_the_band(recorded):
    result, *_ = recorded
    sec = result.card["models"]["single_cell"]
    cal = sec["calibration_data"]
    assert cal["source"] == "cross-fit pool"
    n_tr, n_va = sec["data"]["n_train"], sec["data"]["n_validation"]
    assert cal["n_images"] == n_tr + n_va
    parts = sec["parts"]
    assert cal["prevalence"] == pytest.approx(
        (parts["train"]["images"]["1"] + parts["validation"]["images"]["1"]) / (n_tr + n_va))
    assert cal["inner_folds"]["cross_fit"]["grouped"] and cal["inner_folds"]["cross_fit"]["realised"] >= 2
    # the fitted band (0 where every image of the cross-fit pool is decided at the target accuracy)
    assert sec["uncertain_band"]["source"] == "fitted"
    assert sec["uncertain_band"]["half_width"] == pytest.approx(sec["method"]["uncertain_band"]["band"])
    # the band and the domain check name their groups as what they are (--block-groups: image blocks)
    from allgui.model.session import band_summary
    band, domain = sec["method"]["uncertain_band"], sec["method"]["domain_check"]
    assert "image blocks" in band["rests_on"] and "image blocks" in domain["rests_on"]
    assert "subject" not in band_summary("crop model", band, band["band"]) + domain["rests_on"]
    # the realised split: images and subjects per class per part, and the parts short of subjects named
    real = result.card["split"]["realised"]
    assert sum(real[p]["images"]["0"] for p in ("train", "validation", "test")) == 18
    assert all(real[p]["subjects"]["0"] == 3 for p in ("train", "validation", "test"))  # 9 subjects: 3 each
    assert real["short"] == []


def test_evaluate_reports_the_cross_validation_headline_first(recorded):
    result, report, *_ = recorded
    data = json.loads(report.json_path.read_text())
    cv = data["models"]["single_cell"]["cv_headline"]
    assert cv["n_groups"] == {"0": 9, "1": 9} and cv["group_kind"] == "image block"
    md = report.markdown_path.read_text()
    assert md.index("## Headline: cross-validation first") < md.index("## Held-out test set")
    assert "Cross-validation (2 \u00d7 3 image block-grouped folds" in md


def test_evaluate_evaluates_what_train_ships(recorded):
    """The same split, feature blocks (nucleus block included), models per kind: the evaluation's held-out
    model is the shipped model, threshold for threshold."""
    result, report, *_ = recorded
    data = json.loads(report.json_path.read_text())
    assert set(data["models"]) == set(result.card["models"])
    for key, sec in result.card["models"].items():
        ev = data["models"][key]
        assert ev["meta"]["backbones"] == ["resnet34", "nucleus"]
        h = ev["protocols"]["subject"]["holdout"]
        assert h["split"]["n_test"] == sec["data"]["n_test"]
        assert h["threshold"] == pytest.approx(sec["method"]["threshold"])


def _features(n_groups, per, seed=0, normal_groups=None):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    y = (np.arange(n_groups) % 2)[g]
    if normal_groups is not None:  # only this many normal subjects; the rest ALL
        y = (np.arange(n_groups) >= normal_groups).astype(int)[g]
    effect = rng.normal(size=n_groups)
    X = (y[:, None] * 1.0 + effect[g][:, None] + rng.normal(size=(len(g), 6))).astype(np.float32)
    return {"a": X}, y, np.array([f"s{k}" for k in g], dtype=object)


def test_cross_validation_refits_the_pipeline_in_every_fold_as_an_independent_refit_does():
    from trainer.classical.model import fit_model, subset
    from trainer.training.crossval import _inner_split
    feats, y, g = _features(12, 8)
    cfg = TrainConfig(classifiers=("svm", "knn"), cv_repeats=1, cv_folds=3, seed=0)
    cv = cv_headline(feats, y, g, cfg, backbones=("a",), n_boot=200)
    p, t = np.zeros(len(y)), np.zeros(len(y))
    for tr, te in cv_folds(y, g, protocol="subject", n_splits=3, seed=0):
        fit_i, val_i = _inner_split(y, g, None, tr, cfg.fractions, 0)
        m = fit_model(feats, y, fit_i, val_i, cfg, backbones=("a",), groups=g)
        p[te], t[te] = m.predict_details(subset(feats, te))["calibrated"], m.threshold_
    assert cv["auc"]["mean"] == pytest.approx(roc_auc_score(y, p))
    assert cv["sensitivity"]["mean"] == pytest.approx(np.mean(p[y == 1] >= t[y == 1]))
    assert cv["specificity"]["mean"] == pytest.approx(np.mean(p[y == 0] < t[y == 0]))
    assert cv_headline(feats, y, g, dataclasses.replace(cfg, cv_repeats=0)) is None
    assert headline_lines({"cv": None})[0] == "Cross-validation: not run for this model."


def test_cross_validation_on_two_normal_subjects_gives_no_figures_and_says_why():
    feats, y, g = _features(10, 8, normal_groups=2)
    cv = cv_headline(feats, y, g, TrainConfig(classifiers=("knn",), cv_repeats=1, cv_folds=5), backbones=("a",),
                     n_boot=100)
    # 2 folds, each training fold one normal subject: no inner validation split, no figure, never a number pair
    assert cv["folds"] == 2 and "5 folds requested, 2 used" in cv["notes"][0]
    assert "auc" not in cv and cv["fits"] == 0 and "No fold could be fitted." in cv["notes"]
    assert "No fold could be fitted." in headline_lines({"cv": cv})[0]
    feats, y, g = _features(12, 8, normal_groups=3)
    cv = cv_headline(feats, y, g, TrainConfig(classifiers=("knn",), cv_repeats=1, cv_folds=5), backbones=("a",),
                     n_boot=100)
    assert cv["folds"] == 3 and cv["n_groups"] == {"0": 3, "1": 9} and cv["auc"]["ci"] is not None


def test_splits_give_every_part_three_subjects_of_each_class_where_the_data_have_them():
    """Three large normal subjects and six small ones: balancing images alone left a part one normal subject."""
    labels, groups = [], []
    for k, n in enumerate([400, 380, 360] + [3] * 6):
        labels += [0] * n
        groups += [f"N{k}"] * n
    for k in range(20):
        labels += [1] * 40
        groups += [f"A{k}"] * 40
    y, g = np.array(labels), np.array(groups, dtype=object)
    for seed in range(3):
        for part in split_train_val_test(y, g, protocol="subject", seed=seed):
            assert len(set(g[part][y[part] == 0])) >= 3 and len(set(g[part][y[part] == 1])) >= 3


def _save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def test_the_same_pixels_twice_are_used_once_and_reported(tmp_path):
    """A crop saved as BMP and again as PNG (other bytes, same pixels) under another subject's name."""
    root = write_dataset(tmp_path / "d", layout="cnmc", n_per_class=6, size=40, seed=1, n_subjects=3)
    first = sorted((root / "all").iterdir())[0]
    img = np.asarray(Image.open(first).convert("RGB"))
    _save(img, root / "all" / "UID_77_1_1_all.png")
    other = sorted((root / "hem").iterdir())[0]
    _save(np.asarray(Image.open(other).convert("RGB")), root / "all" / "UID_78_1_1_all.png")  # both labels
    ds = load_dataset(root, check_readable=True)
    names = {p.name for p in ds.paths}
    assert len(ds) == 11 and not ({first.name, "UID_77_1_1_all.png"} <= names)
    assert other.name not in names and "UID_78_1_1_all.png" not in names
    reasons = dict((p.name, r) for p, r in ds.skipped)
    assert any("kept once" in r for r in reasons.values())
    assert "labelled both ALL and normal" in reasons["UID_78_1_1_all.png"]


def test_finetuning_provenance_is_by_pixels_and_subjects(tmp_path):
    from trainer.training.weights import FINETUNE_IMAGES_KEY, finetune_overlap, finetune_provenance, save_state_dicts
    rng = np.random.default_rng(0)
    imgs = [make_cell_image(40, malignant=bool(i % 2), rng=rng)[0] for i in range(4)]
    for i, im in enumerate(imgs):
        _save(im, tmp_path / f"ft{i}.bmp")
    weights = tmp_path / "w.safetensors"
    import torch
    save_state_dicts(weights, {"resnet34": {"x": torch.zeros(1)}}, {FINETUNE_IMAGES_KEY: finetune_provenance(
        [tmp_path / "ft0.bmp", tmp_path / "ft1.bmp"], [tmp_path / "ft2.bmp"], ["s1", "s2"], ["s3"])})
    _save(imgs[0], tmp_path / "copy.png")  # the same pixels, re-saved as PNG
    with pytest.raises(DataError, match="1 in its training"):
        finetune_overlap(weights, [tmp_path / "copy.png"])
    _save(imgs[3], tmp_path / "new.png")  # a new image of a fine-tuning subject
    with pytest.raises(DataError, match="subjects .*s2.* were fine-tuned on"):
        finetune_overlap(weights, [tmp_path / "new.png"], groups=["s2"])
    info = finetune_overlap(weights, [tmp_path / "new.png"], groups=["s9"])
    assert info["by"] == "pixels" and info["n_train"] == info["n_train_subjects"] == 0


def test_validation_and_training_rows_are_checked_and_unknown_provenance_is_stated(tmp_path):
    import torch

    from trainer.training.provenance import finetune_calibration, finetune_check
    from trainer.training.weights import FINETUNE_IMAGES_KEY, finetune_provenance, save_state_dicts
    root = write_dataset(tmp_path / "d", layout="cnmc", n_per_class=6, size=40, seed=1, n_subjects=3)
    ds = load_dataset(root, check_readable=True)
    tr, va, te = np.arange(0, 4), np.arange(4, 8), np.arange(8, 12)
    cfg = TrainConfig(data=str(root))
    bare = tmp_path / "bare.safetensors"
    save_state_dicts(bare, {"resnet34": {"x": torch.zeros(1)}})
    info = finetune_check(dataclasses.replace(cfg, weights=str(bare)), ds, (tr, va, te))
    assert info["known"] is False and "record no fine-tuning images" in info["notes"][0]
    w = tmp_path / "w.safetensors"
    save_state_dicts(w, {"resnet34": {"x": torch.zeros(1)}}, {FINETUNE_IMAGES_KEY: finetune_provenance(
        [ds.paths[i] for i in va], [], None, None)})  # trained on what is our validation split
    with pytest.raises(DataError, match="validation images .* were used to train"):
        finetune_check(dataclasses.replace(cfg, weights=str(w)), ds, (tr, va, te))
    save_state_dicts(w, {"resnet34": {"x": torch.zeros(1)}}, {FINETUNE_IMAGES_KEY: finetune_provenance(
        [ds.paths[i] for i in tr], [ds.paths[i] for i in va], None, None)})  # the intended use
    info = finetune_check(dataclasses.replace(cfg, weights=str(w)), ds, (tr, va, te))
    assert info["training"]["n_train"] == 4 and info["calibrate_on_validation"]
    assert finetune_calibration(cfg, info).calibrate_on == "validation"
    assert finetune_calibration(cfg, None).calibrate_on == cfg.calibrate_on
    assert finetune_check(dataclasses.replace(cfg, finetune=True), ds, (tr, va, te))["calibrate_on_validation"]


def test_a_card_written_before_the_rule_shows_no_interval_on_one_normal_subject():
    """The shipped card held "AUC 0.917 (0.80-0.97)" on one normal subject; read today it says why there is none,
    and names the data that set the threshold (the side panel's figures) apart from the validation split."""
    old = {"name": "crop model", "data": {"n_groups": {"train": 8, "validation": 15, "test": 5}},
           "method": {"threshold": 0.728, "threshold_rule": "Youden J on the out-of-fold training scores and the "
                                                           "validation split"},
           "metrics": {"test": {"ensemble_calibrated": {"n": 735, "auc": 0.917, "auc_ci": [0.7956, 0.9731],
                                                        "n_groups": {"0": 1, "1": 4}, "sensitivity": 0.796,
                                                        "specificity": 0.871}},
                       "validation": {"ensemble_calibrated": {"n": 381, "auc": 0.570, "sensitivity": 0.608,
                                                              "specificity": 0.474}}}}
    lines = headline_lines(old)
    assert lines[0] == "Cross-validation: not run for this model."
    assert lines[1] == ("Test split, one split (1 normal / 4 ALL subjects, 735 images): AUC 0.917 (not estimable: "
                        "1 normal subject), sensitivity 79.6 %, specificity 87.1 %.")
    assert "0.80" not in " ".join(lines)
    assert lines[2].startswith("Validation split (381 images): AUC 0.570")
    from trainer.inference.card_text import calibration_source
    assert calibration_source(old) == "cross-fit pool"
