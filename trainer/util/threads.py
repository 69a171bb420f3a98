"""Threads for the CPU work.

Ordered work over many images with progress and cancel checks between chunks, one thread for small
classical stages, and lanes that run several networks side by side.
"""
from __future__ import annotations

import functools
import os
import threading
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
#: networks' threads have just left) costs more than the work, and BLAS threads left spinning slow the
#: next forward pass (numbers: benchmarks/README.md). The results are the same.
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


#: (lanes, torch threads per lane) -> its pool; see :func:`network_lanes`
_LANES: dict[tuple[int, int], ThreadPoolExecutor] = {}
_LANES_LOCK = threading.Lock()


def _forget_lanes_in_child() -> None:
    """A forked child has none of its parent's threads: its lanes are made afresh when it needs them."""
    global _LANES_LOCK
    _LANES.clear()
    _LANES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_lanes_in_child)


def network_lanes(lanes: int, threads: int) -> ThreadPoolExecutor:
    """A pool of ``lanes`` threads whose torch operations each use ``threads`` intra-op threads (kept, shared).

    Two networks run side by side, one per lane with half the cores each, instead of one after the
    other on all of them: every operation of a batch-of-one pass is too small to keep several threads
    busy, and each one wakes and waits for the OpenMP team (which sleeps between operations so that the
    GUI, decoding and segmentation get the cores): a batch-of-one pass takes half the time side by side,
    and batches are no slower (``benchmarks/predict_throughput.py``; numbers in benchmarks/README.md).

    The thread count is per thread in torch's OpenMP build: each lane sets its own; the number that
    threads started later take is put back to the caller's.
    """
    import torch  # only for lanes: the classical stage and image reading import this module without torch

    key = (int(lanes), int(threads))
    with _LANES_LOCK:
        pool = _LANES.get(key)
        if pool is not None:
            return pool
        before = torch.get_num_threads()
        started = threading.Barrier(key[0] + 1)

        def set_up() -> None:
            torch.get_num_threads()           # the lane's own first set-up, so that it keeps what follows
            torch.set_num_threads(key[1])

        pool = ThreadPoolExecutor(key[0], thread_name_prefix="allgui-lane", initializer=set_up)
        for _ in range(key[0]):               # start every lane now (each sets its own count), then put the
            pool.submit(started.wait)
        started.wait()                        # caller's count back for the threads started later
        torch.set_num_threads(before)
        _LANES[key] = pool
        return pool
