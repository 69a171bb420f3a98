"""Writing a bundle: one skops member per model, the arrays, the manifest with every member's hash."""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from trainer import __version__
from trainer.classical.kinds import KindModels
from trainer.inference.bundle.format import (
    ARRAYS,
    BACKBONES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MODEL_KEY,
    SINGLE_MODEL,
    ModelBundle,
    model_member,
)
from trainer.inference.bundle.lazy import manifest_entry
from trainer.util.atomic import atomic_write
from trainer.util.versions import torchvision_version


def package_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    import sklearn  # only when saving: reading a bundle's manifest must not import scikit-learn

    return {"allgui": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__,
            "torchvision": torchvision_version()}


def save_bundle(path: str | os.PathLike, bundle: ModelBundle) -> Path:
    """Write ``bundle`` to ``path`` atomically; returns the path."""
    from trainer.classical.serialise import skops_io  # scikit-learn and skops: not needed to read a manifest

    path = Path(path)
    members: dict[str, bytes] = {}
    table: dict[str, dict[str, Any]] = {}
    if isinstance(bundle.model, KindModels):  # one member per model: each can be rebuilt alone
        for key, m in bundle.model.models.items():
            if not MODEL_KEY.match(key):
                raise ValueError(f"model key {key!r} is not a lower-case word")
            members[model_member(key)] = skops_io.dumps(m)
            table[key] = manifest_entry(m, model_member(key))
    else:
        members[SINGLE_MODEL] = skops_io.dumps(bundle.model)
    arrays = {k: np.ascontiguousarray(v) for k, v in bundle.arrays.items()}
    members[ARRAYS] = safetensors.numpy.save(arrays) if arrays else b""
    if bundle.backbone_state:
        flat = {f"{name}/{k}": v.detach().cpu().contiguous()
                for name, sd in bundle.backbone_state.items() for k, v in sd.items()}
        members[BACKBONES] = safetensors.torch.save(flat)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": bundle.card.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": bundle.config.to_dict(), "card": bundle.card,
        "versions": package_versions(),
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                    for name, data in members.items()},
    }
    if table:
        manifest["models"] = table
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1, default=_json_default))
        for name, data in members.items():
            # float weights do not deflate; storing them keeps saving fast
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name == BACKBONES else zipfile.ZIP_DEFLATED)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    bundle.path = path
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
