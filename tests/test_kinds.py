"""Per-kind models: a crop model and a field model in one bundle, routing, old bundles,
the hand-crafted nucleus block, stain normalisation and the stacked combiner."""
import csv
import io
import json
import zipfile

import cv2
import numpy as np
import pytest
from conftest import TINY_SIZE, rewrite_bundle

from trainer.classical.stacking import StackedCombiner, fold_report, inner_folds
from trainer.config import TrainConfig
from trainer.inference.bundle import FORMAT, FORMAT_VERSION, load_bundle, read_manifest
from trainer.inference.predictor import Predictor
from trainer.io.synthetic import make_cell_image, make_smear_field, write_dataset
from trainer.stats import metrics as M
from trainer.util.errors import BundleError
from trainer.vision import fingerprint
from trainer.vision.handcrafted import FEATURE_NAMES, NUCLEUS_DIM, nucleus_features
from trainer.vision.stain import ReinhardNormalizer, foreground, lab_stats, reinhard


@pytest.fixture(scope="module")
def mixed_training(tmp_path_factory):
    """A real training run on generated data holding both crops and smear fields, with every
    issue-8 option on (nucleus block, Reinhard, stacked combiner, per-block L2)."""
    import torch

    from trainer.training.pipeline import train
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("mixed")
    root = write_dataset(d / "data", layout="folders", n_per_class=32, size=64, seed=1, n_subjects=8,
                         kind="mixed")
    cfg = TrainConfig(data=str(root), image_size=TINY_SIZE, num_workers=0, batch_size=16,
                      output=str(d / "mixed.allmodel"), cache_dir=str(d / "cache"), nucleus_features=True,
                      stain="reinhard", combiner="stacked", block_l2=True, per_kind=True,
                      cv_repeats=1, cv_folds=3)
    return train(cfg)


def test_mixed_data_trains_one_calibrated_model_per_kind(mixed_training):
    r = mixed_training
    assert list(r.model.models) == ["single_cell", "field"]
    card = r.card
    assert set(card["models"]) == {"single_cell", "field"}
    for key, sec in card["models"].items():
        m = r.model.models[key]
        assert sec["name"] == {"single_cell": "crop model", "field": "field model"}[key]
        # each model was fitted on its own kind's rows of one shared split: 32 images of each kind
        assert sec["data"]["n_images"] == 32
        assert sec["data"]["n_train"] + sec["data"]["n_validation"] + sec["data"]["n_test"] == 32
        assert sec["method"]["threshold"] == pytest.approx(m.threshold_)
        assert sec["method"]["combiner"] == "stacked" and m.stacker_ is not None
        assert "nucleus" in sec["method"]["feature_blocks"]
        assert sec["method"]["stain_normalisation"].startswith("Reinhard")
        assert {"validation", "test"} <= set(sec["metrics"])
    manifest = read_manifest(r.bundle_path)
    assert manifest["format_version"] == FORMAT_VERSION == 3


def test_predictor_routes_each_image_to_the_model_of_its_kind(mixed_training):
    p = Predictor.from_bundle(mixed_training.bundle_path)
    assert p.keys == ["single_cell", "field"]
    assert p.thresholds == {k: pytest.approx(m.threshold_) for k, m in mixed_training.model.models.items()}
    rng = np.random.default_rng(77)
    crop = make_cell_image(64, malignant=True, rng=rng)[0]
    field = make_smear_field(160, 2, rng, malignant=False)[0]
    a, b = p.predict_batch([crop, field])
    assert (a.kind, a.model, a.model_name) == ("single_cell", "single_cell", "crop model")
    assert (b.kind, b.model, b.model_name) == ("field", "field", "field model")
    assert b.unit == "image" and not b.field_by_cells  # the field model judges whole fields
    # the same crop alone gives the same numbers as in a mixed batch
    alone = p.predict(crop)
    assert alone.whole.probability == pytest.approx(a.whole.probability, abs=1e-9)
    # each model's operating point is its own
    t = 0.5
    for key in p.keys:
        y, cal = (mixed_training.model.models[key].validation_[k] for k in ("y", "calibrated"))
        assert p.operating_point(t, key) == (np.mean(cal[y == 1] >= t), np.mean(cal[y == 0] < t))


