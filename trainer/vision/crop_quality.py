"""Quality flags of a single-cell crop: what makes its one-cell result unsafe to take without a person.

A crop model judges one white cell cut out onto black. Three things break that premise, and each is
read from the crop's non-black objects, not from the classifiers:

* ``QUALITY_SEVERAL``: more than one sizeable object (two cells cut out into one crop);
* ``QUALITY_TOUCHING``: one object with two round bodies joined by a waist (touching cells), found as
  two maxima of its distance transform (scikit-image ``peak_local_max``) joined only through a narrow
  point;
* ``QUALITY_EDGE``: the object runs into the image border (the cell was cut by the crop's edge).

Such a crop gets "uncertain, review" whatever its probability (see
:meth:`trainer.inference.results.CellPrediction.decision`).

Before any of that, :func:`featureless` tells an image with nothing in it (one flat colour, as a solid
blue or purple test image) from one with cells: such an image gets no class at all ("not assessable"),
whatever the model would make of it.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from trainer.vision.crop_flags import QUALITY_EDGE, QUALITY_SEVERAL, QUALITY_TOUCHING
from trainer.vision.nuclei import crop_objects, hull_area

#: a second object counts as a cell from this share of the largest object's area (smaller ones are debris)
SECOND_CELL_SHARE = 0.25
#: a body counts from this share of the largest inscribed radius (smaller bulges are lobes or pseudopods)
BODY_RADIUS_SHARE = 0.7
#: a waist narrower than this share of the smaller body's radius parts two touching cells
WAIST_SHARE = 0.75
#: object area / convex hull area from which a shape is taken as convex, without a waist to look for
CONVEX_SOLIDITY = 0.97
#: share of the image border the object may cover before it counts as cut (anti-aliased corners aside)
EDGE_SHARE = 0.02


#: standard deviation of the grey level (0..255) under which an image counts as one flat colour
FLAT_STD = 3.0


def featureless(img: np.ndarray) -> bool:
    """True for an RGB uint8 image (H, W, 3) of one flat colour: no cell, nothing to judge."""
    grey = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    return float(grey.std()) < FLAT_STD


def _saddle(dist: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> float:
    """Height of the lowest point on the best path between ``a`` and ``b`` over the relief ``dist``.

    The highest level at which both lie in one connected part of ``dist >= level`` (to 1/32 of the relief).
    """
    lo, hi = 0.0, float(min(dist[a], dist[b]))
    for _ in range(5):
        mid = (lo + hi) / 2
        labels, _ = ndi.label(dist >= mid)
        lo, hi = (mid, hi) if labels[a] == labels[b] else (lo, mid)
    return lo


def _touching(obj: np.ndarray) -> bool:
    """True for one object made of two round bodies joined by a waist.

    Two maxima of the distance transform (the bodies' centres, each at least ``BODY_RADIUS_SHARE`` of the
    largest radius), joined at best through a point narrower than ``WAIST_SHARE`` of the smaller body's
    radius. A long oval or a bean has one ridge with no such waist.
    """
    if obj.sum() / hull_area(obj) >= CONVEX_SOLIDITY:
        return False
    u8 = np.pad(obj, 2).astype(np.uint8)
    dist = cv2.distanceTransform(u8, cv2.DIST_L2, 5)
    top = float(dist.max())
    peaks = [tuple(p) for p in peak_local_max(dist, min_distance=max(1, int(top)),
                                              threshold_abs=BODY_RADIUS_SHARE * top, exclude_border=False)]
    return any(_saddle(dist, p, q) < WAIST_SHARE * min(dist[p], dist[q])
               for i, p in enumerate(peaks) for q in peaks[i + 1:])


def crop_quality_flags(img: np.ndarray) -> list[str]:
    """The quality flags of a single-cell crop on black (RGB uint8 (H, W, 3)); [] where none applies."""
    labels, n, areas = crop_objects(np.asarray(img))
    if n == 0:
        return []
    main = int(np.argmax(areas)) + 1
    flags = []
    if int(np.sum(areas >= SECOND_CELL_SHARE * areas.max())) > 1:
        flags.append(QUALITY_SEVERAL)
    obj = labels == main
    if _touching(obj):
        flags.append(QUALITY_TOUCHING)
    border = np.concatenate([obj[0], obj[-1], obj[1:-1, 0], obj[1:-1, -1]])
    if border.mean() > EDGE_SHARE:
        flags.append(QUALITY_EDGE)
    return flags
