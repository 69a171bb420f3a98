"""Early stopping, the state of a fine-tuning run and its per-epoch checkpoints.

Checkpoints are written atomically and read back with ``torch.load(weights_only=True)``: tensors and plain
containers only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.training.distributed import DistInfo
from trainer.util.errors import AllguiError
from trainer.util.progress import Progress

CHECKPOINT_FORMAT = "allgui-finetune-checkpoint/1"

# Settings that change what a run computes; a checkpoint is resumed only when they are unchanged.
# (epochs, patience and min_delta may change: a finished run can be extended.)
RUN_FIELDS = ("weights", "lr", "weight_decay", "batch_size", "image_size", "gamma", "seed", "amp",
               "deterministic", "channels_last", "sync_bn", "stain_jitter")


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


@dataclass
class FinetuneRun:
    """The state a fine-tuning run carries from epoch to epoch (and into its checkpoint)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    history: dict[str, Any] = field(default_factory=lambda: {
        "epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": [], "seconds": [],
        "train_images_per_s": []})
    best_state: dict[str, torch.Tensor] | None = None
    epoch: int = 0

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint`."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and self.scaler.is_enabled():  # empty when saved without fp16 scaling
            self.scaler.load_state_dict(ckpt["scaler"])
        self.stopper.load_state_dict(ckpt["stopper"])
        self.history.update({k: list(v) for k, v in ckpt["history"].items() if k in self.history})
        self.best_state = ckpt["best_model"] if ckpt["best_model"] is not None else ckpt["model"]
        self.epoch = int(ckpt["epoch"])

    def checkpoint(self, name: str, key: str, settings: dict[str, Any], improved: bool) -> dict[str, Any]:
        """Everything :meth:`resume` needs, tensors and plain containers only."""
        return {
            "format": CHECKPOINT_FORMAT, "backbone": name, "run_key": key, "config": settings,
            "epoch": self.epoch, "model": self.best_state if improved else cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "stopper": self.stopper.state_dict(),
            # None: the best weights are this epoch's ("model"), not stored twice
            "best_model": None if improved else self.best_state,
            "history": {k: list(v) for k, v in self.history.items()},
        }


def checkpoint_to_resume(ckpt_file: Path | None, key: str, resume: bool, info: DistInfo, dev: torch.device,
                          name: str, report: Progress | None) -> dict[str, Any] | None:
    """The checkpoint of this very run (same data and settings), or None to start afresh.

    Under DDP every rank takes part, and the run resumes only if all of them can.
    """
    if ckpt_file is None or not resume:
        return None
    ckpt = None
    if ckpt_file.is_file():
        try:
            ckpt = load_checkpoint(ckpt_file)
        except AllguiError as exc:
            if report:
                report(0.0, f"{name}: starting afresh ({exc})")
        if ckpt is not None and ckpt.get("run_key") != key:
            if report:
                report(0.0, f"{name}: the checkpoint is for other data or settings; starting afresh")
            ckpt = None
    if info.active:
        ok = torch.tensor([0 if ckpt is None else 1], device=dev if dev.type == "cuda" else "cpu")
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if int(ok.item()) == 0:
            ckpt = None
    return ckpt