def test_a_lazy_load_rebuilds_a_model_only_when_an_image_of_its_kind_arrives(mixed_training, tmp_path):
    from trainer.classical.model import AllModel
    from trainer.inference.bundle import LazyModels
    path = mixed_training.bundle_path
    manifest = read_manifest(path)
    assert sorted(manifest["members"]) == ["arrays.safetensors", "model-field.skops", "model-single_cell.skops"]
    eager = Predictor.from_bundle(path)
    lazy = Predictor.from_bundle(path, lazy=True)
    assert isinstance(lazy.models, LazyModels) and not isinstance(eager.models, LazyModels)
    assert lazy.thresholds == eager.thresholds  # from the manifest, before the field model exists
    assert lazy.models.loaded("single_cell") and not lazy.models.loaded("field")
    assert isinstance(lazy.models["single_cell"], AllModel)
    # the app's session takes the field model's band from the card: opening a crop never builds that model
    from allgui.model.session import ModelSession
    assert ModelSession.open(lazy, str(path)).bands == pytest.approx(ModelSession.open(eager, str(path)).bands)
    assert not lazy.models.loaded("field")
    rng = np.random.default_rng(77)
    crop = make_cell_image(64, malignant=True, rng=rng)[0]
    field = make_smear_field(160, 2, rng, malignant=False)[0]
    a = lazy.predict(crop)
    assert a.model == "single_cell" and not lazy.models.loaded("field")
    assert lazy.has_model_for("field") and lazy.route("field") == "field" and not lazy.models.loaded("field")
    b = lazy.predict(field)
    assert b.model == "field" and lazy.models.loaded("field")
    # the same models: the same numbers
    want_a, want_b = eager.predict(crop), eager.predict(field)
    for got, want in ((a, want_a), (b, want_b)):
        assert got.whole.probability == want.whole.probability
        assert [(v.vote, v.probability) for v in got.whole.votes] == [
            (v.vote, v.probability) for v in want.whole.votes]

    def altered(change):
        return rewrite_bundle(path, tmp_path / f"altered{len(list(tmp_path.iterdir()))}.allmodel", change=change)

    # a manifest that lowers the field model's threshold is caught when that model is rebuilt: by an eager
    # load at once, by a lazy one before the first field is judged
    low = altered(lambda m: m["models"]["field"].update(threshold=0.01))
    with pytest.raises(BundleError, match="has been altered"):
        load_bundle(low)
    p = Predictor.from_bundle(low, lazy=True)
    assert p.predict(crop).model == "single_cell"
    with pytest.raises(BundleError, match="has been altered"):
        p.predict(field)
    # so is a card that gives the field model another band than its own (the app shows and uses the card's
    # band until that model is rebuilt)
    narrow = altered(lambda m: m["card"]["models"]["field"]["method"]["uncertain_band"].update(band=0.001))
    with pytest.raises(BundleError, match="has been altered"):
        load_bundle(narrow)
    p = Predictor.from_bundle(narrow, lazy=True)
    assert p.predict(crop).model == "single_cell"
    with pytest.raises(BundleError, match="has been altered"):
        p.predict(field)
    with pytest.raises(BundleError, match="names no member"):
        load_bundle(altered(lambda m: m["models"]["field"].update(member="model-x.skops")))
    # the CLI stops on such a bundle instead of writing error rows; no CSV is left
    import subprocess
    import sys
    cv2.imwrite(str(tmp_path / "crop.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    out = tmp_path / "rows.csv"
    run = subprocess.run([sys.executable, "-m", "trainer", "predict", "-q", "-m", str(low), str(tmp_path / "crop.png"),
                          str(tmp_path / "field.png"), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "has been altered" in run.stderr and not out.exists()


def test_bundles_of_one_model_member_still_load(mixed_training, tmp_path):
    # format 2 stored every model in one model.skops (a KindModels) with no models table in the manifest
    import skops.io

    def as_version_2(manifest):
        del manifest["models"]
        manifest["format_version"] = 2

    old = rewrite_bundle(mixed_training.bundle_path, tmp_path / "v2.allmodel",
                         replace={"model.skops": skops.io.dumps(mixed_training.model)},
                         drop=("model-single_cell.skops", "model-field.skops"), change=as_version_2)
    assert sorted(read_manifest(old)["members"]) == ["arrays.safetensors", "model.skops"]
    rng = np.random.default_rng(3)
    crop, field = make_cell_image(64, malignant=False, rng=rng)[0], make_smear_field(160, 2, rng)[0]
    for lazy in (False, True):
        p = Predictor.from_bundle(old, lazy=lazy)
        assert p.keys == ["single_cell", "field"]
        want = Predictor.from_bundle(mixed_training.bundle_path)
        for img in (crop, field):
            assert p.predict(img).whole.probability == want.predict(img).whole.probability


def test_a_bundle_with_one_kind_still_judges_the_other_with_a_caution(tiny_predictor):
    # the tiny model was trained on crops only: a smear field goes to the crop model, cell by cell
    assert tiny_predictor.keys == ["single_cell"]
    field = make_smear_field(224, 3, np.random.default_rng(8))[0]
    r = tiny_predictor.predict(field)
    assert r.model == "single_cell" and r.field_by_cells
    assert any("no model for smear fields" in n for n in r.notes)


def _write_v1_bundle(path, model, config, card, arrays):
    """A bundle as allgui wrote them before per-kind models (format version 1)."""
    import safetensors.numpy
    import skops.io

    members = {"model.skops": skops.io.dumps(model),
               "arrays.safetensors": safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in arrays.items()})}
    manifest = {"format": FORMAT, "format_version": 1, "created": "2026-01-01T00:00:00+00:00",
                "config": config.to_dict(), "card": card, "versions": {},
                "members": {n: {"sha256": __import__("hashlib").sha256(d).hexdigest(), "bytes": len(d)}
                            for n, d in members.items()}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest, default=float))
        for n, d in members.items():
            zf.writestr(n, d)
    return path


def test_old_single_model_bundles_still_load_and_predict(tiny_bundle, tiny_predictor, tmp_path):
    b = load_bundle(tiny_bundle)
    key = "single_cell"
    old_arrays = {(k.split("/", 1)[1] if k.startswith(key + "/") else k): v for k, v in b.arrays.items()
                  if not fingerprint.is_fingerprint(k)}
    # version 1 stored the fingerprint at the model's input size, under probe/<backbone>
    old_arrays.update({k: v for k, v in fingerprint.compute(tiny_predictor.extractor, legacy=True).items()
                       if not k.endswith("/nucleus")})
    card = {k: v for k, v in b.card.items() if k != "models"}
    old = _write_v1_bundle(tmp_path / "old.allmodel", b.model.models[key], b.config, card, old_arrays)
    ob = load_bundle(old)
    assert list(ob.model.models) == ["any"]
    assert "any/validation/y" in ob.arrays and "any/test/calibrated" in ob.arrays
    assert sorted(k for k in ob.arrays if k.startswith("probe")) == ["probe/densenet121", "probe/resnet34"]
    assert Predictor.from_bundle(old).threshold == pytest.approx(tiny_predictor.threshold)
    p = Predictor(ob)
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))[0]
    new, old_r = tiny_predictor.predict(img), p.predict(img)
    assert old_r.model == "any" and old_r.model_name == "model"
    assert old_r.whole.probability == pytest.approx(new.whole.probability, abs=1e-12)
    assert p.threshold == pytest.approx(tiny_predictor.threshold)
    assert p.test_operating_point(0.0) == (1.0, 0.0)


