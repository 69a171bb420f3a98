"""Explanations: a class-activation heatmap (Grad-CAM) of each backbone for the ALL class.

A heatmap shows *where* a network looked, not *why* its answer is right.

:func:`explain` gives an :class:`Explanation` of a single-cell crop, a smear field judged whole,
or one white cell of a field: per backbone, Grad-CAM of the ALL logit of the model's
explanation probe (:mod:`trainer.inference.probes`) on its last feature map, centred on the
training images' mean map (:mod:`trainer.inference.gradcam` says how and why). :func:`render`
draws the picture ``allgui-train explain`` writes; :func:`heatmap_rgba` the app's overlay.

Importing this module is cheap (no torch): the app's views use its captions and colour maps.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from trainer.config import BACKBONE_LABELS
from trainer.inference.probes import NO_PROBES, NoProbesError, bundle_name, probes_from_arrays
from trainer.io.imageio import as_rgb_uint8, read_image
from trainer.util.errors import AllguiError

CAPTION = "Heatmap: where the network looked, not why it is right."
COLOUR_KEY = ("Colours: clear/blue = none, red = most of the ALL evidence in that map (each map scaled to its "
              "own maximum); + = peak")
#: heatmap opacity at its peak, by default
OPACITY = 0.7
RANDOM_INIT_NOTE = ("The backbones of this model are randomly initialised (not pretrained): their heatmaps can "
                    "point at image borders, the same place in every image, rather than at the cell.")
PLAIN_NOTE = ("Plain Grad-CAM (this model's probes have no reference map): patterns the networks show in every "
              "image, e.g. at its border, are not cancelled.")

__all__ = ["BACKBONE_LABELS", "CAPTION", "Explanation", "NoProbesError", "explain", "heatmap_rgba", "render",
           "target_cell", "NO_PROBES"]


@dataclass
class Explanation:
    """Heatmaps of one region of an image, one per backbone.

    Coordinates are image pixels, x to the right, y down.

    - ``region``: (x, y, w, h) of what was fed to the networks: the whole image, or a white cell's
      crop (its bounding box) on a smear field.
    - ``heatmaps``: backbone -> (h, w) float32 in [0, 1] over the region: Grad-CAM of the probe's
      ALL logit, divided by its maximum (all zeros where no part of the region raised that logit).
      With ``explain(max_side=...)`` a large region's maps are smaller, their longer side
      ``max_side`` (they stretch over the whole region); :meth:`full` and :meth:`peak` allow for it.
    - ``peak_logit``: backbone -> the map's maximum before normalising, in units of the probe's ALL
      logit per feature-map cell (the map's cells, before ReLU, sum to the logit less a constant).
    - ``logits``: backbone -> the probe's ALL logit for the region (:meth:`probability` = sigmoid).
    - ``map_size``: backbone -> (rows, cols) of the feature map (input side / 32: 7 x 7 at 224).
    - ``image_shape``: (H, W) of the image; ``model``: key of the model whose probes were used;
      ``cell``: -1 for the whole image, else the index of the white cell explained.
    - ``nucleus_mask``: (h, w) bool over the region, the nuclei the segmentation found, or None.
    - ``referenced``: backbone -> whether its map was centred on the probe's reference map.
    - ``seconds``: wall time of the networks' part.
    """

    region: tuple[int, int, int, int]
    heatmaps: dict[str, np.ndarray]
    peak_logit: dict[str, float]
    logits: dict[str, float]
    map_size: dict[str, tuple[int, int]]
    image_shape: tuple[int, int]
    model: str = "any"
    cell: int = -1
    nucleus_mask: np.ndarray | None = None
    referenced: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def backbones(self) -> list[str]:
        return list(self.heatmaps)

    def probability(self, backbone: str) -> float:
        """The probe's P(ALL) for the region (a probe's, not the calibrated ensemble's)."""
        return float(0.5 * (1.0 + np.tanh(0.5 * self.logits[backbone])))  # sigmoid, without overflow

    def full(self, backbone: str) -> np.ndarray:
        """(H, W) float32: the heatmap placed at its region (at full size), zeros elsewhere."""
        out = np.zeros(self.image_shape, np.float32)
        x, y, w, h = self.region
        hm = self.heatmaps[backbone]
        if hm.shape != (h, w):
            hm = cv2.resize(hm, (w, h), interpolation=cv2.INTER_LINEAR)
        out[y:y + h, x:x + w] = hm
        return out

    def peak(self, backbone: str) -> tuple[int, int]:
        """(x, y) image pixel of the heatmap's maximum (the region's first pixel when it is all 0)."""
        hm = self.heatmaps[backbone]
        x, y, w, h = self.region
        r, c = np.unravel_index(int(np.argmax(hm)), hm.shape)
        if hm.shape != (h, w):  # a smaller map: the centre of its pixel in the region
            r, c = min(h - 1, int((r + 0.5) * h / hm.shape[0])), min(w - 1, int((c + 0.5) * w / hm.shape[1]))
        return int(x + c), int(y + r)


def target_cell(prediction) -> int:
    """The cell a heatmap explains by default (-1: the whole image).

    On a smear field decided by its cells, its most suspicious cell (it gives the image its
    result); otherwise the whole image.
    """
    if prediction is not None and prediction.field_by_cells:
        return int(prediction.deciding.index)
    return -1


def _predictor(model, device: str):
    # torch and the networks load with the predictor: only when a heatmap is computed, not at the app's start-up
    from trainer.inference.predictor import Predictor

    if isinstance(model, (str, os.PathLike)):
        return Predictor.from_bundle(model, device=device)
    return model


def explain(image, model, cell: int | None = None, prediction=None, device: str = "auto",
            max_side: int | None = None, reference: bool = True) -> Explanation:
    """Grad-CAM heatmaps of every backbone for the ALL class.

    ``image``: RGB uint8 array (H, W, 3) or a file path. ``model``: a
    :class:`trainer.inference.predictor.Predictor` or the path of a bundle (loaded on ``device``).
    ``prediction``: the :class:`trainer.inference.results.ImagePrediction` of this image by the same model,
    when at hand (its kind, model, cells and nucleus mask are used; else the image is segmented).
    ``cell``: index of a white cell of a smear field (its crop is explained, as the networks saw
    it), or None / -1 for the whole image. ``max_side``: make the maps at most this many pixels
    on their longer side (a smear field's full-size maps are large; the maps are smooth anyway).
    ``reference=False``: plain Grad-CAM, not centred on the training images' mean map.

    Runs in float32 without autocast; the networks are the predictor's own, so call it from the
    thread that runs predictions. Raises :class:`NoProbesError` for a model without probes,
    ImageReadError for an unreadable image, AllguiError for a cell index that does not exist.
    """
    # torch loads with Grad-CAM: only when a heatmap is computed, not at the app's start-up
    from trainer.inference.gradcam import gradcam

    predictor = _predictor(model, device)
    img = read_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb_uint8(image)
    if prediction is not None and tuple(prediction.shape) != tuple(img.shape[:2]):
        raise AllguiError("The prediction given is of another image (its size differs).")
    if prediction is None:
        _, img, single, cells, seg = predictor.prepare(img)
        key = predictor.route("single_cell" if single else "field")
        boxes, mask = [c.bbox for c in cells], seg.mask
    else:
        key = prediction.model if prediction.model in predictor.models else predictor.route(prediction.kind)
        boxes, mask = [c.bbox for c in prediction.cells], prediction.nucleus_mask
    cell = -1 if cell is None else int(cell)
    if cell >= len(boxes) or cell < -1:
        raise AllguiError(f"There is no cell {cell + 1} in this image ({len(boxes)} white cells were found).")
    H, W = img.shape[:2]
    x, y, w, h = (0, 0, W, H) if cell < 0 else (int(v) for v in boxes[cell])
    probes = probes_from_arrays(predictor.bundle.arrays, key, bundle_name(predictor))
    if not probes:
        raise NoProbesError(NO_PROBES)
    ex = predictor.extractors[key]
    region = img[y:y + h, x:x + w]
    t0 = time.perf_counter()
    maps = gradcam(region, ex, probes, max_side, reference)
    out = Explanation(region=(x, y, w, h), heatmaps={b: m["heatmap"] for b, m in maps.items()},
                      peak_logit={b: m["peak"] for b, m in maps.items()},
                      logits={b: m["logit"] for b, m in maps.items()},
                      map_size={b: m["map_size"] for b, m in maps.items()}, image_shape=(H, W), model=key,
                      cell=cell, referenced={b: m["referenced"] for b, m in maps.items()},
                      nucleus_mask=None if mask is None else np.asarray(mask, bool)[y:y + h, x:x + w].copy(),
                      seconds=time.perf_counter() - t0)
    missing = [b for b in ex.networks if b not in probes]
    if missing:
        out.notes.append(f"No probe for {', '.join(BACKBONE_LABELS.get(b, b) for b in missing)}.")
    if reference and not all(out.referenced.values()):
        out.notes.append(PLAIN_NOTE)
    if str(predictor.config.weights).lower() == "none" and not predictor.bundle.backbone_state:
        out.notes.append(RANDOM_INIT_NOTE)
    return out


# ---- pictures -------------------------------------------------------------------------------
def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)   # red, green, blue ramps
    return np.round(255 * rgb).astype(np.uint8)


