"""Nucleus segmentation by k-means colour clustering (paper eq. 2) and white-cell detection.

Pixels are clustered in CIE Lab (L in [0, 100], a and b roughly [-128, 127]) with a deterministic
Lloyd k-means on a fixed subsample, then every pixel goes to its nearest centre. Nucleus clusters
are chosen by stain: haematoxylin-stained nuclei are purple (a > 0, b < 0), so the "purple score"
``min(a, -b)`` of a cluster centre is high for nuclei and low for the black or white background,
pink-red erythrocytes (b > 0) and grey-blue erythrocytes (a ~ 0).

Two kinds of image are handled:

* a single-cell crop on a black background (C-NMC): the cell is the non-black region, the nucleus
  the darker stained part of it; the nucleus-to-cell area ratio is measured;
* a smear field (many red cells, some white cells): each white-cell nucleus is found; lobes of one
  nucleus that lie close together are merged into one nucleus.

Coordinates are pixels, x to the right and y down; contours are ``(N, 2)`` int32 ``(x, y)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi

from trainer.vision.kmeans import assign, kmeans, subsample
from trainer.vision.preprocess import gamma_correct

KIND_SINGLE = "single_cell"
KIND_FIELD = "field"

BLACK_LEVEL = 25          # max(R, G, B) below this is black background in a crop
PURPLE_MIN = 12.0         # cluster centres with min(a, -b) below this are never nucleus (fields)
CROP_COLOUR_GAP = 12.0    # (L/2 lighter) + (purple score lower): a cluster this much paler is cytoplasm
CROP_L_WEIGHT = 0.5
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
    """

    contour: np.ndarray
    bbox: tuple[int, int, int, int]
    area_px: float
    perimeter_px: float
    circularity: float
    nc_ratio: float | None = None
    contours: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None

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
    taken as nucleus.
    """

    mask: np.ndarray
    labels: np.ndarray
    nuclei: list[Nucleus]
    kind: str
    cell_mask: np.ndarray | None = None
    centres: np.ndarray | None = None
    nucleus_clusters: tuple[int, ...] = ()


# ----------------------------------------------------------------------------- helpers
def _check(img: np.ndarray) -> np.ndarray:
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


def purple_score(lab: np.ndarray) -> np.ndarray:
    """Stain score ``min(a, -b)`` of Lab values (..., 3): high for purple (haematoxylin) only."""
    return np.minimum(lab[..., 1], -lab[..., 2])


def _crop_features(lab: np.ndarray) -> np.ndarray:
    f = lab.copy()
    f[..., 0] *= CROP_L_WEIGHT
    return f


def _label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) float64 pixel count of labels 1..n in a label image.

    The same as ``ndi.sum(mask, labels, 1..n)`` of the mask it labels, at a tenth of the cost.
    """
    return np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1].astype(np.float64)


def _disk(r: int) -> np.ndarray:
    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _outer_contours(mask: np.ndarray) -> list[np.ndarray]:
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
    lobes = [c - 1 for c in _outer_contours(pad)]
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


def _fill_holes(mask: np.ndarray) -> np.ndarray:
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
    img = _check(img)
    black = brightest_channel(img) < BLACK_LEVEL
    border = np.concatenate([black[:2].ravel(), black[-2:].ravel(), black[:, :2].ravel(), black[:, -2:].ravel()])
    frac = black.mean()
    return bool(border.mean() >= 0.9 and 0.10 <= frac <= 0.98)


def _cell_region(img: np.ndarray) -> np.ndarray:
    """Non-black region of a crop: largest connected object, holes filled."""
    fg = brightest_channel(img) >= BLACK_LEVEL
    r = max(1, round(min(img.shape[:2]) / 150))
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, _disk(r)).astype(bool)
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = _label_sizes(lab, n)
    return _fill_holes(lab == (1 + int(np.argmax(sizes))))


