"""Nucleus segmentation and white-cell detection: the public entry points.

Two methods segment the nuclei (both deterministic: the same image always gives the same result):

* ``"stain"`` (:mod:`trainer.vision.seg_stain`, the default, nucleus block nucleus-v2): Otsu thresholds
  on the blue-minus-green stain contrast, measured on each image; every nucleus carries a confidence;
* ``"kmeans"`` (:mod:`trainer.vision.seg_kmeans`, the paper's method, eq. 2; nucleus-v1): k-means
  colour clustering in CIE Lab. Kept so that models trained on nucleus-v1 features see the nuclei they
  were trained on.

Two kinds of image are handled:

* a single-cell crop on a black background (C-NMC): the cell is the non-black region, the nucleus
  the stained part of it; the nucleus-to-cell area ratio is measured;
* a smear field (many red cells, some white cells): each white-cell nucleus is found; lobes of one
  nucleus are merged into one nucleus.

Coordinates are pixels, x to the right and y down; contours are ``(N, 2)`` int32 ``(x, y)``.
"""
from __future__ import annotations

import numpy as np

from trainer.vision import seg_kmeans, seg_stain
from trainer.vision.nuclei import (  # noqa: F401  (re-exported: the segmentation API in one place)
    BLACK_LEVEL,
    KIND_FIELD,
    KIND_SINGLE,
    Cell,
    Nucleus,
    Segmentation,
    brightest_channel,
    check_image,
    is_single_cell_crop,
    label_sizes,
    measure,
    outer_contours,
    to_lab,
)
from trainer.vision.preprocess import gamma_correct
from trainer.vision.seg_kmeans import purple_score  # noqa: F401  (re-exported)

#: the segmentation methods, the default first
METHODS = (seg_stain.METHOD, "kmeans")
_label_sizes = label_sizes  # the name older callers use


# ----------------------------------------------------------------------------- public API
def segment_nuclei(img: np.ndarray, k: int | None = None, gamma: float = 1.0, kind: str = "auto",
                   min_area: float | None = None, merge_gap: float | None = None,
                   method: str = METHODS[0]) -> Segmentation:
    """Segment the nuclei of an RGB uint8 image (H, W, 3).

    ``method``: "stain" (default) or "kmeans" (see the module). ``k``: number of k-means colour
    clusters (k-means method; default 3 for single-cell crops, 5 for fields).
    ``gamma``: eq. 1 correction applied first (0.8..1.2). ``kind``: "auto" (decided by
    :func:`is_single_cell_crop`), "single_cell" or "field". For fields, ``min_area`` (pixels,
    default 0.2 % of the image) drops smaller blobs and nucleus parts closer than ``merge_gap``
    pixels (k-means method; default 12 % of the median nucleus diameter) are merged into one nucleus
    (the stain method merges the parts that lie in one cell).
    Deterministic: the same image always gives the same result.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    img = check_image(img)
    if gamma != 1.0:
        img = gamma_correct(img, gamma)
    if kind == "auto":
        kind = KIND_SINGLE if is_single_cell_crop(img) else KIND_FIELD
    if kind == KIND_SINGLE:
        return seg_stain.segment_crop(img) if method == seg_stain.METHOD else seg_kmeans.segment_crop(img, int(k or 3))
    if kind == KIND_FIELD:
        if method == seg_stain.METHOD:
            return seg_stain.segment_field(img, min_area)
        return seg_kmeans.segment_field(img, int(k or 5), min_area, merge_gap)
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
            cs = outer_contours(seg.cell_mask)
            contour = max(cs, key=len)
            area = float(seg.cell_mask.sum())
        return [Cell(nucleus, (0, 0, w, h), contour, area)]
    return [Cell(n, cell_box(n, shape)) for n in seg.nuclei]


def find_cells(img: np.ndarray, k: int | None = None, gamma: float = 1.0, method: str = METHODS[0]) -> list[Cell]:
    """White cells to classify in an RGB uint8 image.

    For a single-cell crop: one cell whose bbox is the whole image (the cell outline and the
    nucleus-to-cell ratio are filled in). For a field: one cell per white-cell nucleus, its bbox a
    square around the nucleus that includes the cytoplasm, clipped to the image.
    """
    seg = segment_nuclei(img, k=k, gamma=gamma, method=method)
    return cells_from_segmentation(seg, img.shape)
