"""The frozen-vs-fine-tuned ablation.

The classical stage on the features of the backbones as they are (``config.weights``) against the same stage
on fine-tuned backbones.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainer.classical.model import fit_model, subset
from trainer.training.finetune import finetune_backbones
from trainer.util.errors import AllguiError
from trainer.util.progress import CancelCheck, Progress, Stages
from trainer.vision.features import FeatureExtractor


def _scores_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:

    pred = (score >= threshold).astype(int)
    return {"accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auc": float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else math.nan,
            "threshold": float(threshold)}


def classical_stage_scores(feats: Mapping[str, np.ndarray], y: Sequence[int], train_idx, val_idx,
                           test_idx, config: Any, classifier: str = "ensemble", groups=None) -> dict[str, float]:
    """Test metrics of the classical stage fitted on ``feats`` rows ``train_idx`` (validation ``val_idx``).

    ``classifier='ensemble'`` is ``trainer.classical.model.fit_model`` (fusion, five classifiers, weighted
    vote, calibration, Youden threshold); ``'logreg'`` a standardised logistic regression on the
    concatenated features at threshold 0.5. ``groups`` (N,): subject ids of all rows, for the ensemble's
    grouped inner folds. Returns accuracy, balanced_accuracy, auc, threshold.
    """
    y = np.asarray(y, dtype=int)
    names = [b for b in getattr(config, "backbones", feats.keys()) if b in feats]
    if classifier == "ensemble":

        model = fit_model(feats, y, train_idx, val_idx, config, backbones=tuple(names), groups=groups)
        score = model.predict_details(subset(feats, test_idx))["calibrated"]
        return _scores_metrics(y[test_idx], score, model.threshold_)
    if classifier == "logreg":

        X = np.hstack([np.asarray(feats[b], dtype=np.float64) for b in names])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000,
                                                                  class_weight="balanced"))
        clf.fit(X[train_idx], y[train_idx])
        return _scores_metrics(y[test_idx], clf.predict_proba(X[test_idx])[:, 1], 0.5)
    raise AllguiError(f"Unknown classifier {classifier!r} for the ablation; use 'ensemble' or 'logreg'.")


def frozen_vs_finetuned(
    items: Sequence,
    labels: Sequence[int],
    train_idx,
    val_idx,
    test_idx,
    config: Any,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    classifiers: Sequence[str] = ("ensemble",),
    device: str = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    groups: Sequence | None = None,
) -> dict[str, Any]:
    """Ablation: the classical stage on frozen features (``config.weights``) vs on fine-tuned ones.

    Fine-tunes on ``train_idx`` / ``val_idx`` unless ``state_dicts`` are given. ``config`` is a
    TrainConfig (image_size, gamma, weights, seed, backbones, finetune_* and the classical-stage
    options). ``classifiers``: classical stages to compare, each ``'ensemble'`` or ``'logreg'``
    (see ``classical_stage_scores``); ``groups`` (N,) subject ids of ``items``. Returns
    ``{'frozen': {classifier: metrics}, 'finetuned':
    {classifier: metrics}, 'histories': {...}, 'state_dicts': {...}, 'seconds': {'finetune': s,
    'features': s, 'classical': s}}``; metrics on ``test_idx``.
    """
    y = np.asarray(labels, dtype=int)
    items = list(items)
    train_idx, val_idx, test_idx = (np.asarray(i, dtype=int) for i in (train_idx, val_idx, test_idx))
    backbones = tuple(config.backbones)

    histories: dict[str, Any] = {}
    # the classical stages are quick beside fine-tuning and the two feature passes
    stages = Stages(progress, [("fine-tuning", 70), ("frozen features", 10), ("fine-tuned features", 10),
                               ("classifiers", 10)])
    t0 = time.perf_counter()
    if state_dicts is None:
        state_dicts, histories = finetune_backbones(
            [items[i] for i in train_idx], y[train_idx], [items[i] for i in val_idx], y[val_idx],
            config, backbones, device, stages.start("fine-tuning"), cancel, checkpoint_dir)
    t1 = time.perf_counter()
    common = dict(backbones=backbones, image_size=config.image_size, gamma=config.gamma,
                  batch_size=config.batch_size, num_workers=config.num_workers, device=device,
                  seed=config.seed)
    frozen = FeatureExtractor(weights=config.weights, **common).extract(
        items, stages.start("frozen features"), cancel)
    tuned = FeatureExtractor(weights=config.weights, state_dicts=state_dicts, **common).extract(
        items, stages.start("fine-tuned features"), cancel)
    t2 = time.perf_counter()
    stages.start("classifiers", "Ablation: fitting the classifiers")
    out: dict[str, Any] = {
        kind: {c: classical_stage_scores(feats, y, train_idx, val_idx, test_idx, config, c, groups)
               for c in classifiers}
        for kind, feats in (("frozen", frozen), ("finetuned", tuned))
    }
    out.update(histories=histories, state_dicts=dict(state_dicts),
               seconds={"finetune": t1 - t0, "features": t2 - t1, "classical": time.perf_counter() - t2})
    stages.done("Ablation done")
    return out
