"""Intervals that resample subjects, and the rule that withholds them on too few subjects.

Images of one subject are not independent, so every interval allgui reports resamples subjects (groups)
where their ids are known (a cluster bootstrap), and none is given where a class has fewer than
:data:`MIN_GROUPS` subjects: :func:`not_estimable` and :func:`interval` are the one place that decides.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from trainer.util.errors import DataError

__all__ = ["MIN_GROUPS", "not_estimable", "interval", "group_counts", "subject_bootstrap_weights", "weighted_aucs"]


def _group_strata(y: np.ndarray, groups: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N,) group code of each sample and (G,) stratum (majority label, ties -> ALL) of each group.

    Missing ids (None, NaN, "") each become a group of their own.
    """
    g = np.asarray(groups, dtype=object).ravel()
    if g.shape != y.shape:
        raise DataError(f"Got {y.size} labels but {g.size} group ids.")
    keys = np.array([f"\x00{i}" if x is None or x == "" or (isinstance(x, float) and np.isnan(x))
                     else str(x) for i, x in enumerate(g)])
    _, codes = np.unique(keys, return_inverse=True)
    n_pos = np.bincount(codes, weights=y)
    n_all = np.bincount(codes)
    return codes.astype(np.int64), (2 * n_pos >= n_all).astype(np.int64)


def _group_weights(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, G) times each group is drawn.

    The groups of each stratum resampled with replacement, as many draws as the stratum has groups.
    """
    G = strata.size
    w = np.zeros(n * G)
    offset = (np.arange(n) * G)[:, None]
    for c in (1, 0):
        members = np.flatnonzero(strata == c)
        if members.size:
            draws = members[rng.integers(0, members.size, size=(n, members.size))]
            w += np.bincount((draws + offset).ravel(), minlength=n * G)
    return w.reshape(n, G)


def _weighted_auc_rows(y: np.ndarray, order: np.ndarray, first: np.ndarray, last: np.ndarray,
                       w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count one half) of each row of (B, N) sample weights ``w``.

    ``order`` sorts ``s`` ascending; ``first`` / ``last`` are, in sorted position, the first and
    last position of each sample's tie block. Identical to the AUC of the resample that repeats
    sample i ``w[b, i]`` times. NaN for rows without a positive or a negative.
    """
    ws = w[:, order]
    ys = y[order]
    neg = ws * (ys == 0)
    pos = ws * (ys == 1)
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(neg, axis=1)], axis=1)
    below = cum[:, first]
    equal = cum[:, last + 1] - below
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * equal)).sum(axis=1) / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def _tie_blocks(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(s, kind="stable")
    ss = s[order]
    new = np.r_[True, ss[1:] != ss[:-1]]
    block = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:] - 1, ss.size - 1]
    return order, starts[block], ends[block]


def _group_bootstrap_aucs(y: np.ndarray, score_sets: list[np.ndarray], codes: np.ndarray,
                          strata: np.ndarray, n: int, seed: int, chunk: int = 256) -> np.ndarray:
    """(len(score_sets), n') AUCs on the same n cluster resamples, one-class resamples dropped."""
    rng = np.random.default_rng(seed)
    ties = [_tie_blocks(s) for s in score_sets]
    out = []
    for start in range(0, n, chunk):
        w = _group_weights(strata, min(chunk, n - start), rng)[:, codes]
        out.append(np.stack([_weighted_auc_rows(y, *t, w, s) for t, s in zip(ties, score_sets)]))
    res = np.concatenate(out, axis=1)
    return res[:, np.isfinite(res).all(axis=0)]


MIN_GROUPS = 3  # fewer subjects (groups) of a class than this: no interval, a note instead

#: what a group is, in words, by the kind of group id (see :func:`not_estimable`)
GROUP_UNITS = {"subject": ("subject", "subjects"), "image block": ("image block", "image blocks")}


