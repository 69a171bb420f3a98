"""Ordered work over many images in a few threads, with progress and cancel checks between chunks."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")

#: threads that read images side by side: decoding (OpenCV) and numpy release the GIL, so two threads read
#: almost twice as fast on two cores; more than four gain little and hold more decoded images in memory
IMAGE_THREADS = max(1, min(4, os.cpu_count() or 1))
#: up to this many rows the classifiers run on one thread: waking OpenMP / BLAS thread pools (which the
#: networks' threads have just left) costs more than the work; KNN on one crop took 8 ms on two threads,
#: 1.2 ms on one, and BLAS threads left spinning slow the next forward pass. The results are the same.
ONE_THREAD_ROWS = 64


@functools.cache
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # once: it inspects the loaded libraries


def one_thread(user_api: str | None = None):
    """Context in which OpenMP and BLAS (or only ``user_api``: ``"blas"``, ``"openmp"``) run on one thread."""
    return _threadpools().limit(limits=1, user_api=user_api)


def map_in_chunks(fn: Callable[[T], R], items: Sequence[T], between: Callable[[int], None] | None = None,
                  chunk: int = 64, threads: int = IMAGE_THREADS) -> list[R]:
    """``[fn(item) for item in items]``, in order, computed in up to ``threads`` threads.

    ``between(done)`` is called in the calling thread before every chunk of ``chunk`` items and once at
    the end, with the number of items done: a place for progress reports and cancel checks (an exception
    it raises stops the work). An exception raised by ``fn`` propagates the same way; catch it in ``fn``
    where one item's failure must not stop the others.
    """
    out: list[R] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(items), chunk):
            if between is not None:
                between(start)
            part: Iterable[T] = items[start:start + chunk]
            out.extend(pool.map(fn, part) if threads > 1 else map(fn, part))
    if between is not None:
        between(len(items))
    return out
