"""The nucleus block nucleus-v2: the features of :mod:`trainer.vision.handcrafted`, at a third of the cost.

The same :data:`~trainer.vision.handcrafted.FEATURE_NAMES`, computed on the stain-contrast segmentation
(:mod:`trainer.vision.seg_stain`), with two changes of how, not of what:

* morphology from the outline and image moments with OpenCV (skimage's ``regionprops`` filled the convex
  hull pixel by pixel for the solidity); the perimeter is the nucleus outline's
  (:attr:`trainer.vision.nuclei.Nucleus.perimeter_px`);
* colour and texture on the cell's box shrunk (area-averaged) to at most :data:`COLOUR_SIDE` pixels: colour
  statistics of a few thousand pixels are those of all of them; texture is then measured at the same
  scale on every crop, whatever its resolution.
"""
from __future__ import annotations

import cv2
import numpy as np

from trainer.vision.nuclei import Nucleus, outer_contours

COLOUR_SIDE = 128   # pixels: longer side of the box in which colour and texture are measured


def morphology(nucleus: np.ndarray, nucleus_obj: Nucleus | None, cell_area: float, n_nuclei: int,
               n_lobes: int) -> list[float]:
    """The 12 morphology features (see ``MORPHOLOGY_NAMES``) of a bool nucleus mask (H, W)."""
    u8 = nucleus.astype(np.uint8)
    m = cv2.moments(u8, binaryImage=True)
    area = float(m["m00"])
    contours = outer_contours(np.pad(nucleus, 1))
    pts = np.concatenate(contours).reshape(-1, 1, 2)
    hull = max(float(cv2.contourArea(cv2.convexHull(pts))), 1.0)
    if nucleus_obj is not None and nucleus_obj.perimeter_px > 0:
        perimeter = float(nucleus_obj.perimeter_px)
    else:
        perimeter = float(sum(cv2.arcLength(c.reshape(-1, 1, 2), True) for c in contours)) or 1.0
    # axis lengths and eccentricity of the ellipse with the mask's second moments (as regionprops defines them)
    mu20, mu02, mu11 = m["mu20"] / area, m["mu02"] / area, m["mu11"] / area
    root = np.sqrt(max(((mu20 - mu02) / 2) ** 2 + mu11 ** 2, 0.0))
    l1, l2 = (mu20 + mu02) / 2 + root, max((mu20 + mu02) / 2 - root, 0.0)
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    ys, xs = np.nonzero(nucleus.any(axis=1))[0], np.nonzero(nucleus.any(axis=0))[0]
    box = float((ys[-1] - ys[0] + 1) * (xs[-1] - xs[0] + 1))
    cell_area = cell_area or area
    return [np.log1p(area), np.log1p(perimeter), np.log1p(np.sqrt(4 * area / np.pi)),
            min(1.0, 4 * np.pi * area / perimeter ** 2), float(np.sqrt(1 - l2 / l1)) if l1 > 0 else 0.0,
            min(1.0, area / hull), area / box, minor / major if major > 0 else 0.0, min(1.0, area / cell_area),
            float(n_lobes), np.log1p(cell_area), np.log1p(n_nuclei)]


def shrink(img: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``img`` (h, w, 3) and bool ``masks`` (h, w) scaled so that the longer side is at most COLOUR_SIDE."""
    side = max(img.shape[:2])
    if side <= COLOUR_SIDE:
        return img, masks
    scale = COLOUR_SIDE / side
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return small, [cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool) for m in masks]


def box_of(*masks: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the box holding every True pixel of ``masks`` (all (H, W) bool)."""
    union = np.logical_or.reduce(masks)
    ys, xs = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def glcm_props(glcm: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """GLCM properties ``names`` of co-occurrence matrices (L, L, distances, angles): ``{name: (d, a)}``.

    skimage's ``graycoprops`` formulas (correlation 1 where a marginal has no spread), in one numpy pass
    instead of one call per property, which on a field of ten nuclei cost more than the matrices themselves.
    """
    n = glcm.shape[0]
    i = np.arange(n, dtype=np.float64).reshape(n, 1, 1, 1)
    j = i.reshape(1, n, 1, 1)
    diff = i - j
    out = {}
    for name in names:
        if name == "contrast":
            out[name] = (glcm * diff ** 2).sum(axis=(0, 1))
        elif name == "dissimilarity":
            out[name] = (glcm * np.abs(diff)).sum(axis=(0, 1))
        elif name == "homogeneity":
            out[name] = (glcm / (1.0 + diff ** 2)).sum(axis=(0, 1))
        elif name in ("ASM", "energy"):
            asm = (glcm ** 2).sum(axis=(0, 1))
            out[name] = asm if name == "ASM" else np.sqrt(asm)
        elif name == "correlation":
            mi, mj = (glcm * i).sum(axis=(0, 1)), (glcm * j).sum(axis=(0, 1))
            si = np.sqrt((glcm * (i - mi) ** 2).sum(axis=(0, 1)))
            sj = np.sqrt((glcm * (j - mj) ** 2).sum(axis=(0, 1)))
            cov = (glcm * (i - mi) * (j - mj)).sum(axis=(0, 1))
            flat = (si < 1e-15) | (sj < 1e-15)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[name] = np.where(flat, 1.0, cov / np.where(flat, 1.0, si * sj))
        else:
            raise ValueError(f"unknown GLCM property {name!r}")
    return out