def test_nucleus_block_measures_the_nucleus():
    rng = np.random.default_rng(0)
    img, mask = make_cell_image(96, malignant=True, rng=rng)
    v = nucleus_features(img)
    assert v.shape == (NUCLEUS_DIM,) == (len(FEATURE_NAMES),) and v.dtype == np.float32
    assert np.all(np.isfinite(v))
    f = dict(zip(FEATURE_NAMES, v))
    assert np.expm1(f["log_area"]) == pytest.approx(mask.sum(), rel=0.35)
    assert 0.0 < f["circularity"] <= 1.0 and 0.0 < f["solidity"] <= 1.0 and 0.0 < f["nc_ratio"] < 1.0
    lbp = [f[n] for n in FEATURE_NAMES if n.startswith("lbp8r1_")]
    assert sum(lbp) == pytest.approx(1.0, abs=1e-5)
    # a larger nucleus gives a larger area feature
    big = np.zeros((96, 96, 3), np.uint8)
    small = big.copy()
    cv2.circle(big, (48, 48), 40, (200, 170, 210), -1)
    cv2.circle(big, (48, 48), 30, (90, 40, 150), -1)
    cv2.circle(small, (48, 48), 40, (200, 170, 210), -1)
    cv2.circle(small, (48, 48), 14, (90, 40, 150), -1)
    fb, fs = dict(zip(FEATURE_NAMES, nucleus_features(big))), dict(zip(FEATURE_NAMES, nucleus_features(small)))
    assert fb["log_area"] > fs["log_area"] + 1.0 and fb["nc_ratio"] > fs["nc_ratio"]
    # nothing to measure: zeros, never NaN
    assert not nucleus_features(np.full((64, 64, 3), 255, np.uint8)).any()


