"""The numpy read-out of a saved model: the fitted model's numbers without scikit-learn at prediction."""
import io
import json
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import skops.io

from trainer.classical import readout, skopsread
from trainer.classical.model import AllModel
from trainer.classical.readout import ModelReadout
from trainer.classical.treewalk import Trees
from trainer.inference.bundle import READOUT_VERSION, load_bundle, read_manifest, save_bundle
from trainer.inference.predictor import Predictor
from trainer.io.synthetic import make_cell_image

EXACT = ("knn", "rf", "adaboost")  # members the read-out computes bit for bit


def _features(n: int, seed: int, shift: float = 0.0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Two feature blocks (24 and 8 wide) of ``n`` rows whose class shows in a few columns; 6 subjects."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.standard_normal((n, 32)).astype(np.float32) * 2.0 + 3.0
    X[:, :4] += (1.2 * y[:, None] + shift).astype(np.float32)
    return {"a": X[:, :24], "b": X[:, 24:]}, y, np.arange(n) % 6


@pytest.fixture(scope="module", params=[
    dict(pca=True, calibration="platt", combiner="weighted"),
    dict(pca=False, calibration="isotonic", combiner="stacked", block_l2=True),
], ids=["pca-platt-weighted", "nopca-isotonic-stacked"])
def fitted(request):
    """(AllModel fitted on generated features, its skops payload, test rows)."""
    feats, y, g = _features(160, 0)
    val, yv, gv = _features(60, 1)
    model = AllModel(backbones=("a", "b"), seed=0, **request.param).fit(feats, y, val, yv, groups=g,
                                                                        val_groups=gv + 6)
    test, _, _ = _features(80, 2, shift=0.3)
    return model, skops.io.dumps(model), test


def test_the_readout_gives_the_fitted_models_numbers(fitted):
    model, payload, test = fitted
    assert model.calibrator_.method_ == model.calibration
    r = ModelReadout(payload, exact=lambda: pytest.fail("no row should need the exact model"))
    det, ambiguous = r.details(test)
    want = model.predict_details(test)
    assert not ambiguous.any()
    assert np.array_equal(det["votes"], want["votes"]) and np.array_equal(det["vote_share"], want["vote_share"])
    names = model.classifier_names_
    for j, name in enumerate(names):
        if name in EXACT:  # neighbour counts and trees: the same numbers
            assert np.array_equal(det["probabilities"][:, j], want["probabilities"][:, j]), name
    for key in ("probabilities", "weighted", "raw", "calibrated"):
        np.testing.assert_allclose(det[key], want[key], rtol=0, atol=1e-12)
    # the rows span a useful range, so the comparison means something
    assert want["calibrated"].min() < 0.3 and want["calibrated"].max() > 0.7
    assert set(det["votes"].ravel()) == {0, 1}
    assert r.threshold_ == model.threshold_ and r.backbones == model.backbones
    assert r.operating_point(0.5) == model.operating_point(0.5)
    assert readout.agrees(model, payload)


def test_rows_the_readout_cannot_vouch_for_come_from_the_exact_model(fitted, monkeypatch):
    model, payload, test = fitted
    built = []
    r = ModelReadout(payload, exact=lambda: built.append(1) or model)
    monkeypatch.setattr(readout, "TOLERANCE", 1.0)  # every row counts as too close to call
    got = r.predict_details(test)
    want = model.predict_details(test)
    assert built == [1]
    for key in want:
        assert np.array_equal(got[key], want[key]), key
    # anything the read-out does not compute is the exact model's
    assert r.validation_roc()["fpr"].tolist() == model.validation_roc()["fpr"].tolist() and built == [1]


def test_a_knn_tie_between_the_classes_is_left_to_the_exact_model():
    from sklearn.neighbors import KNeighborsClassifier

    # query 0 sits as far from a class-0 row as from a class-1 row, and they compete for the 3rd place
    rows = np.array([[0, 1], [0, -1], [0, 0.5], [0.3, 0], [5, 5], [5, 6], [6, 5], [6, 6]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    knn = KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(rows, labels)
    obj = skopsread.read(skops.io.dumps(knn))
    queries = np.array([[0.0, 0.0], [0.05, 0.3], [5.2, 5.3], [0.3, 0.1]])
    proba, ambiguous = readout._KNN(obj).predict_proba_ambiguous(queries)
    assert ambiguous.tolist() == [True, False, False, False]
    assert np.array_equal(proba[1:], knn.predict_proba(queries[1:]))


def test_a_bundle_offers_a_readout_only_when_it_agrees(tiny_training, tmp_path, monkeypatch):
    bundle = load_bundle(tiny_training.bundle_path)
    assert read_manifest(tiny_training.bundle_path)["models"]["single_cell"]["readout"] == READOUT_VERSION
    # an MLP read out 1e-6 off: the saved bundle does not offer its read-out, and a lazy load rebuilds
    off = readout._MLP.predict_proba
    monkeypatch.setattr(readout._MLP, "predict_proba", lambda self, X: off(self, X) + [[-1e-6, 1e-6]])
    path = save_bundle(tmp_path / "no-readout.allmodel", bundle)
    assert "readout" not in read_manifest(path)["models"]["single_cell"]
    lazy = load_bundle(path, lazy=True, readouts=True).model.models
    assert isinstance(lazy["single_cell"], AllModel) and lazy.rebuilt("single_cell")


@pytest.mark.parametrize("odd", ["unknown member", "arrays that do not fit"])
def test_a_payload_the_readout_cannot_read_is_rebuilt(tiny_bundle, tiny_predictor, monkeypatch, odd):
    if odd == "unknown member":
        monkeypatch.delitem(readout._MEMBERS, "mlp")  # as if the model held a member it does not know
    else:  # as if a tree's arrays were malformed
        monkeypatch.setattr(readout, "Trees", lambda *a: np.zeros((2, 2))[5])
    for lazy in (True, False):
        models = load_bundle(tiny_bundle, lazy=lazy, readouts=True).model.models
        assert isinstance(models["single_cell"], AllModel)
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(4))[0]
    p = Predictor.from_bundle(tiny_bundle)
    assert isinstance(p.model, AllModel)
    assert p.predict(img).whole.probability == pytest.approx(tiny_predictor.predict(img).whole.probability,
                                                             abs=1e-12)


def test_the_skops_reader_runs_and_loads_nothing_it_does_not_know():
    with pytest.raises(skopsread.SchemaError):
        skopsread.read(b"not a zip")
    obj = skopsread.read(skops.io.dumps({"x": np.arange(3), "y": [1.5, "two"]}))
    assert obj["x"].tolist() == [0, 1, 2] and obj["y"] == [1.5, "two"]
    with pytest.raises(skopsread.SchemaError):  # a random generator is not a value it reads
        skopsread.read(skops.io.dumps(np.random.RandomState(0)))
    # an object array (which would need unpickling) is refused, not loaded
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    schema = {"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy",
              "file": "x.npy"}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("schema.json", json.dumps(schema))
        zf.writestr("x.npy", buf.getvalue())
    with pytest.raises(skopsread.SchemaError):
        skopsread.read(out.getvalue())


def test_trees_whose_children_point_backwards_are_refused():
    left, right = np.array([1, -1, -1]), np.array([2, -1, -1])
    feature, threshold, value = np.array([0, -2, -2]), np.array([0.5, -2, -2]), np.ones((3, 2))
    assert Trees([(left, right, feature, threshold, value)], n_features=1).depth == 1
    with pytest.raises(ValueError):
        Trees([(np.array([1, 0, -1]), np.array([2, -1, -1]), feature, threshold, value)], n_features=1)
    with pytest.raises(ValueError):  # a feature the rows do not have
        Trees([(left, right, np.array([3, -2, -2]), threshold, value)], n_features=1)


def test_prediction_from_a_readout_imports_no_scikit_learn(tiny_bundle, tiny_predictor, tmp_path):
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))[0]
    path = tmp_path / "crop.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "rows.csv"
    code = (
        "import sys\n"
        "from trainer.cli.main import main\n"
        f"code = main(['predict', '-q', '-m', {str(tiny_bundle)!r}, {str(path)!r}, '-o', {str(out)!r}])\n"
        "print(code, sorted(m for m in ('sklearn', 'skops', 'scipy.stats', 'joblib') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.stdout.split() == ["0", "[]"], run.stderr
    import csv
    (row,) = list(csv.DictReader(out.open()))
    want = tiny_predictor.predict(img, path=str(path))
    assert float(row["probability"]) == pytest.approx(want.whole.probability, abs=1e-4)  # the CSV's 4 decimals
    assert row["decision"] == ("ALL blast" if want.whole.probability >= tiny_predictor.threshold else "normal")
    assert [float(row[f"p_{v.name}"]) for v in want.whole.votes] == pytest.approx(
        [v.probability for v in want.whole.votes], abs=1e-4)
    # and the read-out's numbers are the rebuilt model's, to rounding
    lazy = Predictor.from_bundle(tiny_bundle, lazy=True)
    assert isinstance(lazy.models["single_cell"], ModelReadout)
    rebuilt = Predictor.from_bundle(tiny_bundle, readouts=False).predict(img).whole.probability
    assert lazy.predict(img).whole.probability == pytest.approx(rebuilt, abs=1e-12)


def test_roc_points_are_scikit_learns():
    from sklearn.metrics import roc_curve

    from trainer.classical.kinds import roc_points
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 40, 300):
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        for score in (rng.random(n), np.round(rng.random(n), 1)):  # distinct scores, and many ties
            fpr, tpr, thr = roc_curve(y, score)
            got = roc_points(y, score)
            assert np.array_equal(got["fpr"], fpr) and np.array_equal(got["tpr"], tpr)
            assert np.array_equal(got["thresholds"], np.minimum(thr, 1.0))


def test_the_predictor_uses_readouts_unless_asked_not_to(tiny_bundle):
    read_out = Predictor.from_bundle(tiny_bundle)
    rebuilt = Predictor.from_bundle(tiny_bundle, readouts=False)
    assert isinstance(read_out.model, ModelReadout) and isinstance(rebuilt.model, AllModel)
    for key in ("fpr", "tpr", "thresholds"):
        assert np.array_equal(read_out.validation_roc[key], rebuilt.validation_roc[key])
    assert read_out.operating_point(0.4) == rebuilt.operating_point(0.4)
    assert read_out.classifier_weights == rebuilt.classifier_weights
    img = make_cell_image(64, malignant=False, rng=np.random.default_rng(9))[0]
    a, b = read_out.predict(img), rebuilt.predict(img)
    assert a.whole.probability == pytest.approx(b.whole.probability, abs=1e-12)
    assert [v.vote for v in a.whole.votes] == [v.vote for v in b.whole.votes]
