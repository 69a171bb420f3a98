"""Colours for probabilities and overlay drawing on numpy images (for display and export).

Colour rule, shared by the view and exported overlays: the colour says the decision at the current
threshold and its shade how sure the probability is: blue (normal, darker = lower probability),
amber (inside the uncertain band), red (ALL blast, darker = higher probability). Moving the
threshold recolours every cell without touching its probability. A cell (or crop) outside the model's
training gets no class and is drawn in grey (:data:`OUTSIDE`), dotted in the window, whatever its
probability.
"""
from __future__ import annotations

import cv2
import numpy as np

from trainer.inference.results import DECISION_ALL, DECISION_OUTSIDE, DECISION_UNCERTAIN, ImagePrediction, decide

BLUE = np.array([8, 69, 148], float)        # p = 0, surely normal
LIGHT_BLUE = np.array([90, 160, 215], float)  # normal, just below the uncertain band
AMBER = np.array([240, 150, 0], float)       # inside the uncertain band around the threshold
ORANGE_RED = np.array([240, 80, 40], float)  # ALL blast, just above the band
RED = np.array([165, 0, 38], float)          # p = 1, surely ALL blast
NEUTRAL = (70, 70, 70)                       # cells outlined for review only (field judged whole)
OUTSIDE = (150, 150, 150)                    # outside the model's training: no class, whatever its probability
DECISION_COLOURS = {"ALL blast": (215, 25, 28), "normal": (33, 113, 181), "uncertain, review": (230, 140, 0),
                    "not assessable": (110, 110, 110), DECISION_OUTSIDE: (128, 128, 128)}


def probability_colour(p: float | None, threshold: float, band: float = 0.05) -> tuple[int, int, int]:
    """RGB 0..255 for probability ``p``.

    Blue shades below the uncertain band (darker = surer normal), amber inside ``threshold +- band``, red
    shades above it (darker = surer ALL); neutral grey for None (a cell shown for review whose own score
    does not decide).
    """
    if p is None:
        return NEUTRAL
    p = float(min(1.0, max(0.0, p)))
    lo, hi = max(0.0, threshold - band), min(1.0, threshold + band)
    if abs(p - threshold) < band:
        c = AMBER
    elif p < threshold:
        a = 1.0 - p / lo if lo > 0 else 1.0
        c = LIGHT_BLUE + (BLUE - LIGHT_BLUE) * a
    else:
        a = (p - hi) / (1.0 - hi) if hi < 1 else 1.0
        c = ORANGE_RED + (RED - ORANGE_RED) * a
    return tuple(int(round(v)) for v in c)


def cell_regions(pred: ImagePrediction) -> list[tuple[int, np.ndarray, float | None]]:
    """(cell index, contour (N,2) int32 x,y, probability) for each region drawn on the image.

    Fields: one per detected white cell; its probability is None when the model judges whole
    fields (cell scores are then shown only when a cell is selected, not as colours). Single-cell
    crops: the whole crop (index -1); if its contour is empty, the nucleus mask's outlines.
    """
    if pred.kind == "field" and pred.cells:
        return [(c.index if c.index >= 0 else i, _contour(c.contour, c.bbox),
                 c.probability if pred.field_by_cells else None)
                for i, c in enumerate(pred.cells)]
    contour = np.asarray(pred.whole.contour, dtype=np.int32).reshape(-1, 2)
    if len(contour) >= 3:
        return [(-1, contour, pred.whole.probability)]
    out = []
    for c in mask_contours(pred.nucleus_mask):
        out.append((-1, c, pred.whole.probability))
    return out


def regions_outside(pred: ImagePrediction) -> list[bool]:
    """For each region of :func:`cell_regions`, whether it is drawn as outside the model's training.

    The cells of a field decided by cells and a crop by their own domain check; the cells of a field the
    model judges whole are outlined for review only (the field's frame shows its result), so never.
    """
    if pred.kind == "field" and pred.cells:
        return [pred.field_by_cells and c.in_domain is False for c in pred.cells]
    outside = pred.whole.in_domain is False
    return [outside] * len(cell_regions(pred))


