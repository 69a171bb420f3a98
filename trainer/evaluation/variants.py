"""Ablation of the feature and ensemble variants by grouped cross-validation, per image kind.

Every variant is scored on the same subject-level CV folds (stratified by label x source class,
an inner grouped split of each training fold for validation). Each test image is scored once,
by the model of the fold that held it out; the pooled out-of-fold scores give the AUC with a
confidence interval that resamples subjects (:func:`trainer.stats.metrics.bootstrap_auc_ci` with
groups), and each fold's decisions at its own threshold give sensitivity, specificity and
balanced accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trainer.classical.model import AllModel
from trainer.config import TrainConfig
from trainer.evaluation.core import cv_plan
from trainer.stats import metrics as M

#: the hand-crafted block under its feature-set names
NUCLEUS_SETS = ("nucleus", "nucleus_stain")

#: (label, feature sets beside the networks, AllModel settings); the first row is the paper's method
VARIANTS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("networks, PCA, eq. 8 weights (paper)", (), dict(pca=True, combiner="weighted", calibrate_on="validation")),
    ("networks, no PCA, eq. 8", (), dict(pca=False, combiner="weighted", calibrate_on="validation")),
    ("+ nucleus block, eq. 8", ("nucleus",), dict(pca=True, combiner="weighted", calibrate_on="validation")),
    ("+ nucleus block on Reinhard-normalised images, eq. 8", ("nucleus_stain",),
     dict(pca=True, combiner="weighted", calibrate_on="validation")),
    ("+ nucleus block, stacked", ("nucleus",), dict(pca=True, combiner="stacked", calibrate_on="validation")),
    ("+ nucleus block, eq. 8, cross-fit calibration", ("nucleus",),
     dict(pca=True, combiner="weighted", calibrate_on="cross-fit")),
    ("+ nucleus block, stacked, cross-fit calibration", ("nucleus",),
     dict(pca=True, combiner="stacked", calibrate_on="cross-fit")),
)


def _score_variant(feats: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None, plan,
                   config: TrainConfig, settings: dict[str, Any], n_boot: int) -> dict[str, Any]:
    blocks = tuple(feats)
    raw = np.full(len(y), np.nan)
    pred = np.zeros(len(y), dtype=int)
    fold_auc = []
    for fit, val, test in plan:
        m = AllModel(backbones=blocks, pca_variance=config.pca_variance, classifiers=tuple(config.classifiers),
                     calibration=config.calibration, seed=config.seed, block_l2=config.block_l2, **settings)
        g = (lambda idx: None) if groups is None else (lambda idx: groups[idx])
        m.fit({b: v[fit] for b, v in feats.items()}, y[fit], {b: v[val] for b, v in feats.items()}, y[val],
              groups=g(fit), val_groups=g(val))
        det = m.predict_details({b: v[test] for b, v in feats.items()})
        raw[test], pred[test] = det["raw"], det["calibrated"] >= m.threshold_
        if len(np.unique(y[test])) == 2:
            fold_auc.append(M.auc(y[test], det["raw"]))
    done = ~np.isnan(raw)
    y, raw, pred = y[done], raw[done], pred[done]
    g = None if groups is None else groups[done]
    ci = M.bootstrap_auc_ci(y, raw, n=n_boot, seed=config.seed, groups=g)
    sens, spec = float(np.mean(pred[y == 1])), float(np.mean(pred[y == 0] == 0))
    return {"auc": ci["auc"], "auc_ci": M.interval(ci["ci_low"], ci["ci_high"], ci["n_groups"])["ci"],
            "ci_note": ci["warning"], "ci_method": ci.get("ci_method", "image"), "n_groups": ci.get("n_groups"),
            "fold_auc_mean": float(np.mean(fold_auc)) if fold_auc else None,
            "fold_auc_sd": float(np.std(fold_auc, ddof=1)) if len(fold_auc) > 1 else None,
            "sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2,
            "n": int(y.size), "n_positive": int(y.sum())}


def evaluate_variants(feature_sets: dict[str, dict[str, np.ndarray]], samples: Sequence, kinds: np.ndarray,
                      config: TrainConfig, protocol: str = "subject", n_folds: int = 5, n_boot: int = 1000,
                      variants=VARIANTS, steps=None) -> dict[str, Any]:
    """Grouped-CV scores of every variant for every image kind with both classes.

    ``feature_sets``: ``{"networks": {backbone: (N, D)}, "nucleus": {"nucleus": (N, 85)},
    "nucleus_stain": {...}}`` with rows aligned to ``samples``; ``kinds`` (N,) the image kind of
    each sample. A variant whose feature set is missing is skipped. Returns ``{"protocol",
    "n_folds", "kinds": {kind: {"n", "n_groups", "warnings", "rows": [{"variant", ...scores}]}}}``.
    """
    y_all = np.array([int(s.label) for s in samples])
    g_all = [getattr(s, "group", None) for s in samples]
    out: dict[str, Any] = {"protocol": protocol, "n_folds": n_folds, "kinds": {}}
    for kind in dict.fromkeys(kinds.tolist()):
        rows = np.flatnonzero(kinds == kind)
        y = y_all[rows]
        if len(np.unique(y)) < 2:
            continue
        sub = [samples[i] for i in rows]
        groups = None if any(g_all[i] in (None, "") for i in rows) else np.array([g_all[i] for i in rows], object)
        proto = protocol if groups is not None else "image"
        try:
            plan, warnings = cv_plan(sub, proto, n_folds, config)
        except Exception as exc:  # too few subjects of a class for folds
            out["kinds"][kind] = {"n": int(rows.size), "rows": [], "reason": str(exc)}
            continue
        entry = {"n": int(rows.size), "n_positive": int(y.sum()), "protocol": proto, "n_folds": len(plan),
                 "n_groups": None if groups is None else
                 {str(c): int(len(set(groups[y == c].tolist()))) for c in (0, 1)},
                 "warnings": warnings, "rows": []}
        for label, extra, settings in variants:
            if any(e not in feature_sets for e in extra):
                continue
            if steps is not None:
                steps.step(f"variant ablation ({kind}): {label}")
            feats = {b: np.asarray(v)[rows] for b, v in feature_sets["networks"].items()}
            for e in extra:
                feats.update({"nucleus": np.asarray(feature_sets[e]["nucleus"])[rows]})
            entry["rows"].append({"variant": label, "blocks": list(feats), **settings,
                                  **_score_variant(feats, y, groups, plan, config, settings, n_boot)})
        out["kinds"][kind] = entry
    return out
