"""Weighted voting ensemble of the base classifiers (paper, eq. 8)."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.validation import check_is_fitted

from trainer.classical.classifiers import fit_balanced, make_classifiers
from trainer.config import CLASSIFIER_NAMES
from trainer.util.errors import DataError


class WeightedVotingEnsemble(ClassifierMixin, BaseEstimator):
    """Five base classifiers whose votes are weighted by their validation balanced accuracy.

    ``fit(X, y, X_val, y_val)`` fits every classifier on (X, y) and sets its weight to its
    balanced accuracy on (X_val, y_val), normalised to sum to 1 (eq. 8 with balanced instead of plain
    accuracy). Plain accuracy rewards a classifier that calls everything ALL on a validation split of
    mostly ALL images (C-NMC's was 95 % ALL); balanced accuracy gives such a classifier 0.5, its worth.
    Without validation data the weights are equal.

    Learned: ``estimators_`` (name -> fitted classifier), ``names_`` (order used in arrays),
    ``val_accuracy_`` (name -> plain accuracy, reported), ``val_balanced_accuracy_`` (name -> balanced
    accuracy, the weight before normalising), ``weights_`` (n_classifiers,), ``classes_``.
    """

    def __init__(self, classifiers: tuple[str, ...] = CLASSIFIER_NAMES, seed: int = 0):
        self.classifiers = classifiers
        self.seed = seed

    def fit(self, X, y, X_val=None, y_val=None, progress=None, groups=None):
        """Fit on (X (N, D), y (N,)); weights from (X_val, y_val); ``groups`` (N,) subject ids."""
        X = np.asarray(X)
        y = np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the training split holds only one class")
        if np.bincount(y).min() < 2:
            raise DataError("The training split needs at least 2 images of each class; add images or use "
                            "the image-level split.")
        self.classes_ = np.array([0, 1])
        self.names_ = list(self.classifiers)
        unfitted = make_classifiers(self.seed, self.names_, n_train=int(np.bincount(y).min()))
        self.estimators_ = {}
        for i, name in enumerate(self.names_):
            if progress:
                progress(i / len(self.names_), f"fitting {name}")
            self.estimators_[name] = fit_balanced(name, unfitted[name], X, y, self.seed, groups)
        self._set_weights(X_val, y_val)
        return self

    def _set_weights(self, X_val, y_val) -> None:
        """Eq. 8's weights: each classifier's balanced accuracy on (X_val, y_val), normalised; equal without."""
        if X_val is not None and y_val is not None and len(y_val):
            y_val = np.asarray(y_val).astype(int)
            votes = self._votes(np.asarray(X_val))
            self.val_accuracy_ = {n: float(np.mean(votes[:, i] == y_val)) for i, n in enumerate(self.names_)}
            self.val_balanced_accuracy_ = {n: float(balanced_accuracy_score(y_val, votes[:, i]))
                                           for i, n in enumerate(self.names_)}
        else:
            self.val_accuracy_ = {n: 1.0 for n in self.names_}
            self.val_balanced_accuracy_ = dict(self.val_accuracy_)
        w = np.array([self.val_balanced_accuracy_[n] for n in self.names_], dtype=float)
        self.weights_ = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))

    def probabilities_and_votes(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(N, C) P(class 1) and (N, C) 0/1 votes of every classifier from one predict_proba each.

        Each of the five classifiers' ``predict`` is the argmax of its ``predict_proba`` (ties to
        class 0), so the vote is taken from the probabilities instead of a second pass over
        every tree and stump (that pass cost as much as both CNNs on a single image).
        """
        probas = [self.estimators_[n].predict_proba(X) for n in self.names_]
        P = np.column_stack([p[:, 1] for p in probas])
        V = np.column_stack([np.argmax(p, axis=1) for p in probas]).astype(int)
        return P, V

    def _votes(self, X) -> np.ndarray:
        """(N, n_classifiers) each classifier's own 0/1 decision."""
        return self.probabilities_and_votes(X)[1]

    def predict_details(self, X) -> dict[str, np.ndarray]:
        """Every classifier's probability and vote plus the two ensemble scores.

        Returns ``probabilities`` (N, C), ``votes`` (N, C) int, ``weights`` (C,),
        ``vote_share`` (N,) = sum_i w_i 1{h_i = 1} (eq. 8; ALL when > 0.5), and ``raw`` (N,) =
        sum_i w_i p_i, the weighted soft vote used as the continuous ensemble score.
        """
        check_is_fitted(self, "estimators_")
        X = np.asarray(X)
        P, V = self.probabilities_and_votes(X)
        return {"probabilities": P, "votes": V, "weights": self.weights_.copy(),
                "vote_share": V @ self.weights_, "raw": P @ self.weights_}

    def predict_proba(self, X):
        raw = self.predict_details(X)["raw"]
        return np.column_stack([1 - raw, raw])

    def predict(self, X):
        return (self.predict_details(X)["vote_share"] > 0.5).astype(int)
