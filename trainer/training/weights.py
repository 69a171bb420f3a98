"""Files of fine-tuned backbone weights and the record of the images they were tuned on.

Safetensors, keys ``<backbone>/<param>``; the record lets no one test on those images unawares.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from trainer.io.imageio import content_hash
from trainer.util.atomic import atomic_write
from trainer.util.errors import AllguiError, DataError


def save_state_dicts(path: str | os.PathLike, state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``{backbone: state_dict}`` to one safetensors file, atomically.

    Keys are ``<backbone>/<param>``, the layout of the model bundle; ``metadata`` is stored as JSON strings.
    Give it ``{"finetune_images": finetune_provenance(train, val)}`` so that evaluation and training can
    refuse to test on the fine-tuning images (see :func:`finetune_overlap`).
    """
    path = Path(path)
    flat = {f"{name}/{k}": v.detach().cpu().contiguous()
            for name, sd in state_dicts.items() for k, v in sd.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    data = save(flat, metadata=meta)
    atomic_write(path, lambda fh: fh.write(data))
    return path


FINETUNE_IMAGES_KEY = "finetune_images"


def finetune_provenance(train_items: Sequence, val_items: Sequence) -> dict[str, list[str]]:
    """``{"train": [...], "validation": [...]}``.

    Sorted content hashes (``trainer.io.imageio.content_hash``) of the images a run was fine-tuned and
    early-stopped on, for a weights file's metadata (key ``"finetune_images"``).
    """
    def hashes(items):
        return sorted({content_hash(np.ascontiguousarray(i) if isinstance(i, np.ndarray) else i)
                       for i in items})
    return {"train": hashes(train_items), "validation": hashes(val_items)}


def weights_metadata(weights: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a safetensors weights file (JSON values decoded).

    {} for 'none', 'imagenet', other files or a file without metadata.
    """
    if not isinstance(weights, (str, os.PathLike)) or str(weights).lower() in ("none", "imagenet"):
        return {}
    path = Path(weights)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw = fh.metadata() or {}
    except Exception:
        return {}  # unreadable weights are reported where they are loaded
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def finetune_overlap(weights: str | os.PathLike, items: Sequence, *, allow: bool = False,
                     what: str = "test") -> dict[str, Any] | None:
    """Refuse to test on images the backbone weights were fine-tuned on.

    ``weights``: the configured backbone weights; ``items``: the images that will be tested
    (paths or arrays). When the weights file records its fine-tuning images (see
    :func:`finetune_provenance`) and any of ``items`` is among them (same content, whatever the
    name), raises ``DataError`` unless ``allow``. Returns None when the file records nothing,
    else ``{"weights", "n_checked", "n_train", "n_validation", "allowed"}`` (counts of ``items``
    among the fine-tuning training / validation images).
    """
    seen = weights_metadata(weights).get(FINETUNE_IMAGES_KEY)
    if not isinstance(seen, Mapping):
        return None
    tr, va = set(seen.get("train") or ()), set(seen.get("validation") or ())
    hashes = [content_hash(np.ascontiguousarray(i) if isinstance(i, np.ndarray) else i) for i in items]
    n_tr = sum(h in tr for h in hashes)
    n_va = sum(h in va and h not in tr for h in hashes)
    info = {"weights": Path(weights).name, "n_checked": len(hashes), "n_train": int(n_tr),
            "n_validation": int(n_va), "allowed": bool(allow)}
    if (n_tr or n_va) and not allow:
        raise DataError(
            f"{n_tr + n_va} of the {len(hashes)} {what} images were used to fine-tune the backbone "
            f"weights {Path(weights).name} ({n_tr} in its training, {n_va} in its validation "
            "images): results on them would be optimistic. Evaluate on other images, or pass "
            "--allow-finetune-overlap to go ahead anyway (the report then says so).")
    return info


def load_state_dicts(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a file written by ``save_state_dicts``: ``({backbone: state_dict}, metadata)``."""
    try:
        out: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            for key in fh.keys():
                name, _, param = key.partition("/")
                out.setdefault(name, {})[param] = fh.get_tensor(key)
    except Exception as exc:
        raise AllguiError(f"Cannot read fine-tuned weights from {Path(path).name}: {exc}") from exc
    return out, meta
