"""What a nucleus segmentation returns, and the geometry both segmentation methods share.

Coordinates are pixels, x to the right and y down; contours are ``(N, 2)`` int32 ``(x, y)``. The
methods themselves are in :mod:`trainer.vision.seg_stain` (the default) and
:mod:`trainer.vision.seg_kmeans` (the paper's); :mod:`trainer.vision.segmentation` chooses.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi

KIND_SINGLE = "single_cell"
KIND_FIELD = "field"

BLACK_LEVEL = 25          # max(R, G, B) below this is black background in a crop
MERGE_MAX_HULL = 1.6      # close nucleus parts merge if their hull is at most this x a typical one

# ----------------------------------------------------------------------------- results
@dataclass
class Nucleus:
    """One nucleus (all lobes of one cell together).

    ``contour``: outline (N, 2) int32 x, y; for a multi-lobed nucleus the convex hull of all lobes
    (each lobe outline is in ``contours``). ``bbox``: (x, y, w, h). ``area_px``: pixels.
    ``perimeter_px``: summed lobe outline length. ``circularity``: 4 pi area / perimeter^2 (1 = disc).
    ``nc_ratio``: nucleus area / cell area where the cell boundary is known, else None.
    ``mask``: bool crop of the nucleus inside ``bbox``.
    ``confidence``: in [0, 1], how little the outline moves when the nucleus/cytoplasm threshold is
    moved a little (Dice of the two outlines; 1 = not at all), None where the method does not say.
    ``cytoplasm_visible``: on a single-cell crop, whether the cell shows cytoplasm beside the nucleus
    (False: the N:C ratio is not a measurement); None where the cell edge is unknown.
    """

    contour: np.ndarray
    bbox: tuple[int, int, int, int]
    area_px: float
    perimeter_px: float
    circularity: float
    nc_ratio: float | None = None
    contours: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None
    confidence: float | None = None
    cytoplasm_visible: bool | None = None

    @property
    def n_lobes(self) -> int:
        return max(1, len(self.contours))

    @property
    def centroid(self) -> tuple[float, float]:
        """(x, y) of the nucleus mask centre of mass."""
        x, y, _, _ = self.bbox
        if self.mask is None or not self.mask.any():
            return (x + self.bbox[2] / 2, y + self.bbox[3] / 2)
        ys, xs = np.nonzero(self.mask)
        return (x + float(xs.mean()), y + float(ys.mean()))


@dataclass
class Cell:
    """A white cell to classify: its nucleus and the square region ``bbox`` (x, y, w, h) around it.

    ``contour``: the cell outline (N, 2) int32 where the cell boundary was found, else empty (0, 2);
    ``area_px``: the cell area in pixels where known.
    """

    nucleus: Nucleus
    bbox: tuple[int, int, int, int]
    contour: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    area_px: float | None = None

    @property
    def nc_ratio(self) -> float | None:
        return self.nucleus.nc_ratio

    def crop(self, img: np.ndarray) -> np.ndarray:
        """The region ``bbox`` of ``img`` (a view)."""
        x, y, w, h = self.bbox
        return img[y:y + h, x:x + w]


@dataclass
class Segmentation:
    """``mask``: (H, W) bool, all nuclei; ``labels``: (H, W) int32, 0 = none, i + 1 = ``nuclei[i]``.

    ``kind``: "single_cell" or "field"; ``cell_mask``: (H, W) bool cell region for single-cell crops.
    ``centres``: the k-means cluster centres in Lab (k, 3); ``nucleus_clusters``: their indices
    taken as nucleus (k-means method only). ``method``: the segmentation method that made it.
    """

    mask: np.ndarray
    labels: np.ndarray
    nuclei: list[Nucleus]
    kind: str
    cell_mask: np.ndarray | None = None
    centres: np.ndarray | None = None
    nucleus_clusters: tuple[int, ...] = ()
    method: str = "kmeans"


# ----------------------------------------------------------------------------- helpers
def check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}")
    if min(img.shape[:2]) < 8:
        raise ValueError(f"image too small to segment: {img.shape[1]}x{img.shape[0]} pixels")
    return np.ascontiguousarray(img)


def to_lab(img: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 CIE Lab (H, W, 3), L in [0, 100] (8-bit precision)."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(np.float32)
    lab[..., 0] *= 100.0 / 255.0
    lab[..., 1:] -= 128.0
    return lab


def label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) float64 pixel count of labels 1..n in a label image.

    The same as ``ndi.sum(mask, labels, 1..n)`` of the mask it labels, at a tenth of the cost.
    """
    return np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1].astype(np.float64)


