"""skops, the pickle-free format of a model bundle's classifiers, imported at a fraction of its cost.

On import, skops lists every scikit-learn estimator to build its default allow-list, which imports all
of scikit-learn (and torch, through scikit-learn's array-API shim), and then looks for every SciPy
ufunc in every loaded module: the larger part of a prediction's start-up. allgui passes its own allow-list
(``SKLEARN_ESTIMATORS``, the estimators it writes) to every load, so skops is shown only those while it
imports. Saving a bundle and rebuilding its models (prediction included) import it.
Were skops to build its list another way, it would import as slowly as before and load the same.
"""
from __future__ import annotations

import importlib
import sys

import sklearn.utils

#: the scikit-learn estimators a bundle written by allgui holds (full type names); with
#: ``trainer.inference.bundle``'s own types and scikit-learn internals, nothing else is loaded
SKLEARN_ESTIMATORS = frozenset({
    "sklearn.calibration.CalibratedClassifierCV", "sklearn.decomposition._pca.PCA",
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.ensemble._weight_boosting.AdaBoostClassifier",
    "sklearn.isotonic.IsotonicRegression", "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier", "sklearn.neighbors._unsupervised.NearestNeighbors",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._label.LabelBinarizer", "sklearn.svm._classes.SVC",
    "sklearn.tree._classes.DecisionTreeClassifier",
})


def _estimators(*_args, **_kwargs) -> list[tuple[str, type]]:
    """``sklearn.utils.all_estimators``' answer, limited to SKLEARN_ESTIMATORS."""
    out = []
    for name in sorted(SKLEARN_ESTIMATORS):
        module, _, cls = name.rpartition(".")
        out.append((cls, getattr(importlib.import_module(module), cls)))
    return out


def _import_skops_io():
    if "skops.io" not in sys.modules:
        everything = sklearn.utils.all_estimators
        sklearn.utils.all_estimators = _estimators
        try:
            import skops.io  # noqa: F401 - imported here, under the narrowed list
        finally:
            sklearn.utils.all_estimators = everything
    return sys.modules["skops.io"]


skops_io = _import_skops_io()