#: the 'jet' colour map as a (256, 3) RGB table. Plain numpy on purpose: cv2.applyColorMap starts
#: OpenCV's thread pool, and a process forked after that (DataLoader workers) hangs in OpenCV
_JET = _jet_lut()


def colourise(heat: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1] -> (h, w, 3) uint8 RGB (the 'jet' colour map: blue low, red high)."""
    u8 = np.clip(np.round(np.asarray(heat, np.float32) * 255), 0, 255).astype(np.uint8)
    return _JET[u8]


def heat_alpha(heat: np.ndarray, opacity: float) -> np.ndarray:
    """(h, w) float32 alpha of a heatmap overlay: ``opacity`` (0..1) times the heat.

    Opaque where the network looked most, clear where it did not, so the cell stays visible.
    """
    a = min(1.0, max(0.0, float(opacity)))
    return (a * np.clip(np.asarray(heat, np.float32), 0, 1)).astype(np.float32)


def heatmap_rgba(heat: np.ndarray, opacity: float) -> np.ndarray:
    """(h, w, 4) uint8 RGBA overlay of a heatmap: its colours, see-through where it is low (:func:`heat_alpha`)."""
    rgba = np.empty(heat.shape + (4,), np.uint8)
    rgba[..., :3] = colourise(heat)
    rgba[..., 3] = np.round(255 * heat_alpha(heat, opacity)).astype(np.uint8)
    return rgba


def blend(image: np.ndarray, heat: np.ndarray, opacity: float = OPACITY) -> np.ndarray:
    """RGB uint8 image (h, w, 3) with ``heat`` (h, w) drawn over it as the app draws it."""
    a = heat_alpha(heat, opacity)[..., None]
    return np.round(image[..., :3].astype(np.float32) * (1 - a) + colourise(heat).astype(np.float32) * a
                    ).astype(np.uint8)


def render(image: np.ndarray, explanation: Explanation, opacity: float = OPACITY, panel: int = 300,
           title: str = "") -> np.ndarray:
    """A picture (RGB uint8) of an explanation, as ``allgui-train explain`` writes it.

    The explained region with the nucleus outline, then each backbone's heatmap over it (with the
    outline and the peak marked), side by side, and the caption that a heatmap shows where the
    network looked, not why it is right.
    """
    x, y, w, h = explanation.region
    region = np.ascontiguousarray(image[y:y + h, x:x + w, :3], np.uint8)
    s = panel / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    contours = []
    if explanation.nucleus_mask is not None and np.any(explanation.nucleus_mask):
        m = cv2.resize(explanation.nucleus_mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    base = cv2.resize(region, size, interpolation=interp)
    tiles = [(base.copy(), "Image and nucleus outline")]
    for b in explanation.backbones:
        heat = cv2.resize(explanation.heatmaps[b], size, interpolation=cv2.INTER_LINEAR)
        tile = blend(base, heat, opacity)
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        if explanation.peak_logit[b] > 0:
            cv2.drawMarker(tile, (int(c), int(r)), (255, 255, 255), cv2.MARKER_CROSS, 14, 2, cv2.LINE_AA)
        tiles.append((tile, f"{BACKBONE_LABELS.get(b, b)} (probe P(ALL) {explanation.probability(b):.2f})"))
    pad, head, foot = 10, 28, 76 if title else 56
    width = pad + len(tiles) * (size[0] + pad)
    canvas = np.full((head + size[1] + foot, max(width, 520), 3), 255, np.uint8)
    for i, (tile, label) in enumerate(tiles):
        if contours:
            cv2.drawContours(tile, contours, -1, (0, 255, 0), 2, cv2.LINE_AA)
        x0 = pad + i * (size[0] + pad)
        canvas[head:head + size[1], x0:x0 + size[0]] = tile
        cv2.putText(canvas, label, (x0, head - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1, cv2.LINE_AA)
    y0 = head + size[1] + 22
    cv2.putText(canvas, CAPTION, (pad, y0), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (120, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, COLOUR_KEY, (pad, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (pad, y0 + 40), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (60, 60, 60), 1, cv2.LINE_AA)
    return canvas
