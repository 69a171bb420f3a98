"""A process forked after OpenCV's worker threads ran (a DataLoader worker) must not hang in cv2."""
import multiprocessing as mp
import time

import cv2
import numpy as np

import trainer.io.imageio  # noqa: F401  (registers the fork hooks, as every reader of images does)


def _child(q) -> None:
    cv2.setNumThreads(1)  # what the DataLoader workers do first
    q.put(cv2.resize(np.ones((64, 64), np.uint8), (32, 32)).shape)


def test_a_forked_child_can_use_opencv_after_the_parent_did():
    before = cv2.getNumThreads()
    big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    for _ in range(3):  # parallel work: OpenCV's pool threads start, then go to sleep
        cv2.resize(big, (1500, 1500), interpolation=cv2.INTER_AREA)
    time.sleep(0.5)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(30)
    hung = p.is_alive()
    if hung:
        p.kill()
    assert not hung, "the forked child hung in OpenCV"
    assert q.get(timeout=5) == (32, 32)
    assert cv2.getNumThreads() == before  # the parent's threads are back
