"""Explanation probes: one logistic regression per backbone that a heatmap explains.

The ensemble's classifiers work on fused, PCA-projected features, so no gradient from the
ensemble's probability to a backbone's feature map would mean anything. Each per-kind model
therefore carries, per backbone, an L2-regularised logistic regression fitted at training time on
that backbone's standardised global-average-pooled features of the training split, and the mean
last feature map of (up to :data:`REFERENCE_IMAGES`) training images, its *reference* (see
:mod:`trainer.inference.gradcam`).

In a bundle they are plain arrays, ``<model key>/explain/<backbone>/<part>``: ``mean``, ``scale``,
``coef`` (D,), ``intercept`` (1,) (float64) and ``reference`` (D, h, w) (float32). A bundle
written before probes existed has none: it loads and predicts as before, and
:func:`require_probes` says it cannot be explained.

Importing this module is cheap (no torch, no scikit-learn): the app imports it at start-up.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer.util.errors import AllguiError, BundleError

#: inverse L2 strength of the probes' logistic regressions (on standardised features)
PROBE_C = 0.05
PROBE_PARTS = ("mean", "scale", "coef", "intercept")
#: training images whose mean feature map is a probe's reference (evenly spread over the split)
REFERENCE_IMAGES = 64
NO_PROBES = ("This model has no explanation probes (it was trained before heatmaps existed); "
             "retrain it to see heatmaps.")


class NoProbesError(AllguiError):
    """The model has no explanation probes (a bundle written before they existed)."""


def fit_probes(feats: Mapping[str, np.ndarray], y, backbones=None, val_feats=None, y_val=None,
               seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
    """One L2-regularised logistic regression per backbone on its standardised GAP features.

    ``feats`` maps block name -> (N, D) training features; only network blocks get a probe.

    Returns
    -------
    tuple
        ``(probes, report)``: ``probes[backbone]`` holds float64 arrays ``mean``, ``scale``,
        ``coef`` (D,) and ``intercept`` (1,) (the logit of ALL is ``((f - mean) / scale) @ coef +
        intercept``); ``report[backbone]`` the probe's training and, with ``val_feats``/``y_val``,
        validation AUC (how well the probe itself tells the classes apart).
    """
    # scikit-learn and torch (with the backbone table) load only when training: the app imports this module
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from trainer.vision.backbones import BACKBONES  # (torch)

    y = np.asarray(y).astype(int)
    names = [b for b in (backbones or feats) if b in BACKBONES and b in feats]
    probes, report = {}, {}
    for b in names:
        X = np.asarray(feats[b], dtype=np.float64)
        scaler = StandardScaler().fit(X)
        lr = LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=2000,
                                random_state=seed).fit(scaler.transform(X), y)
        probes[b] = {"mean": scaler.mean_.astype(np.float64), "scale": scaler.scale_.astype(np.float64),
                     "coef": lr.coef_[0].astype(np.float64), "intercept": lr.intercept_.astype(np.float64)}
        rep: dict[str, Any] = {"C": PROBE_C, "n_train": int(len(y)), "train_auc": _auc(y, logit(probes[b], X))}
        if val_feats is not None and y_val is not None and b in val_feats:
            rep["validation_auc"] = _auc(np.asarray(y_val).astype(int),
                                         logit(probes[b], np.asarray(val_feats[b], np.float64)))
        report[b] = rep
    return probes, report


def _auc(y, s) -> float | None:
    from sklearn.metrics import roc_auc_score  # only at training time (see fit_probes)

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def logit(probe: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """(N,) the probe's ALL logit of GAP features ``X`` (N, D)."""
    return ((X - probe["mean"]) / probe["scale"]) @ probe["coef"] + float(probe["intercept"][0])


def probe_arrays(key: str, probes: Mapping[str, Mapping[str, np.ndarray]],
                 references: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The bundle arrays ``<key>/explain/<backbone>/<part>`` of model ``key``'s probes and references."""
    out = {f"{key}/explain/{b}/{part}": np.asarray(p[part], dtype=np.float64)
           for b, p in probes.items() for part in PROBE_PARTS}
    for b, ref in (references or {}).items():
        if b in probes:
            out[f"{key}/explain/{b}/reference"] = np.asarray(ref, dtype=np.float32)
    return out


def probes_from_arrays(arrays: Mapping[str, np.ndarray], key: str, name: str = "the model"
                       ) -> dict[str, dict[str, np.ndarray]]:
    """Model ``key``'s probes read back from bundle arrays and checked; {} when it has none.

    Each probe holds the parts of :data:`PROBE_PARTS` and, where stored, its ``reference``. Raises
    BundleError for a probe with missing parts, wrong shapes or values that are not finite.
    """
    # the backbone table comes with torch: loaded where a model is in use anyway, not at the app's start-up
    from trainer.vision.backbones import BACKBONES as dims

    prefix = f"{key}/explain/"
    found = sorted({k[len(prefix):].split("/", 1)[0] for k in arrays if k.startswith(prefix)})
    probes = {}
    for b in found:
        d = dims.get(b)
        parts = {part: arrays.get(f"{prefix}{b}/{part}") for part in PROBE_PARTS}
        shapes = {"mean": (d,), "scale": (d,), "coef": (d,), "intercept": (1,)}
        ok = d is not None and all(_finite(v, shapes[part]) for part, v in parts.items())
        if not ok or not np.all(np.asarray(parts["scale"]) > 0):
            raise BundleError(f"The explanation probe for {b} in {name} is damaged; retrain the model.")
        probes[b] = {part: np.asarray(v, dtype=np.float64) for part, v in parts.items()}
        ref = arrays.get(f"{prefix}{b}/reference")
        if ref is not None:
            ref = np.asarray(ref)
            if ref.ndim != 3 or not _finite(ref, (d,) + ref.shape[1:]) or min(ref.shape) < 1:
                raise BundleError(f"The explanation probe for {b} in {name} is damaged; retrain the model.")
            probes[b]["reference"] = ref.astype(np.float32)
    return probes


def _finite(v, shape) -> bool:
    v = None if v is None else np.asarray(v)
    return v is not None and v.shape == shape and v.dtype.kind == "f" and bool(np.all(np.isfinite(v)))


def bundle_name(predictor) -> str:
    """The file name of a predictor's bundle, for messages."""
    path = getattr(predictor, "path", None)
    return os.path.basename(str(path)) if path else "the model"


def require_probes(predictor) -> None:
    """Raise :class:`NoProbesError` unless some model of ``predictor`` has explanation probes.

    Cheap: call it before any image is analysed.
    """
    arrays = predictor.bundle.arrays
    if not any(probes_from_arrays(arrays, key, bundle_name(predictor)) for key in predictor.models):
        raise NoProbesError(NO_PROBES)
