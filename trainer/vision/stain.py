"""Stain (colour) normalisation: Reinhard et al. (2001) colour transfer in CIE Lab.

Each image's foreground pixels are shifted and scaled, per Lab channel, so that their mean and
standard deviation match a reference. The reference is fitted on training images only
(:class:`ReinhardNormalizer`) and travels with the model as six numbers; black background
(C-NMC crops) is left black and does not count towards any statistic.
"""
from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from trainer.vision.segmentation import BLACK_LEVEL, brightest_channel

_MIN_STD = 1e-3  # Lab units; guards flat images


def foreground(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that are not black background (max(R, G, B) >= ``BLACK_LEVEL``)."""
    return brightest_channel(np.asarray(img)) >= BLACK_LEVEL


def _lab(img: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 Lab (L in [0, 100], a and b about [-127, 127])."""
    return cv2.cvtColor(np.asarray(img, dtype=np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def lab_stats(img: np.ndarray) -> np.ndarray:
    """(6,) float64: Lab mean (3,) then Lab standard deviation (3,) of the foreground pixels.

    An image without foreground gives the statistics of all its pixels.
    """
    lab = _lab(img)
    fg = foreground(img)
    px = lab[fg] if fg.sum() >= 16 else lab.reshape(-1, 3)
    px = px.astype(np.float64)
    return np.concatenate([px.mean(axis=0), px.std(axis=0)])


def reinhard(img: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``img`` (RGB uint8) with its foreground's Lab mean/std mapped to ``reference`` (6,).

    Returns RGB uint8 of the same shape; background pixels are unchanged.
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if ref.shape != (6,) or not np.all(np.isfinite(ref)):
        raise ValueError("a Reinhard reference is 6 finite numbers: Lab mean then Lab std")
    img = np.asarray(img)
    lab = _lab(img)
    fg = foreground(img)
    mask = fg if fg.sum() >= 16 else np.ones(fg.shape, bool)
    px = lab[mask].astype(np.float64)
    mu, sd = px.mean(axis=0), np.maximum(px.std(axis=0), _MIN_STD)
    lab[mask] = ((px - mu) / sd * np.maximum(ref[3:], _MIN_STD) + ref[:3]).astype(np.float32)
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    out = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    out[~mask] = img[~mask]
    # a normalised foreground pixel must not turn into background (black) and vice versa
    dark = mask & (brightest_channel(out) < BLACK_LEVEL)
    out[dark] = np.maximum(out[dark], BLACK_LEVEL)
    return out


class ReinhardNormalizer:
    """Reinhard colour normalisation to a reference fitted on training images.

    ``fit(images)`` takes RGB uint8 arrays (or an (N, 6) array of :func:`lab_stats` rows) and
    sets the reference to the mean of the per-image Lab means and standard deviations.
    Learned: ``reference_`` (6,) float64, ``n_images_``. scikit-learn's conventions without its base
    class (it has no parameters), so that prediction, which imports this module, needs no scikit-learn.
    """

    def fit(self, images: Iterable, y=None) -> ReinhardNormalizer:
        if isinstance(images, np.ndarray) and images.ndim == 2 and images.shape[1] == 6:
            stats = images.astype(np.float64)
        else:
            stats = np.array([lab_stats(im) for im in images], dtype=np.float64)
        if stats.size == 0:
            raise ValueError("a stain reference needs at least one training image")
        self.reference_ = stats.mean(axis=0)
        self.n_images_ = int(len(stats))
        return self

    def transform_image(self, img: np.ndarray) -> np.ndarray:
        if not hasattr(self, "reference_"):
            raise ValueError("this ReinhardNormalizer is not fitted yet; call fit with training images first")
        return reinhard(img, self.reference_)
