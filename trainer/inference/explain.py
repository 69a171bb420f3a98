"""Explanations: a class-activation heatmap (Grad-CAM) of each backbone for the ALL class.

A heatmap shows *where* a network looked, not *why* its answer is right.

The ensemble's classifiers work on fused, PCA-projected features, so there is no gradient from
the ensemble's probability to a backbone's feature map that would mean anything. Each per-kind
model therefore carries one **explanation probe** per backbone: an L2-regularised logistic
regression fitted (at training time, on the training split) on that backbone's standardised
global-average-pooled features. The heatmap of a backbone is Grad-CAM of its probe's ALL logit:

1. the image (a single-cell crop, a smear field judged whole, or one white cell's crop from a
   field) goes through the same pre-processing as prediction (stain normalisation where the model
   has it, gamma, resize, ImageNet normalisation) and through the backbone, in float32 whatever
   precision prediction uses;
2. ``A`` (C, h, w) is the last convolutional feature map, the one the backbone's global average
   pooling pools (DenseNet-121: ReLU of ``features``; ResNet-34: ``layer4``), h = w = input / 32;
3. the probe's ALL logit ``z = ((mean_hw A - mean) / scale) . coef + intercept`` is backpropagated
   to ``A``; the channel weights are the spatial means of the gradients;
4. the map ``ReLU(sum_c weight_c (A_c - R_c))`` (in units of the probe's logit per feature-map
   cell) is upsampled bilinearly to the explained region and divided by its maximum, so it lies in
   [0, 1] (all zeros where nothing in the region raised the ALL logit).

``R`` (C, h, w), the *reference*, is the mean feature map of (up to ``REFERENCE_IMAGES``) training
images, stored with the probe. Plain Grad-CAM (``R = 0``) shows what a map holds in every image as
well: untrained (random-init) networks have strong fixed patterns at the image border (ResNet-34's
layer4 peaks in its bottom-right cell even on a blank image, DenseNet-121's in a corner at some
input sizes), and those swamp the few channels that tell the classes apart. Centred on the
reference, the map's cells (before ReLU) add up to exactly the probe's logit less its intercept,
and a pattern common to all images cancels. ``explain(reference=False)`` gives plain Grad-CAM.

Importing this module is cheap (no torch): the app's views use its captions and colour maps.

Probes are stored in the bundle as plain arrays (``<model key>/explain/<backbone>/mean``,
``scale``, ``coef`` (D,), ``intercept`` (1,) and ``reference`` (D, h, w), see
:mod:`trainer.inference.bundle`). Bundles written before
probes existed load and predict as before; explaining with one raises :class:`NoProbesError`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from trainer.util.errors import AllguiError, BundleError

#: inverse L2 strength of the probes' logistic regressions (on standardised features)
PROBE_C = 0.05
PROBE_PARTS = ("mean", "scale", "coef", "intercept")
#: training images whose mean feature map is a probe's reference (evenly spread over the split)
REFERENCE_IMAGES = 64
#: display names of the backbones
BACKBONE_LABELS = {"densenet121": "DenseNet-121", "resnet34": "ResNet-34"}
CAPTION = "Heatmap: where the network looked, not why it is right."
COLOUR_KEY = ("Colours: blue = none, red = most of the ALL evidence in that map (each map scaled to its own "
              "maximum); + = peak")
NO_PROBES = ("This model has no explanation probes (it was trained before heatmaps existed); "
             "retrain it to see heatmaps.")
RANDOM_INIT_NOTE = ("The backbones of this model are randomly initialised (not pretrained): their heatmaps can "
                    "point at image borders, the same place in every image, rather than at the cell.")
#: the module whose output (after ``_CAM_POST``) is the feature map the backbone's GAP pools
_CAM_LAYER = {"densenet121": "features", "resnet34": "layer4"}


class NoProbesError(AllguiError):
    """The model has no explanation probes (a bundle written before they existed)."""


# ---- probes (training time) -----------------------------------------------------------------
def fit_probes(feats: Mapping[str, np.ndarray], y, backbones=None, val_feats=None, y_val=None,
               seed: int = 0) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
    """One L2-regularised logistic regression per backbone on its standardised GAP features.

    ``feats`` maps block name -> (N, D) training features; only network blocks (``BACKBONES``)
    get a probe. Returns ``(probes, report)``: ``probes[backbone]`` holds float64 arrays ``mean``,
    ``scale``, ``coef`` (D,) and ``intercept`` (1,) (the logit of ALL is
    ``((f - mean) / scale) @ coef + intercept``); ``report[backbone]`` the probe's training and,
    with ``val_feats``/``y_val``, validation AUC (how well the probe itself separates the classes).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from trainer.vision.backbones import BACKBONES
    y = np.asarray(y).astype(int)
    names = [b for b in (backbones or feats) if b in BACKBONES and b in feats]
    probes, report = {}, {}
    for b in names:
        X = np.asarray(feats[b], dtype=np.float64)
        scaler = StandardScaler().fit(X)
        lr = LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=2000,
                                random_state=seed).fit(scaler.transform(X), y)
        probes[b] = {"mean": scaler.mean_.astype(np.float64), "scale": scaler.scale_.astype(np.float64),
                     "coef": lr.coef_[0].astype(np.float64), "intercept": lr.intercept_.astype(np.float64)}
        rep: dict[str, Any] = {"C": PROBE_C, "n_train": int(len(y)),
                               "train_auc": _auc(roc_auc_score, y, _logit(probes[b], X))}
        if val_feats is not None and y_val is not None and b in val_feats:
            rep["validation_auc"] = _auc(roc_auc_score, np.asarray(y_val).astype(int),
                                         _logit(probes[b], np.asarray(val_feats[b], np.float64)))
        report[b] = rep
    return probes, report


