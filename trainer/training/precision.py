"""Where and in what arithmetic fine-tuning computes.

The device of this process, mixed precision (bf16 autocast, or fp16 with a GradScaler, on CUDA),
channels_last and the determinism flags.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from trainer.training.distributed import DistInfo
from trainer.vision.devices import resolve_device


@dataclass(frozen=True)
class Precision:
    """Where and in what arithmetic a batch runs.

    The device, the autocast dtype (None = float32) and the memory format (channels_last on CUDA).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format

    def autocast(self):
        """Mixed precision for the forward pass, or nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device, images in the memory format."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)


def resolve_training_device(device: Any, info: DistInfo) -> torch.device:
    """The device this process trains on: its own GPU under DDP."""
    if isinstance(device, torch.device):
        dev = device
    else:
        dev = resolve_device(str(device or "auto"))
    if dev.type == "cuda" and info.active and info.world_size > 1:
        dev = torch.device("cuda", info.local_rank)
    return dev


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 on CUDA where supported, else float16; None (float32) on the CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device):
    """Set cuDNN / deterministic-algorithm flags for the run and restore them afterwards."""
    was_deterministic, was_warn_only = (torch.are_deterministic_algorithms_enabled(),
                                        torch.is_deterministic_algorithms_warn_only_enabled())
    was_benchmark, was_cudnn_deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = was_benchmark, was_cudnn_deterministic
