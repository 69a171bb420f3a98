"""Loading a bundle: every member read and checked, the models rebuilt at the trust boundary."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch

from trainer.classical.kinds import KindModels
from trainer.config import TrainConfig
from trainer.inference.bundle.archive import checked_manifest, open_zip, verified
from trainer.inference.bundle.format import ARRAYS, BACKBONES, SINGLE_MODEL, ModelBundle
from trainer.inference.bundle.lazy import LazyModels, card_bands
from trainer.inference.bundle.legacy import as_kind_models
from trainer.inference.bundle.trust import check_model, rebuild
from trainer.util.errors import BundleError


def load_bundle(path: str | os.PathLike, lazy: bool = False) -> ModelBundle:
    """Read and verify a bundle. Raises :class:`BundleError` with a clear message.

    Every member is read and its checksum verified here. ``lazy``: of a bundle with one member per model,
    only the first model is rebuilt now and each other one when first asked for (see :class:`LazyModels`;
    a one-crop prediction then skips the field model's share of the start-up).
    """
    path = Path(path)
    with open_zip(path) as zf:
        manifest = checked_manifest(zf, path)
        table = manifest.get("models")
        if table:
            pending = LazyModels({key: verified(zf, manifest, entry["member"], path) for key, entry in table.items()},
                                 table, path, card_bands(manifest.get("card") or {}))
            if lazy:
                pending[next(iter(pending))]  # the first model now, the others when asked for
                model = KindModels(models=pending)
            else:
                model = KindModels(models={key: pending[key] for key in pending})
        else:
            model = rebuild(verified(zf, manifest, SINGLE_MODEL, path), path)
        raw = verified(zf, manifest, ARRAYS, path)
        backbones = verified(zf, manifest, BACKBONES, path) if BACKBONES in manifest.get("members", {}) else None
    arrays, state = _arrays(raw, backbones, path)
    if not table:
        model, arrays = as_kind_models(model, arrays)
        _check_models(model, path)
    return ModelBundle(model=model, config=TrainConfig.from_dict(manifest.get("config", {})),
                       card=dict(manifest.get("card", {}), created=manifest.get("created"),
                                 versions=manifest.get("versions", {})),
                       arrays=arrays, backbone_state=state, path=path)


def _arrays(raw: bytes, backbones: bytes | None, path: Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """(the arrays member's arrays, backbone name -> state_dict or None)."""
    try:
        arrays = safetensors.numpy.load(raw) if raw else {}
        state = None
        if backbones is not None:
            state = {}
            for key, t in safetensors.torch.load(backbones).items():
                name, _, param = key.partition("/")
                state.setdefault(name, {})[param] = t
    except Exception as e:
        raise BundleError(f"{path.name}: stored arrays cannot be read ({e}).") from None
    return arrays, state


def _check_models(model: Any, path: Path) -> None:
    """Raise BundleError unless ``model`` (from a one-member bundle) is a KindModels of allgui models."""
    models = model.models if isinstance(model, KindModels) else None
    if not isinstance(models, dict) or not models or not all(isinstance(k, str) for k in models):
        raise BundleError(f"{path.name} does not hold an allgui model.")
    for m in models.values():
        check_model(m, path)
