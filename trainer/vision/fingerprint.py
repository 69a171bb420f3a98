"""Backbone fingerprints: features of fixed probe images, stored in a bundle and checked on load.

A bundle made with ``weights='none'`` or ``'imagenet'`` does not carry the backbone weights; it
names them. The fingerprint proves that the backbones rebuilt on another machine give the same
features, so a prediction is never made with silently different weights.

Bundles of format 3 on store the probes' features with the probes fed to the networks at PROBE_INPUT
pixels (``probe64/<backbone>``): a twelfth of the arithmetic at 224 pixels, which every start-up pays
(numbers in benchmarks/README.md). Bundles of formats 1
and 2 store them at the model's input size (``probe/<backbone>``); both are checked.
"""
from __future__ import annotations

import numpy as np

from trainer.util.errors import BundleError

PROBE_SIZE = 96
MAX_RELATIVE_ERROR = 0.02  # ||got - stored|| / ||stored||; bf16 autocast vs fp32 stays far below
#: side, pixels, at which the probes enter the networks (bundles of format 3 on)
PROBE_INPUT = 64
#: array-key prefix of features computed with the probes fed to the networks at PROBE_INPUT
PREFIX = f"probe{PROBE_INPUT}/"
#: array-key prefix of features computed at the model's input size (bundles of formats 1 and 2)
LEGACY_PREFIX = "probe/"


def is_fingerprint(key: str) -> bool:
    """Whether an array key of a bundle holds backbone fingerprint features (either kind)."""
    return key.startswith((PREFIX, LEGACY_PREFIX))


def probe_images() -> list[np.ndarray]:
    """Two deterministic RGB uint8 images (PROBE_SIZE square): a smooth colour ramp and a disc."""
    yy, xx = np.mgrid[0:PROBE_SIZE, 0:PROBE_SIZE].astype(np.float32) / (PROBE_SIZE - 1)
    ramp = np.stack([xx, yy, 1 - xx * yy], axis=-1)
    disc = ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.09).astype(np.float32)
    cell = np.stack([0.3 + 0.4 * disc, 0.1 + 0.1 * disc, 0.35 + 0.5 * disc], axis=-1)
    return [(ramp * 255).round().astype(np.uint8), (cell * 255).round().astype(np.uint8)]


def compute(extractor, legacy: bool = False) -> dict[str, np.ndarray]:
    """Probe features ``{'probe64/<backbone>': (2, D) float32}`` of a FeatureExtractor.

    The probes enter the networks at PROBE_INPUT pixels; ``legacy=True`` gives instead
    ``{'probe/<backbone>': ...}`` at the extractor's own input size, as bundles of formats 1 and 2 store them.
    Computed afresh (never read from its feature cache: the
    fingerprint must show what the networks compute now) and always in float32, whatever precision the
    extractor predicts in: a bundle written on a machine with bfloat16 then loads on one without it and the
    other way round (stored probes that an older version computed under bfloat16 stay within
    MAX_RELATIVE_ERROR of float32).
    """
    cache_dir, extractor.cache_dir = extractor.cache_dir, None
    precision, extractor.precision = extractor.precision, "fp32"
    size = extractor.image_size
    if not legacy:
        extractor.image_size = PROBE_INPUT
    try:
        feats = extractor.extract(probe_images())
    finally:
        extractor.cache_dir = cache_dir
        extractor.precision = precision
        extractor.image_size = size
    prefix = LEGACY_PREFIX if legacy else PREFIX
    return {f"{prefix}{name}": v for name, v in feats.items()}


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| over all entries (Frobenius)."""
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))


def verify(extractor, arrays: dict[str, np.ndarray], what: str = "model",
           computed: dict[str, np.ndarray] | None = None) -> None:
    """Raise BundleError unless ``extractor`` reproduces the stored probe features.

    ``computed``: what :func:`compute` returned for ``extractor``, when it ran already (e.g. in a
    thread while the rest of a bundle was read); features of the other kind are computed here if the
    bundle stores that kind.
    """
    stored = {k: v for k, v in arrays.items() if is_fingerprint(k)}
    if not stored:
        return
    now = dict(computed or {})
    for legacy, prefix in ((False, PREFIX), (True, LEGACY_PREFIX)):
        if any(k.startswith(prefix) for k in stored) and not any(k.startswith(prefix) for k in now):
            now.update(compute(extractor, legacy=legacy))
    for key, ref in stored.items():
        got = now.get(key)
        if got is None or got.shape != ref.shape or relative_error(got, ref) > MAX_RELATIVE_ERROR:
            name = key.split("/", 1)[1]
            raise BundleError(
                f"The {name} backbone rebuilt on this computer does not give the features the {what} "
                f"was trained with (different weights or library version). Retrain the model here, "
                f"or provide the same backbone weights.")
