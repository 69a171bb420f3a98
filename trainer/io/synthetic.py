"""Deterministic synthetic blood-cell images with known nucleus masks, for tests and demos.

* :func:`make_cell_image`: a C-NMC-like single white cell on a black background.
  Malignant (ALL-like) cells have a larger, paler, finely textured, irregular nucleus with
  nucleoli filling most of the cell; normal cells a small, round, dense dark nucleus.
* :func:`make_smear_field`: a smear field: pinkish background, many red blood cells (pale red discs
  with a lighter centre) and ``n_wbc`` white cells with purple nuclei (some multi-lobed).
* :func:`make_stained_cell`: one white cell filling much of a small field, as another laboratory's camera
  frames it: a yellowish or pinkish background, a few red cells, pale or purple cytoplasm (monocyte- or
  basophil-like), a round or lobed nucleus; with its nucleus and cell masks. :func:`cut_out` puts a cell
  onto black as a crop.
* :func:`write_dataset`: a small labelled image folder in the C-NMC naming or one folder per class.

All images are RGB uint8 ``(size, size, 3)``; masks are bool ``(size, size)``. The same ``rng``
(an int seed, a ``numpy.random.Generator`` or None = seed 0) gives the same image.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

# RGB colours (uint8 scale)
_CNMC_CYTOPLASM = (172, 150, 205)
_NUCLEUS_NORMAL = (72, 32, 118)
_NUCLEUS_MALIGNANT = (138, 98, 188)
_FIELD_BACKGROUND = (242, 229, 232)
_RBC = (222, 160, 166)
_RBC_CENTRE = (238, 204, 206)
_WBC_CYTOPLASM = (198, 188, 228)
#: backgrounds and cytoplasms of :func:`make_stained_cell` (RGB)
STAINED_BACKGROUNDS = {"yellowish": (255, 250, 178), "white": (248, 246, 246)}
STAINED_CYTOPLASMS = {"pale": (212, 188, 142), "purple": (196, 137, 166)}
_STAINED_RBC = (226, 170, 160)
_STAINED_NUCLEUS = (145, 66, 108)   # magenta chromatin, as such a stain shows it


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _blob(shape: tuple[int, int], cx: float, cy: float, r: float, rng: np.random.Generator,
          irregularity: float = 0.0, aspect: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """Filled star-convex blob: radius r*(1 + sum_k a_k cos(k t + p_k)), bool mask of ``shape``."""
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    rad = np.ones_like(t)
    if irregularity > 0:
        for k in range(2, 7):
            rad += irregularity * rng.uniform(0.3, 1.0) / k ** 0.7 * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    x = r * rad * np.cos(t) * aspect
    y = r * rad * np.sin(t) / aspect
    ca, sa = np.cos(angle), np.sin(angle)
    pts = np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _texture(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth zero-mean noise field with unit-ish amplitude and correlation length ``scale`` px."""
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), max(scale, 0.3))
    return n / (n.std() + 1e-6)


