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

from trainer.io.imageio import content_hash, pixel_hash
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


def _pixel_hashes(items: Sequence) -> list[str]:
    return [pixel_hash(i) for i in items]


def finetune_provenance(train_items: Sequence, val_items: Sequence, train_groups: Sequence | None = None,
                        val_groups: Sequence | None = None) -> dict[str, Any]:
    """What a weights file records of its fine-tuning images (key ``"finetune_images"`` of its metadata).

    ``{"hash": "pixels", "train": [...], "validation": [...], "train_subjects": [...] or None,
    "validation_subjects": [...] or None}``: sorted hashes of the decoded pixels
    (:func:`trainer.io.imageio.pixel_hash`, so a BMP re-saved as PNG is still recognised) of the images a
    run was fine-tuned and early-stopped on, and their subject ids where known, so that an image of a
    fine-tuning subject is recognised too.
    """
    def subjects(groups):
        return None if groups is None else sorted({str(g) for g in groups})

    return {"hash": "pixels", "train": sorted(set(_pixel_hashes(train_items))),
            "validation": sorted(set(_pixel_hashes(val_items))),
            "train_subjects": subjects(train_groups), "validation_subjects": subjects(val_groups)}


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
                     what: str = "test", groups: Sequence | None = None,
                     hashes: Sequence[str | None] | None = None) -> dict[str, Any] | None:
    """Refuse to test on images (or subjects) the backbone weights were fine-tuned on.

    ``weights``: the configured backbone weights; ``items``: the images that will be tested (paths or
    arrays), ``groups`` their subject ids and ``hashes`` their pixel hashes where already known. When the
    weights file records its fine-tuning images (see :func:`finetune_provenance`) and any of ``items`` is
    among them (the same pixels, whatever the file), or is of a fine-tuning subject, raises ``DataError``
    unless ``allow``. Files written before pixel hashes recorded the hashes of file bytes; those are
    compared as such (``"by"`` says which). Returns None when the file records nothing, else ``{"weights",
    "by", "n_checked", "n_train", "n_validation", "n_train_subjects", "n_validation_subjects", "allowed"}``
    (images of ``items`` among the fine-tuning training / validation images; distinct subjects of ``items``
    among the fine-tuning subjects).
    """
    seen = weights_metadata(weights).get(FINETUNE_IMAGES_KEY)
    if not isinstance(seen, Mapping):
        return None
    by = "pixels" if seen.get("hash") == "pixels" else "file bytes"
    if by == "pixels":
        known = list(hashes) if hashes is not None else [None] * len(items)
        found = [h or pixel_hash(i) for h, i in zip(known, items)]
    else:
        found = [content_hash(np.ascontiguousarray(i) if isinstance(i, np.ndarray) else i) for i in items]
    tr, va = set(seen.get("train") or ()), set(seen.get("validation") or ())
    n_tr = sum(h in tr for h in found)
    n_va = sum(h in va and h not in tr for h in found)
    mine = set() if groups is None else {str(g) for g in groups}
    s_tr = mine & set(seen.get("train_subjects") or ())
    s_va = (mine & set(seen.get("validation_subjects") or ())) - s_tr
    info = {"weights": Path(weights).name, "by": by, "n_checked": len(found), "n_train": int(n_tr),
            "n_validation": int(n_va), "n_train_subjects": len(s_tr), "n_validation_subjects": len(s_va),
            "allowed": bool(allow)}
    if (n_tr or n_va or s_tr or s_va) and not allow:
        subj = "" if not (s_tr or s_va) else (
            f"; {len(s_tr) + len(s_va)} of their subjects ({', '.join(sorted(s_tr | s_va)[:5])}) were fine-tuned on")
        raise DataError(
            f"{n_tr + n_va} of the {len(found)} {what} images were used to fine-tune the backbone "
            f"weights {Path(weights).name} ({n_tr} in its training, {n_va} in its validation "
            f"images){subj}: results on them would be optimistic. Evaluate on other images, or pass "
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
