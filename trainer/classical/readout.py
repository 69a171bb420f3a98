"""A saved model's classical stage computed with numpy alone: prediction without scikit-learn.

Importing scikit-learn (and, through it, SciPy's statistics) and rebuilding a model with skops cost about
a second of every start-up of ``allgui-train predict`` and of every model load in the app.
:class:`ModelReadout` reads the arrays of a saved :class:`trainer.classical.model.AllModel` from its skops
payload (:mod:`trainer.classical.skopsread`; no code of the payload runs) and computes what
``AllModel.predict_details`` computes, the same formulas in the same order:

- the fusion (per-block standardisation, optional per-block L2, L2, PCA), the forest and AdaBoost
  (:mod:`trainer.classical.treewalk`), KNN's neighbour counts, the eq. 8 weights and the stacked
  combiner, and the isotonic calibration give scikit-learn's numbers;
- the RBF SVM's kernel sums and the logistic functions (SVM sigmoid, MLP output, Platt calibration) may
  differ from scikit-learn's in the last bits: about 1e-15 here, checked to within ``TOLERANCE``.

Where that could change a decision, the row is left to the exact model (``exact``, the skops rebuild):
a member's probability within ``TOLERANCE`` of 1/2, a calibrated probability within ``TOLERANCE`` of the
model's threshold, or a KNN neighbour set that rounding could change (a tie at the k-th distance between
training rows of both classes). :func:`agrees` checks a read-out against the fitted model when a bundle
is saved; only then does the manifest offer it.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer.classical import skopsread
from trainer.classical.kinds import PLATT_EPS, join_blocks, logit, operating_point, roc_points, stacked_score, tie_break
from trainer.classical.skopsread import Obj, SchemaError
from trainer.classical.treewalk import Trees, forest_proba, samme_proba
from trainer.util.threads import ONE_THREAD_ROWS, one_thread

#: largest difference from scikit-learn's probabilities the read-out may have (measured: about 1e-15)
TOLERANCE = 1e-9
#: relative width of the band around the k-th neighbour distance inside which rounding could reorder rows
KNN_TIE = 1e-9

_PREFIX = "sklearn."
_MODULES = {"model": "trainer.classical.model.AllModel", "fusion": "trainer.classical.fusion.FeatureFusion",
            "ensemble": "trainer.classical.ensemble.WeightedVotingEnsemble",
            "stacker": "trainer.classical.stacking.StackedCombiner",
            "calibrator": "trainer.classical.calibration.ScoreCalibrator"}


def _expect(obj: Any, type_name: str) -> Obj:
    if not isinstance(obj, Obj) or obj.type != type_name:
        raise SchemaError(f"expected {type_name}, found {getattr(obj, 'type', type(obj).__name__)}")
    return obj


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _squared_distances(X: np.ndarray, Y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """(N, M) squared euclidean distances of rows ``X`` (N, D) to rows ``Y`` (M, D), ``y_sq`` (M,) their squares.

    As |x|^2 - 2 x.y + |y|^2 (scikit-learn's KNN does the same; libsvm sums the squared differences: the two
    differ by rounding, about 1e-16 of the squared norms), clipped at 0.
    """
    return np.maximum(np.square(X).sum(axis=1)[:, None] - 2.0 * (X @ Y.T) + y_sq[None], 0.0)


def _binary(obj: Obj) -> None:
    if not np.array_equal(np.asarray(obj["classes_"]), [0, 1]):
        raise SchemaError(f"{obj.type} is not a 0/1 classifier")


class _Fusion:
    """FeatureFusion.transform: (N, sum(dims)) -> (N, D') float64."""

    def __init__(self, obj: Obj) -> None:
        _expect(obj, _MODULES["fusion"])
        self.dims = tuple(int(d) for d in obj["dims"])
        self.block_l2 = bool(obj.get("block_l2", False))
        self.scalers = []
        for s in obj["scalers_"]:
            _expect(s, _PREFIX + "preprocessing._data.StandardScaler")
            if not (s["with_mean"] and s["with_std"]):
                raise SchemaError("a scaler without centring or scaling")
            self.scalers.append((np.asarray(s["mean_"], np.float64), np.asarray(s["scale_"], np.float64)))
        if [len(m) for m, _ in self.scalers] != list(self.dims):
            raise SchemaError("scalers do not match the blocks")
        pca = obj["pca_"]
        self.pca = None
        if pca is not None:
            _expect(pca, _PREFIX + "decomposition._pca.PCA")
            if pca["whiten"]:
                raise SchemaError("whitened PCA")
            components, mean = self.pca = (np.asarray(pca["components_"]), np.asarray(pca["mean_"]))
            if components.ndim != 2 or components.shape[1] != sum(self.dims) or mean.shape != (sum(self.dims),):
                raise SchemaError("PCA does not match the blocks")
        #: width of the fused features (N, width) the members take
        self.width = sum(self.dims) if self.pca is None else self.pca[0].shape[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        edges = np.cumsum((0,) + self.dims)
        blocks = []
        for (mean, scale), a, b in zip(self.scalers, edges[:-1], edges[1:]):
            block = X[:, a:b].copy()  # StandardScaler.transform, in place on a copy
            block -= mean
            block /= scale
            blocks.append(block)
        Z = join_blocks(blocks, self.block_l2)
        if self.pca is None:
            return Z
        components, mean = self.pca
        out = Z @ components.T
        out -= mean.reshape(1, -1) @ components.T
        return out


class _SVM:
    """CalibratedClassifierCV(SVC(kernel="rbf"), method="sigmoid").predict_proba."""

    exact = False

    def __init__(self, obj: Obj) -> None:
        _expect(obj, _PREFIX + "calibration.CalibratedClassifierCV")
        _binary(obj)
        self.parts = []
        for cc in obj["calibrated_classifiers_"]:
            _expect(cc, _PREFIX + "calibration._CalibratedClassifier")
            svc = _expect(cc["estimator"], _PREFIX + "svm._classes.SVC")
            _binary(svc)
            (sig,) = cc["calibrators"]
            _expect(sig, _PREFIX + "calibration._SigmoidCalibration")
            if cc["method"] != "sigmoid" or svc["kernel"] != "rbf" or svc["_sparse"]:
                raise SchemaError("an SVM other than a sigmoid-calibrated dense RBF SVC")
            sv = np.asarray(svc["support_vectors_"], np.float64)
            self.parts.append((sv, np.square(sv).sum(axis=1), float(svc["_gamma"]),
                               np.asarray(svc["_dual_coef_"], np.float64)[0],
                               float(np.asarray(svc["_intercept_"])[0]), float(sig["a_"]), float(sig["b_"])))
        self.width = self.parts[0][0].shape[1]
        if any(p[0].shape[1] != self.width or len(p[3]) != len(p[0]) for p in self.parts):
            raise SchemaError("support vectors and their coefficients do not match")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        total = np.zeros((len(X), 2))
        for sv, sv_sq, gamma, coef, intercept, a, b in self.parts:
            dec = -(np.exp(-gamma * _squared_distances(X, sv, sv_sq)) @ coef + intercept)
            p = _expit(-(a * dec + b))
            total += np.column_stack([1.0 - p, p])
        total /= len(self.parts)
        return total


class _KNN:
    """KNeighborsClassifier(weights="uniform", metric euclidean).predict_proba, with its ambiguous rows."""

    exact = True

    def __init__(self, obj: Obj) -> None:
        _expect(obj, _PREFIX + "neighbors._classification.KNeighborsClassifier")
        _binary(obj)
        if obj["weights"] != "uniform" or obj["effective_metric_"] != "euclidean" or obj["outputs_2d_"]:
            raise SchemaError("a KNN other than uniform euclidean")
        self.X = np.asarray(obj["_fit_X"], np.float64)
        self.y = np.asarray(obj["_y"]).astype(np.intp)
        self.k = int(obj["n_neighbors"])
        if not 1 <= self.k <= len(self.X) or len(self.y) != len(self.X) or not np.isin(self.y, (0, 1)).all():
            raise SchemaError("a KNN's training rows do not match")
        self.sq = np.square(self.X).sum(axis=1)
        self.width = self.X.shape[1]

    def predict_proba_ambiguous(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = _squared_distances(X, self.X, self.sq)
        kth = np.partition(d, self.k - 1, axis=1)[:, self.k - 1:self.k]
        band = KNN_TIE * (1.0 + kth + np.square(X).sum(axis=1)[:, None] + self.sq.max())
        inside, edge = d < kth - band, np.abs(d - kth) <= band
        ones = (inside & (self.y == 1)).sum(axis=1)
        count_in = inside.sum(axis=1)
        # rows at the k-th distance: which of them are neighbours is up to rounding, so their classes must agree
        edge_ones, edge_all = (edge & (self.y == 1)).sum(axis=1), edge.sum(axis=1)
        ambiguous = (edge_ones > 0) & (edge_ones < edge_all) | (count_in + edge_all < self.k)
        ones = ones + np.where(edge_ones == edge_all, self.k - count_in, 0)
        counts = np.column_stack([self.k - ones, ones]).astype(np.float64)
        return counts / counts.sum(axis=1, keepdims=True), ambiguous


class _Trees:
    """RandomForestClassifier or binary AdaBoostClassifier (SAMME) predict_proba."""

    exact = True

    def __init__(self, obj: Obj) -> None:
        _binary(obj)
        self.forest = obj.type == _PREFIX + "ensemble._forest.RandomForestClassifier"
        if not self.forest:
            _expect(obj, _PREFIX + "ensemble._weight_boosting.AdaBoostClassifier")
        arrays = []
        for t in obj["estimators_"]:
            tree = _expect(_expect(t, _PREFIX + "tree._classes.DecisionTreeClassifier")["tree_"],
                           _PREFIX + "tree._tree.Tree")
            nodes, values = tree["nodes"], np.asarray(tree["values"])
            if values.ndim != 3 or values.shape[1:] != (1, 2):
                raise SchemaError("a tree that is not binary")
            arrays.append((nodes["left_child"], nodes["right_child"], nodes["feature"], nodes["threshold"],
                           values[:, 0, :]))
        if not arrays:
            raise SchemaError("no trees")
        self.width = int(obj["n_features_in_"])
        self.trees = Trees(arrays, self.width)
        self.classes = np.asarray(obj["classes_"])
        if not self.forest:
            w = np.asarray(obj["estimator_weights_"], dtype=np.float64)
            self.weights, self.weight_sum = w[:len(arrays)], w.sum()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        values = self.trees.leaf_values(X)
        if self.forest:
            return forest_proba(values)
        return samme_proba(values, self.classes, self.weights, self.weight_sum)


class _MLP:
    """MLPClassifier (ReLU hidden layers, one logistic output).predict_proba."""

    exact = False

    def __init__(self, obj: Obj) -> None:
        _expect(obj, _PREFIX + "neural_network._multilayer_perceptron.MLPClassifier")
        _binary(obj)
        if obj["activation"] != "relu" or obj["out_activation_"] != "logistic":
            raise SchemaError("an MLP other than ReLU with a logistic output")
        self.layers = [(np.asarray(w), np.asarray(b)) for w, b in zip(obj["coefs_"], obj["intercepts_"])]
        if not self.layers or self.layers[-1][0].shape[1] != 1:
            raise SchemaError("an MLP without one output")
        self.width = self.layers[0][0].shape[0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        a = X
        for i, (w, b) in enumerate(self.layers):
            a = a @ w
            a += b
            if i < len(self.layers) - 1:
                np.maximum(a, 0, out=a)
        p = _expit(a).ravel()
        return np.vstack([1 - p, p]).T


_MEMBERS = {"svm": _SVM, "knn": _KNN, "rf": _Trees, "adaboost": _Trees, "mlp": _MLP}


class _Calibrator:
    """ScoreCalibrator.transform: Platt (logistic regression on the logit) or isotonic."""

    def __init__(self, obj: Obj) -> None:
        model = _expect(obj, _MODULES["calibrator"])["model_"]
        self.platt = model.type == _PREFIX + "linear_model._logistic.LogisticRegression"
        if self.platt:
            _binary(model)
            self.coef = np.asarray(model["coef_"], np.float64)
            self.intercept = np.asarray(model["intercept_"], np.float64)
            if self.coef.shape != (1, 1) or self.intercept.shape != (1,):
                raise SchemaError("a Platt calibrator of another shape")
        else:
            _expect(model, _PREFIX + "isotonic.IsotonicRegression")
            if model["out_of_bounds"] != "clip":
                raise SchemaError("an isotonic calibrator that does not clip")
            self.x = np.asarray(model["X_thresholds_"], np.float64)
            self.y = np.asarray(model["y_thresholds_"], np.float64)
            self.lo, self.hi = float(model["X_min_"]), float(model["X_max_"])
            if len(self.x) != len(self.y) or len(self.x) == 0 or np.any(np.diff(self.x) <= 0):
                raise SchemaError("isotonic thresholds out of order")

    def transform(self, s: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=float).ravel()
        if self.platt:
            p = _expit((logit(s, PLATT_EPS).reshape(-1, 1) @ self.coef.T + self.intercept).reshape(-1))
        else:
            p = self._isotonic(np.clip(s, self.lo, self.hi)) + tie_break(s)
        return np.clip(p, 0.0, 1.0)

    def _isotonic(self, t: np.ndarray) -> np.ndarray:
        """Scipy's interp1d(kind="linear") at ``t``, as IsotonicRegression builds it."""
        if len(self.x) == 1:
            return np.repeat(self.y, t.shape)
        hi = np.searchsorted(self.x, t).clip(1, len(self.x) - 1)
        lo = hi - 1
        slope = (self.y[hi] - self.y[lo]) / (self.x[hi] - self.x[lo])
        return slope * (t - self.x[lo]) + self.y[lo]


class ModelReadout:
    """``predict_details`` of a saved AllModel, in numpy (see the module's docstring).

    ``payload``: the model's skops bytes, as the bundle stores them (checksummed). ``exact``: returns the
    AllModel rebuilt from them, for rows the read-out leaves to it and for anything else asked of the
    model (attributes this class does not have are the exact model's). Raises SchemaError for a payload
    it cannot read; the caller then rebuilds the model instead.
    """

    def __init__(self, payload: bytes, exact: Callable[[], Any]) -> None:
        self._exact, self._lock, self._model = exact, threading.Lock(), None
        try:
            self._read(_expect(skopsread.read(payload), _MODULES["model"]))
        except SchemaError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:  # arrays of odd shapes or kinds
            raise SchemaError(f"the model's arrays do not fit together ({e})") from None

    def _read(self, root: Obj) -> None:
        self.backbones = tuple(root["backbones"])
        self.threshold_ = float(root["threshold_"])
        self.classifier_names_ = [str(n) for n in root["classifier_names_"]]
        self.fusion = _Fusion(root["fusion_"])
        ens = _expect(root["ensemble_"], _MODULES["ensemble"])
        estimators = ens["estimators_"]
        if list(ens["names_"]) != self.classifier_names_ or set(estimators) != set(self.classifier_names_):
            raise SchemaError("the ensemble's members do not match its names")
        self.members = [_MEMBERS[n](estimators[n]) if n in _MEMBERS else None for n in self.classifier_names_]
        if None in self.members:
            raise SchemaError("an unknown member")
        self.weights_ = np.asarray(ens["weights_"], np.float64)
        stacker = root.get("stacker_")
        self.stacker = None
        if stacker is not None:
            _expect(stacker, _MODULES["stacker"])
            self.stacker = (np.asarray(stacker["coef_"], np.float64), float(stacker["intercept_"]))
        self.calibrator = _Calibrator(root["calibrator_"])
        validation = root["validation_"]
        self.validation_ = {str(k): np.asarray(v) for k, v in validation.items()}
        if not {"y", "calibrated"} <= set(self.validation_):
            raise SchemaError("the validation scores are missing")
        if len(self.weights_) != len(self.members) or (self.stacker and len(self.stacker[0]) != len(self.members)):
            raise SchemaError("weights do not match the members")
        if any(m.width != self.fusion.width for m in self.members):
            raise SchemaError("a member does not take the fused features' width")

    @property
    def exact_model(self):
        """The AllModel itself, rebuilt on first use."""
        with self._lock:
            if self._model is None:
                self._model = self._exact()
            return self._model

    def __getattr__(self, name: str):  # anything else is the exact model's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.exact_model, name)

    @property
    def ensemble_(self):
        return self  # ``ensemble_.weights_``, as an AllModel has it

    def operating_point(self, threshold: float) -> tuple[float, float]:
        """(sensitivity, specificity) on the validation split at a calibrated-probability threshold."""
        return operating_point(self.validation_["y"], self.validation_["calibrated"], threshold)

    def validation_roc(self) -> dict[str, np.ndarray]:
        """``fpr``, ``tpr``, ``thresholds`` of the calibrated probability on the validation split."""
        return roc_points(self.validation_["y"], self.validation_["calibrated"])

    def details(self, feats: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(what ``AllModel.predict_details`` returns, (N,) rows the exact model must decide)."""
        missing = [b for b in self.backbones if b not in feats]
        if missing:
            raise ValueError(f"features missing for backbone(s) {missing}")
        X = np.hstack([np.asarray(feats[b], dtype=np.float32) for b in self.backbones])
        if X.ndim != 2 or X.shape[1] != sum(self.fusion.dims):
            raise ValueError(f"expected (N, {sum(self.fusion.dims)}) features, got {X.shape}")
        probas, ambiguous = [], ~np.isfinite(X).all(axis=1)
        with one_thread(user_api="blas") if len(X) <= ONE_THREAD_ROWS else contextlib.nullcontext():
            Z = self.fusion.transform(X)
            for m in self.members:
                if isinstance(m, _KNN):
                    p, unsure = m.predict_proba_ambiguous(Z)
                    ambiguous |= unsure
                else:
                    p = m.predict_proba(Z)
                    if not m.exact:
                        ambiguous |= np.abs(p[:, 1] - 0.5) <= TOLERANCE
                probas.append(p)
        P = np.column_stack([p[:, 1] for p in probas])
        V = np.column_stack([np.argmax(p, axis=1) for p in probas]).astype(int)
        det = {"probabilities": P, "votes": V, "weights": self.weights_.copy(),
               "vote_share": V @ self.weights_, "raw": P @ self.weights_}
        det["weighted"] = det["raw"]
        if self.stacker is not None:
            det["raw"] = stacked_score(P, *self.stacker)
        det["calibrated"] = self.calibrator.transform(det["raw"])
        ambiguous |= np.abs(det["calibrated"] - self.threshold_) <= TOLERANCE
        return det, ambiguous

    def predict_details(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every read-out of the model for feature rows ``feats`` (as ``AllModel.predict_details``)."""
        det, ambiguous = self.details(feats)
        if ambiguous.any():  # those rows as the exact model gives them
            rows = np.flatnonzero(ambiguous)
            exact = self.exact_model.predict_details({b: np.asarray(feats[b])[rows] for b in self.backbones})
            for key, value in det.items():
                if key != "weights":
                    value[rows] = exact[key]
        return det


def agrees(model, payload: bytes, n: int = 64, seed: int = 0) -> bool:
    """Whether the read-out of ``payload`` gives fitted AllModel ``model``'s results.

    Compared on ``n`` seeded rows drawn around the training features' means, scaled as they were: the same
    votes and probabilities within ``TOLERANCE``. Never raises: a read-out that cannot be built disagrees.
    """
    try:
        readout = ModelReadout(payload, exact=lambda: model)
        rng = np.random.default_rng(seed)
        X = np.hstack([mean + scale * rng.standard_normal((n, len(mean))) for mean, scale in readout.fusion.scalers])
        feats, edges = {}, np.cumsum((0,) + readout.fusion.dims)
        for b, lo, hi in zip(readout.backbones, edges[:-1], edges[1:]):
            feats[b] = X[:, lo:hi].astype(np.float32)
        det, _ = readout.details(feats)
        ref = model.predict_details(feats)
    except (SchemaError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return (np.array_equal(det["votes"], ref["votes"])
            and all(np.allclose(det[k], ref[k], rtol=0, atol=TOLERANCE)
                    for k in ("probabilities", "vote_share", "weighted", "raw", "calibrated")))
