"""End to end: generated folder -> train -> bundle -> load -> predict, and what goes wrong safely."""
import dataclasses
import shutil
import time
import zipfile

import numpy as np
import pytest
from conftest import rewrite_bundle

from trainer.config import FinetuneConfig
from trainer.inference.bundle import load_bundle, read_manifest, save_bundle
from trainer.inference.predictor import PREDICT_STAGES, Predictor
from trainer.inference.results import DECISION_ALL, DECISION_NORMAL, DECISION_UNCERTAIN
from trainer.io.synthetic import make_cell_image, make_smear_field
from trainer.training.pipeline import train, train_stages
from trainer.util.errors import BundleError, Cancelled, DataError
from trainer.util.progress import Stages
from trainer.vision import fingerprint


def test_training_writes_a_complete_model_card(tiny_training, tiny_config):
    card = tiny_training.card
    assert card["trained_on"]["n_images"] == 24
    assert card["trained_on"]["class_counts"] == {"normal": 12, "ALL": 12}
    assert card["split"]["protocol"] == "subject"  # subject ids are known from the C-NMC names
    assert card["split"]["n_train"] + card["split"]["n_validation"] + card["split"]["n_test"] == 24
    assert card["method"]["backbones"] == {"densenet121": "none", "resnet34": "none"} or \
        all(v.startswith("none") for v in card["method"]["backbones"].values())
    assert set(card["metrics"]["test"]) >= {"svm", "knn", "rf", "adaboost", "mlp", "ensemble", "ensemble_calibrated"}
    assert 0.0 <= card["method"]["threshold"] <= 1.0
    assert "not for clinical diagnosis" in card["intended_use"].lower()
    manifest = read_manifest(tiny_training.bundle_path)
    assert manifest["config"]["image_size"] == tiny_config.image_size


def test_synthetic_classes_are_learned(tiny_predictor):
    # held-out generated cells of both kinds: the calibrated ensemble separates them
    p = tiny_predictor
    rng = np.random.default_rng(123)
    ys = np.array([0, 1] * 6)
    images = [make_cell_image(64, malignant=bool(m), rng=rng)[0] for m in ys]
    probs = np.array([r.whole.probability for r in p.predict_batch(images)])
    assert probs[ys == 1].mean() > probs[ys == 0].mean() + 0.2
    assert np.mean((probs >= p.threshold) == ys) >= 0.75


def test_batch_progress_goes_through_its_stages_once(tiny_predictor):
    rng = np.random.default_rng(4)
    images = [make_cell_image(64, malignant=bool(i % 2), rng=rng)[0] for i in range(3)]
    images.append(make_smear_field(160, n_wbc=2, rng=rng)[0])
    seen = []
    tiny_predictor.predict_batch(images, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    assert seen[-1] == (1.0, "Classified 4 images")
    _, end = Stages(None, PREDICT_STAGES).share("segmentation")
    assert [f for f, m in seen if m.startswith("Segmented")] == pytest.approx([end * k / 4 for k in (1, 2, 3, 4)])
    seen.clear()
    assert tiny_predictor.predict_batch([], progress=lambda f, m: seen.append((f, m))) == []
    assert seen == [(1.0, "Classified 0 images")]


def test_bundle_round_trip_gives_identical_probabilities(tiny_training, tiny_predictor, tmp_path):
    p1 = tiny_predictor
    copy = save_bundle(tmp_path / "copy.allmodel", load_bundle(tiny_training.bundle_path))
    p2 = Predictor.from_bundle(copy)
    img, _ = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))
    a, b = p1.predict(img).whole, p2.predict(img).whole
    assert a.probability == b.probability and a.raw_probability == b.raw_probability
    assert [v.probability for v in a.votes] == [v.probability for v in b.votes]
    assert p1.threshold == p2.threshold


