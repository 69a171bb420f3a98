"""CNN backbones that map images to global-average-pooled (GAP) feature vectors.

``build_backbone(name, weights)`` returns a module mapping a float tensor (B, 3, H, W), normalised
with ImageNet mean/std, to features (B, D) with D = ``BACKBONES[name]``:

- ``densenet121``: ``features`` -> ReLU -> adaptive average pool -> (B, 1024)
- ``resnet34``: everything up to and including ``avgpool`` (``fc`` dropped) -> (B, 512)

Weights are one of
- ``'none'``: random initialisation (seed it with ``seed=`` or ``torch.manual_seed``);
- ``'imagenet'``: torchvision's ``IMAGENET1K_V1`` weights read from the torch cache
  (``torch.hub.get_dir()/checkpoints/<file name of the weight URL>``); when the file is not there
  torchvision downloads it, and when that fails (offline) an ``AllguiError`` says where to put it;
- a path to a local ``.pth``/``.pt`` state_dict (read with ``torch.load(weights_only=True)``) or a
  ``.safetensors`` file. Full-classifier keys (torchvision's) and our feature-only keys are accepted.

``state_dict=`` overrides ``weights`` (e.g. fine-tuned weights carried in a model bundle).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from trainer.util.errors import AllguiError
from trainer.vision import initcache, trunks

BACKBONES: dict[str, int] = {"densenet121": 1024, "resnet34": 512}
"""Backbone name -> feature dimension D."""

_HEAD_PREFIX = {"densenet121": "classifier.", "resnet34": "fc."}
_WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class DenseNetFeatures(nn.Module):
    """DenseNet-121 trunk: ``features`` -> ReLU -> GAP; (B,3,H,W) -> (B,1024)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ResNetFeatures(nn.Module):
    """ResNet trunk up to ``avgpool`` (no ``fc``); (B,3,H,W) -> (B,512) for ResNet-34."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, part, getattr(resnet, part))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class BackboneClassifier(nn.Module):
    """Backbone + linear head for fine-tuning: (B,3,H,W) -> logits (B, num_classes).

    Its state_dict keys are ``backbone.*`` and ``head.*``; ``build_backbone`` accepts such a
    state_dict directly (the head is dropped).
    """

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise AllguiError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.")


def _weights_enum(name: str):
    # torchvision only names the ImageNet weights (file URL, tag); the networks come from ``trunks``
    from torchvision.models import DenseNet121_Weights, ResNet34_Weights

    return {"densenet121": DenseNet121_Weights, "resnet34": ResNet34_Weights}[name].IMAGENET1K_V1


def imagenet_cache_path(name: str) -> Path:
    """Where the ImageNet weights of ``name`` are expected in the torch cache."""
    _check_name(name)
    file_name = os.path.basename(urlparse(_weights_enum(name).url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _empty_trunk(name: str, init: bool = True) -> nn.Module:
    """Randomly initialised trunk, identical to torchvision's ``weights=None`` model for the same RNG state.

    ``init=False`` leaves out torchvision's initialisation loop (see :func:`trunks.densenet121`).
    """
    if name == "densenet121":
        return DenseNetFeatures(trunks.densenet121(init).features)
    return ResNetFeatures(trunks.resnet34(init))


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals ...
        raise AllguiError(
            f"Cannot read backbone weights from {path.name}: it is not a PyTorch state_dict file "
            f"({type(exc).__name__}). Give a .pth/.pt state_dict or a .safetensors file."
        ) from exc


def _read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise AllguiError(
            f"Backbone weights file not found: {path}. Use weights 'none', 'imagenet' or a path to "
            "a .pth/.pt/.safetensors state_dict."
        )
    if path.suffix.lower() == ".safetensors":

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as exc:
            raise AllguiError(
                f"Cannot read backbone weights from {path.name}: not a valid safetensors file ({exc})."
            ) from exc
    else:
        obj = _torch_load(path)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise AllguiError(
            f"Backbone weights file {path.name} does not hold a state_dict (a mapping of parameter "
            "names to tensors)."
        )
    return dict(obj)


def _normalise_keys(name: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, drop classifier-head keys, rename old DenseNet keys."""
    own = f"{name}/"
    if any(k.startswith(own) for k in state_dict):  # several backbones in one file: ``<name>/<param>``
        state_dict = {k[len(own):]: v for k, v in state_dict.items() if k.startswith(own)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.startswith(_HEAD_PREFIX[name]) or key.startswith("head."):
            continue
        if name == "densenet121":
            match = _OLD_DENSENET_KEY.match(key)
            if match:
                key = match.group(1) + match.group(2)
        out[key] = value
    return out


def _load_into(name: str, model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    sd = _normalise_keys(name, state_dict)
    expected = model.state_dict()
    for k in expected:  # old checkpoints (torchvision's DenseNet) lack these eval-irrelevant counters
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = expected[k]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong_shape = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        found = len(expected) - len(missing)
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            detail.append(f"{len(wrong_shape)} of the wrong shape (e.g. {wrong_shape[0]})")
        raise AllguiError(
            f"The weights from {source} do not fit {name}: {'; '.join(detail)}; "
            f"{found} of {len(expected)} parameters matched. Are they weights for another network?"
        )
    model.load_state_dict(sd, strict=True)


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    path = imagenet_cache_path(name)
    if path.is_file():
        obj = _torch_load(path)
        if not isinstance(obj, Mapping):
            raise AllguiError(f"The cached ImageNet weights {path} are not a state_dict; delete the file.")
        return dict(obj)
    url = _weights_enum(name).url
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as exc:
        raise AllguiError(
            f"ImageNet weights for {name} are not in the torch cache and could not be downloaded "
            f"({type(exc).__name__}). Download {url} on a computer with internet access and copy it to "
            f"{path} (the folder is set by TORCH_HOME), or use weights 'none' or a local weights file."
        ) from exc


def _seeded_trunk(name: str, seed: int) -> nn.Module:
    """``_empty_trunk(name)`` drawn with ``seed``: read from the network cache where it holds it.

    The global torch RNG is left as it was either way.
    """
    if initcache.folder() is not None:
        with torch.device("meta"):  # the modules alone: no numbers drawn
            model = _empty_trunk(name, init=False)
        expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        state = initcache.load(name, seed, expected)
        if state is not None:
            model.load_state_dict(state, strict=True, assign=True)
            return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _empty_trunk(name)
    initcache.store(name, seed, model.state_dict())
    return model


def _build(name: str, weights: str | os.PathLike, state_dict, seed: int | None) -> nn.Module:
    _check_name(name)
    if seed is not None:
        model = _seeded_trunk(name, seed)
    else:
        model = _empty_trunk(name)
    if state_dict is not None:
        _load_into(name, model, state_dict, "the given state_dict")
    elif isinstance(weights, str) and weights.lower() == "none":
        pass
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        _load_into(name, model, _imagenet_state_dict(name), f"the ImageNet cache ({imagenet_cache_path(name).name})")
    else:
        _load_into(name, model, _read_state_dict_file(weights), Path(weights).name)
    return model


def build_backbone(
    name: str,
    weights: str | os.PathLike = "none",
    state_dict: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Feature extractor ``name`` in eval mode: (B,3,H,W) float -> (B, BACKBONES[name]) float.

    ``seed`` (optional) makes a random initialisation reproducible without touching the global
    torch RNG. Raises ``AllguiError`` for an unknown name or weights that cannot be found or do not fit.
    """
    return _build(name, weights, state_dict, seed).eval()


def build_classifier_model(
    name: str,
    weights: str | os.PathLike = "none",
    num_classes: int = 2,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> BackboneClassifier:
    """Backbone + fresh ``nn.Linear(D, num_classes)`` head for fine-tuning (returned in eval mode).

    The head is initialised from ``seed`` as well when given. ``model.backbone.state_dict()``
    (or the whole model's state_dict) can later be passed to ``build_backbone(state_dict=...)``.
    """
    backbone = _build(name, weights, state_dict, seed)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = BackboneClassifier(backbone, BACKBONES[name], num_classes)
    else:
        model = BackboneClassifier(backbone, BACKBONES[name], num_classes)
    return model.eval()


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state_dict's names, dtypes, shapes and values (order independent)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_identity(
    name: str,
    weights: str | os.PathLike = "none",
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Short string naming the weights, for cache keys and model bundles.

    ``'none'``, ``'imagenet:IMAGENET1K_V1'``, ``'file:<sha256[:16]>'`` (of the file's bytes) or
    ``'finetuned:<sha256[:16]>'`` (of ``state_dict``, see ``state_dict_digest``).
    """
    _check_name(name)
    if state_dict is not None:
        return "finetuned:" + state_dict_digest(state_dict)[:16]
    if isinstance(weights, str) and weights.lower() == "none":
        return "none"
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet:" + _weights_enum(name).name
    path = Path(weights)
    if not path.is_file():
        raise AllguiError(f"Backbone weights file not found: {path}.")
    return "file:" + _file_digest(path)[:16]