def region_colour(p: float | None, outside: bool, threshold: float, band: float) -> tuple[int, int, int]:
    """The colour a region is drawn in: :data:`OUTSIDE` outside training, else :func:`probability_colour`."""
    return OUTSIDE if outside else probability_colour(p, threshold, band)


def _contour(contour: np.ndarray, bbox) -> np.ndarray:
    c = np.asarray(contour, dtype=np.int32).reshape(-1, 2)
    if len(c) >= 3:
        return c
    x, y, w, h = (int(v) for v in bbox)
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.int32)


def mask_contours(mask: np.ndarray, min_area: float = 4.0) -> list[np.ndarray]:
    """Outer contours of a boolean mask, each (N,2) int32 x,y."""
    if mask is None or not np.any(mask):
        return []
    cs, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2).astype(np.int32) for c in cs if cv2.contourArea(c) >= min_area]


def fill_overlay(pred: ImagePrediction, threshold: float, opacity: float, band: float = 0.05) -> np.ndarray:
    """RGBA uint8 (H, W, 4): nuclei filled in their probability colour at ``opacity`` (0..1)."""
    h, w = pred.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    mask = np.asarray(pred.nucleus_mask, bool) if pred.nucleus_mask is not None else np.zeros((h, w), bool)
    alpha = int(round(255 * opacity))
    for (_, contour, p), outside in zip(cell_regions(pred), regions_outside(pred)):
        region = np.zeros((h, w), np.uint8)
        cv2.fillPoly(region, [contour.reshape(-1, 1, 2)], 1)
        inside = region.astype(bool)
        if mask.shape == (h, w) and np.any(mask & inside):
            inside &= mask                   # fill the nucleus, not the whole polygon
        rgba[inside, :3] = region_colour(p, outside, threshold, band)
        rgba[inside, 3] = alpha
    return rgba


def draw_overlay(image: np.ndarray, pred: ImagePrediction, threshold: float, band: float,
                 mode: str = "outline", opacity: float = 0.45, label: bool = True) -> np.ndarray:
    """Image (H, W, 3) uint8 RGB with the nuclei drawn as the app shows them, for saving."""
    out = np.ascontiguousarray(image[..., :3], np.uint8).copy()
    if mode == "fill":
        rgba = fill_overlay(pred, threshold, opacity, band).astype(np.float32)
        a = rgba[..., 3:4] / 255.0
        out = (out * (1 - a) + rgba[..., :3] * a).astype(np.uint8)
    thick = max(1, round(max(pred.shape) / 220))
    for (idx, contour, p), outside in zip(cell_regions(pred), regions_outside(pred)):
        colour = region_colour(p, outside, threshold, band)
        if mode == "outline" or p is None or outside or decide(p, threshold, band) != "normal":
            cv2.polylines(out, [contour.reshape(-1, 1, 2)], True, colour, thick, cv2.LINE_AA)
        if label:
            x, y = contour.min(axis=0)
            text = f"#{idx + 1}" if p is None else "outside" if outside else f"{p:.2f}"
            cv2.putText(out, text, (int(x), max(10, int(y) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.35 * thick, colour, 1, cv2.LINE_AA)
    return out


def thumbnail(image: np.ndarray, size: int = 48) -> np.ndarray:
    """Image shrunk so its longer side is ``size`` pixels (uint8 RGB, contiguous)."""
    h, w = image.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(image[..., :3], (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small, np.uint8)


def counts_text(counts: dict[str, int]) -> str:
    """Short summary like '2 ALL blast, 1 uncertain, 5 normal' (and 'N outside training' where any are)."""
    text = (f"{counts.get(DECISION_ALL, 0)} ALL blast, {counts.get(DECISION_UNCERTAIN, 0)} uncertain, "
            f"{counts.get('normal', 0)} normal")
    if counts.get(DECISION_OUTSIDE):
        text += f", {counts[DECISION_OUTSIDE]} outside training"
    return text
