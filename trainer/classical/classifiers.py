"""The paper's five base classifiers, with class imbalance handled for each."""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from trainer.classical.stacking import inner_folds
from trainer.config import CLASSIFIER_NAMES

#: the MLP stops early (on held-out subjects, or images without subject ids) only with at least this many
#: images of each class
MLP_EARLY_STOP_MIN = 50

DISPLAY_NAMES = {"svm": "SVM", "knn": "KNN", "rf": "Random forest",
                 "adaboost": "AdaBoost", "mlp": "MLP (BPN)"}


def make_classifiers(seed: int = 0, names=CLASSIFIER_NAMES, n_train: int | None = None) -> dict:
    """Unfitted base classifiers by name.

    - svm: RBF SVC, class_weight balanced; probabilities by Platt scaling on internal 3-fold
      cross-validated decision values (replaces the deprecated ``SVC(probability=True)``).
    - knn: k = 5 (k shrinks for tiny training sets); balanced by oversampling in :func:`fit_balanced`.
    - rf: 100 trees, class_weight balanced.
    - adaboost: 100 decision stumps, balanced sample weights.
    - mlp: one hidden layer of 64 ReLU units, Adam, balanced sample weights; early stopping on held-out
      rows, off for small data (fewer than ``MLP_EARLY_STOP_MIN`` images in the smaller class). With
      subject ids the held-out rows are whole subjects (:func:`fit_mlp_by_subject`), else 10 % of the
      images (stratified). Trained until the training loss stalls the network fits the training
      subjects and ranks new ones worse: on C-NMC fold 1 early stopping ended after 69 epochs instead of
      422, and gave higher AUC and balanced accuracy in subject-grouped cross-validation, for the MLP and
      for the ensemble.

    ``n_train``: images of the smaller class in the training rows, where known.
    """
    k = 5 if n_train is None else max(1, min(5, n_train - 1))
    cv = 3 if n_train is None or n_train >= 12 else 2
    early_stop = n_train is None or n_train >= MLP_EARLY_STOP_MIN
    all_ = {
        "svm": CalibratedClassifierCV(SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced",
                                          random_state=seed),
                                      method="sigmoid", cv=cv, ensemble=False),
        # exact brute-force search: what 'auto' picks for fused features anyway, and it stores no
        # KD/ball tree, so a saved model holds only types the bundle loader allows
        "knn": KNeighborsClassifier(n_neighbors=k, algorithm="brute"),
        "rf": RandomForestClassifier(n_estimators=100, class_weight="balanced", random_state=seed,
                                     n_jobs=1),
        "adaboost": AdaBoostClassifier(n_estimators=100, random_state=seed),
        "mlp": MLPClassifier(hidden_layer_sizes=(64,), activation="relu", max_iter=500,
                             alpha=1e-3, early_stopping=early_stop, random_state=seed),
    }
    unknown = set(names) - set(all_)
    if unknown:
        raise ValueError(f"unknown classifier(s): {sorted(unknown)}; choose from {list(all_)}")
    return {n: all_[n] for n in names}


def fit_balanced(name: str, estimator, X: np.ndarray, y: np.ndarray, seed: int = 0,
                 groups: np.ndarray | None = None):
    """Fit ``estimator`` on (X, y) with the imbalance handling that suits it; returns it.

    ``groups`` (N,) subject ids, where known, keep a subject on one side of the SVM's internal
    Platt-scaling folds.
    """
    if name == "svm" and groups is not None:
        folds = inner_folds(y, groups, int(estimator.cv), seed)
        if folds:
            estimator.set_params(cv=folds).fit(X, y)
            return estimator.set_params(cv=len(folds))  # the fitted model keeps no index lists
    if name == "mlp" and groups is not None and estimator.early_stopping:
        return fit_mlp_by_subject(estimator, X, y, groups, seed)
    if name in ("adaboost", "mlp"):
        return estimator.fit(X, y, sample_weight=compute_sample_weight("balanced", y))
    if name == "knn":
        Xb, yb = oversample(X, y, seed)
        # KNN keeps its (oversampled) training rows: stored in float32 they take half the space in a
        # model bundle, and distances to them differ only by float32 rounding
        return estimator.fit(np.asarray(Xb, dtype=np.float32), yb)
    return estimator.fit(X, y)


def fit_mlp_by_subject(estimator: MLPClassifier, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       seed: int = 0) -> MLPClassifier:
    """An MLP like ``estimator`` fitted for as many epochs as serve subjects it did not see.

    scikit-learn's own early stopping holds out random images, so a subject's other images sit on both
    sides and the held-out score rewards recognising subjects. Here one grouped, stratified fold of
    whole subjects (:func:`~trainer.classical.stacking.inner_folds`, about a fifth) is held out; the
    network trains on the rest one epoch at a time (``partial_fit``, balanced sample weights) until
    the held-out balanced accuracy has not improved by ``tol`` for ``n_iter_no_change`` epochs; then a
    copy of ``estimator`` is trained the same way on every row for the best epoch count (``estimator``
    itself is left unfitted, as scikit-learn's conventions ask). Where no grouped fold with both
    classes on each side exists, the copy is fitted without early stopping.
    """
    folds = inner_folds(y, groups, 5, seed)
    weights = compute_sample_weight("balanced", y)
    if not folds:
        return clone(estimator).set_params(early_stopping=False).fit(X, y, sample_weight=weights)
    tr, va = folds[0]
    classes = np.unique(y)
    probe = clone(estimator).set_params(early_stopping=False)
    fit_w, val_w = compute_sample_weight("balanced", y[tr]), compute_sample_weight("balanced", y[va])
    best, best_epoch, stale = -np.inf, 1, 0
    for epoch in range(1, estimator.max_iter + 1):
        probe.partial_fit(X[tr], y[tr], sample_weight=fit_w, classes=classes)
        score = probe.score(X[va], y[va], sample_weight=val_w)
        if score > best + estimator.tol:
            best, best_epoch, stale = score, epoch, 0
        else:
            stale += 1
            if stale >= estimator.n_iter_no_change:
                break
    # the kept model trains the same way, on every row, for the best number of epochs (partial_fit: one
    # epoch a call, Adam's state kept between calls, and no convergence warning for stopping on purpose)
    final = clone(estimator).set_params(early_stopping=False)
    for _ in range(best_epoch):
        final.partial_fit(X, y, sample_weight=weights, classes=classes)
    return final


def oversample(X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random oversampling of minority classes up to the majority count (seeded)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    idx = [np.arange(len(y))]
    for c, n in zip(classes, counts):
        extra = counts.max() - n
        if extra:
            idx.append(rng.choice(np.flatnonzero(y == c), size=extra, replace=True))
    idx = np.concatenate(idx)
    return X[idx], y[idx]