def test_nucleus_block_on_fields_averages_the_white_cells():
    field, _ = make_smear_field(224, 3, np.random.default_rng(4))
    f = dict(zip(FEATURE_NAMES, nucleus_features(field)))
    assert np.expm1(f["log_n_nuclei"]) == pytest.approx(3, abs=1)


def test_reinhard_maps_foreground_statistics_and_keeps_the_background():
    rng = np.random.default_rng(1)
    img = make_cell_image(96, malignant=False, rng=rng)[0]
    ref = lab_stats(img) + np.array([-8.0, 6.0, -5.0, 0.0, 0.0, 0.0])
    ref[3:] *= 1.2
    out = reinhard(img, ref)
    assert out.shape == img.shape and out.dtype == np.uint8
    got, before = lab_stats(out), lab_stats(img)
    # close to the reference (the RGB gamut and 8-bit rounding keep it from being exact)
    assert np.allclose(got[:3], ref[:3], atol=2.5) and np.allclose(got[3:], ref[3:], rtol=0.15)
    assert np.abs(got - ref).sum() < 0.3 * np.abs(before - ref).sum()
    bg = ~foreground(img)
    assert bg.any() and np.array_equal(out[bg], img[bg])       # black stays black
    assert np.array_equal(foreground(out), foreground(img))    # and nothing else turns black


def test_stain_reference_is_fitted_on_training_images_only(tmp_path):
    from trainer.training.pipeline import stain_reference

    rng = np.random.default_rng(2)
    train = [make_cell_image(64, malignant=bool(i % 2), rng=rng)[0] for i in range(6)]
    # test images of a very different stain
    test = [np.clip(make_cell_image(64, rng=rng)[0].astype(int) + [60, -40, 0], 0, 255).astype(np.uint8)
            for _ in range(6)]
    paths = []
    for i, img in enumerate(train + test):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    ref = stain_reference(TrainConfig(stain="reinhard"), paths[:6])
    assert np.allclose(ref, np.mean([lab_stats(im) for im in train], axis=0))
    assert not np.allclose(ref, ReinhardNormalizer().fit(train + test).reference_, atol=1.0)
    assert stain_reference(TrainConfig(stain="none"), paths) is None


def test_inner_folds_keep_each_subject_on_one_side():
    y = np.array([0, 1] * 30)
    groups = np.array([f"s{i % 12}" for i in range(60)])
    folds = inner_folds(y, groups, 5, seed=0)
    assert len(folds) == 5
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert set(y[tr]) == {0, 1}
    # too few subjects of a class: no folds at all, never folds of images that split a subject
    assert inner_folds(y, np.array(["a"] * 60), 5, seed=0) == []
    one_normal = np.where(y == 0, "n0", np.array([f"a{i % 6}" for i in range(60)]))
    assert inner_folds(y, one_normal, 5, seed=0) == []
    # no subject ids: folds of images are all there is
    assert len(inner_folds(y, None, 5, seed=0)) == 5
    # 3 normal subjects: the fold count shrinks to 3, and the card can say so
    three = np.where(y == 0, np.array([f"n{i % 3}" for i in range(60)]), np.array([f"a{i % 12}" for i in range(60)]))
    assert len(inner_folds(y, three, 5, seed=0)) == 3
    assert fold_report(y, three, 5) == {"requested": 5, "realised": 3, "grouped": True,
                                        "n_groups": {"0": 3, "1": 6}}


