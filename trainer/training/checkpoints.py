"""Early stopping and the per-epoch checkpoints of a fine-tuning run.

Checkpoints are written atomically and read back with ``torch.load(weights_only=True)``: tensors and plain
containers only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.util.errors import AllguiError

CHECKPOINT_FORMAT = "allgui-finetune-checkpoint/1"

# Settings that change what a run computes; a checkpoint is resumed only when they are unchanged.
# (epochs, patience and min_delta may change: a finished run can be extended.)
RUN_FIELDS = ("weights", "lr", "weight_decay", "batch_size", "image_size", "gamma", "seed", "amp",
               "deterministic", "channels_last", "sync_bn")


class EarlyStopping:
    """Patience rule on a loss: ``step(loss)`` returns True when the loss is a new best (``loss < best - min_delta``).

    ``should_stop`` once ``patience`` epochs in a row did not improve.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epochs = 0

    def step(self, loss: float) -> bool:
        self.epochs += 1
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = float(loss), self.epochs, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.epochs = int(state["epochs"])


def checkpoint_path(checkpoint_dir: str | os.PathLike, name: str) -> Path:
    """Where the checkpoint of backbone ``name`` lives."""
    return Path(checkpoint_dir) / f"finetune_{name}.pt"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fine-tuning checkpoint safely (``weights_only=True``: tensors and containers only)."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AllguiError(f"Cannot read the fine-tuning checkpoint {Path(path).name}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise AllguiError(f"{Path(path).name} is not an allgui fine-tuning checkpoint.")
    return ckpt


def data_fingerprint(items: Sequence, labels: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for item, label in zip(items, labels):
        if isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            h.update(f"a{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        else:
            h.update(f"p{os.fspath(item)}".encode())
        h.update(f"|{int(label)};".encode())
    return h.hexdigest()


def run_key(name: str, settings: Mapping[str, Any], world_size: int, train_fp: str, val_fp: str) -> str:
    """What identifies a run: backbone, world size, data and the settings that change its result.

    ``settings`` is :meth:`trainer.config.TrainConfig.finetune_summary`.
    """
    d = settings
    text = json.dumps({"backbone": name, "world_size": world_size, "train": train_fp, "val": val_fp,
                       **{k: d[k] for k in RUN_FIELDS}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` in the standard (contiguous) layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
