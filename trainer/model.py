"""The fitted classical stage: fusion -> weighted-voting ensemble -> calibrator -> threshold."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_curve
from sklearn.utils.validation import check_is_fitted

from .calibration import ScoreCalibrator
from .config import BACKBONE_NAMES, CLASSIFIER_NAMES, TrainConfig
from .ensemble import WeightedVotingEnsemble
from .fusion import FeatureFusion
from .metrics import youden_threshold

FEATURE_DIMS = {"densenet121": 1024, "resnet34": 512}


class AllModel(BaseEstimator):
    """Classical stage of the paper's pipeline on pre-extracted deep features.

    ``fit(feats, y, val_feats, y_val)`` where ``feats`` maps backbone name -> (N, D) array.
    The fusion and classifiers are fitted on the training split; ensemble weights, the
    calibrator and the Youden threshold on the validation split.

    Learned: ``fusion_``, ``ensemble_``, ``calibrator_``, ``threshold_`` (on calibrated
    probability), ``classifier_names_``, ``validation_`` (dict of validation arrays: ``y``,
    ``raw``, ``calibrated``, ``probabilities``; used for the ROC and operating points).
    """

    def __init__(self, backbones: tuple[str, ...] = BACKBONE_NAMES, pca: bool = True,
                 pca_variance: float = 0.98, classifiers: tuple[str, ...] = CLASSIFIER_NAMES,
                 calibration: str = "auto", seed: int = 0):
        self.backbones = backbones
        self.pca = pca
        self.pca_variance = pca_variance
        self.classifiers = classifiers
        self.calibration = calibration
        self.seed = seed

    @classmethod
    def from_config(cls, config: TrainConfig, backbones=None, pca=None) -> "AllModel":
        return cls(backbones=tuple(backbones or config.backbones),
                   pca=config.pca if pca is None else pca, pca_variance=config.pca_variance,
                   classifiers=tuple(config.classifiers), calibration=config.calibration,
                   seed=config.seed)

    def _stack(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        missing = [b for b in self.backbones if b not in feats]
        if missing:
            raise ValueError(f"features missing for backbone(s) {missing}")
        return np.hstack([np.asarray(feats[b], dtype=np.float32) for b in self.backbones])

    def fit(self, feats, y, val_feats, y_val, progress=None):
        y = np.asarray(y).astype(int)
        y_val = np.asarray(y_val).astype(int)
        for name, labels in (("training", y), ("validation", y_val)):
            if len(np.unique(labels)) < 2:
                raise ValueError(f"the {name} split holds only one class; add images of both classes")
        dims = tuple(int(np.asarray(feats[b]).shape[1]) for b in self.backbones)
        self.fusion_ = FeatureFusion(dims=dims, pca=self.pca, variance=self.pca_variance,
                                     seed=self.seed).fit(self._stack(feats))
        X, Xv = self.fusion_.transform(self._stack(feats)), self.fusion_.transform(self._stack(val_feats))
        self.ensemble_ = WeightedVotingEnsemble(self.classifiers, self.seed).fit(
            X, y, Xv, y_val, progress=progress)
        self.classifier_names_ = list(self.ensemble_.names_)
        det = self.ensemble_.predict_details(Xv)
        self.calibrator_ = ScoreCalibrator(self.calibration, seed=self.seed).fit(det["raw"], y_val)
        calibrated = self.calibrator_.transform(det["raw"])
        self.threshold_ = _margin_threshold(calibrated, youden_threshold(y_val, calibrated)[0])
        self.validation_ = {"y": y_val, "raw": det["raw"], "calibrated": calibrated,
                            "probabilities": det["probabilities"]}
        return self

    def predict_details(self, feats) -> dict[str, np.ndarray]:
        """Per-classifier ``probabilities`` (N, C) and ``votes`` (N, C) in ``classifier_names_``
        order, ``weights`` (C,), ``vote_share`` (N,), ``raw`` (N,) and ``calibrated`` (N,)."""
        check_is_fitted(self, "ensemble_")
        det = self.ensemble_.predict_details(self.fusion_.transform(self._stack(feats)))
        det["calibrated"] = self.calibrator_.transform(det["raw"])
        return det

    def predict_proba(self, feats) -> np.ndarray:
        p = self.predict_details(feats)["calibrated"]
        return np.column_stack([1 - p, p])

    def operating_point(self, threshold: float) -> tuple[float, float]:
        """(sensitivity, specificity) on the validation split at a calibrated-probability threshold."""
        return operating_point(self.validation_["y"], self.validation_["calibrated"], threshold)

    def validation_roc(self) -> dict[str, np.ndarray]:
        fpr, tpr, thr = roc_curve(self.validation_["y"], self.validation_["calibrated"])
        return {"fpr": fpr, "tpr": tpr, "thresholds": np.minimum(thr, 1.0)}


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``p >= threshold`` against labels ``y`` (N,);
    NaN for a class that is absent. Plain numpy: the app calls it on every slider move."""
    y, pred = np.asarray(y), np.asarray(p) >= threshold
    sens = float(np.mean(pred[y == 1])) if np.any(y == 1) else float("nan")
    spec = float(np.mean(~pred[y == 0])) if np.any(y == 0) else float("nan")
    return sens, spec


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
              progress=None) -> AllModel:
    """Fit an :class:`AllModel` on rows ``train_idx`` with validation rows ``val_idx``."""
    y = np.asarray(y)
    return AllModel.from_config(config, backbones, pca).fit(
        subset(feats, train_idx), y[train_idx], subset(feats, val_idx), y[val_idx], progress=progress)
