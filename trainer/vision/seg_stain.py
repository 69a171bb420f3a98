"""Nucleus segmentation by Otsu thresholds on a stain contrast (nucleus-v2, the default).

Chromatin stained by haematoxylin or by the azure dyes of Romanowsky stains (May-Grünwald-Giemsa,
Wright) absorbs green light far more than blue, so the nucleus is where blue exceeds green most; red
cells, eosin-stained granules and a yellowish background absorb blue at least as much as green. The
contrast is ``B - G`` (integers in [-255, 255]); where it splits is not fixed but measured on each
image by Otsu's method:

* a single-cell crop on black: two classes inside the cell (less its cut edge): nucleus and cytoplasm;
* a smear field: three classes over the image (background and red cells, cytoplasm, nucleus); the
  pixels above the upper threshold that are also clearly above the lowest class are nuclei,
  and the nucleus parts that lie in one connected cell (above the lower threshold) are one nucleus.

A crop cut along its nucleus (as C-NMC's are) has no cytoplasm to split off: where a crop's two classes
are a band along the cut edge, or shades of one colour, the whole cell is the nucleus and the result says
that no cytoplasm is visible (its N:C ratio is then no measurement).

The confidence of a nucleus is how little its outline moves when the threshold moves by a tenth of the
gap between the two classes' mean contrasts (Dice of the two outlines): near 1 where a deep valley in
the histogram separates nucleus and cytoplasm, lower where their colours blend.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

from trainer.vision.nuclei import (
    KIND_FIELD,
    KIND_SINGLE,
    Segmentation,
    cell_region,
    clean,
    disk,
    group_nuclei,
    label_sizes,
    measure,
    to_lab,
)
from trainer.vision.seg_kmeans import CROP_COLOUR_GAP, CROP_L_WEIGHT, purple_score

METHOD = "stain"
OFFSET = 256              # B - G + OFFSET indexes a histogram of 512 bins
# a field's nucleus pixels lie at least this far (B - G, 8-bit units) above the mean of its lowest class, which is
# background or red cells: without it a field of red cells alone would have its reddest parts as nuclei
MIN_FIELD_CONTRAST = 20
SHIFT = 0.1               # threshold moved by this share of the class-mean gap for the confidence
# below this share of the cell (less its cut edge) outside the nucleus, a crop shows no cytoplasm: the
# ring left is the width of the outline itself
CYTOPLASM_MIN = 0.05
# the stained pixels of a nucleus inside cytoplasm lie deeper in the cell than the rest; at under this
# share of the rest's mean depth they are the darker band along a crop's cut edge (set below what nuclei
# inside cytoplasm reached on expert-outlined cells, see benchmarks/README.md)
RING_DEPTH = 0.8
MIN_LOBE = 0.15           # parts of a crop's nucleus below this share of the largest part are specks


def stain_contrast(img: np.ndarray) -> np.ndarray:
    """(H, W) int16 ``B - G`` of an RGB uint8 image (H, W, 3): high on stained chromatin."""
    return img[..., 2].astype(np.int16) - img[..., 1].astype(np.int16)


def otsu(values: np.ndarray) -> tuple[float, float, float, float]:
    """Otsu's threshold of integer contrasts ``values`` (N,) in [-255, 255].

    Returns (threshold t: class 0 is ``<= t``, separability eta = between-class / total variance in
    [0, 1], mean of class 0, mean of class 1).
    """
    hist = np.bincount((values.astype(np.int32) + OFFSET).ravel(), minlength=2 * OFFSET).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    i = np.arange(len(p), dtype=np.float64)
    w0 = np.cumsum(p)
    m = np.cumsum(p * i)
    mt = m[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.nan_to_num((mt * w0 - m) ** 2 / (w0 * w1), posinf=0.0)
    t = int(np.argmax(between))
    var = float((p * (i - mt) ** 2).sum())
    eta = float(between[t] / var) if var > 0 else 0.0
    mean0 = m[t] / max(w0[t], 1e-12) - OFFSET
    mean1 = (mt - m[t]) / max(w1[t], 1e-12) - OFFSET
    return float(t - OFFSET), eta, float(mean0), float(mean1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def _paler(nucleus_rgb: np.ndarray, other_rgb: np.ndarray) -> float:
    """How much paler and less purple a mean colour is than the nucleus's (RGB (3,) each).

    Weighed as the paper's k-means method does: half the CIE L difference plus the drop of the purple
    score ``min(a, -b)``.
    """
    lab = to_lab(np.stack([nucleus_rgb, other_rgb]).round().astype(np.uint8)[None])[0]
    stain = purple_score(lab)
    return float(CROP_L_WEIGHT * (lab[1, 0] - lab[0, 0]) + (stain[0] - stain[1]))


@dataclass
class _CellBox:
    """A crop's cell box and what is measured in it.

    ``rgb`` (h, w, 3) uint8, ``contrast`` and ``grey`` (h, w), bool ``cell`` and ``inner`` (the cell less
    its cut edge), ``depth`` (h, w) float32 distance to the cell edge, pixels; ``side``: the crop's shorter
    side, pixels (the cleaning's scale).
    """

    rgb: np.ndarray
    contrast: np.ndarray
    grey: np.ndarray
    cell: np.ndarray
    inner: np.ndarray
    depth: np.ndarray
    side: int


def _crop_nucleus(b: _CellBox, t: float) -> tuple[np.ndarray, bool]:
    """(nucleus mask, whether cytoplasm is seen) of a crop's cell box at threshold ``t``.

    Cytoplasm surrounds
    its nucleus and is lighter: where the pixels above ``t`` form a band along the edge, or lie no deeper in
    the cell and are no darker than those below it, the split is not nucleus and cytoplasm but shades of
    one nucleus (a crop cut along the nucleus, as C-NMC's are): all of the cell is then the nucleus. So it is
    where the two classes' mean colours are closer than cytoplasm and nucleus are.
    """
    above = b.contrast > t
    high, low = above & b.inner, b.inner & ~above
    if not high.any():
        return b.cell.copy(), False
    if low.any():
        deeper = b.depth[high].mean() / max(b.depth[low].mean(), 1e-6)
        # a band along the edge (deeper well under 1), or pixels no deeper and no darker than the rest
        if (deeper < RING_DEPTH or (deeper <= 1.0 and b.grey[high].mean() >= b.grey[low].mean())
                or _paler(b.rgb[high].mean(axis=0), b.rgb[low].mean(axis=0)) < CROP_COLOUR_GAP):
            return b.cell.copy(), False
    nuc = clean(above & b.cell, b.side) & b.cell
    n, lab = cv2.connectedComponents(nuc.astype(np.uint8), connectivity=4)
    if n > 2:
        sizes = label_sizes(lab, n - 1)
        nuc = np.isin(lab, np.flatnonzero(sizes >= MIN_LOBE * sizes.max()) + 1)  # main nucleus and real lobes
    return nuc, bool((b.inner & ~nuc).sum() >= CYTOPLASM_MIN * b.cell.sum())


def segment_crop(img: np.ndarray) -> Segmentation:
    """Nucleus of a single-cell crop on black (H, W, 3) uint8: one Nucleus with N:C and confidence."""
    h, w = img.shape[:2]
    side = min(h, w)
    cell = cell_region(img)
    empty = Segmentation(np.zeros((h, w), bool), np.zeros((h, w), np.int32), [], KIND_SINGLE, cell, method=METHOD)
    if cell.sum() < 20:
        return empty
    # the work is done in the cell's box, with a margin wider than the cleaning's reach
    ys, xs = np.flatnonzero(cell.any(axis=1)), np.flatnonzero(cell.any(axis=0))
    pad = 2 * max(1, round(side / 150)) + 2
    box = (slice(max(0, ys[0] - pad), ys[-1] + 1 + pad), slice(max(0, xs[0] - pad), xs[-1] + 1 + pad))
    cell_b = cell[box]
    # the cut edge blends cell and black: it is left out of the threshold and of the cytoplasm
    rim = max(1, round(side / 100))
    inner = cv2.erode(cell_b.astype(np.uint8), disk(rim)).astype(bool)
    if inner.sum() < 20:
        inner = cell_b
    rgb = np.ascontiguousarray(img[box])
    b = _CellBox(rgb, stain_contrast(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cell_b, inner,
                 cv2.distanceTransform(cell_b.astype(np.uint8), cv2.DIST_L2, 3), side)
    t, _, mean0, mean1 = otsu(b.contrast[inner])
    nuc_b, cytoplasm = _crop_nucleus(b, t)
    if not nuc_b.any():
        return empty
    shift = SHIFT * max(mean1 - mean0, 1.0)
    wider, narrower = (_crop_nucleus(b, t + d)[0] for d in (-shift, shift))
    nuc = np.zeros((h, w), bool)
    nuc[box] = nuc_b
    nucleus = measure(nuc, cell_area=float(cell.sum()))
    nucleus.confidence = _dice(wider, narrower)
    nucleus.cytoplasm_visible = cytoplasm
    return Segmentation(nuc, nuc.astype(np.int32), [nucleus], KIND_SINGLE, cell, method=METHOD)


def _field_nuclei(contrast: np.ndarray, t: float, min_area: float) -> np.ndarray:
    h, w = contrast.shape
    nuc = clean(contrast > t, min(h, w))
    lab, n = ndi.label(nuc)
    if n == 0:
        return nuc
    sizes = label_sizes(lab, n)
    return np.isin(lab, np.flatnonzero(sizes >= min_area) + 1)


def _thresholds(contrast: np.ndarray) -> tuple[float, float, float, float]:
    """A field's three Otsu classes of contrast.

    Returns (lower threshold, upper threshold, class-mean gap at the upper one, mean of the lowest class).
    """
    lo_v, hi_v = int(contrast.min()), int(contrast.max())
    if hi_v - lo_v < 2:
        return float(hi_v), float(hi_v), 1.0, float(lo_v)
    counts = np.bincount((contrast - lo_v).ravel(), minlength=hi_v - lo_v + 1)
    centres = np.arange(lo_v, hi_v + 1, dtype=np.float64)
    if np.count_nonzero(counts) < 3:  # two colours at most: two classes
        t, _, mean0, mean1 = otsu(contrast)
        return t, t, max(mean1 - mean0, 1.0), mean0
    t_low, t_high = threshold_multiotsu(hist=(counts, centres), classes=3)
    low, mid, top = centres <= t_low, (centres > t_low) & (centres <= t_high), centres > t_high
    mean_low = np.average(centres[low], weights=counts[low]) if counts[low].sum() else t_low
    mean_mid = np.average(centres[mid], weights=counts[mid]) if counts[mid].sum() else t_low
    mean_top = np.average(centres[top], weights=counts[top]) if counts[top].sum() else t_high
    return float(t_low), float(t_high), float(max(mean_top - mean_mid, 1.0)), float(mean_low)


def segment_field(img: np.ndarray, min_area: float | None = None) -> Segmentation:
    """White-cell nuclei of a smear field (H, W, 3) uint8, each with its confidence.

    ``min_area``: smaller nuclei (pixels) are dropped; default 0.2 % of the image.
    """
    h, w = img.shape[:2]
    contrast = stain_contrast(img)
    t_low, t_high, gap, background = _thresholds(contrast)
    t = max(t_high, background + MIN_FIELD_CONTRAST)
    min_area = max(12.0, 0.002 * h * w) if min_area is None else float(min_area)
    nuc = _field_nuclei(contrast, t, min_area)
    if not nuc.any():
        return Segmentation(nuc, np.zeros((h, w), np.int32), [], KIND_FIELD, method=METHOD)
    # lobes of one nucleus share one cell: the connected region of cytoplasm and nucleus around them
    cells = clean(contrast > min(t_low, t), min(h, w))
    groups = np.where(nuc, ndi.label(cells | nuc)[0], 0).astype(np.int32)
    lab, n = ndi.label(nuc)
    nuclei, labels = group_nuclei(nuc, groups, float(np.median(label_sizes(lab, n))))
    shift = SHIFT * gap
    wider, narrower = (_field_nuclei(contrast, t + d, min_area) for d in (-shift, shift))
    for nucleus in nuclei:
        x, y, bw, bh = nucleus.bbox
        m = max(bw, bh) // 4 + 1
        box = (slice(max(0, y - m), y + bh + m), slice(max(0, x - m), x + bw + m))
        nucleus.confidence = _dice(wider[box], narrower[box])
    return Segmentation(labels > 0, labels, nuclei, KIND_FIELD, method=METHOD)