def _auc(fn, y, s) -> float | None:
    return float(fn(y, s)) if len(np.unique(y)) == 2 else None


def _logit(probe: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    return ((X - probe["mean"]) / probe["scale"]) @ probe["coef"] + float(probe["intercept"][0])


def reference_maps(extractor, images, cancel=None) -> dict[str, np.ndarray]:
    """``{backbone: (C, h, w) float32}``: the mean last feature map of ``images`` (RGB arrays or
    paths), pre-processed as prediction does it, in float32 (see the module docstring)."""
    from trainer.io.imageio import read_image

    sums: dict[str, Any] = {}
    n = 0
    for item in images:
        if cancel is not None and cancel():
            from trainer.util.errors import Cancelled
            raise Cancelled("Training was cancelled; nothing was written.")
        x = network_input(read_image(item) if isinstance(item, (str, os.PathLike)) else item, extractor)
        for b, net in extractor.models().items():
            m = feature_map(net, b, x)[0]
            sums[b] = m if b not in sums else sums[b] + m
        n += 1
    return {b: (v / max(n, 1)).cpu().numpy().astype(np.float32) for b, v in sums.items()}


def probe_arrays(key: str, probes: Mapping[str, Mapping[str, np.ndarray]],
                 references: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The bundle arrays of model ``key``'s probes (and their reference maps):
    ``<key>/explain/<backbone>/<part>``."""
    out = {f"{key}/explain/{b}/{part}": np.asarray(p[part], dtype=np.float64)
           for b, p in probes.items() for part in PROBE_PARTS}
    for b, ref in (references or {}).items():
        if b in probes:
            out[f"{key}/explain/{b}/reference"] = np.asarray(ref, dtype=np.float32)
    return out


def probes_from_arrays(arrays: Mapping[str, np.ndarray], key: str, name: str = "the model"
                       ) -> dict[str, dict[str, np.ndarray]]:
    """Model ``key``'s probes read back from bundle arrays, checked: {} when it has none.

    Raises BundleError for a probe with missing parts, wrong shapes or non-finite values."""
    from trainer.vision.backbones import BACKBONES
    prefix = f"{key}/explain/"
    found = sorted({k[len(prefix):].split("/", 1)[0] for k in arrays if k.startswith(prefix)})
    probes = {}
    for b in found:
        d = BACKBONES.get(b)
        parts = {part: arrays.get(f"{prefix}{b}/{part}") for part in PROBE_PARTS}
        shapes = {"mean": (d,), "scale": (d,), "coef": (d,), "intercept": (1,)}
        ok = d is not None and all(
            v is not None and np.asarray(v).shape == shapes[part] and np.asarray(v).dtype.kind == "f"
            and np.all(np.isfinite(v)) for part, v in parts.items())
        if not ok or not np.all(np.asarray(parts["scale"]) > 0):
            raise BundleError(f"The explanation probe for {b} in {name} is damaged; retrain the model.")
        probes[b] = {part: np.asarray(v, dtype=np.float64) for part, v in parts.items()}
        ref = arrays.get(f"{prefix}{b}/reference")
        if ref is not None:
            ref = np.asarray(ref)
            if (ref.ndim != 3 or ref.shape[0] != d or min(ref.shape) < 1 or ref.dtype.kind != "f"
                    or not np.all(np.isfinite(ref))):
                raise BundleError(f"The explanation probe for {b} in {name} is damaged; retrain the model.")
            probes[b]["reference"] = ref.astype(np.float32)
    return probes


def require_probes(predictor) -> None:
    """Raise :class:`NoProbesError` unless some model of ``predictor`` has explanation probes (cheap:
    call it before any image is analysed)."""
    arrays = predictor.bundle.arrays
    if not any(probes_from_arrays(arrays, key, _bundle_name(predictor)) for key in predictor.models):
        raise NoProbesError(NO_PROBES)


# ---- the explanation ------------------------------------------------------------------------
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
            import cv2
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
    """The region a heatmap explains by default: on a smear field decided by its cells, the most
    suspicious cell (it gives the image its result); otherwise the whole image (-1)."""
    if prediction is not None and prediction.field_by_cells:
        return int(prediction.deciding.index)
    return -1


def _predictor(model, device: str):
    from trainer.inference.predictor import Predictor

    if isinstance(model, (str, os.PathLike)):
        return Predictor.from_bundle(model, device=device)
    return model


def explain(image, model, cell: int | None = None, prediction=None, device: str = "auto",
            max_side: int | None = None, reference: bool = True) -> Explanation:
    """Grad-CAM heatmaps of every backbone for the ALL class (see the module docstring).

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
    predictor = _predictor(model, device)
    if isinstance(image, (str, os.PathLike)):
        from trainer.io.imageio import read_image
        img = read_image(image)
    else:
        from trainer.io.imageio import as_rgb_uint8
        img = as_rgb_uint8(image)
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
    probes = probes_from_arrays(predictor.bundle.arrays, key, _bundle_name(predictor))
    if not probes:
        raise NoProbesError(NO_PROBES)
    ex = predictor.extractors[key]
    region = img[y:y + h, x:x + w]
    t0 = time.perf_counter()
    maps = gradcam(region, ex, probes, max_side, reference)
    out = Explanation(region=(x, y, w, h), heatmaps={b: m[0] for b, m in maps.items()},
                      peak_logit={b: m[1] for b, m in maps.items()}, logits={b: m[2] for b, m in maps.items()},
                      map_size={b: m[3] for b, m in maps.items()}, image_shape=(H, W), model=key, cell=cell,
                      referenced={b: m[4] for b, m in maps.items()},
                      nucleus_mask=None if mask is None else np.asarray(mask, bool)[y:y + h, x:x + w].copy(),
                      seconds=time.perf_counter() - t0)
    missing = [b for b in ex.networks if b not in probes]
    if missing:
        out.notes.append(f"No probe for {', '.join(BACKBONE_LABELS.get(b, b) for b in missing)}.")
    if reference and not all(out.referenced.values()):
        out.notes.append("Plain Grad-CAM (this model's probes have no reference map): patterns the networks "
                         "show in every image, e.g. at its border, are not cancelled.")
    if str(predictor.config.weights).lower() == "none" and not predictor.bundle.backbone_state:
        out.notes.append(RANDOM_INIT_NOTE)
    return out


def _bundle_name(predictor) -> str:
    path = getattr(predictor, "path", None)
    return os.path.basename(str(path)) if path else "the model"


def network_input(region: np.ndarray, extractor):
    """(1, 3, S, S) float32 tensor of an RGB uint8 region, pre-processed as prediction does it."""
    import torch

    from trainer.vision.preprocess import eval_transform
    if extractor.stain_reference is not None:
        from trainer.vision.stain import reinhard
        region = reinhard(region, np.asarray(extractor.stain_reference, float))
    x = eval_transform(int(extractor.image_size), float(extractor.gamma))(region).unsqueeze(0)
    return x.to(extractor.torch_device).contiguous(memory_format=torch.channels_last)


def gradcam(region: np.ndarray, extractor, probes: Mapping[str, Mapping[str, np.ndarray]],
            max_side: int | None = None, reference: bool = True
            ) -> dict[str, tuple[np.ndarray, float, float, tuple[int, int], bool]]:
    """Grad-CAM of each probe's ALL logit on ``region`` (RGB uint8 (h, w, 3)) through the networks
    of ``extractor`` (a :class:`trainer.vision.features.FeatureExtractor`).

    Returns backbone -> (heatmap (h, w) float32 in [0, 1] (scaled down to ``max_side`` on its longer
    side where given), its maximum before normalising (logit
    units per map cell), the probe's logit, (rows, cols) of the feature map, whether the map was
    centred on the probe's reference map)."""
    import torch
    from torch.nn import functional as F

    x = network_input(region, extractor)
    models = extractor.models()
    h, w = region.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        h, w = max(1, round(h * s)), max(1, round(w * s))
    out = {}
    for b, probe in probes.items():
        net = models.get(b)
        if net is None:
            continue
        fmap = feature_map(net, b, x)                       # (1, C, m, n), float32, no graph behind it
        A = fmap.detach().clone().requires_grad_(True)
        dev = A.device
        mean, scale, coef = (torch.as_tensor(probe[k], dtype=torch.float32, device=dev)
                             for k in ("mean", "scale", "coef"))
        with torch.enable_grad():
            gap = A.mean(dim=(2, 3))[0]                     # the backbone's GAP feature vector (C,)
            logit = ((gap - mean) / scale) @ coef + float(probe["intercept"][0])
            (grad,) = torch.autograd.grad(logit, A)
        weights = grad.mean(dim=(2, 3), keepdim=True)       # (1, C, 1, 1): spatial mean of the gradients
        R = probe.get("reference") if reference else None
        centred = R is not None and tuple(R.shape) == tuple(A.shape[1:])
        act = A.detach() - torch.as_tensor(R, device=dev)[None] if centred else A.detach()
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))          # (1, 1, m, n)
        peak = float(cam.max())
        up = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        up = up / up.max() if float(up.max()) > 0 else torch.zeros_like(up)
        out[b] = (up.clamp_(0, 1).cpu().numpy().astype(np.float32), peak, float(logit.detach()),
                  (int(A.shape[2]), int(A.shape[3])), centred)
    return out