def test_prediction_contents_single_cell_and_field(tiny_predictor):
    p = tiny_predictor
    img, mask = make_cell_image(64, malignant=False, rng=np.random.default_rng(9))
    r = p.predict(img)
    assert r.kind == "single_cell" and r.cells == []
    assert r.nucleus_mask.shape == (64, 64)
    assert len(r.whole.contour) >= 3 and r.whole.area_px == pytest.approx(mask.sum(), rel=0.35)
    assert 0 < r.whole.nc_ratio < 1
    assert [v.name for v in r.whole.votes] == ["svm", "knn", "rf", "adaboost", "mlp"]
    assert sum(v.weight for v in r.whole.votes) == pytest.approx(1.0)
    # the raw ensemble score is the model's combiner (stacked, or the eq. 8 weights) of the votes shown
    m = p.models[r.model]
    m = getattr(m, "exact_model", m)  # a numpy read-out's numbers are its rebuilt model's
    expected = m._combine(np.array([[v.probability for v in r.whole.votes]]))[0]
    assert r.whole.raw_probability == pytest.approx(expected)

    field, masks = make_smear_field(224, n_wbc=3, rng=np.random.default_rng(2))
    f = p.predict(field)
    assert f.kind == "field" and len(f.cells) == 3
    for c in f.cells:
        x, y, w, h = c.bbox
        assert w > 0 and h > 0 and x + w <= 224 and y + h <= 224 and len(c.contour) >= 3
    assert f.probability == max(c.probability for c in f.cells)
    # the decision follows the threshold without any recomputation (for a cell inside the model's domain;
    # the crop-only model may call a field's cells outside training)
    cell = dataclasses.replace(f.cells[0], domain_checks=[])
    t = cell.probability
    assert cell.decision(t - 0.2) == DECISION_ALL
    assert cell.decision(t + 0.2) == DECISION_NORMAL
    assert cell.decision(t) == DECISION_UNCERTAIN
    assert sum(f.count(0.5).values()) == 3


def test_tampered_truncated_and_foreign_bundles_are_refused(tiny_bundle, tmp_path):
    data = bytearray(tiny_bundle.read_bytes())
    bad = tmp_path / "flipped.allmodel"
    data[len(data) // 2] ^= 0x55
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        Predictor.from_bundle(bad)
    cut = tmp_path / "cut.allmodel"
    cut.write_bytes(tiny_bundle.read_bytes()[: len(data) // 3])
    with pytest.raises(BundleError, match="truncated|not an allgui"):
        load_bundle(cut)
    foreign = tmp_path / "foreign.allmodel"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(BundleError, match="not an allgui model"):
        load_bundle(foreign)
    # a consistent-looking bundle whose model part is replaced by a pickle is refused, not run
    import pickle
    member = read_manifest(tiny_bundle)["models"]["single_cell"]["member"]
    swapped = rewrite_bundle(tiny_bundle, tmp_path / "swapped.allmodel", replace={member: pickle.dumps(print)})
    with pytest.raises(BundleError):
        load_bundle(swapped)


def test_backbones_that_do_not_match_the_fingerprint_are_refused(tiny_bundle):
    b = load_bundle(tiny_bundle)
    b.config = dataclasses.replace(b.config, seed=b.config.seed + 1)  # other random init
    with pytest.raises(BundleError, match="does not give the features"):
        Predictor(b)


def _with_fingerprint(src, dst, probes: dict, version: int):
    """``src`` rewritten as format ``version`` whose only fingerprint arrays are ``probes``."""
    import safetensors.numpy
    with zipfile.ZipFile(src) as z:
        arrays = {k: v for k, v in safetensors.numpy.load(z.read("arrays.safetensors")).items()
                  if not fingerprint.is_fingerprint(k)}
    return rewrite_bundle(src, dst, replace={"arrays.safetensors": safetensors.numpy.save({**arrays, **probes})},
                          change=lambda m: m.update(format_version=version))


def test_the_fingerprint_is_taken_at_the_probe_size_and_older_bundles_still_checked(tiny_bundle, tiny_predictor,
                                                                                     tmp_path):
    b = load_bundle(tiny_bundle)
    stored = {k: v for k, v in b.arrays.items() if fingerprint.is_fingerprint(k)}
    assert sorted(stored) == ["probe64/densenet121", "probe64/resnet34"]
    assert read_manifest(tiny_bundle)["format_version"] == 3
    ex = tiny_predictor.extractor

    def networks_only(probes):  # the extractor has the nucleus block too; bundles fingerprint the networks
        return {k: v for k, v in probes.items() if not k.endswith("/nucleus")}

    small, legacy = networks_only(fingerprint.compute(ex)), networks_only(fingerprint.compute(ex, legacy=True))
    assert ex.image_size == b.config.image_size != fingerprint.PROBE_INPUT  # put back after the probe
    for name in ("densenet121", "resnet34"):
        np.testing.assert_allclose(small[f"probe64/{name}"], stored[f"probe64/{name}"], rtol=1e-5, atol=1e-6)
        # the two sizes give other features: a check of one kind is not passed by the other's numbers
        assert fingerprint.relative_error(legacy[f"probe/{name}"], small[f"probe64/{name}"]) > 0.05
    # a format-2 bundle (fingerprint at the input size) loads by either path and predicts the same
    v2 = _with_fingerprint(tiny_bundle, tmp_path / "v2.allmodel", legacy, 2)
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))[0]
    want = tiny_predictor.predict(img).whole.probability
    assert Predictor.from_bundle(v2).predict(img).whole.probability == pytest.approx(want, abs=1e-12)
    assert Predictor(load_bundle(v2)).predict(img).whole.probability == pytest.approx(want, abs=1e-12)
    # ... and its check still bites: the same numbers off by 10 % are refused
    off = {k: v * 1.1 for k, v in legacy.items()}
    with pytest.raises(BundleError, match="does not give the features"):
        Predictor.from_bundle(_with_fingerprint(tiny_bundle, tmp_path / "off.allmodel", off, 2))
    # the probe-size numbers stored under a format-2 bundle are checked at the input size: refused
    with pytest.raises(BundleError, match="does not give the features"):
        Predictor.from_bundle(_with_fingerprint(tiny_bundle, tmp_path / "mixed.allmodel",
                                                {k.replace("probe64/", "probe/"): v for k, v in small.items()}, 2))


def test_loading_builds_the_networks_beside_the_classifiers_and_still_checks_them(tiny_bundle, tmp_path):
    # from_bundle builds and fingerprints the networks in a second thread while the classifiers load:
    # same predictions as the one-thread path, and networks that differ are still refused
    img, _ = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))
    predictor = Predictor.from_bundle(tiny_bundle)
    t0 = time.perf_counter()
    overlapped = predictor.predict(img)
    wall = time.perf_counter() - t0
    assert 0.5 * wall <= overlapped.seconds <= wall  # the time the window shows covers the networks too
    sequential = Predictor(load_bundle(tiny_bundle)).predict(img)
    assert overlapped.whole.probability == sequential.whole.probability
    assert [v.probability for v in overlapped.whole.votes] == [v.probability for v in sequential.whole.votes]

    def other_seed(manifest):
        manifest["config"]["seed"] += 1

    with pytest.raises(BundleError, match="does not give the features"):
        Predictor.from_bundle(rewrite_bundle(tiny_bundle, tmp_path / "seed.allmodel", change=other_seed))