def _segment_crop(img: np.ndarray, k: int) -> Segmentation:
    h, w = img.shape[:2]
    cell = _cell_region(img)
    empty = Segmentation(np.zeros((h, w), bool), np.zeros((h, w), np.int32), [], KIND_SINGLE, cell)
    if cell.sum() < 20:
        return empty
    # ignore the dark anti-aliased rim at the edge of the cell when fitting the clusters
    rim = max(1, round(min(h, w) / 100))
    inner = cv2.erode(cell.astype(np.uint8), _disk(rim)).astype(bool)
    if inner.sum() < 20:
        inner = cell
    feats = _crop_features(to_lab(img))
    px = feats[cell]
    fit = feats[inner]
    centres, _, _ = kmeans(fit[subsample(len(fit))], k)
    nearest = assign(px, centres)
    # nucleus: the darkest cluster plus every cluster that is not clearly lighter and less purple
    # than a nucleus cluster (chromatin texture varies in lightness and saturation; cytoplasm is
    # both lighter and paler). In the feature space lightness counts half.
    order = np.argsort(centres[:, 0])
    stain = purple_score(centres)
    chosen = [int(order[0])]
    for j in order[1:]:
        paler = (centres[j, 0] - centres[chosen, 0]) + (stain[chosen] - stain[j])
        if paler.min() < CROP_COLOUR_GAP:
            chosen.append(int(j))
    nuc = np.zeros((h, w), bool)
    nuc[cell] = np.isin(nearest, chosen)
    nuc = _clean(nuc, min(h, w))
    nuc &= cell
    lab_img, n = ndi.label(nuc)
    if n == 0:
        return empty
    sizes = _label_sizes(lab_img, n)
    keep = np.flatnonzero(sizes >= 0.15 * sizes.max()) + 1   # main nucleus plus sizeable lobes
    nuc = np.isin(lab_img, keep)
    nucleus = measure(nuc, cell_area=float(cell.sum()))
    return Segmentation(nuc, nuc.astype(np.int32), [nucleus], KIND_SINGLE, cell, centres.astype(np.float32),
                        tuple(chosen))


def _clean(mask: np.ndarray, side: int) -> np.ndarray:
    """Open away specks, close small gaps, fill holes (radius scaled with the image side)."""
    r = max(1, round(side / 150))
    m = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, _disk(r))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(r))
    return _fill_holes(m.astype(bool))


def _hull_area(mask: np.ndarray) -> float:
    pts = np.concatenate(_outer_contours(np.pad(mask, 1)))
    return float(max(cv2.contourArea(cv2.convexHull(pts.reshape(-1, 1, 2))), mask.sum()))


def _split_touching(blob: np.ndarray, typical_area: float) -> list[np.ndarray]:
    """Split a blob of touching nuclei by a watershed on its distance transform.

    For a blob much larger than ``typical_area`` and not convex; returns the parts (bool masks of the blob's
    shape).
    """
    area = float(blob.sum())
    if area < 1.6 * typical_area:
        return [blob]
    u8 = np.pad(blob, 2).astype(np.uint8)
    hull = cv2.convexHull(_outer_contours(u8)[0].reshape(-1, 1, 2))
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


