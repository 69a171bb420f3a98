"""Grad-CAM of an explanation probe's ALL logit on a backbone's last feature map, in float32.

1. The region (a single-cell crop, a smear field judged whole, or one white cell's crop) goes
   through the pre-processing of prediction (stain normalisation where the model has it, gamma,
   resize, ImageNet normalisation) and through the backbone, in float32 whatever precision
   prediction uses (autocast is switched off).
2. ``A`` (C, h, w) is the last convolutional feature map, the one the backbone's global average
   pooling pools (DenseNet-121: ReLU of ``features``; ResNet-34: ``layer4``; h = w = input / 32),
   captured by a forward hook during the network's own forward pass.
3. The probe's ALL logit ``z = ((mean_hw A - mean) / scale) . coef + intercept`` is backpropagated
   to ``A``; the channel weights are the spatial means of the gradients.
4. The map ``ReLU(sum_c weight_c (A_c - R_c))`` (probe-logit units per feature-map cell) is
   upsampled bilinearly to the region and divided by its maximum, so it lies in [0, 1] (all zeros
   where nothing in the region raised the ALL logit).

``R``, the probe's *reference*, is the mean feature map of training images. Plain Grad-CAM
(``R = 0``) also shows what a map holds in every image: untrained (random-init) networks have strong
fixed patterns at the image border (ResNet-34's layer4 peaks in its bottom-right cell even on a
blank image, DenseNet-121's in a corner at some input sizes), and they swamp the few channels that
tell the classes apart. Centred on the reference, the map's cells (before ReLU) add up to the
probe's logit less its intercept, and a pattern common to all images cancels. Without a stored
reference, or with ``reference=False``, the map is plain Grad-CAM.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from trainer.io.imageio import read_image
from trainer.util.progress import check_cancel
from trainer.vision.preprocess import eval_transform
from trainer.vision.stain import reinhard

#: the module whose output is (DenseNet-121: after a ReLU) the feature map the backbone's GAP pools
CAM_LAYER = {"densenet121": "features", "resnet34": "layer4"}


def network_input(region: np.ndarray, extractor) -> torch.Tensor:
    """(1, 3, S, S) float32 tensor of an RGB uint8 region, pre-processed as prediction does it."""
    if extractor.stain_reference is not None:
        region = reinhard(region, np.asarray(extractor.stain_reference, float))
    x = eval_transform(int(extractor.image_size), float(extractor.gamma))(region).unsqueeze(0)
    return x.to(extractor.torch_device).contiguous(memory_format=torch.channels_last)


def feature_map(net, backbone: str, x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) float32: the last feature map of ``net`` for ``x``, the one its GAP pools.

    Captured with a forward hook during the network's own forward pass, without autocast and
    without a graph.
    """
    captured = {}
    layer = getattr(net, CAM_LAYER[backbone])
    handle = layer.register_forward_hook(lambda _m, _i, o: captured.__setitem__("map", o))
    try:
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            net(x.float())
    finally:
        handle.remove()
    fmap = captured["map"].float()
    return F.relu(fmap) if backbone == "densenet121" else fmap   # DenseNet applies ReLU before its pooling


def reference_maps(extractor, images, cancel=None) -> dict[str, np.ndarray]:
    """``{backbone: (C, h, w) float32}``: the mean last feature map of ``images`` (RGB arrays or paths)."""
    sums: dict[str, Any] = {}
    n = 0
    for item in images:
        check_cancel(cancel, "The explanation was cancelled.")
        x = network_input(read_image(item) if isinstance(item, (str, os.PathLike)) else item, extractor)
        for b, net in extractor.models().items():
            m = feature_map(net, b, x)[0]
            sums[b] = m if b not in sums else sums[b] + m
        n += 1
    return {b: (v / max(n, 1)).cpu().numpy().astype(np.float32) for b, v in sums.items()}


def gradcam(region: np.ndarray, extractor, probes: Mapping[str, Mapping[str, np.ndarray]],
            max_side: int | None = None, reference: bool = True) -> dict[str, dict[str, Any]]:
    """Grad-CAM of each probe's ALL logit on ``region`` (RGB uint8 (h, w, 3)).

    ``extractor`` is the :class:`trainer.vision.features.FeatureExtractor` whose networks and
    pre-processing prediction used. ``max_side``: make the maps at most this many pixels on their
    longer side.

    Returns
    -------
    dict
        backbone -> ``heatmap`` ((h, w) float32 in [0, 1]), ``peak`` (its maximum before
        normalising, probe-logit units per map cell), ``logit`` (the probe's), ``map_size``
        ((rows, cols) of the feature map) and ``referenced`` (whether it was centred on the
        probe's reference map).
    """
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
        A = feature_map(net, b, x).detach().clone().requires_grad_(True)   # (1, C, m, n)
        dev = A.device
        mean, scale, coef = (torch.as_tensor(probe[k], dtype=torch.float32, device=dev)
                             for k in ("mean", "scale", "coef"))
        with torch.enable_grad():
            gap = A.mean(dim=(2, 3))[0]                     # the backbone's GAP feature vector (C,)
            z = ((gap - mean) / scale) @ coef + float(probe["intercept"][0])
            (grad,) = torch.autograd.grad(z, A)
        weights = grad.mean(dim=(2, 3), keepdim=True)       # (1, C, 1, 1): spatial mean of the gradients
        R = probe.get("reference") if reference else None
        centred = R is not None and tuple(R.shape) == tuple(A.shape[1:])
        act = A.detach() - torch.as_tensor(R, device=dev)[None] if centred else A.detach()
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))   # (1, 1, m, n)
        up = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        up = up / up.max() if float(up.max()) > 0 else torch.zeros_like(up)
        out[b] = {"heatmap": up.clamp_(0, 1).cpu().numpy().astype(np.float32), "peak": float(cam.max()),
                  "logit": float(z.detach()), "map_size": (int(A.shape[2]), int(A.shape[3])),
                  "referenced": centred}
    return out