def disk(r: int) -> np.ndarray:
    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def outer_contours(mask: np.ndarray) -> list[np.ndarray]:
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1, 2).astype(np.int32) for c in cs if len(c) > 0]


def _perimeter(contour: np.ndarray) -> float:
    """Outline length of a pixel contour after a 0.7-pixel polygon simplification.

    The simplification removes the pixel staircase: a raw 8-connected chain overestimates a circle's
    perimeter by about 5 %.
    """
    c = contour.reshape(-1, 1, 2)
    if len(c) < 3:
        return float(2 * len(c))
    return float(cv2.arcLength(cv2.approxPolyDP(c, 0.7, True), True))


def measure(mask: np.ndarray, cell_area: float | None = None, offset: tuple[int, int] = (0, 0)) -> Nucleus:
    """Measurements of a bool nucleus mask (one or more lobes) as a :class:`Nucleus`.

    ``offset`` (x, y) is added to contours and bbox (for masks cut from a larger image).
    """
    mask = mask.astype(bool)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty nucleus mask")
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    sub = mask[y0:y1, x0:x1]
    pad = np.pad(sub, 1)
    lobes = [c - 1 for c in outer_contours(pad)]
    ox, oy = offset[0] + x0, offset[1] + y0
    lobes = [c + np.array([ox, oy], np.int32) for c in lobes]
    perimeter = float(sum(_perimeter(c) for c in lobes))
    area = float(sub.sum())
    circ = float(min(1.0, 4 * np.pi * area / perimeter ** 2)) if perimeter > 0 else 0.0
    if len(lobes) == 1:
        contour = lobes[0]
    else:
        contour = cv2.convexHull(np.concatenate(lobes).reshape(-1, 1, 2)).reshape(-1, 2).astype(np.int32)
    nc = float(area / cell_area) if cell_area else None
    return Nucleus(contour=contour, bbox=(int(ox), int(oy), int(x1 - x0), int(y1 - y0)), area_px=area,
                   perimeter_px=perimeter, circularity=circ, nc_ratio=nc, contours=lobes, mask=sub.copy())


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (flood fill from outside)."""
    pad = np.pad(mask.astype(np.uint8), 1)
    outside = pad.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    return (pad | (outside == 0))[1:-1, 1:-1].astype(bool)


# ----------------------------------------------------------------------------- crop vs field
def brightest_channel(img: np.ndarray) -> np.ndarray:
    """(h, w) the largest of the three channels of an RGB image.

    ``img.max(axis=2)`` gives the same, but numpy reduces a last axis of length 3 slowly: 5 ms on a 450 px
    crop against 0.2 ms here, paid for every training image when the image kinds are detected. Use it
    wherever the foreground (not black) of an image is wanted.
    """
    return np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2])


def is_single_cell_crop(img: np.ndarray) -> bool:
    """True for a segmented single-cell crop on a black background (C-NMC style).

    Criteria: at least 90 % of the 2-pixel image border is black, at least 10 % of the image is
    black, and a non-black object covers at least 2 % of it.
    """
    img = check_image(img)
    black = brightest_channel(img) < BLACK_LEVEL
    border = np.concatenate([black[:2].ravel(), black[-2:].ravel(), black[:, :2].ravel(), black[:, -2:].ravel()])
    frac = black.mean()
    return bool(border.mean() >= 0.9 and 0.10 <= frac <= 0.98)


def crop_objects(img: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """The non-black objects of a crop, specks opened away: (labels (H, W) int32, count, areas (count,) px)."""
    fg = brightest_channel(img) >= BLACK_LEVEL
    r = max(1, round(min(img.shape[:2]) / 150))
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, disk(r))
    lab, n = ndi.label(fg)
    return lab, n, label_sizes(lab, n)


def cell_region(img: np.ndarray) -> np.ndarray:
    """Non-black region of a crop: largest connected object, holes filled."""
    lab, n, sizes = crop_objects(img)
    if n == 0:
        return lab > 0
    return fill_holes(lab == (1 + int(np.argmax(sizes))))


def clean(mask: np.ndarray, side: int) -> np.ndarray:
    """Open away specks, close small gaps, fill holes (radius scaled with the image side)."""
    r = max(1, round(side / 150))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk(r))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, disk(r))
    return fill_holes(m.astype(bool))


def hull_area(mask: np.ndarray) -> float:
    pts = np.concatenate(outer_contours(np.pad(mask, 1)))
    return float(max(cv2.contourArea(cv2.convexHull(pts.reshape(-1, 1, 2))), mask.sum()))


def split_touching(blob: np.ndarray, typical_area: float) -> list[np.ndarray]:
    """Split a blob of touching nuclei by a watershed on its distance transform.

    For a blob much larger than ``typical_area`` and not convex; returns the parts (bool masks of the blob's
    shape).
    """
    area = float(blob.sum())
    if area < 1.6 * typical_area:
        return [blob]
    u8 = np.pad(blob, 2).astype(np.uint8)
    hull = cv2.convexHull(outer_contours(u8)[0].reshape(-1, 1, 2))
    if area / max(cv2.contourArea(hull), 1.0) > 0.9:
        return [blob]
    dist = cv2.distanceTransform(u8, cv2.DIST_L2, 5)
    n, markers = cv2.connectedComponents((dist > 0.5 * dist.max()).astype(np.uint8))
    if n <= 2:
        return [blob]
    markers = markers.astype(np.int32)
    markers[u8 == 0] = n  # background marker
    relief = cv2.cvtColor((255 * (1 - dist / dist.max())).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.watershed(relief, markers)
    markers = markers[2:-2, 2:-2]
    parts = [(markers == j) & blob for j in range(1, n)]
    return [p for p in parts if p.sum() >= 0.15 * typical_area] or [blob]



def group_nuclei(nuc: np.ndarray, groups: np.ndarray, typical: float) -> tuple[list[Nucleus], np.ndarray]:
    """Nuclei of a field from its nucleus mask (H, W) bool and a grouping of its pixels.

    ``groups``: (H, W) int32, 0 outside the nucleus, one label per candidate cell (parts with one label
    are lobes of one nucleus unless their hull is much larger than a typical group's, then neighbours).
    ``typical``: typical nucleus area, pixels (one blob much larger and not convex is split).
    Returns (nuclei ordered top-to-bottom, left-to-right; label image (H, W) int32, i + 1 = nuclei[i]).
    """
    h, w = nuc.shape
    slices = [(i + 1, sl) for i, sl in enumerate(ndi.find_objects(groups)) if sl is not None]
    hulls = {g: hull_area(groups[sl] == g) for g, sl in slices}
    typical_hull = float(np.median(list(hulls.values()))) if hulls else 0.0
    nuclei = []
    out = np.zeros((h, w), np.int32)
    for g, sl in slices:
        sub = groups[sl] == g
        comp, n_comp = ndi.label(sub)
        if n_comp == 1:  # one blob: may be touching nuclei of neighbouring cells
            parts = split_touching(sub, typical)
        elif hulls[g] <= MERGE_MAX_HULL * typical_hull:  # lobes of one compact nucleus
            parts = [sub]
        else:  # close neighbours, not one nucleus: keep them apart
            parts = [q for j in range(1, n_comp + 1) for q in split_touching(comp == j, typical)]
        for part in parts:
            nuclei.append(measure(part, offset=(sl[1].start, sl[0].start)))
            out[sl][part] = len(nuclei)
    order = sorted(range(len(nuclei)), key=lambda i: (nuclei[i].bbox[1] // 8, nuclei[i].bbox[0]))
    remap = np.zeros(len(nuclei) + 1, np.int32)
    remap[[o + 1 for o in order]] = np.arange(1, len(nuclei) + 1)
    return [nuclei[o] for o in order], remap[out]