def not_estimable(n_groups: dict[str, int] | None, unit: str = "subject") -> str | None:
    """The note that replaces an interval resting on too few subjects, or None when one can be given.

    ``n_groups``: ``{"0": normal groups, "1": ALL groups}`` (None: no subject ids, nothing to check);
    ``unit``: ``"subject"`` or ``"image block"``. With fewer than :data:`MIN_GROUPS` groups of a class,
    a resampling interval says how the few subjects at hand vary, not how new ones would: e.g.
    ``"not estimable: 1 normal subject"``. Every interval allgui reports is given or withheld here.
    """
    if n_groups is None:
        return None
    one, many = GROUP_UNITS.get(unit, (unit, unit + "s"))
    few = [f"{k} {name} {one if k == 1 else many}"
           for c, name in (("0", "normal"), ("1", "ALL")) if (k := int(n_groups.get(c, 0))) < MIN_GROUPS]
    return "not estimable: " + " and ".join(few) if few else None


def interval(low: float | None, high: float | None, n_groups: dict[str, int] | None,
             unit: str = "subject") -> dict[str, Any]:
    """``{"ci": [low, high] or None, "ci_note": None or "not estimable: ..."}`` of one figure.

    See :func:`not_estimable`.
    """
    note = not_estimable(n_groups, unit)
    if note is not None or low is None or high is None:
        return {"ci": None, "ci_note": note}
    return {"ci": [float(low), float(high)], "ci_note": None}


def group_counts(y: Any, groups: Any) -> dict[str, int]:
    """``{"0": normal groups, "1": ALL groups}``; a group counts for the class most of its images have."""
    y = np.asarray(y).astype(np.int64).ravel()
    _, strata = _group_strata(y, groups)
    return {str(c): int((strata == c).sum()) for c in (0, 1)}


def subject_bootstrap_weights(y: Any, groups: Any, n: int, seed: int = 0) -> np.ndarray:
    """(n, N) times each image is drawn in ``n`` subject resamples.

    The groups of each class (majority label) are resampled with replacement, as many draws as that
    class has groups, and every image of a drawn group comes along (as :func:`bootstrap_auc_ci`).
    """
    y = np.asarray(y).astype(np.int64).ravel()
    codes, strata = _group_strata(y, groups)
    return _group_weights(strata, n, np.random.default_rng(seed))[:, codes]


def _ci_design(y: np.ndarray, groups: Any, unit: str = "subject"
               ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """``{"ci_method", "n_groups", "warning"}`` and the group codes / strata (None: image method).

    ``warning`` is :func:`not_estimable`'s note: then no interval is computed.
    """
    if groups is None:
        return {"ci_method": "image", "n_groups": None, "warning": None}, None, None
    codes, strata = _group_strata(y, groups)
    k = {str(c): int((strata == c).sum()) for c in (0, 1)}
    return {"ci_method": "group", "n_groups": k, "warning": not_estimable(k, unit)}, codes, strata


def weighted_aucs(y: Any, s: Any, w: np.ndarray) -> np.ndarray:
    """(B,) AUC of scores ``s`` (N,) under each row of (B, N) image weights ``w`` (e.g. a subject resample).

    Identical to the AUC of the resample that repeats image i ``w[b, i]`` times; NaN for rows without
    both classes.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    return _weighted_auc_rows(y, *_tie_blocks(s), np.asarray(w, dtype=np.float64), s)


def wilson_lower(right: Any, n: Any, z: float = 1.645) -> np.ndarray:
    """Wilson score lower bound of a proportion ``right / n`` (arrays of counts; 0 where ``n`` is 0).

    ``z`` = 1.645: the one-sided 95 % bound, SciPy's ``binomtest(right, n).proportion_ci(0.90, "wilson")``
    lower end, computed here for a whole grid of counts at once.
    """
    right, n = np.asarray(right, dtype=float), np.asarray(n, dtype=float)
    m = np.maximum(n, 1.0)
    p = right / m
    low = (p + z * z / (2 * m) - z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))) / (1 + z * z / m)
    return np.where(n > 0, low, 0.0)
