"""The domain check and the fitted uncertain band: a model says "outside training" for images unlike its
training images, and decides only where its held-out subjects say it is right."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from trainer.classical.domain import DomainCheck, centred_band, fit_band, fit_two_sided_band
from trainer.classical.fusion import FeatureFusion
from trainer.inference.results import (
    DECISION_ALL,
    DECISION_NORMAL,
    DECISION_OUTSIDE,
    DECISION_UNCERTAIN,
    CellPrediction,
    ImagePrediction,
)
from trainer.io.synthetic import make_cell_image, make_smear_field


def _rows(rng, n, groups=10, shift=0.0):
    X = rng.normal(size=(n, 12)) + shift
    return X, rng.integers(0, groups, n)


def test_rows_far_from_training_are_flagged_and_held_out_subjects_rarely():
    rng = np.random.default_rng(0)
    X, g = _rows(rng, 400)
    check = DomainCheck(FeatureFusion(dims=(8, 4), pca=False), {"stain": [8, 9]}, target_rate=0.04).fit(X, g)
    assert check.checks_ == ["features", "stain"]
    assert check.basis_ == {"held_out": "subjects", "n_groups": 10, "n_rows": 400, "folds": 5}
    assert 0.02 <= check.oof_rate_ <= 0.06
    new, _ = _rows(np.random.default_rng(1), 400)        # new subjects of the same kind
    novelty, flags = check.novelty(new)
    assert np.mean(flags.any(axis=1)) < 0.1
    assert np.array_equal(novelty > 1, flags.any(axis=1))
    stained = new[:20].copy()
    stained[:, 8] += 8.0                                  # only the colour columns move
    novelty, flags = check.novelty(stained)
    assert (novelty > 1).all()
    assert all("stain" in check.fired(f) for f in flags)


def test_without_subject_ids_the_threshold_rests_on_held_out_images():
    rng = np.random.default_rng(2)
    X, _ = _rows(rng, 120)
    check = DomainCheck(FeatureFusion(dims=(12,), pca=False)).fit(X)
    assert check.checks_ == ["features"]
    assert check.basis_["held_out"] == "images" and check.basis_["n_groups"] is None


def test_fitted_band_is_the_narrowest_that_reaches_the_target():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    p = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.2, len(y)), 0, 1)
    out = fit_band(y, p, 0.5, target=0.95)
    assert out["reached"]
    decided = np.abs(p - 0.5) >= out["band"]
    assert np.mean(decided) == pytest.approx(out["coverage"])
    assert np.mean((p[decided] >= 0.5) == y[decided]) >= 0.95
    narrower = np.abs(p - 0.5) >= out["band"] - 0.01
    assert np.mean((p[narrower] >= 0.5) == y[narrower]) < 0.95
    assert 0.1 < out["coverage"] < 0.9


def test_a_band_that_cannot_reach_its_target_decides_nothing():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    p = rng.uniform(size=300)                             # no skill
    out = fit_band(y, p, 0.5, target=0.99)
    assert not out["reached"] and out["coverage"] == 0.0
    assert np.all(np.abs(p - 0.5) < out["band"])


def test_a_band_with_two_sides_decides_more_where_the_model_is_surer_of_one_class():
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=3000) < 0.8).astype(int)       # ALL four times as common, as on smear fields
    p = np.clip(np.where(y == 1, rng.beta(6, 2, len(y)), rng.beta(2, 3, len(y))), 0, 1)
    t = 0.6
    one, two = fit_band(y, p, t, target=0.97), fit_two_sided_band(y, p, t, target=0.97)
    assert two["reached"] and two["coverage"] > one["coverage"] + 0.1
    assert two["below"] != pytest.approx(two["above"], abs=0.02)
    decided = (p <= t - two["below"]) | (p >= t + two["above"])
    assert np.mean(decided) == pytest.approx(two["coverage"])
    assert np.mean((p[decided] >= t) == y[decided]) >= 0.97
    # one threshold and one width, at the band's centre, decide every image as the two sides do
    centre, report = centred_band(y, p, t, target=0.97)
    as_shipped = np.where(np.abs(p - centre) < report["band"], -1, (p >= centre).astype(int))
    two_sided = np.where(decided, (p >= t).astype(int), -1)
    assert np.array_equal(as_shipped, two_sided)
    assert report["youden_threshold"] == t and report["coverage"] == two["coverage"]
    # 40 confident rows all right are not yet 95 % with confidence: such a band decides nothing
    few_y = np.r_[np.ones(40, int), rng.integers(0, 2, 60)]
    few_p = np.r_[np.full(40, 0.99), rng.uniform(0.45, 0.75, 60)]
    assert not fit_two_sided_band(few_y, few_p, t, target=0.95)["reached"]
    assert fit_two_sided_band(np.r_[few_y, np.ones(60, int)], np.r_[few_p, np.full(60, 0.98)], t, 0.95)["reached"]


def test_an_outside_cell_gets_no_class_and_a_field_is_decided_by_its_cells_inside():
    inside = CellPrediction(index=0, bbox=(0, 0, 5, 5), contour=np.zeros((0, 2)), probability=0.3, novelty=0.5)
    outside = CellPrediction(index=1, bbox=(5, 5, 5, 5), contour=np.zeros((0, 2)), probability=0.99, novelty=3.0,
                             domain_checks=["stain"])
    assert outside.decision(0.5, 0.05) == DECISION_OUTSIDE and outside.in_domain is False
    assert inside.decision(0.5, 0.05) == DECISION_NORMAL and inside.in_domain is True
    field = ImagePrediction(path=None, shape=(10, 10), kind="field", nucleus_mask=np.ones((10, 10), bool),
                            whole=CellPrediction(index=-1, bbox=(0, 0, 10, 10), contour=np.zeros((0, 2))),
                            cells=[inside, outside], unit="cells")
    assert field.deciding is inside and field.decision(0.5, 0.05) == DECISION_NORMAL
    assert field.count(0.5, 0.05)[DECISION_OUTSIDE] == 1
    inside.domain_checks = ["features"]
    assert field.decision(0.5, 0.05) == DECISION_OUTSIDE
    legacy = CellPrediction(index=-1, bbox=(0, 0, 1, 1), contour=np.zeros((0, 2)), probability=0.52)
    assert legacy.in_domain is None and legacy.decision(0.5, 0.05) == DECISION_UNCERTAIN


# ---- a real tiny model ---------------------------------------------------------------------------------------
def _far_images(rng):
    """Images unlike the tiny C-NMC-style training crops: name -> RGB uint8."""
    crop, _ = make_cell_image(64, malignant=True, rng=rng)
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 60) % 180     # purple stain turned green
    stained = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    tiny = np.zeros((64, 64, 3), np.uint8)
    tiny[24:40, 24:40] = cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA)  # a quarter of the scale
    huge = cv2.resize(crop[16:48, 16:48], (256, 256), interpolation=cv2.INTER_CUBIC)
    field, _ = make_smear_field(224, n_wbc=3, rng=rng)
    return {"stain-shifted crop": stained, "tiny cell": tiny, "huge cell": huge, "smear field": field}


def test_the_tiny_model_has_a_domain_check_and_a_fitted_band(tiny_training):
    model = tiny_training.card["models"]["single_cell"]
    section = model["method"]
    assert section["domain_check"]["checks"] == ["features", "stain", "scale", "blur"]
    assert section["domain_check"]["n_groups"] == model["data"]["n_groups"]["train"] >= 3
    assert "subjects held out" in section["domain_check"]["rests_on"]
    band = section["uncertain_band"]
    assert band["target"] == 0.95 and 0 <= band["band"] <= 1 and "cross-fit pool" in band["rests_on"]


def test_images_far_from_training_are_outside_training(tiny_domain_predictor):
    rng = np.random.default_rng(5)
    far = _far_images(rng)
    t = tiny_domain_predictor.threshold
    band = tiny_domain_predictor.band_for()
    for name, img in far.items():
        r = tiny_domain_predictor.predict(img, path=name)
        assert r.in_domain is False, name
        assert r.decision(t, band) == DECISION_OUTSIDE, name
        assert any("outside" in n for n in r.notes), name
    own, _ = make_cell_image(64, malignant=True, rng=np.random.default_rng(0))
    assert tiny_domain_predictor.predict(own).decision(t, band) in (DECISION_ALL, DECISION_NORMAL, DECISION_UNCERTAIN,
                                                             DECISION_OUTSIDE)


def test_predict_csv_names_the_novelty_and_the_domain(tiny_domain_bundle, tmp_path):
    from trainer.cli.main import main
    rng = np.random.default_rng(6)
    for name, img in _far_images(rng).items():
        cv2.imwrite(str(tmp_path / f"{name.replace(' ', '_')}.png"), img[..., ::-1])
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path), "-m", str(tiny_domain_bundle), "-o", str(out), "-q"]) in (0, 1)
    rows = [r for r in csv.DictReader(open(out, newline="")) if r["cell"] == "image"]
    assert len(rows) == 4
    for r in rows:
        assert r["in_domain"] == "no" and r["decision"] == DECISION_OUTSIDE, r["file"]
        assert float(r["novelty"]) > 1 and r["domain_checks"]
        assert float(r["band"]) >= 0


def test_a_bundle_saved_before_the_check_predicts_and_says_it_cannot_tell(tiny_bundle):
    from trainer.inference.predictor import Predictor

    p = Predictor.from_bundle(tiny_bundle)            # saved as bundles were before the check and the band
    img, _ = make_cell_image(64, rng=np.random.default_rng(7))
    r = p.predict(img)
    assert r.in_domain is None and r.novelty is None
    assert p.band_for() == 0.05 and not p.has_domain_check()
    assert any("cannot say so" in n for n in r.notes)


def test_risk_coverage_intervals_resample_subjects_and_need_three_per_class():
    from trainer.stats.selective import risk_coverage

    rng = np.random.default_rng(8)
    groups = np.repeat(np.arange(12), 50)
    y = (groups % 2).astype(int)                          # each subject one class, 6 subjects each
    p = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.2, len(y)), 0, 1)
    out = risk_coverage(y, p, 0.5, groups, n_boot=200)
    assert out["n_groups"] == {"0": 6, "1": 6} and out["note"] is None
    assert out["coverage"][0] == 1.0 and out["coverage"] == sorted(out["coverage"], reverse=True)
    assert out["accuracy"][-1] > out["accuracy"][0]       # wider band, fewer decided, more often right
    lo, hi = out["accuracy_ci"][2]
    assert lo <= out["accuracy"][2] <= hi and hi - lo > 0
    two = np.isin(groups, [0, 2, 1, 3, 5, 7])             # 2 normal subjects: no interval
    few = risk_coverage(y[two], p[two], 0.5, groups[two], n_boot=50)
    assert few["accuracy_ci"] is None and few["note"] == "not estimable: 2 normal subjects"


def test_the_case_file_and_the_report_keep_outside_training():
    from trainer.cases.pdftext import decision_style
    from trainer.cases.records import prediction_record, review_record

    cell = CellPrediction(index=0, bbox=(0, 0, 5, 5), contour=np.zeros((0, 2)), probability=0.99, novelty=2.0,
                          domain_checks=["stain"])
    other = CellPrediction(index=1, bbox=(5, 5, 5, 5), contour=np.zeros((0, 2)), probability=0.2, novelty=0.4)
    field = ImagePrediction(path="f.png", shape=(10, 10), kind="field", nucleus_mask=np.ones((10, 10), bool),
                            whole=CellPrediction(index=-1, bbox=(0, 0, 10, 10), contour=np.zeros((0, 2))),
                            cells=[cell, other], unit="cells")
    assert review_record(field, "h", "f.png", 0, "m", 0.5, 0.05)["model_decision"] == DECISION_OUTSIDE
    assert prediction_record(field, "h", "f.png", "m", 0.5, 0.05)["decision"] == DECISION_NORMAL
    words, colour = decision_style(DECISION_OUTSIDE)
    assert words == DECISION_OUTSIDE and colour != decision_style(None)[1]


@pytest.mark.parametrize("colour", [(60, 60, 200), (80, 30, 120), (128, 0, 128)])
def test_a_solid_colour_image_gets_no_class(tiny_domain_predictor, colour):
    img = np.zeros((450, 450, 3), np.uint8)
    img[:] = colour
    p = tiny_domain_predictor
    r = p.predict(img, path="solid.png")
    assert r.decision(p.threshold, p.band_for()) in ("outside training", "not assessable")
