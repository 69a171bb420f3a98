"""The fitted classical stage: fusion -> weighted-voting ensemble -> calibrator -> threshold."""
from __future__ import annotations

import contextlib

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from trainer.classical.calibration import ScoreCalibrator
from trainer.classical.domain import DomainCheck, centred_band
from trainer.classical.ensemble import WeightedVotingEnsemble
from trainer.classical.fusion import FeatureFusion

# KindModels: bundles of format 2 name it in this module
from trainer.classical.kinds import KindModels, operating_point, roc_points  # noqa: F401
from trainer.classical.stacking import StackedCombiner, fold_report, inner_folds
from trainer.config import BACKBONE_NAMES, CALIBRATE_ON, CLASSIFIER_NAMES, TrainConfig
from trainer.stats.metrics import youden_threshold
from trainer.stats.selective import risk_coverage
from trainer.util.threads import ONE_THREAD_ROWS, one_thread

STACK_FOLDS = 5  # internal folds that give the stacked combiner its out-of-fold probabilities


class AllModel(BaseEstimator):
    """Classical stage of the paper's pipeline on pre-extracted deep features.

    ``fit(feats, y, val_feats, y_val, groups, val_groups)`` where ``feats`` maps feature block
    name (a backbone or ``"nucleus"``) -> (N, D) array and the optional ``groups`` are subject
    ids. The fusion and classifiers are fitted on the training split; ensemble weights, the
    calibrator, the threshold and the uncertain band on the validation split.

    ``calibrate_on="cross-fit"`` fits the calibrator and the threshold on the out-of-fold scores of
    the training rows together with the validation split (as scikit-learn's CalibratedClassifierCV
    does with ``ensemble=False``), so many more subjects set them than the validation split holds.

    ``combiner`` picks the continuous ensemble score the calibrator maps: ``"weighted"`` is the
    paper's eq. 8 weights on the members' probabilities (soft vote); ``"stacked"`` a
    :class:`trainer.classical.stacking.StackedCombiner` fitted on the members' out-of-fold probabilities
    of the training rows (``STACK_FOLDS`` internal folds, grouped by subject). The eq. 8 hard
    vote is reported either way.

    ``n_jobs`` classifier fits run side by side (joblib's convention: None or 1 one after another, -1 one
    per CPU core): the final ensemble's and those of the internal folds, each a whole
    :class:`WeightedVotingEnsemble`, in threads. Every fit is seeded alike, so the model does not depend
    on ``n_jobs``. Numerical libraries get one thread per fit: the classifiers multiply small matrices,
    where more threads gain nothing and, on a busy machine, busy-waiting BLAS threads made the MLP
    eight times slower.

    Learned: ``fusion_``, ``ensemble_``, ``stacker_`` (StackedCombiner or None), ``calibrator_``,
    ``threshold_`` (on calibrated probability: the centre of the uncertain band, whose two sides are
    fitted apart around the Youden threshold, see :func:`~trainer.classical.domain.centred_band`),
    ``classifier_names_``, ``calibrated_on_``,
    ``validation_`` (dict of the arrays that set the calibration and threshold: ``y``, ``raw``,
    ``calibrated``, ``probabilities``; used for the ROC and operating points), ``domain_`` (a
    :class:`trainer.classical.domain.DomainCheck` fitted on the training rows, ``domain_rate`` of
    held-out subjects' rows flagged), ``band_`` (half-width of the uncertain band around
    ``threshold_``: the band that decides the most rows of the cross-fit pool at ``decided_accuracy``)
    and ``band_report_`` (its target, coverage and accuracy, the Youden threshold and the band's two
    sides around it, see :func:`~trainer.classical.domain.centred_band`).
    Models saved before the domain check have neither ``domain_`` nor ``band_``.
    """

    def __init__(self, backbones: tuple[str, ...] = BACKBONE_NAMES, pca: bool = True,
                 pca_variance: float = 0.98, classifiers: tuple[str, ...] = CLASSIFIER_NAMES,
                 calibration: str = "auto", seed: int = 0, combiner: str = "weighted",
                 block_l2: bool = False, calibrate_on: str = "cross-fit", n_jobs: int | None = None,
                 domain_columns: dict | None = None, domain_rate: float = 0.03, decided_accuracy: float = 0.95):
        self.backbones = backbones
        self.pca = pca
        self.pca_variance = pca_variance
        self.classifiers = classifiers
        self.calibration = calibration
        self.seed = seed
        self.combiner = combiner
        self.block_l2 = block_l2
        self.calibrate_on = calibrate_on
        self.n_jobs = n_jobs
        self.domain_columns = domain_columns
        self.domain_rate = domain_rate
        self.decided_accuracy = decided_accuracy

    @classmethod
    def from_config(cls, config: TrainConfig, backbones=None, pca=None, domain_columns=None) -> AllModel:
        return cls(backbones=tuple(backbones or config.backbones),
                   pca=config.pca if pca is None else pca, pca_variance=config.pca_variance,
                   classifiers=tuple(config.classifiers), calibration=config.calibration,
                   seed=config.seed, combiner=config.combiner, block_l2=config.block_l2,
                   calibrate_on=config.calibrate_on, n_jobs=config.jobs, domain_columns=domain_columns,
                   domain_rate=config.domain_rate, decided_accuracy=config.decided_accuracy)

    def _stack(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        missing = [b for b in self.backbones if b not in feats]
        if missing:
            raise ValueError(f"features missing for backbone(s) {missing}")
        return np.hstack([np.asarray(feats[b], dtype=np.float32) for b in self.backbones])

    def fit(self, feats, y, val_feats, y_val, progress=None, groups=None, val_groups=None):
        y = np.asarray(y).astype(int)
        y_val = np.asarray(y_val).astype(int)
        if self.combiner not in ("weighted", "stacked"):
            raise ValueError(f"unknown combiner {self.combiner!r}; use 'weighted' or 'stacked'")
        if self.calibrate_on not in CALIBRATE_ON:
            raise ValueError(f"unknown calibrate_on {self.calibrate_on!r}; use one of {CALIBRATE_ON}")
        for name, labels in (("training", y), ("validation", y_val)):
            if len(np.unique(labels)) < 2:
                raise ValueError(f"the {name} split holds only one class; add images of both classes")
        dims = tuple(int(np.asarray(feats[b]).shape[1]) for b in self.backbones)
        self.fusion_ = FeatureFusion(dims=dims, pca=self.pca, variance=self.pca_variance,
                                     seed=self.seed, block_l2=self.block_l2).fit(self._stack(feats))
        X, Xv = self.fusion_.transform(self._stack(feats)), self.fusion_.transform(self._stack(val_feats))
        need_oof = self.combiner == "stacked" or self.calibrate_on == "cross-fit"
        folds = self._oof_folds(y, groups) if need_oof else None
        self.ensemble_, fold_probabilities = self._fit_ensembles(X, y, Xv, y_val, groups, folds or [], progress)
        self.classifier_names_ = list(self.ensemble_.names_)
        oof = None
        if folds:  # (N, C) out-of-fold member probabilities of the training rows
            oof = np.zeros((len(y), len(self.classifier_names_)))
            for (_, te), P in zip(folds, fold_probabilities):
                oof[te] = P
        self.stacker_ = StackedCombiner().fit(oof, y) if self.combiner == "stacked" and oof is not None else None
        det = self._details(Xv)
        s_cal, y_cal, g_cal, P_cal = det["raw"], y_val, val_groups, det["probabilities"]
        self.calibrated_on_ = "validation"
        if self.calibrate_on == "cross-fit" and oof is not None:
            # out-of-fold training scores beside the validation scores: more subjects set the
            # calibration and the threshold than the validation split alone holds
            s_oof = self._combine(oof)
            s_cal, y_cal, P_cal = np.concatenate([s_oof, s_cal]), np.concatenate([y, y_val]), np.vstack([oof, P_cal])
            g_cal = (None if groups is None or val_groups is None
                     else np.concatenate([np.asarray(groups), np.asarray(val_groups)]))
            self.calibrated_on_ = "cross-fit"
        self.calibrator_ = ScoreCalibrator(self.calibration, seed=self.seed).fit(s_cal, y_cal, groups=g_cal)
        calibrated = self.calibrator_.transform(s_cal)
        youden = _margin_threshold(calibrated, youden_threshold(y_cal, calibrated)[0])
        self.validation_ = {"y": y_cal, "raw": s_cal, "calibrated": calibrated, "probabilities": P_cal}
        oof_folds = (folds or []) if need_oof else None  # the realised folds and any fallback go to the card
        self.inner_folds_, self.calibration_note_ = fold_provenance(self, y, groups, oof_folds)
        # the band's two sides are fitted apart around the Youden threshold; the model decides at its centre
        self.threshold_, self.band_report_ = centred_band(y_cal, calibrated, youden, self.decided_accuracy)
        self.band_report_["rows"] = self.calibrated_on_
        self.band_report_["risk_coverage"] = risk_coverage(y_cal, calibrated, self.threshold_, g_cal, n_boot=500,
                                                           seed=self.seed)
        self.band_ = self.band_report_["band"]
        self.domain_ = DomainCheck(clone(self.fusion_), self.domain_columns, target_rate=self.domain_rate,
                                   seed=self.seed).fit(self._stack(feats), groups)
        return self

    def _oof_folds(self, y: np.ndarray, groups) -> list | None:
        """``STACK_FOLDS`` (train, test) folds of the training rows that give their out-of-fold probabilities.

        Grouped by subject; None when there are too few images or subjects for folds (the eq. 8 weights
        and the validation split then stay in charge).
        """
        folds = inner_folds(y, groups, STACK_FOLDS, self.seed)
        if not folds or min(np.bincount(y[tr], minlength=2).min() for tr, _ in folds) < 2:
            return None
        return folds

    def _fit_ensembles(self, X, y, Xv, y_val, groups, folds, progress=None):
        """(the ensemble fitted on all training rows, [(n_test, C) member probabilities of each fold's test rows]).

        The final ensemble's weights come from the validation rows; each fold's ensemble, fitted on the
        fold's training rows, only scores its test rows and is dropped. Fitted side by side in ``n_jobs``
        threads, progress reported here as each one finishes.
        """
        g = None if groups is None else np.asarray(groups)
        jobs = [delayed(_fit_ensemble)(self.classifiers, self.seed, X, y, Xv, y_val, g)]
        jobs += [delayed(_fold_probabilities)(self.classifiers, self.seed, X[tr], y[tr],
                                              None if g is None else g[tr], X[te]) for tr, te in folds]
        fitted = []
        with one_thread(user_api="blas"):
            for i, ens in enumerate(Parallel(n_jobs=self.n_jobs, prefer="threads", return_as="generator")(jobs)):
                fitted.append(ens)
                if progress:
                    progress((i + 1) / len(jobs), f"Classifiers: {i + 1}/{len(jobs)} sets fitted")
        return fitted[0], fitted[1:]

    def _combine(self, P: np.ndarray) -> np.ndarray:
        """(N,) the combiner's score of (N, C) member probabilities."""
        stacker = getattr(self, "stacker_", None)
        return stacker.combine(P) if stacker is not None else P @ self.ensemble_.weights_

    def _details(self, X: np.ndarray) -> dict[str, np.ndarray]:
        det = self.ensemble_.predict_details(X)
        det["weighted"] = det["raw"]
        if getattr(self, "stacker_", None) is not None:  # absent in models saved before stacking
            det["raw"] = self._combine(det["probabilities"])
        return det

    @property
    def combiner_(self) -> str:
        """The combiner in use: ``"stacked"`` or ``"weighted"`` (eq. 8)."""
        return "stacked" if getattr(self, "stacker_", None) is not None else "weighted"

    def predict_details(self, feats) -> dict[str, np.ndarray]:
        """Every read-out of the model for feature rows ``feats``.

        Per-classifier ``probabilities`` (N, C) and ``votes`` (N, C) in ``classifier_names_`` order,
        ``weights`` (C,), ``vote_share`` (N,) (eq. 8 hard vote), ``weighted`` (N,) (eq. 8 weights on the
        probabilities), ``raw`` (N,) (the combiner's score: ``weighted`` or the stacked one) and
        ``calibrated`` (N,).
        """
        check_is_fitted(self, "ensemble_")
        X = self._stack(feats)
        with one_thread() if len(X) <= ONE_THREAD_ROWS else contextlib.nullcontext():
            det = self._details(self.fusion_.transform(X))
        det["calibrated"] = self.calibrator_.transform(det["raw"])
        domain = getattr(self, "domain_", None)
        if domain is not None:
            det["novelty"], det["domain_flags"] = domain.novelty(X)
        return det

    @property
    def band(self) -> float | None:
        """Half-width of the fitted uncertain band; None for a model saved before bands were fitted."""
        band = getattr(self, "band_", None)
        return None if band is None else float(band)

    def predict_proba(self, feats) -> np.ndarray:
        p = self.predict_details(feats)["calibrated"]
        return np.column_stack([1 - p, p])

    def operating_point(self, threshold: float) -> tuple[float, float]:
        """(sensitivity, specificity) on the validation split at a calibrated-probability threshold."""
        return operating_point(self.validation_["y"], self.validation_["calibrated"], threshold)

    def validation_roc(self) -> dict[str, np.ndarray]:
        """``fpr``, ``tpr``, ``thresholds`` of the calibrated probability on the validation split."""
        return roc_points(self.validation_["y"], self.validation_["calibrated"])


def fold_provenance(model: AllModel, y: np.ndarray, groups, folds) -> tuple[dict, str | None]:
    """The internal folds a fit realised, and a sentence where one fell back for lack of subjects.

    ``{"cross_fit": ..., "calibrator": ..., "svm_platt": ...}``, each :func:`fold_report`'s answer (None
    where not used). With subject ids and too few subjects for grouped folds, cross-fit calibration falls
    back to the validation split, the stacked combiner to the eq. 8 weights and the SVM's Platt scaling
    to folds of images (the only choice that keeps an SVM probability): the sentence says which.
    """
    k = int(np.bincount(y, minlength=2).min())
    svm_cv = 3 if k >= 12 else 2  # as make_classifiers sets it
    out = {"cross_fit": None if folds is None else fold_report(y, groups, STACK_FOLDS, model.seed, folds or []),
           "calibrator": getattr(model.calibrator_, "folds_", None),
           "svm_platt": fold_report(y, groups, svm_cv, model.seed) if "svm" in model.classifier_names_ else None}
    notes = []
    if folds is not None and not folds and groups is not None:
        g = out["cross_fit"]["n_groups"]
        what = {"cross-fit": "cross-fit calibration", "stacked": "the stacked combiner"}
        wanted = [what[x] for x in ("cross-fit", "stacked") if x in (model.calibrate_on, model.combiner)]
        notes.append(f"{' and '.join(wanted).capitalize()} need at least 2 subject-grouped folds of the training "
                     f"split, which has {g['0']} normal and {g['1']} ALL subjects: "
                     + ("calibrated on the validation split alone" if model.calibrate_on == "cross-fit" else "")
                     + ("; " if len(wanted) == 2 else "")
                     + ("eq. 8 weights instead of stacking" if model.combiner == "stacked" else "") + ".")
    svm = out["svm_platt"]
    if svm is not None and groups is not None and svm["realised"] == 0:
        notes.append(f"The SVM's Platt scaling used folds of images: the training split has "
                     f"{svm['n_groups']['0']} normal and {svm['n_groups']['1']} ALL subjects, too few for "
                     "grouped folds.")
    return out, " ".join(notes) or None


def _fit_ensemble(classifiers, seed: int, X, y, X_val, y_val, groups) -> WeightedVotingEnsemble:
    """A :class:`WeightedVotingEnsemble` fitted on (X, y), its weights from (X_val, y_val) where given."""
    return WeightedVotingEnsemble(classifiers, seed).fit(X, y, X_val, y_val, groups=groups)


def _fold_probabilities(classifiers, seed: int, X, y, groups, X_test) -> np.ndarray:
    """(n_test, C) member probabilities of ``X_test`` from an ensemble fitted on (X, y)."""
    return _fit_ensemble(classifiers, seed, X, y, None, None, groups).probabilities_and_votes(X_test)[0]


def _margin_threshold(scores: np.ndarray, t: float) -> float:
    """Move a Youden threshold (one of ``scores``) half-way down to the next lower score.

    The rule ``score >= threshold`` then classifies the validation split exactly as before,
    but the threshold no longer sits on a validation case's own score.
    """
    below = scores[scores < t]
    return float((t + below.max()) / 2) if below.size else float(t)


def subset(feats: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    """Rows ``idx`` of every backbone's feature array."""
    return {k: np.asarray(v)[idx] for k, v in feats.items()}


def fit_model(feats, y, train_idx, val_idx, config: TrainConfig, backbones=None, pca=None,
              progress=None, groups=None, domain_columns=None) -> AllModel:
    """Fit an :class:`AllModel` on rows ``train_idx`` with validation rows ``val_idx``.

    ``groups`` (N,) subject ids of all rows, or None. ``domain_columns``: the domain check's input
    checks (see :func:`trainer.vision.input_checks.input_check_columns`), None for the ``features`` check alone.
    """
    y = np.asarray(y)
    g = None if groups is None else np.asarray(groups)
    return AllModel.from_config(config, backbones, pca, domain_columns).fit(
        subset(feats, train_idx), y[train_idx], subset(feats, val_idx), y[val_idx], progress=progress,
        groups=None if g is None else g[train_idx], val_groups=None if g is None else g[val_idx])