def test_too_few_subjects_for_grouped_folds_calibrates_on_validation_and_says_so():
    """A training split with one normal subject: no image-level folds behind the user's back."""
    from trainer.classical.model import AllModel
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    X = (rng.normal(size=(80, 6)) + y[:, None]).astype(np.float32)
    groups = np.where(y == 0, "n0", np.array([f"a{i % 5}" for i in range(80)]))
    yv = np.array([0, 1] * 10)
    Xv = (rng.normal(size=(20, 6)) + yv[:, None]).astype(np.float32)
    gv = np.array([f"v{i % 6}" for i in range(20)])
    m = AllModel(backbones=("a",), pca=False, classifiers=("svm", "knn"), calibrate_on="cross-fit").fit(
        {"a": X}, y, {"a": Xv}, yv, groups=groups, val_groups=gv)
    assert m.calibrated_on_ == "validation" and len(m.validation_["y"]) == 20
    assert m.inner_folds_["cross_fit"] == {"requested": 5, "realised": 0, "grouped": True,
                                           "n_groups": {"0": 1, "1": 5}}
    assert "1 normal and 5 ALL subjects: calibrated on the validation split alone" in m.calibration_note_
    assert "Platt scaling used folds of images" in m.calibration_note_
    # enough subjects: cross-fit on 5 grouped folds, nothing to say
    groups = np.array([f"s{i % 16}" for i in range(80)])
    m = AllModel(backbones=("a",), pca=False, classifiers=("svm", "knn"), calibrate_on="cross-fit").fit(
        {"a": X}, y, {"a": Xv}, yv, groups=groups, val_groups=gv)
    assert m.calibrated_on_ == "cross-fit" and m.inner_folds_["cross_fit"]["realised"] == 5
    assert m.calibration_note_ is None


def test_stacked_combiner_is_at_least_as_good_as_its_best_member():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 600)
    good = np.clip(0.5 + (y - 0.5) * 0.5 + rng.normal(0, 0.25, 600), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, (600, 4))
    P = np.column_stack([noise[:, :2], good, noise[:, 2:]])
    tr, te = np.arange(400), np.arange(400, 600)
    st = StackedCombiner().fit(P[tr], y[tr])
    best = M.auc(y[te], P[te, 2])
    stacked = M.auc(y[te], st.combine(P[te]))
    uniform = M.auc(y[te], P[te].mean(axis=1))
    assert stacked >= best - 0.01 and stacked > uniform + 0.05
    assert np.argmax(st.coef_) == 2 and abs(st.coef_[2]) > 3 * np.abs(np.delete(st.coef_, 2)).max()


def test_weighted_combiner_reproduces_eq8(tiny_training):
    from trainer.vision.features import FeatureExtractor
    m = tiny_training.model.models["single_cell"]
    X = {b: np.random.default_rng(0).normal(size=(5, d)).astype(np.float32)
         for b, d in FeatureExtractor(backbones=m.backbones).dims.items()}
    det = m.predict_details(X)
    assert np.allclose(det["weighted"], det["probabilities"] @ det["weights"])
    assert np.allclose(det["vote_share"], det["votes"] @ det["weights"])


def test_merge_by_subject_keeps_identical_pixels_once(tmp_path):
    from trainer.io.data import load_dataset, merge_datasets

    a = write_dataset(tmp_path / "a", layout="cnmc", n_per_class=4, size=48, seed=0, n_subjects=2)
    b = tmp_path / "b"
    for sub in ("all", "hem"):
        (b / sub).mkdir(parents=True)
    # one crop again as PNG (same pixels, other bytes), one new crop of subject 1
    src = sorted((a / "all").glob("*.bmp"))[0]
    cv2.imwrite(str(b / "all" / (src.stem + ".png")), cv2.imread(str(src)))
    rng = np.random.default_rng(9)
    for name, m in (("UID_1_99_1_all.png", True), ("UID_H7_1_1_hem.png", False)):
        cv2.imwrite(str(b / ("all" if m else "hem") / name),
                    cv2.cvtColor(make_cell_image(48, m, rng)[0], cv2.COLOR_RGB2BGR))
    merged = merge_datasets([load_dataset(a), load_dataset(b)])
    assert len(merged) == 8 + 2
    assert any("same file as" in r for _, r in merged.skipped)
    groups = merged.groups.tolist()
    assert groups.count("1") == 3 and "H7" in groups  # subject 1 from both folders is one group


def test_cli_train_on_two_folders_and_predict_csv_names_the_model(tmp_path, tiny_bundle, capsys):
    from trainer.cli.main import main

    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(12))[0]
    p = tmp_path / "crop.png"
    cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(p), "-m", str(tiny_bundle), "-o", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows and all(r["model"] == "crop model" for r in rows)
