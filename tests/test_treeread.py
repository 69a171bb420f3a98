"""The vectorised read-out of the forest and AdaBoost gives scikit-learn's own probabilities."""
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from trainer.classical import treeread
from trainer.classical.classifiers import fit_balanced, make_classifiers
from trainer.classical.ensemble import WeightedVotingEnsemble


def _data(n=300, d=24, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    X = rng.standard_normal((n, d)) + 0.5 * y[:, None] * (np.arange(d) < 6)
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    est = make_classifiers(seed=3, names=("rf", "adaboost"), n_train=int(np.bincount(y).min()))
    return {n: fit_balanced(n, e, X, y, seed=3) for n, e in est.items()}


@pytest.mark.parametrize("name", ["rf", "adaboost"])
@pytest.mark.parametrize("rows", [1, 5, treeread.MAX_ROWS])
def test_read_out_equals_scikit_learn_bit_for_bit(fitted, name, rows):
    est = fitted[name]
    X, _ = _data(n=rows, seed=rows + 10)
    X[0, :3] = 0.0  # some rows exactly on round values
    assert treeread._reader(est) is not None, "the read-out was refused by its own check"
    got = treeread.predict_proba(est, X)
    want = est.predict_proba(X)
    assert got.shape == (rows, 2)
    assert np.array_equal(got, want)


def test_a_read_out_that_disagrees_with_scikit_learn_is_not_used():
    X, y = _data(seed=5)
    rf = RandomForestClassifier(n_estimators=7, random_state=0).fit(X, y)
    true = rf.predict_proba
    rf.predict_proba = lambda Z: true(Z)[:, ::-1]  # stands in for another scikit-learn's arithmetic
    assert treeread._reader(rf) is None
    assert np.array_equal(treeread.predict_proba(rf, X[:3]), true(X[:3])[:, ::-1])


def test_many_rows_and_missing_values_take_scikit_learns_path(fitted):
    X, _ = _data(n=treeread.MAX_ROWS + 1, seed=9)
    assert np.array_equal(treeread.predict_proba(fitted["rf"], X), fitted["rf"].predict_proba(X))
    X[0, 0] = np.nan  # the forest sends missing values its own way
    assert np.array_equal(treeread.predict_proba(fitted["rf"], X[:2]), fitted["rf"].predict_proba(X[:2]))


def test_ensemble_members_probabilities_are_unchanged_for_one_image():
    X, y = _data(seed=2)
    ens = WeightedVotingEnsemble(seed=1).fit(X[:200], y[:200], X[200:], y[200:])
    P, V = ens.probabilities_and_votes(X[250:251])
    want = np.array([[ens.estimators_[n].predict_proba(X[250:251])[0, 1] for n in ens.names_]])
    assert np.array_equal(P, want)
    assert [V[0, j] for j in range(len(ens.names_))] == [
        ens.estimators_[n].predict(X[250:251])[0] for n in ens.names_]