def feature_map(net, backbone: str, x):
    """(B, C, m, n) float32: the last convolutional feature map of ``net`` for input ``x``, the
    map its global average pooling turns into the features prediction uses. Captured with a
    forward hook during the network's own forward pass, in float32 (no autocast), without a graph."""
    import torch
    from torch.nn import functional as F

    captured = {}
    layer = getattr(net, _CAM_LAYER[backbone])
    handle = layer.register_forward_hook(lambda _m, _i, o: captured.__setitem__("map", o))
    try:
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            net(x.float())
    finally:
        handle.remove()
    fmap = captured["map"].float()
    return F.relu(fmap) if backbone == "densenet121" else fmap   # DenseNet applies ReLU before its pooling


# ---- pictures -------------------------------------------------------------------------------
def colourise(heat: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1] -> (h, w, 3) uint8 RGB (the 'jet' colour map: blue low, red high)."""
    import cv2

    u8 = np.clip(np.round(np.asarray(heat, np.float32) * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)[..., ::-1].copy()


def heatmap_rgba(heat: np.ndarray, opacity: float) -> np.ndarray:
    """(h, w, 4) uint8 RGBA overlay of a heatmap: its colours at ``opacity`` (0..1) everywhere."""
    rgba = np.empty(heat.shape + (4,), np.uint8)
    rgba[..., :3] = colourise(heat)
    rgba[..., 3] = int(round(255 * min(1.0, max(0.0, float(opacity)))))
    return rgba


def blend(image: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """RGB uint8 image (h, w, 3) with ``heat`` (h, w) drawn over it at ``opacity``."""
    a = min(1.0, max(0.0, float(opacity)))
    return np.round(image[..., :3].astype(np.float32) * (1 - a) + colourise(heat).astype(np.float32) * a
                    ).astype(np.uint8)


def render(image: np.ndarray, explanation: Explanation, opacity: float = 0.45, panel: int = 300,
           title: str = "") -> np.ndarray:
    """A picture (RGB uint8) for a report: the explained region with the nucleus outline, then each
    backbone's heatmap over it (with the outline and the peak marked), side by side, and the caption
    that a heatmap shows where the network looked, not why it is right."""
    import cv2

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
