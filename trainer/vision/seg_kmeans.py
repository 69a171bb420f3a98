"""The paper's nucleus segmentation: k-means colour clustering in CIE Lab (eq. 2), nucleus-v1.

Pixels are clustered in CIE Lab (L in [0, 100], a and b roughly [-128, 127]) with a deterministic
Lloyd k-means on a fixed subsample, then every pixel goes to its nearest centre. Nucleus clusters
are chosen by stain: haematoxylin-stained nuclei are purple (a > 0, b < 0), so the "purple score"
``min(a, -b)`` of a cluster centre is high for nuclei and low for the black or white background,
pink-red erythrocytes (b > 0) and grey-blue erythrocytes (a ~ 0).

Kept as the segmentation of models trained with nucleus-v1 features, which must see the nuclei they
were trained on; new models use :mod:`trainer.vision.seg_stain`, which holds on more stains.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from trainer.vision.kmeans import assign, kmeans, subsample
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

PURPLE_MIN = 12.0         # cluster centres with min(a, -b) below this are never nucleus (fields)
CROP_COLOUR_GAP = 12.0    # (L/2 lighter) + (purple score lower): a cluster this much paler is cytoplasm
CROP_L_WEIGHT = 0.5


def purple_score(lab: np.ndarray) -> np.ndarray:
    """Stain score ``min(a, -b)`` of Lab values (..., 3): high for purple (haematoxylin) only."""
    return np.minimum(lab[..., 1], -lab[..., 2])


def _crop_features(lab: np.ndarray) -> np.ndarray:
    f = lab.copy()
    f[..., 0] *= CROP_L_WEIGHT
    return f


def segment_crop(img: np.ndarray, k: int) -> Segmentation:
    h, w = img.shape[:2]
    cell = cell_region(img)
    empty = Segmentation(np.zeros((h, w), bool), np.zeros((h, w), np.int32), [], KIND_SINGLE, cell)
    if cell.sum() < 20:
        return empty
    # ignore the dark anti-aliased rim at the edge of the cell when fitting the clusters
    rim = max(1, round(min(h, w) / 100))
    inner = cv2.erode(cell.astype(np.uint8), disk(rim)).astype(bool)
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
    nuc = clean(nuc, min(h, w))
    nuc &= cell
    lab_img, n = ndi.label(nuc)
    if n == 0:
        return empty
    sizes = label_sizes(lab_img, n)
    keep = np.flatnonzero(sizes >= 0.15 * sizes.max()) + 1   # main nucleus plus sizeable lobes
    nuc = np.isin(lab_img, keep)
    nucleus = measure(nuc, cell_area=float(cell.sum()))
    return Segmentation(nuc, nuc.astype(np.int32), [nucleus], KIND_SINGLE, cell, centres.astype(np.float32),
                        tuple(chosen))


def segment_field(img: np.ndarray, k: int, min_area: float | None, merge_gap: float | None) -> Segmentation:
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
    nuc = clean(nuc, min(h, w))
    if min_area is None:
        min_area = max(12.0, 0.002 * h * w)
    lab_img, n = ndi.label(nuc)
    if n:
        sizes = label_sizes(lab_img, n)
        nuc = np.isin(lab_img, np.flatnonzero(sizes >= min_area) + 1)
    # merge lobes of one nucleus: components closer than ``gap`` pixels belong to one cell
    lab_img, n = ndi.label(nuc)
    if n == 0:
        return Segmentation(nuc, np.zeros((h, w), np.int32), [], KIND_FIELD, None, centres.astype(np.float32), chosen)
    if merge_gap is None:
        sizes = label_sizes(lab_img, n)
        diam = 2 * np.sqrt(np.median(sizes) / np.pi)
        merge_gap = max(2.0, 0.12 * diam)
    r = max(1, int(np.ceil(merge_gap / 2)))
    grown = cv2.dilate(nuc.astype(np.uint8), disk(r)).astype(bool)
    groups, _ = ndi.label(grown)
    groups = np.where(nuc, groups, 0).astype(np.int32)
    typical = float(np.median(label_sizes(lab_img, n)))
    nuclei, labels = group_nuclei(nuc, groups, typical)
    return Segmentation(labels > 0, labels, nuclei, KIND_FIELD, None, centres.astype(np.float32), chosen)
