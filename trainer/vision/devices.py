"""Where the networks run: the torch device asked for, the CPU's bfloat16 support, DataLoader workers."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.util.errors import AllguiError


def cpu_has_bf16() -> bool:
    """True where the CPU computes bfloat16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def extraction_workers(device: torch.device, n_images: int, batch_size: int) -> int:
    """DataLoader workers of a feature extraction: none for a single batch.

    On the CPU only where cores are left over after the forward pass (decoding in workers on 2 cores slows
    the convolutions it competes with); on CUDA enough to keep the GPU fed.
    """
    if n_images <= batch_size:
        return 0
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else min(2, cores // 4)


def resolve_device(device: str = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available else CPU; ``'cpu'``; ``'cuda'``/``'cuda:N'`` (must exist)."""
    dev = (device or "auto").lower()
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AllguiError("Device 'cuda' was asked for but no CUDA GPU is available; use 'cpu' or 'auto'.")
        return torch.device(dev)
    if dev == "cpu":
        return torch.device("cpu")
    raise AllguiError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda'.")