def _segment_field(img: np.ndarray, k: int, min_area: float | None, merge_gap: float | None) -> Segmentation:
    h, w = img.shape[:2]
    lab = to_lab(img)
    flat = lab.reshape(-1, 3)
    centres, _, _ = kmeans(flat[subsample(len(flat))], k)
    score = purple_score(centres)
    chosen = tuple(int(j) for j in np.flatnonzero(score >= PURPLE_MIN))
    # among stained clusters keep those close to the most purple one (drops pale lilac cytoplasm)
    if len(chosen) > 1:
        top = score[list(chosen)].max()
        chosen = tuple(j for j in chosen if score[j] >= 0.5 * top)
    nuc = np.isin(assign(flat, centres), chosen).reshape(h, w) if chosen else np.zeros((h, w), bool)
    nuc = _clean(nuc, min(h, w))
    if min_area is None:
        min_area = max(12.0, 0.002 * h * w)
    lab_img, n = ndi.label(nuc)
    if n:
        sizes = _label_sizes(lab_img, n)
        nuc = np.isin(lab_img, np.flatnonzero(sizes >= min_area) + 1)
    # merge lobes of one nucleus: components closer than ``gap`` pixels belong to one cell
    lab_img, n = ndi.label(nuc)
    if n == 0:
        return Segmentation(nuc, np.zeros((h, w), np.int32), [], KIND_FIELD, None, centres.astype(np.float32), chosen)
    if merge_gap is None:
        sizes = _label_sizes(lab_img, n)
        diam = 2 * np.sqrt(np.median(sizes) / np.pi)
        merge_gap = max(2.0, 0.12 * diam)
    r = max(1, int(np.ceil(merge_gap / 2)))
    grown = cv2.dilate(nuc.astype(np.uint8), _disk(r)).astype(bool)
    groups, _ = ndi.label(grown)
    groups = np.where(nuc, groups, 0).astype(np.int32)
    typical = float(np.median(_label_sizes(lab_img, n)))
    slices = [(i + 1, sl) for i, sl in enumerate(ndi.find_objects(groups)) if sl is not None]
    hulls = {g: _hull_area(groups[sl] == g) for g, sl in slices}
    typical_hull = float(np.median(list(hulls.values())))
    nuclei = []
    out = np.zeros((h, w), np.int32)
    for g, sl in slices:
        sub = groups[sl] == g
        comp, n_comp = ndi.label(sub)
        if n_comp == 1:  # one blob: may be touching nuclei of neighbouring cells
            parts = _split_touching(sub, typical)
        elif hulls[g] <= MERGE_MAX_HULL * typical_hull:  # lobes of one compact nucleus
            parts = [sub]
        else:  # close neighbours, not one nucleus: keep them apart
            parts = [q for j in range(1, n_comp + 1) for q in _split_touching(comp == j, typical)]
        for part in parts:
            nuclei.append(measure(part, offset=(sl[1].start, sl[0].start)))
            out[sl][part] = len(nuclei)
    # order nuclei top-to-bottom, left-to-right for stable numbering
    order = sorted(range(len(nuclei)), key=lambda i: (nuclei[i].bbox[1] // 8, nuclei[i].bbox[0]))
    remap = np.zeros(len(nuclei) + 1, np.int32)
    remap[[o + 1 for o in order]] = np.arange(1, len(nuclei) + 1)
    return Segmentation(out > 0, remap[out], [nuclei[o] for o in order], KIND_FIELD, None,
                        centres.astype(np.float32), chosen)


# ----------------------------------------------------------------------------- public API
def segment_nuclei(img: np.ndarray, k: int | None = None, gamma: float = 1.0, kind: str = "auto",
                   min_area: float | None = None, merge_gap: float | None = None) -> Segmentation:
    """Segment the nuclei of an RGB uint8 image (H, W, 3).

    ``k``: number of k-means colour clusters (default 3 for single-cell crops, 5 for fields).
    ``gamma``: eq. 1 correction applied first (0.8..1.2). ``kind``: "auto" (decided by
    :func:`is_single_cell_crop`), "single_cell" or "field". For fields, ``min_area`` (pixels,
    default 0.2 % of the image) drops smaller blobs and nucleus parts closer than ``merge_gap``
    pixels (default 12 % of the median nucleus diameter) are merged into one nucleus.
    Deterministic: the same image always gives the same result.
    """
    img = _check(img)
    if gamma != 1.0:
        img = gamma_correct(img, gamma)
    if kind == "auto":
        kind = KIND_SINGLE if is_single_cell_crop(img) else KIND_FIELD
    if kind == KIND_SINGLE:
        return _segment_crop(img, int(k or 3))
    if kind == KIND_FIELD:
        return _segment_field(img, int(k or 5), min_area, merge_gap)
    raise ValueError(f"kind must be 'auto', 'single_cell' or 'field', not {kind!r}")


def cell_box(nucleus: Nucleus, shape: tuple[int, int], scale: float = 1.6) -> tuple[int, int, int, int]:
    """Square (x, y, w, h) centred on the nucleus bbox, side ``scale`` x its longer side, clipped."""
    h_img, w_img = shape[:2]
    x, y, w, h = nucleus.bbox
    side = int(round(max(w, h) * scale))
    side = min(side, w_img, h_img)
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(cx - side / 2, 0), w_img - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h_img - side)))
    return (x0, y0, side, side)


def cells_from_segmentation(seg: Segmentation, shape: tuple[int, int]) -> list[Cell]:
    """Cells to classify from a segmentation (see :func:`find_cells`)."""
    h, w = shape[:2]
    if seg.kind == KIND_SINGLE:
        if seg.nuclei:
            nucleus = seg.nuclei[0]
        else:  # no nucleus found: still classify the whole crop
            nucleus = Nucleus(np.zeros((0, 2), np.int32), (0, 0, w, h), 0.0, 0.0, 0.0)
        contour = np.zeros((0, 2), np.int32)
        area = None
        if seg.cell_mask is not None and seg.cell_mask.any():
            cs = _outer_contours(seg.cell_mask)
            contour = max(cs, key=len)
            area = float(seg.cell_mask.sum())
        return [Cell(nucleus, (0, 0, w, h), contour, area)]
    return [Cell(n, cell_box(n, shape)) for n in seg.nuclei]


def find_cells(img: np.ndarray, k: int | None = None, gamma: float = 1.0) -> list[Cell]:
    """White cells to classify in an RGB uint8 image.

    For a single-cell crop: one cell whose bbox is the whole image (the cell outline and the
    nucleus-to-cell ratio are filled in). For a field: one cell per white-cell nucleus, its bbox a
    square around the nucleus that includes the cytoplasm, clipped to the image.
    """
    seg = segment_nuclei(img, k=k, gamma=gamma)
    return cells_from_segmentation(seg, img.shape)
