"""Seeded random initialisations of the backbones, kept on disk between runs.

A seeded ``weights='none'`` backbone is a pure function of the network, the seed, torch, torchvision and
this package's trunk code. Drawing its random numbers (7 M for DenseNet-121, 21 M for ResNet-34) keeps
the CPU's serial generator busy for about 0.4 s at every start-up; reading the same tensors back from a
file costs milliseconds (it is memory-mapped, copy-on-write). The first build of a network writes its
file, every later build reads it.

A file is named by a digest of everything its numbers depend on, written atomically, and holds plain
tensors (safetensors: nothing runs on load) with a CRC-32 of their bytes. A file that cannot be read,
fails its CRC or does not fit the network is ignored and written anew; a cache folder that cannot be
written costs only the time. A model bundle's fingerprint still checks whatever networks were built.

The folder is ``$ALLGUI_NETWORK_CACHE`` when set (empty, ``0`` or ``off``: no cache), else
``$XDG_CACHE_HOME/allgui/networks`` (``~/.cache/allgui/networks``); about 115 MB per seed.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from trainer.config import cache_home
from trainer.util.atomic import atomic_write
from trainer.util.versions import torchvision_version
from trainer.vision import trunks

log = logging.getLogger(__name__)
ENV = "ALLGUI_NETWORK_CACHE"
_OFF = ("", "0", "off", "none")


def folder() -> Path | None:
    """The cache folder, or None where caching is switched off (see the module docstring)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    return Path(cache_home()) / "networks"


@functools.cache
def _trunk_code() -> str:
    with open(trunks.__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def identity(name: str, seed: int) -> str:
    """Everything the numbers of network ``name`` drawn with ``seed`` depend on, as one line."""
    return (f"{name}|seed={int(seed)}|torch={torch.__version__}|torchvision={torchvision_version()}|"
            f"trunks={_trunk_code()}")


def path(name: str, seed: int) -> Path | None:
    """The file of ``name`` drawn with ``seed``; None without a cache folder."""
    base = folder()
    if base is None:
        return None
    digest = hashlib.sha256(identity(name, seed).encode()).hexdigest()[:24]
    return base / f"{name}-seed{int(seed)}-{digest}.safetensors"


def _crc(tensors: Mapping[str, torch.Tensor]) -> str:
    crc = 0
    for key in sorted(tensors):
        t = tensors[key].detach().contiguous().cpu()
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"", crc)
    return f"{crc:08x}"


def load(name: str, seed: int, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> dict | None:
    """The cached state_dict of ``name`` drawn with ``seed``, or None.

    ``expected``: key -> (shape, dtype) of the network's state_dict; a file holding anything else is
    ignored, as is one that cannot be read or fails its CRC.
    """
    p = path(name, seed)
    if p is None or not p.is_file():
        return None
    try:  # memory-mapped: the tensors share the file's pages until written to
        with safetensors.safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = fh.get_tensors()
    except Exception as e:  # truncated or not a safetensors file
        log.info("network cache %s unreadable (%s); drawing the network again", p.name, e)
        return None
    fits = (meta.get("identity") == identity(name, seed) and set(state) == set(expected)
            and all(tuple(state[k].shape) == expected[k][0] and state[k].dtype == expected[k][1] for k in expected))
    if not fits or meta.get("crc32") != _crc(state):
        log.info("network cache %s does not fit or is damaged; drawing the network again", p.name)
        return None
    return state


def store(name: str, seed: int, state: Mapping[str, torch.Tensor]) -> Path | None:
    """Write the state_dict of ``name`` drawn with ``seed``; returns the file, or None if it was not written."""
    p = path(name, seed)
    if p is None:
        return None
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"identity": identity(name, seed), "crc32": _crc(tensors)}
    try:
        data = safetensors.torch.save(tensors, metadata=meta)
        atomic_write(p, lambda fh: fh.write(data), fsync=False)
    except OSError as e:  # read-only or full disk: the next start-up draws the numbers again
        log.info("network cache not written (%s)", e)
        return None
    for old in p.parent.glob(f"{name}-seed{int(seed)}-*.safetensors"):  # other versions' numbers
        if old != p:
            with contextlib.suppress(OSError):
                old.unlink()
    return p


def forget(name: str, seed: int) -> bool:
    """Delete the file of ``name`` drawn with ``seed``; True if there was one."""
    p = path(name, seed)
    if p is None or not p.is_file():
        return False
    try:
        p.unlink()
    except OSError:
        return False
    return True
