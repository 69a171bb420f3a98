"""Hand-crafted nucleus features: morphology, chromatin texture and colour, from the segmentation.

:func:`nucleus_features` turns one RGB uint8 image into a fixed-length vector of
:data:`NUCLEUS_DIM` numbers (the ``"nucleus"`` feature block, fused beside the CNN blocks):

* morphology (12): area, perimeter, equivalent diameter (pixels, log-scaled), circularity,
  eccentricity, solidity, extent, minor/major axis ratio, nucleus-to-cell ratio, number of lobes,
  cell area (log), number of nuclei found (log);
* colour (30): mean and standard deviation of L, a, b, H (as cos/sin mean), S and V over the
  nucleus and over the cytoplasm (the cell less its nucleus; on smear fields a ring around each
  nucleus), and the 10th / 50th / 90th percentiles of nucleus L;
* chromatin texture (46): grey-level co-occurrence (GLCM / Haralick: contrast, dissimilarity,
  homogeneity, energy, correlation, ASM at distances 1, 2 and 4 pixels, averaged over four angles)
  and uniform local binary pattern histograms (P=8, R=1 and P=16, R=2) inside the nucleus.

On a single-cell crop the features describe its nucleus; on a smear field they are the mean over
its nuclei. An image without a nucleus gives zeros (and ``n_nuclei`` 0).

The block's version names the segmentation it is computed on (:data:`SEGMENTATION_OF`): nucleus-v2
(the default, new trainings) on the stain-contrast thresholds, nucleus-v1 on the paper's k-means. A
model predicts with the version it was trained with, so an older model sees the nuclei it learnt.
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.measure import regionprops

from trainer.vision import handcrafted_v2 as v2
from trainer.vision.segmentation import KIND_SINGLE, Segmentation, brightest_channel, segment_nuclei

GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_SETTINGS = ((8, 1), (16, 2))        # (points P, radius R), uniform patterns: P + 2 bins
MAX_SIDE = 256                           # nucleus regions are shrunk to this side before texture

MORPHOLOGY_NAMES = ("log_area", "log_perimeter", "log_eq_diameter", "circularity", "eccentricity",
                    "solidity", "extent", "axis_ratio", "nc_ratio", "n_lobes", "log_cell_area",
                    "log_n_nuclei")
_COLOUR_CHANNELS = ("L", "a", "b", "hue_cos", "hue_sin", "S", "V")
COLOUR_NAMES = tuple(f"{region}_{c}_{stat}" for region in ("nucleus", "cytoplasm")
                     for c in _COLOUR_CHANNELS for stat in ("mean", "std")
                     if not (c.startswith("hue") and stat == "std")) + ("nucleus_L_p10", "nucleus_L_p50",
                                                                         "nucleus_L_p90")
TEXTURE_NAMES = tuple(f"glcm_{p}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS) + tuple(
    f"lbp{p}r{r}_{b}" for p, r in LBP_SETTINGS for b in range(p + 2))
FEATURE_NAMES = MORPHOLOGY_NAMES + COLOUR_NAMES + TEXTURE_NAMES
NUCLEUS_DIM = len(FEATURE_NAMES)
#: bump when the features change: part of the feature-cache key and recorded in each trained model
VERSION = "nucleus-v2"
#: the segmentation method (see :func:`trainer.vision.segmentation.segment_nuclei`) of each version
SEGMENTATION_OF = {"nucleus-v1": "kmeans", "nucleus-v2": "stain"}
#: the version of models that recorded none (all of them computed nucleus-v1)
LEGACY_VERSION = "nucleus-v1"


def segmentation_method(version: str) -> str:
    """The segmentation method of a nucleus-block version; raises ValueError for an unknown one."""
    try:
        return SEGMENTATION_OF[version]
    except KeyError:
        raise ValueError(f"unknown nucleus feature version {version!r}; this allgui knows "
                         f"{', '.join(SEGMENTATION_OF)}") from None


def _colour_planes(img: np.ndarray) -> np.ndarray:
    """(H, W, 7) float32: L, a, b, cos(hue), sin(hue), S, V (S and V in [0, 1])."""
    f = img.astype(np.float32) / 255.0
    lab = cv2.cvtColor(f, cv2.COLOR_RGB2Lab)
    hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)        # H in degrees
    h = np.deg2rad(hsv[..., 0])
    return np.dstack([lab, np.cos(h), np.sin(h), hsv[..., 1], hsv[..., 2]])


def _colour(planes: np.ndarray, nucleus: np.ndarray, cytoplasm: np.ndarray) -> np.ndarray:
    out = []
    for region in (nucleus, cytoplasm):
        px = planes[region] if region.any() else np.zeros((1, planes.shape[2]), np.float32)
        mean, std = px.mean(axis=0), px.std(axis=0)
        for j, c in enumerate(_COLOUR_CHANNELS):
            out.append(mean[j])
            if not c.startswith("hue"):
                out.append(std[j])
    lum = planes[..., 0][nucleus] if nucleus.any() else np.zeros(1, np.float32)
    out.extend(np.percentile(lum, [10, 50, 90]))
    return np.asarray(out, dtype=np.float64)


def _texture(grey: np.ndarray, mask: np.ndarray, props_of=None) -> np.ndarray:
    """GLCM and LBP features of ``grey`` (uint8) inside ``mask`` (both cropped to the nucleus).

    ``props_of(glcm, names)``: computes the GLCM properties (default: skimage's ``graycoprops``, one by one).
    """
    side = max(grey.shape)
    if side > MAX_SIDE:
        scale = MAX_SIDE / side
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    out = []
    # level 0 marks pixels outside the nucleus; their co-occurrences are dropped
    q = (1 + (grey.astype(np.int32) * (GLCM_LEVELS - 1)) // 256).astype(np.uint8)
    q[~mask] = 0
    glcm = graycomatrix(q, distances=list(GLCM_DISTANCES), angles=list(GLCM_ANGLES),
                        levels=GLCM_LEVELS, symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    total = glcm.sum(axis=(0, 1), keepdims=True)
    glcm = np.divide(glcm, total, out=np.zeros_like(glcm), where=total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # every distance at once: (distances, angles)
        if props_of is None:
            props = {prop: np.nan_to_num(graycoprops(glcm, prop)) for prop in GLCM_PROPS}
        else:
            props = {k: np.nan_to_num(v) for k, v in props_of(glcm, GLCM_PROPS).items()}
    for d in range(len(GLCM_DISTANCES)):
        out.extend(float(props[prop][d].mean()) for prop in GLCM_PROPS)
    for p, r in LBP_SETTINGS:
        codes = local_binary_pattern(grey, p, r, method="uniform")[mask]
        hist = np.bincount(codes.astype(np.int64), minlength=p + 2)[:p + 2].astype(np.float64)
        out.extend(hist / max(hist.sum(), 1.0))
    return np.asarray(out, dtype=np.float64)


def _span(mask: np.ndarray, axis: int) -> slice:
    """Rows (``axis`` 1) or columns (``axis`` 0) of ``mask`` (H, W) that hold a True pixel, as a slice."""
    idx = np.flatnonzero(mask.any(axis=axis))
    return slice(int(idx[0]), int(idx[-1]) + 1)


def _one(planes: np.ndarray, grey: np.ndarray, nucleus: np.ndarray,
         cell: np.ndarray, n_lobes: int, n_nuclei: int) -> np.ndarray:
    """Feature vector (NUCLEUS_DIM,) of one nucleus mask within ``cell``.

    Both masks are bool, of the shape of ``grey`` (H, W) and ``planes`` (H, W, 7).
    """
    props = regionprops(nucleus.astype(np.uint8))[0]
    area = float(props.area)
    perimeter = float(props.perimeter) or 1.0
    major = float(props.axis_major_length) or 1.0
    cell_area = float(cell.sum()) or area
    morph = [np.log1p(area), np.log1p(perimeter), np.log1p(props.equivalent_diameter_area),
             min(1.0, 4 * np.pi * area / perimeter ** 2), props.eccentricity, props.solidity,
             props.extent, float(props.axis_minor_length) / major, min(1.0, area / cell_area),
             float(n_lobes), np.log1p(cell_area), np.log1p(n_nuclei)]
    cytoplasm = cell & ~nucleus
    colour = _colour(planes, nucleus, cytoplasm)
    y0, x0, y1, x1 = props.bbox
    texture = _texture(grey[y0:y1, x0:x1], nucleus[y0:y1, x0:x1])
    return np.concatenate([np.asarray(morph, dtype=np.float64), colour, texture])


def _ring(nucleus: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Cell stand-in on a smear field: the nucleus grown by a third of its diameter."""
    d = np.sqrt(nucleus.sum() / np.pi) * 2
    r = max(2, int(round(d / 3)))
    grown = cv2.dilate(nucleus.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    return grown.astype(bool) & fg


def nucleus_features(img: np.ndarray, seg: Segmentation | None = None, version: str = VERSION) -> np.ndarray:
    """(NUCLEUS_DIM,) float32 hand-crafted features of an RGB uint8 image (H, W, 3).

    ``seg`` may pass a segmentation of ``img`` already made; it is used if made by ``version``'s method,
    otherwise (or without one) the image is segmented here.
    """
    img = np.ascontiguousarray(img)
    method = segmentation_method(version)
    if seg is None or seg.method != method:
        seg = segment_nuclei(img, method=method)
    if not seg.nuclei:
        return np.zeros(NUCLEUS_DIM, np.float32)
    if version != LEGACY_VERSION:
        return _features_v2(img, seg)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if seg.kind == KIND_SINGLE:
        cell = seg.cell_mask if seg.cell_mask is not None and seg.cell_mask.any() else np.ones(seg.mask.shape, bool)
        # only the cell's box is read (the nucleus lies in the cell): the colour planes, computed pixel by
        # pixel, and every region hold the same values there, in the same order (but that OpenCV's scalar
        # path for the last pixels of a buffer may round a hue one float32 step apart from its vector path)
        region = cell | seg.mask
        ys, xs = _span(region, 1), _span(region, 0)
        planes = _colour_planes(img[ys, xs])
        vec = _one(planes, grey[ys, xs], seg.mask[ys, xs], cell[ys, xs], seg.nuclei[0].n_lobes, 1)
    else:
        planes = _colour_planes(img)
        fg = brightest_channel(img) > 0
        vecs = []
        for i, n in enumerate(seg.nuclei):
            mask = seg.labels == i + 1
            if mask.sum() < 4:
                continue
            vecs.append(_one(planes, grey, mask, _ring(mask, fg), n.n_lobes, len(seg.nuclei)))
        if not vecs:
            return np.zeros(NUCLEUS_DIM, np.float32)
        vec = np.mean(vecs, axis=0)
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _one_v2(img: np.ndarray, nucleus: np.ndarray, cell: np.ndarray, nucleus_obj, n_nuclei: int) -> np.ndarray:
    """nucleus-v2 feature vector (NUCLEUS_DIM,) of one nucleus mask within ``cell`` (both (H, W) bool)."""
    ys, xs = v2.box_of(nucleus, cell)
    nuc, cel = nucleus[ys, xs], cell[ys, xs]
    morph = v2.morphology(nuc, nucleus_obj, float(cel.sum()), n_nuclei, nucleus_obj.n_lobes)
    small, (nuc_s, cel_s) = v2.shrink(img[ys, xs], [nuc, cel])
    if not nuc_s.any():  # a sliver of a nucleus lost in the shrinking: measured at full size
        small, nuc_s, cel_s = img[ys, xs], nuc, cel
    colour = _colour(_colour_planes(small), nuc_s, cel_s & ~nuc_s)
    grey = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
    box = v2.box_of(nuc_s)
    texture = _texture(grey[box], nuc_s[box], v2.glcm_props)
    return np.concatenate([np.asarray(morph, dtype=np.float64), colour, texture])


def _features_v2(img: np.ndarray, seg: Segmentation) -> np.ndarray:
    """The nucleus-v2 block (see :mod:`trainer.vision.handcrafted_v2`) of an image with nuclei."""
    if seg.kind == KIND_SINGLE:
        cell = seg.cell_mask if seg.cell_mask is not None and seg.cell_mask.any() else np.ones(seg.mask.shape, bool)
        vec = _one_v2(img, seg.mask, cell | seg.mask, seg.nuclei[0], 1)
    else:
        fg = brightest_channel(img) > 0
        h, w = seg.labels.shape
        vecs = []
        for i, n in enumerate(seg.nuclei):
            if n.area_px < 4:
                continue
            # the nucleus and its ring lie within the nucleus box grown by the ring's reach
            reach = max(2, int(round(np.sqrt(n.area_px / np.pi) * 2 / 3))) + 1
            x, y, bw, bh = n.bbox
            box = (slice(max(0, y - reach), min(h, y + bh + reach)), slice(max(0, x - reach), min(w, x + bw + reach)))
            mask = seg.labels[box] == i + 1
            vecs.append(_one_v2(img[box], mask, _ring(mask, fg[box]) | mask, n, len(seg.nuclei)))
        if not vecs:
            return np.zeros(NUCLEUS_DIM, np.float32)
        vec = np.mean(vecs, axis=0)
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
