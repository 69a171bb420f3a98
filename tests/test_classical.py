"""Fusion, classifiers, weighted voting, calibration and the fitted AllModel on known data."""
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from trainer.classical.calibration import ScoreCalibrator
from trainer.classical.classifiers import fit_balanced, make_classifiers, oversample
from trainer.classical.ensemble import WeightedVotingEnsemble
from trainer.classical.fusion import FeatureFusion
from trainer.classical.model import fit_model
from trainer.config import TrainConfig


def blobs(n=240, d=(40, 20), shift=0.6, seed=0, pos_frac=0.5):
    """Two-backbone features where class 1 is shifted by ``shift`` in every dimension."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_frac).astype(int)
    feats = {"densenet121": rng.normal(5, 3, (n, d[0])) + shift * 3 * y[:, None],
             "resnet34": rng.normal(-2, 0.1, (n, d[1])) + shift * 0.1 * y[:, None]}
    return feats, y


def test_fusion_standardises_each_block_then_l2_normalises():
    feats, _ = blobs()
    X = np.hstack([feats["densenet121"], feats["resnet34"]])
    f = FeatureFusion(dims=(40, 20), pca=False).fit(X)
    Z = f.transform(X)
    assert Z.shape == (240, 60)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-9)
    # per-block standardisation: before L2 each block has mean 0 and unit variance, so both
    # blocks carry comparable energy despite raw scales of 3 vs 0.1
    energy = [np.mean(np.sum(Z[:, :40] ** 2, 1)), np.mean(np.sum(Z[:, 40:] ** 2, 1))]
    assert energy[0] == pytest.approx(40 / 60, abs=0.05)
    assert energy[1] == pytest.approx(20 / 60, abs=0.05)


def test_fusion_pca_keeps_requested_variance():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(200, 5))
    X = np.hstack([latent @ rng.normal(size=(5, 30)), latent @ rng.normal(size=(5, 10))])
    X += rng.normal(scale=1e-3, size=X.shape)
    f = FeatureFusion(dims=(30, 10), pca=True, variance=0.98).fit(X)
    assert f.n_components_ <= 5
    assert f.pca_.explained_variance_ratio_.sum() >= 0.98
    with pytest.raises(ValueError):
        f.transform(X[:, :39])


def test_fusion_keeps_its_projection_in_float32_and_projects_as_float64_would():
    feats, _ = blobs(n=300, seed=7)
    X = np.hstack(list(feats.values()))
    f = FeatureFusion(dims=(40, 20), pca=True, variance=0.98).fit(X)
    assert f.pca_.components_.dtype == np.float32
    Z = f._scaled(X[:50])
    exact = (Z - f.pca_.mean_) @ f.pca_.components_.astype(np.float64).T
    got = f.transform(X[:50])
    assert got.dtype == np.float64 and got.shape == (50, f.n_components_)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12)
    # a float32 projection is within float32 rounding of the float64 one PCA fitted
    from sklearn.decomposition import PCA
    full = PCA(n_components=0.98, svd_solver="full", random_state=0).fit(f._scaled(X))
    np.testing.assert_allclose(got, full.transform(Z), atol=1e-6)


def test_oversample_balances_classes():
    X = np.arange(10).reshape(-1, 1)
    y = np.array([0] * 8 + [1] * 2)
    Xb, yb = oversample(X, y, seed=0)
    assert np.bincount(yb).tolist() == [8, 8]
    assert set(Xb[yb == 1].ravel()) == {8, 9}


def test_paper_classifier_settings():
    c = make_classifiers(seed=0)
    assert list(c) == ["svm", "knn", "rf", "adaboost", "mlp"]
    assert c["knn"].n_neighbors == 5
    assert c["rf"].n_estimators == 100
    assert c["mlp"].hidden_layer_sizes == (64,) and c["mlp"].activation == "relu"
    assert c["svm"].estimator.kernel == "rbf"
    # the MLP stops early on its own held-out rows, except where they would be a handful of images
    assert c["mlp"].early_stopping and not make_classifiers(seed=0, n_train=20)["mlp"].early_stopping
    with pytest.raises(ValueError):
        make_classifiers(names=("svm", "xgboost"))


def test_ensemble_weights_are_normalised_validation_balanced_accuracies():
    feats, y = blobs(n=300, shift=0.5)
    X = np.hstack(list(feats.values()))
    ens = WeightedVotingEnsemble(seed=0).fit(X[:200], y[:200], X[200:], y[200:])
    from sklearn.metrics import balanced_accuracy_score
    votes = ens.predict_details(X[200:])["votes"]
    bal = np.array([balanced_accuracy_score(y[200:], votes[:, i]) for i in range(len(ens.names_))])
    np.testing.assert_allclose(ens.weights_, bal / bal.sum())
    assert ens.val_balanced_accuracy_ == dict(zip(ens.names_, bal))
    d = ens.predict_details(X[200:])
    assert d["probabilities"].shape == (100, 5) and d["votes"].shape == (100, 5)
    # eq. 8: the vote share is the weighted count of ALL votes
    np.testing.assert_allclose(d["vote_share"], d["votes"] @ ens.weights_)
    np.testing.assert_allclose(d["raw"], d["probabilities"] @ ens.weights_)
    assert np.mean(ens.predict(X[200:]) == y[200:]) > 0.8


def test_a_classifier_that_calls_everything_all_gets_little_weight_on_an_unbalanced_validation_split():
    """Eq. 8 by plain accuracy gave 'always ALL' 0.95 on a 95 % ALL validation split; balanced accuracy 0.5."""
    feats, y = blobs(n=400, shift=1.5)
    X = np.hstack(list(feats.values()))
    val = np.concatenate([np.flatnonzero(y[300:] == 1)[:57], np.flatnonzero(y[300:] == 0)[:3]]) + 300
    ens = WeightedVotingEnsemble(classifiers=("knn", "svm"), seed=0).fit(X[:300], y[:300], X[val], y[val])
    always_all = DummyClassifier(strategy="constant", constant=1).fit(X[:300], y[:300])  # ALL for every image
    ens.estimators_["knn"] = always_all
    ens._set_weights(X[val], y[val])
    assert ens.val_accuracy_["knn"] == pytest.approx(np.mean(y[val])) and np.mean(y[val]) > 0.9
    assert ens.val_balanced_accuracy_["knn"] == pytest.approx(0.5)
    assert ens.weights_[0] < ens.weights_[1]


def test_one_class_training_is_refused():
    X = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(ValueError, match="one class"):
        WeightedVotingEnsemble().fit(X, np.zeros(20, int))


def test_calibrator_improves_brier_of_a_miscalibrated_score():
    rng = np.random.default_rng(0)
    p_true = rng.random(4000)
    y = (rng.random(4000) < p_true).astype(int)
    s = p_true ** 3  # systematically too low
    cal = ScoreCalibrator("auto").fit(s[:2000], y[:2000])
    before = np.mean((s[2000:] - y[2000:]) ** 2)
    after = np.mean((cal.transform(s[2000:]) - y[2000:]) ** 2)
    assert cal.method_ in ("platt", "isotonic")
    assert set(cal.cv_brier_) == {"platt", "isotonic"}
    assert after < before - 0.01
    for m in ("platt", "isotonic"):
        q = ScoreCalibrator(m).fit(s, y).transform(np.linspace(0, 1, 50))
        assert np.all(np.diff(q) >= -1e-12) and q.min() >= 0 and q.max() <= 1


def test_all_model_threshold_and_operating_point():
    feats, y = blobs(n=300, shift=0.35, pos_frac=0.68, seed=3)
    m = fit_model(feats, y, np.arange(180), np.arange(180, 240), TrainConfig(seed=0, calibrate_on="cross-fit"))
    d = m.predict_details({k: v[240:] for k, v in feats.items()})
    acc = np.mean((d["calibrated"] >= m.threshold_) == y[240:])
    assert acc > 0.75
    sens, spec = m.operating_point(m.threshold_)
    # cross-fit: out-of-fold scores of the 180 training rows and the 60 validation rows
    # set the calibration and the threshold, and are what the operating point is read on
    assert m.calibrated_on_ == "cross-fit" and len(m.validation_["y"]) == 240
    assert np.array_equal(m.validation_["y"], np.concatenate([y[:180], y[180:240]]))
    yv, pv = m.validation_["y"], m.validation_["calibrated"]
    assert sens == pytest.approx(np.mean(pv[yv == 1] >= m.threshold_))
    assert spec == pytest.approx(np.mean(pv[yv == 0] < m.threshold_))
    # lowering the threshold can only raise sensitivity
    assert m.operating_point(0.0)[0] == 1.0 and m.operating_point(1.01)[1] == 1.0
    roc = m.validation_roc()
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1


def test_calibration_on_the_validation_split_alone():
    feats, y = blobs(n=300, shift=0.35, pos_frac=0.68, seed=3)
    cfg = TrainConfig(seed=0, calibrate_on="validation")  # eq. 8 weights (default), validation split only
    m = fit_model(feats, y, np.arange(180), np.arange(180, 240), cfg)
    assert m.calibrated_on_ == "validation" and m.combiner_ == "weighted"
    assert np.array_equal(m.validation_["y"], y[180:240])
    d = m.predict_details({k: v[240:] for k, v in feats.items()})
    assert np.allclose(d["raw"], d["probabilities"] @ d["weights"])  # eq. 8 soft vote


def test_all_model_single_backbone_and_no_pca():
    feats, y = blobs(n=200, shift=0.5)
    m = fit_model(feats, y, np.arange(120), np.arange(120, 160), TrainConfig(), backbones=("resnet34",), pca=False)
    assert m.fusion_.n_components_ == 20
    assert m.predict_proba({"resnet34": feats["resnet34"][160:]}).shape == (40, 2)


def test_votes_are_each_classifiers_own_predictions():
    feats, y = blobs(n=300, shift=0.3, seed=5)
    X = np.hstack(list(feats.values()))
    ens = WeightedVotingEnsemble(seed=0).fit(X[:200], y[:200], X[200:250], y[200:250])
    d = ens.predict_details(X[250:])
    for j, name in enumerate(ens.names_):
        np.testing.assert_array_equal(d["votes"][:, j], ens.estimators_[name].predict(X[250:]))


def test_the_model_does_not_depend_on_how_many_fits_run_side_by_side():
    feats, y = blobs(n=300, shift=0.35, pos_frac=0.68, seed=3)
    groups = np.arange(300) % 12
    test = {k: v[240:] for k, v in feats.items()}
    models = [fit_model(feats, y, np.arange(180), np.arange(180, 240), TrainConfig(seed=0, jobs=jobs), groups=groups)
              for jobs in (1, 2, 1)]
    first = models[0].predict_details(test)
    for m in models[1:]:
        d = m.predict_details(test)
        for k in ("probabilities", "votes", "raw", "calibrated"):
            np.testing.assert_array_equal(d[k], first[k])
        assert m.threshold_ == models[0].threshold_
        np.testing.assert_array_equal(m.validation_["calibrated"], models[0].validation_["calibrated"])


def test_svm_probability_rises_with_its_decision_value_and_is_calibrated():
    feats, y = blobs(n=400, shift=0.2, seed=5)
    X = np.hstack(list(feats.values()))
    svm = fit_balanced("svm", make_classifiers(0, ("svm",))["svm"], X[:300], y[:300], 0, groups=np.arange(300) % 9)
    decision = svm.calibrated_classifiers_[0].estimator.decision_function(X[300:])
    p = svm.predict_proba(X[300:])[:, 1]
    order = np.argsort(decision)
    assert np.all(np.diff(p[order]) >= 0) and np.ptp(p) > 0.5
    # a probability, not a squashed margin: right on average, and better than the base rate alone
    yt = y[300:]
    assert abs(p.mean() - yt.mean()) < 0.1
    assert np.mean((p - yt) ** 2) < 0.8 * yt.mean() * (1 - yt.mean())


def test_the_mlp_stops_early_on_subjects_it_did_not_see(monkeypatch):
    """Labels here can only be learnt by recognising subjects. With subject ids the MLP's early stopping
    holds out whole subjects, on which it cannot improve, so it stops sooner than when it holds out
    images of subjects it trains on."""
    from sklearn.neural_network import MLPClassifier
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(30), 8)
    y = (np.arange(30) % 2)[g]
    X = rng.normal(size=(30, 16))[g] * 2 + rng.normal(size=(g.size, 16)) * 0.5
    seen = []
    partial_fit = MLPClassifier.partial_fit
    monkeypatch.setattr(MLPClassifier, "partial_fit",
                        lambda self, Xp, *a, **k: seen.append(Xp) or partial_fit(self, Xp, *a, **k))
    by_subject = fit_balanced("mlp", make_classifiers(0, ("mlp",), n_train=120)["mlp"], X, y, 0, groups=g)
    trained_on = {tuple(r) for r in seen[0]}
    rows_per_subject = {s: sum(tuple(r) in trained_on for r in X[g == s]) for s in range(30)}
    assert set(rows_per_subject.values()) == {0, 8}            # a subject is held out whole or not at all
    held_out = [s for s, n in rows_per_subject.items() if n == 0]
    assert {0, 1} == set(y[np.isin(g, held_out)]) and 3 <= len(held_out) <= 10
    by_image = fit_balanced("mlp", make_classifiers(0, ("mlp",), n_train=120)["mlp"], X, y, 0)
    assert not by_subject.early_stopping and by_subject.n_iter_ < by_image.n_iter_
    # the model kept is fitted on every row for the chosen number of epochs: an ordinary MLP
    assert by_subject.n_iter_ <= by_subject.max_iter and by_subject.predict_proba(X).shape == (g.size, 2)
