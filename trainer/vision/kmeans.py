"""Deterministic Lloyd k-means for the colour clustering of the segmentation (paper eq. 2).

Rows are pixels (N, D), D = 3 colour coordinates; everything is seeded, so a segmentation never
changes from run to run.
"""
from __future__ import annotations

import numpy as np

MAX_SAMPLES = 4000        # pixels used to fit the k-means centres
SEED = 0


def sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N,) squared distance of each row of ``x`` (N, D) to ``c`` (D,), in ``x``'s precision.

    The same numbers as ``((x - c) ** 2).sum(1)`` (a sum along a short last axis adds the columns in
    order), about three times faster for D = 3.
    """
    d = x[:, 0] - c[0]
    out = d * d
    for j in range(1, x.shape[1]):
        d = x[:, j] - c[j]
        out += d * d
    return out


def kmeans(x: np.ndarray, k: int, seed: int = SEED, n_init: int = 2, max_iter: int = 40,
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means (eq. 2: minimise the within-cluster sum of squares), k-means++ seeding.

    ``x``: (N, D) float. Deterministic for a given ``seed``. Returns (centres (k, D), labels (N,),
    inertia). Centres are sorted by their first coordinate so labels do not depend on the start.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    k = int(min(k, n))
    if k < 1:
        raise ValueError("k-means needs at least one sample")
    rng = np.random.default_rng(seed)
    xx = sq_dist(x, np.zeros(x.shape[1]))
    best = None
    for _ in range(n_init):
        centres = np.empty((k, x.shape[1]))
        centres[0] = x[rng.integers(n)]
        d2 = sq_dist(x, centres[0])
        for j in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            centres[j] = x[rng.choice(n, p=p)]
            d2 = np.minimum(d2, sq_dist(x, centres[j]))
        labels = None
        for _it in range(max_iter):
            dist = xx[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
            new = dist.argmin(1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=k)
            for d in range(x.shape[1]):
                sums = np.bincount(labels, weights=x[:, d], minlength=k)
                centres[counts > 0, d] = sums[counts > 0] / counts[counts > 0]
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or inertia < best[2] - 1e-9:
            best = (centres.copy(), labels.copy(), inertia)
    centres, labels, inertia = best
    order = np.argsort(centres[:, 0], kind="stable")
    remap = np.empty(k, int)
    remap[order] = np.arange(k)
    return centres[order], remap[labels], inertia


def assign(lab_pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of ``lab_pixels`` (N, D)."""
    x = lab_pixels.astype(np.float32, copy=False)
    c = centres.astype(np.float32)
    best = np.full(len(x), np.inf, np.float32)
    idx = np.zeros(len(x), np.intp)
    for j in range(len(c)):  # a loop over k beats argmin along a short axis
        d = sq_dist(x, c[j])
        closer = d < best
        best[closer] = d[closer]
        idx[closer] = j
    return idx


def subsample(n: int, m: int = MAX_SAMPLES) -> np.ndarray:
    if n <= m:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, m, replace=False))
