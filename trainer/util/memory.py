"""Returning freed memory to the operating system between images.

glibc keeps the memory of large freed buffers (decoded images, network activations of varying batch
shapes) in its heap; over a folder of smear fields the resident size of a prediction run then grew by
about 0.5 GB per 200 fields. Trimming the heap after each batch keeps it flat at no measurable cost.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _trim_function():
    """Glibc's ``malloc_trim`` or None (other C libraries and operating systems)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the operating system.

    Returns
    -------
    bool
        True where the C library can do it (glibc), False where this is a no-op.
    """
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True