def _paint(img: np.ndarray, mask: np.ndarray, colour, texture: np.ndarray | None = None,
           amount: float = 0.0) -> None:
    c = np.asarray(colour, np.float32)
    if texture is None:
        img[mask] = c
    else:
        img[mask] = c * (1.0 + amount * texture[mask][:, None])


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float = 2.0) -> np.ndarray:
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_cell_image(size: int = 64, malignant: bool = False, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """One C-NMC-like single-cell crop on black.

    Returns ``(img, nucleus_mask)``: img (size, size, 3) uint8 RGB, nucleus_mask (size, size) bool.
    """
    g = _rng(rng)
    shape = (size, size)
    c = size / 2 + g.uniform(-0.04, 0.04, 2) * size
    r_cell = size * g.uniform(0.34, 0.40)
    cell = _blob(shape, c[0], c[1], r_cell, g, irregularity=0.04, aspect=g.uniform(0.95, 1.05),
                 angle=g.uniform(0, np.pi))
    if malignant:
        ratio, irr, colour, amount, scale = g.uniform(0.78, 0.86), 0.12, _NUCLEUS_MALIGNANT, 0.06, 0.6
    else:
        ratio, irr, colour, amount, scale = g.uniform(0.50, 0.60), 0.02, _NUCLEUS_NORMAL, 0.15, size / 40
    # nucleus off-centre (eccentric, as in lymphocytes) but kept inside the cell
    shift = (1 - ratio) * r_cell * 0.5
    nc = c + g.uniform(-1, 1, 2) * shift
    nucleus = _blob(shape, nc[0], nc[1], ratio * r_cell * (1 - irr), g, irregularity=irr,
                    aspect=g.uniform(0.93, 1.07), angle=g.uniform(0, np.pi)) & cell
    img = np.zeros((size, size, 3), np.float32)
    _paint(img, cell, _CNMC_CYTOPLASM, _texture(shape, g, size / 30), 0.04)
    _paint(img, nucleus, colour, _texture(shape, g, scale), amount)
    if malignant:  # one or two nucleoli: small paler spots inside the nucleus
        ys, xs = np.nonzero(cv2.erode(nucleus.astype(np.uint8), np.ones((5, 5), np.uint8)))
        for _ in range(int(g.integers(1, 3)) if len(xs) else 0):
            i = g.integers(len(xs))
            spot = _blob(shape, xs[i], ys[i], max(1.0, size * 0.035), g)
            img[spot & nucleus] = img[spot & nucleus] * 0.8 + np.array(_CNMC_CYTOPLASM, np.float32) * 0.2
    return _finish(img, g), nucleus


def _place(centres: list, radii: list, c, r, gap: float) -> bool:
    return all(np.hypot(c[0] - q[0], c[1] - q[1]) >= r + s + gap for q, s in zip(centres, radii))


def make_smear_field(size: int = 224, n_wbc: int = 3, rng=None, malignant: bool = False,
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
    """A peripheral-smear field with ``n_wbc`` white cells among many red cells.

    Returns ``(img, masks)``: img (size, size, 3) uint8 RGB; masks one bool (size, size) nucleus mask
    per white cell (a multi-lobed nucleus is one mask). White cells never touch each other; red cells
    may touch red cells but not white cells.
    """
    g = _rng(rng)
    shape = (size, size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = _FIELD_BACKGROUND
    r_wbc, r_rbc = size * 0.085, size * 0.048
    centres, radii = [], []
    for _ in range(n_wbc):
        for _attempt in range(500):
            c = g.uniform(r_wbc + 2, size - r_wbc - 2, 2)
            if _place(centres, radii, c, r_wbc, gap=r_wbc * 0.6):
                centres.append(c)
                radii.append(r_wbc)
                break
        else:
            raise ValueError(f"cannot place {n_wbc} white cells in a {size}x{size} field")
    # red cells: many pale discs with a lighter centre (central pallor), not over white cells
    rbc_tex = _texture(shape, g, size / 60)
    for _ in range(int(size * size / (np.pi * r_rbc ** 2) * 0.45)):
        c = g.uniform(-r_rbc / 2, size + r_rbc / 2, 2)
        r = r_rbc * g.uniform(0.85, 1.15)
        if not _place(centres, radii, c, r, gap=3):
            continue
        disc = _blob(shape, c[0], c[1], r, g, irregularity=0.03)
        _paint(img, disc, _RBC, rbc_tex, 0.03)
        img[_blob(shape, c[0], c[1], r * 0.45, g)] = _RBC_CENTRE
    masks = []
    for c, r in zip(centres, radii):
        cell = _blob(shape, c[0], c[1], r * g.uniform(0.95, 1.05), g, irregularity=0.03)
        _paint(img, cell, _WBC_CYTOPLASM)
        lobed = (not malignant) and g.random() < 0.35
        if lobed:  # segmented (neutrophil-like) nucleus: 2-3 lobes separated by thin gaps
            nuc = np.zeros(shape, bool)
            n_lobes = int(g.integers(2, 4))
            a0 = g.uniform(0, 2 * np.pi)
            for j in range(n_lobes):
                a = a0 + 2 * np.pi * j / n_lobes
                nuc |= _blob(shape, c[0] + 0.38 * r * np.cos(a), c[1] + 0.38 * r * np.sin(a), 0.3 * r, g)
            colour, irr, amount = _NUCLEUS_NORMAL, 0.0, 0.12
        else:
            ratio = g.uniform(0.75, 0.85) if malignant else g.uniform(0.55, 0.65)
            irr = 0.12 if malignant else 0.03
            nuc = _blob(shape, c[0], c[1], r * ratio, g, irregularity=irr, aspect=g.uniform(0.9, 1.1),
                        angle=g.uniform(0, np.pi))
            colour, amount = (_NUCLEUS_MALIGNANT, 0.06) if malignant else (_NUCLEUS_NORMAL, 0.12)
        nuc &= cell
        _paint(img, nuc, colour, _texture(shape, g, 1.0), amount)
        masks.append(nuc)
    return _finish(img, g), masks


def make_stained_cell(size: int = 120, rng=None, background: str = "yellowish", cytoplasm: str = "pale",
                      cell_share: float = 0.5, lobes: int = 1, nucleus_colour=_STAINED_NUCLEUS,
                      mottle: float = 0.08) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One white cell whose diameter is ``cell_share`` of a small field, among a few red cells.

    ``background`` and ``cytoplasm`` name colours of :data:`STAINED_BACKGROUNDS` and
    :data:`STAINED_CYTOPLASMS`; ``lobes``: 1 (round nucleus) or 2-4 (a neutrophil's lobes, apart);
    ``nucleus_colour``: RGB of the chromatin; ``mottle``: relative amplitude of its texture (a colour closer to
    the cytoplasm's and a stronger mottle: nucleus and cytoplasm blend, a cell hard to segment).
    Returns ``(img (size, size, 3) uint8 RGB, nucleus mask, cell mask)`` (masks (size, size) bool).
    """
    g = _rng(rng)
    shape = (size, size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = STAINED_BACKGROUNDS[background]
    c = size / 2 + g.uniform(-0.05, 0.05, 2) * size
    r = size * cell_share / 2
    r_rbc = r * 0.6
    for a in g.uniform(0, 2 * np.pi, 6):  # red cells around the white cell, partly outside the field
        d = r + r_rbc * g.uniform(1.1, 1.6)
        disc = _blob(shape, c[0] + d * np.cos(a), c[1] + d * np.sin(a), r_rbc, g, irregularity=0.03)
        _paint(img, disc, _STAINED_RBC, _texture(shape, g, size / 40), 0.03)
    cell = _blob(shape, c[0], c[1], r, g, irregularity=0.03)
    _paint(img, cell, STAINED_CYTOPLASMS[cytoplasm], _texture(shape, g, size / 30), 0.04)
    if lobes > 1:
        nuc = np.zeros(shape, bool)
        a0 = g.uniform(0, 2 * np.pi)
        for j in range(lobes):
            a = a0 + 2 * np.pi * j / lobes
            nuc |= _blob(shape, c[0] + 0.42 * r * np.cos(a), c[1] + 0.42 * r * np.sin(a), 0.27 * r, g)
    else:
        nuc = _blob(shape, c[0] + g.uniform(-0.1, 0.1) * r, c[1], r * g.uniform(0.6, 0.7), g, irregularity=0.05)
    nuc &= cell
    _paint(img, nuc, nucleus_colour, _texture(shape, g, 1.0), mottle)
    return _finish(img, g), nuc, cell


def cut_out(img: np.ndarray, cell: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The cell ``cell`` (H, W) bool of ``img`` (H, W, 3) on black, unscaled, centred in a square crop.

    ``size``: the crop's side (default 2.2 x the cell's longer side). Returns (crop (size, size, 3) uint8,
    offset (x, y) of ``img``'s pixels in the crop).
    """
    ys, xs = np.nonzero(cell)
    y0, x0 = ys.min(), xs.min()
    h, w = ys.max() + 1 - y0, xs.max() + 1 - x0
    size = int(size or round(2.2 * max(h, w)))
    out = np.zeros((size, size, 3), np.uint8)
    oy, ox = (size - h) // 2, (size - w) // 2
    out[oy:oy + h, ox:ox + w] = np.where(cell[y0:y0 + h, x0:x0 + w, None], img[y0:y0 + h, x0:x0 + w], 0)
    return out, np.array([ox - x0, oy - y0])


def write_dataset(root, layout: str = "cnmc", n_per_class: int = 8, size: int = 64, seed: int = 0,
                  n_subjects: int = 4, kind: str = "cell") -> Path:
    """Write a small labelled synthetic data set under ``root`` and return ``root`` as a Path.

    ``layout='cnmc'``: ``all/UID_<s>_<i>_<c>_all.bmp`` (malignant) and ``hem/UID_H<s>_<i>_<c>_hem.bmp``
    (normal), subjects 1..n_subjects per class. ``layout='folders'``: ``Benign/`` (normal) and ``Pro/``
    (malignant) PNG files plus ``labels.csv`` with columns path, class, label, group (group = subject).
    ``kind='cell'`` writes single-cell crops, ``kind='field'`` smear fields (2 white cells each),
    ``kind='mixed'`` both, each subject having both kinds (crops of side ``size``, fields of side
    ``max(2 * size, 128)``).
    """
    if layout not in ("cnmc", "folders"):
        raise ValueError(f"layout must be 'cnmc' or 'folders', not {layout!r}")
    if kind not in ("cell", "field", "mixed"):
        raise ValueError(f"kind must be 'cell', 'field' or 'mixed', not {kind!r}")
    root = Path(root)
    g = np.random.default_rng(seed)
    rows = []
    for malignant in (True, False):
        for i in range(n_per_class):
            subject = 1 + i % max(1, n_subjects)
            if kind == "cell" or (kind == "mixed" and (i // max(1, n_subjects)) % 2 == 0):
                img, _ = make_cell_image(size, malignant, g)
            else:
                img, _ = make_smear_field(size if kind == "field" else max(2 * size, 128), 2, g,
                                          malignant=malignant)
            if layout == "cnmc":
                name = f"UID_{subject}_{i}_1_all.bmp" if malignant else f"UID_H{subject}_{i}_1_hem.bmp"
                rel = Path("all" if malignant else "hem") / name
            else:
                cls = "Pro" if malignant else "Benign"
                rel = Path(cls) / f"{cls}-{i:03d}.png"
                rows.append((rel.as_posix(), cls, int(malignant), f"{cls}-{subject}"))
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {path}")
    if layout == "folders":
        with open(root / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "class", "label", "group"])
            w.writerows(rows)
    return root