def test_cancel_and_failure_leave_the_previous_model_intact(tiny_config, tiny_bundle, tmp_path):
    target = tmp_path / "current.allmodel"
    shutil.copy(tiny_bundle, target)
    before = target.read_bytes()
    cfg = dataclasses.replace(tiny_config, output=str(target), cache_dir=None)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        train(cfg, cancel=cancel)
    assert target.read_bytes() == before
    with pytest.raises(DataError):
        train(dataclasses.replace(cfg, data=str(tmp_path / "missing")))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["current.allmodel"]  # no temp files left


def test_one_class_folder_and_unreadable_files(tiny_config, tmp_path):
    from trainer.io.synthetic import write_dataset
    root = write_dataset(tmp_path / "d", layout="cnmc", n_per_class=6, size=48, seed=1, n_subjects=3)
    shutil.rmtree(root / "hem")
    with pytest.raises(DataError, match="one class|only"):
        train(dataclasses.replace(tiny_config, data=str(root), output=str(tmp_path / "m.allmodel")))

    root2 = write_dataset(tmp_path / "e", layout="cnmc", n_per_class=6, size=48, seed=2, n_subjects=3)
    (root2 / "all" / "UID_99_1_1_all.bmp").write_bytes(b"not an image")
    result = train(dataclasses.replace(tiny_config, data=str(root2), output=str(tmp_path / "m.allmodel"),
                                       cache_dir=None))
    skipped = result.card["trained_on"]["skipped_files"]
    assert result.card["trained_on"]["n_skipped"] == 1 and "UID_99_1_1_all.bmp" in skipped[0][0]
    assert result.card["trained_on"]["n_images"] == 12


def test_finetuned_backbones_travel_in_the_bundle(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, image_size=32, finetune=True,
                              finetuning=FinetuneConfig(epochs=1),
                              output=str(tmp_path / "ft.allmodel"), cache_dir=None,
                              classifiers=("svm", "knn"))
    seen = []
    result = train(cfg, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0 and seen[-1][1].startswith("Saved")
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    # the epochs' reports fill the fine-tuning stage's share of the bar
    lo, hi = Stages(None, train_stages(cfg)).share("fine-tuning")
    epochs = [f for f, m in seen if "epoch" in m]
    assert epochs and all(lo <= f <= hi for f in epochs) and max(epochs) == pytest.approx(hi)
    assert result.card["method"]["finetuned"] is True
    assert set(result.card["finetune"]) == {"densenet121", "resnet34"}
    bundle = load_bundle(result.bundle_path)
    assert set(bundle.backbone_state) == {"densenet121", "resnet34"}
    assert all(v.startswith("finetuned:") for v in result.card["method"]["backbones"].values())
    # loading verifies the probe features computed at training time: the fine-tuned weights
    # from the bundle reproduce them, the random initialisation they started from does not
    p = Predictor.from_bundle(result.bundle_path)
    img, _ = make_cell_image(64, malignant=True, rng=np.random.default_rng(11))
    assert 0.0 <= p.predict(img).whole.probability <= 1.0
    bundle.backbone_state = None
    with pytest.raises(BundleError, match="does not give the features"):
        Predictor(bundle)


def test_fields_are_judged_by_the_unit_the_model_was_trained_on(tiny_bundle, tiny_predictor):
    field, _ = make_smear_field(224, n_wbc=3, rng=np.random.default_rng(8))
    # trained on single-cell crops: a field is as suspicious as its most suspicious cell
    assert tiny_predictor.field_unit == "cells"
    by_cells = tiny_predictor.predict(field)
    assert by_cells.field_by_cells and by_cells.probability == max(c.probability for c in by_cells.cells)
    # one model for every kind (bundles before per-kind models) trained on smear fields: the whole
    # field decides, the cells are there for review
    from conftest import as_single_model
    b = as_single_model(load_bundle(tiny_bundle))
    b.card["trained_on"]["image_kinds"] = {"single_cell": 0.05, "field": 0.95, "n_checked": 200}
    p = Predictor(b)
    by_image = p.predict(field)
    assert p.field_unit == "image" and not by_image.field_by_cells
    assert by_image.probability == by_image.whole.probability
    # the file's numpy read-out and the in-memory model agree to about 1e-13 (README, Model bundles)
    assert [c.probability for c in by_image.cells] == pytest.approx([c.probability for c in by_cells.cells],
                                                                     abs=1e-12)


def test_odd_images_get_clear_messages_or_notes(tiny_predictor):
    from trainer.util.errors import ImageReadError
    with pytest.raises(ImageReadError, match="too small"):
        tiny_predictor.predict(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageReadError):
        tiny_predictor.predict(np.zeros((4, 4, 4, 4), np.uint8))
    gray = tiny_predictor.predict(make_cell_image(64, malignant=False, rng=np.random.default_rng(3))[0][..., 1])
    assert gray.shape == (64, 64)  # grey arrays are accepted as RGB
    empty = tiny_predictor.predict(np.full((80, 80, 3), 255, np.uint8))
    assert empty.kind == "field" and empty.cells == []
    assert empty.notes and "No white cell was found" in empty.notes[0]


def test_operating_points_on_validation_and_held_out_test(tiny_training, tiny_predictor):
    t = tiny_predictor.threshold
    crop_model = tiny_training.model.models["single_cell"]
    yv, pv = crop_model.validation_["y"], crop_model.validation_["calibrated"]
    assert tiny_predictor.operating_point(t) == (np.mean(pv[yv == 1] >= t), np.mean(pv[yv == 0] < t))
    yt, pt = tiny_training.evaluation["y"], tiny_training.evaluation["calibrated"]
    sens, spec = tiny_predictor.test_operating_point(t)
    assert sens == pytest.approx(np.mean(pt[yt == 1] >= t)) and spec == pytest.approx(np.mean(pt[yt == 0] < t))
    assert tiny_predictor.test_operating_point(0.0) == (1.0, 0.0)


def test_bundle_with_a_foreign_classifier_is_refused(tiny_bundle, tmp_path):
    from sklearn.linear_model import LogisticRegression
    b = load_bundle(tiny_bundle)
    b.model.models["single_cell"].ensemble_.estimators_["svm"] = LogisticRegression()
    bad = save_bundle(tmp_path / "foreign_clf.allmodel", b)
    with pytest.raises(BundleError, match="LogisticRegression"):
        load_bundle(bad)


def test_model_card_intervals_resample_test_subjects(tiny_training, tiny_config):
    from trainer.io.data import load_dataset
    from trainer.training.pipeline import split_dataset
    ds = load_dataset(tiny_config.data)
    _, _, te = split_dataset(ds.samples, "subject", tiny_config)
    g, y = ds.groups[te], ds.labels[te]
    k = {"0": len(set(g[y == 0])), "1": len(set(g[y == 1]))}
    for name, r in tiny_training.card["metrics"]["test"].items():
        assert r["ci_method"] == "group" and r["n_groups"] == k, name
        assert (r["ci_warning"] is not None) == (min(k.values()) < 3)
    assert tiny_training.card["metrics"]["validation"]["svm"]["ci_method"] is None  # no interval
