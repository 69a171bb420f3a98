"""Seeded, deterministic train/validation/test splits and cross-validation folds.

Two protocols:

* ``'image'``: stratified at image level, the paper's protocol (images of one subject may fall
  on both sides, which flatters the scores).
* ``'subject'``: grouped by subject/group id, no group on two sides, each side as close to the
  class proportions as the groups allow.

All functions take labels as an array, a list of :class:`trainer.io.samples.Sample` or a
:class:`trainer.io.samples.Dataset` (then the groups come from it too), and return sorted int64
index arrays into it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from trainer.config import PROTOCOLS
from trainer.io.samples import group_ids, sample_groups
from trainer.util.errors import DataError

_SPLIT_NAMES = ("train", "validation", "test")
#: subjects of each class a split gives every part where the data have enough (see _assign_groups)
MIN_PART_GROUPS = 3
_BINARY_NAMES = {0: "normal", 1: "ALL"}


def default_protocol(groups: Sequence | np.ndarray | None) -> str:
    """'subject' when every sample has a group id, else 'image'."""
    return "image" if group_ids(groups) is None else "subject"


def split_train_val_test(data: Any, groups: Sequence | np.ndarray | None = None, *,
                         protocol: str | None = None,
                         fractions: Sequence[float] = (0.70, 0.15, 0.15),
                         seed: int = 0, strata: Sequence | np.ndarray | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split into train, validation and test indices.

    Args:
        data: labels (N,), a list of Samples or a Dataset.
        groups: (N,) group ids; taken from ``data`` when it is a Dataset or Samples.
        protocol: 'subject' (grouped) or 'image' (stratified image-level); None picks
            :func:`default_protocol`.
        fractions: train, validation, test shares (summing to 1; validation or test may be 0,
            giving an empty array).
        seed: the same seed and data give the same split.
        strata: (N,) finer classes to stratify on, e.g. ``"label:source class"`` (see
            :func:`source_strata`); every non-empty part then holds every stratum. When the
            groups make that impossible, the split is stratified on the labels alone.

    Raises
    ------
        DataError: a non-empty part would miss a class, or groups are missing for 'subject'.
    """
    labels, groups = _labels_groups(data, groups)
    protocol = _check_protocol(protocol, groups)
    if strata is not None:
        out = _split_by_strata(labels, groups, _check_strata(strata, labels), protocol,
                               fractions, seed)
        if out is not None:
            return out
    fr = _check_fractions(fractions)
    y = _encode(labels)
    rng = np.random.default_rng(seed)
    if protocol == "image":
        assign = _image_assignment(y, fr, rng, labels)
    else:
        g_codes, counts = _group_counts(y, groups)
        _check_group_feasible(counts, int((fr > 0).sum()), labels, y,
                              what="train, validation and test each need one")
        g_assign = _assign_groups(counts, fr, rng)
        if g_assign is None:
            raise DataError("Could not find a subject-level split with every class in train, "
                            "validation and test; use the image-level split or more subjects.")
        assign = g_assign[g_codes]
    return tuple(np.flatnonzero(assign == s).astype(np.int64) for s in range(3))  # type: ignore


def cv_folds(data: Any, groups: Sequence | np.ndarray | None = None, *,
             protocol: str | None = None, n_splits: int = 5, seed: int = 0,
             strata: Sequence | np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (image) or stratified-grouped (subject) K-fold cross-validation.

    Returns ``n_splits`` (train_idx, test_idx) pairs; every index is in exactly one test fold
    and, for 'subject', no group is in a fold's train and test part. Every test fold holds
    every class. Uses StratifiedKFold / StratifiedGroupKFold (shuffled with ``seed``); if the
    latter leaves a class out of a test fold, a seeded greedy group assignment is used.
    ``strata`` (N,): finer classes (e.g. ``"label:source class"``, see :func:`source_strata`)
    to stratify on, so every source's images of each class spread over the folds; where the
    groups make that impossible, the folds are stratified on the labels alone.

    Raises
    ------
        DataError: fewer images (image) or groups (subject) of a class than folds
            (see :func:`max_folds`).
    """
    if isinstance(groups, (int, np.integer)) and not isinstance(groups, bool):
        raise TypeError("cv_folds: pass the number of folds as n_splits=...")
    labels, groups = _labels_groups(data, groups)
    protocol = _check_protocol(protocol, groups)
    if strata is not None and int(n_splits) >= 2:
        s = _check_strata(strata, labels)
        units = _units(groups, protocol, len(s))
        small = _small_cells(s, units, int(n_splits))
        for c in small:  # too few subjects to reach every fold: pooled with its label's largest cell
            same = [d for d in np.unique(s[labels == labels[s == c][0]]) if d not in small]
            if same:
                s = np.where(s == c, max(same, key=lambda d: len(set(units[s == d]))), s)
        try:
            folds = cv_folds(s, groups, protocol=protocol, n_splits=n_splits, seed=seed)
            if all(len(np.unique(labels[te])) == len(np.unique(labels)) for _, te in folds):
                return folds
        except DataError:
            pass
    if int(n_splits) < 2:
        raise DataError(f"Cross-validation needs at least 2 folds, not {n_splits}.")
    n_splits = int(n_splits)
    y = _encode(labels)
    idx = np.arange(len(y))
    if protocol == "image":
        per_class = np.bincount(y)
        c = int(per_class.argmin())
        if per_class[c] < n_splits:
            raise DataError(f"{n_splits}-fold cross-validation needs at least {n_splits} images "
                            f"of each class; '{_name(labels, y, c)}' has {per_class[c]}.")
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr.astype(np.int64), te.astype(np.int64)) for tr, te in skf.split(idx, y)]

    g_codes, counts = _group_counts(y, groups)
    _check_group_feasible(counts, n_splits, labels, y,
                          what=f"each of the {n_splits} folds needs one")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [(tr.astype(np.int64), te.astype(np.int64))
             for tr, te in sgkf.split(idx, y, groups=g_codes)]
    n_classes = counts.shape[1]
    if all(len(np.unique(y[te])) == n_classes for _, te in folds):
        return folds
    fr = np.full(n_splits, 1.0 / n_splits)
    g_assign = _assign_groups(counts, fr, np.random.default_rng(seed))
    if g_assign is None:
        raise DataError(f"Could not find a subject-level {n_splits}-fold split with every class "
                        "in every fold; use fewer folds or the image-level protocol.")
    assign = g_assign[g_codes]
    return [(np.flatnonzero(assign != k).astype(np.int64),
             np.flatnonzero(assign == k).astype(np.int64)) for k in range(n_splits)]


def max_folds(data: Any, groups: Sequence | np.ndarray | None = None, *,
              protocol: str | None = None) -> int:
    """Most cross-validation folds possible with every class in every test fold.

    The fewest images (image protocol) or subjects/groups (subject protocol) any class has.
    """
    labels, groups = _labels_groups(data, groups)
    protocol = _check_protocol(protocol, groups)
    y = _encode(labels)
    if protocol == "image":
        return int(np.bincount(y).min())
    g_codes, counts = _group_counts(y, groups)
    return int((counts > 0).sum(0).min())


def source_strata(data: Any) -> np.ndarray | None:
    """(N,) strata ``"<label>:<class name>"`` where labels span several source classes.

    For a Dataset or Samples whose labels each cover several source classes (e.g. C-NMC 'hem' and Aria
    'Benign' both normal); None when each label has one class name, where stratifying on the label is the
    same.
    """
    samples = getattr(data, "samples", data)
    strata = np.array([f"{s.label}:{getattr(s, 'class_name', '')}" for s in samples])
    labels = {str(s.label) for s in samples}
    return strata if len(set(strata.tolist())) > len(labels) else None


def stratum_name(stratum: str) -> str:
    """``"0:Benign"`` -> ``"normal 'Benign'"``."""
    label, _, name = str(stratum).partition(":")
    try:
        label = _BINARY_NAMES.get(int(label), label)
    except ValueError:
        pass
    return f"{label} '{name}'" if name else str(label)


def one_sided_strata(strata: Sequence | np.ndarray, a: np.ndarray,
                     b: np.ndarray) -> dict[str, list[str]]:
    """Strata of the rows ``a`` and ``b`` whose rows all fall in one of them.

    Returns ``{"only_a": [...], "only_b": [...]}``, sorted stratum values (e.g. "0:Benign")
    present in ``a`` but not ``b`` and the reverse.
    """
    s = np.asarray(strata)
    in_a = set(s[np.asarray(a, dtype=int)].tolist())
    in_b = set(s[np.asarray(b, dtype=int)].tolist())
    return {"only_a": sorted(in_a - in_b), "only_b": sorted(in_b - in_a)}


# ---------------------------------------------------------------------------------------------

def _units(groups, protocol: str, n: int) -> np.ndarray:
    """What a split keeps together: the group of each row (subject) or the row itself (image)."""
    if protocol == "subject":
        return np.array([str(g) for g in groups])
    return np.arange(n).astype(str)


def _small_cells(s: np.ndarray, units: np.ndarray, n_parts: int) -> list[str]:
    """Strata with fewer units (subjects or images) than parts: they cannot reach every part."""
    return [c for c in np.unique(s).tolist() if len(set(units[s == c].tolist())) < n_parts]


def _split_by_strata(labels, groups, s, protocol, fractions, seed):
    """Train/validation/test stratified on ``s``; None when the groups do not allow it.

    Strata too small to reach every part (fewer subjects, or images, than non-empty parts) go to
    training whole, with every subject that has images of them, rather than wherever the
    greedy assignment happens to put them (e.g. a source's only normal subject all in
    validation); the other rows are split stratified on ``s``.
    """
    fr = _check_fractions(fractions)
    units = _units(groups, protocol, len(s))
    small = _small_cells(s, units, int((fr > 0).sum()))
    pinned = np.isin(units, units[np.isin(s, small)])
    keep = np.flatnonzero(~pinned)
    if len(np.unique(s[keep])) < 2:
        return None
    try:
        parts = split_train_val_test(s[keep], None if groups is None else groups[keep],
                                     protocol=protocol, fractions=fractions, seed=seed)
    except DataError:
        return None
    out = (np.sort(np.concatenate([keep[parts[0]], np.flatnonzero(pinned)])).astype(np.int64),
           keep[parts[1]].astype(np.int64), keep[parts[2]].astype(np.int64))
    n_classes = len(np.unique(labels))
    if any(len(p) and len(np.unique(labels[p])) < n_classes for p in out):
        return None
    return out


def _check_strata(strata, labels: np.ndarray) -> np.ndarray:
    s = np.asarray([str(x) for x in strata])
    if s.shape != labels.shape:
        raise ValueError(f"{len(s)} strata for {len(labels)} labels.")
    return s


def _labels_groups(data: Any, groups) -> tuple[np.ndarray, np.ndarray | None]:
    samples = getattr(data, "samples", None)
    if samples is None and isinstance(data, (list, tuple)) and data and hasattr(data[0], "label"):
        samples = data
    if samples is not None:
        labels = np.array([s.label for s in samples])
        if groups is None:
            groups = sample_groups(samples)
    else:
        labels = np.asarray(data)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError("No labels to split.")
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        if groups.shape != labels.shape:
            raise DataError(f"{len(groups)} group ids for {len(labels)} labels.")
    return labels, groups


def _check_protocol(protocol: str | None, groups) -> str:
    if protocol is None:
        return default_protocol(groups)
    p = str(protocol).strip().lower()
    if p in ("group", "grouped", "patient"):
        p = "subject"
    if p not in PROTOCOLS:
        raise DataError(f"Unknown split protocol '{protocol}'; use 'subject' or 'image'.")
    if p == "subject" and default_protocol(groups) != "subject":
        raise DataError("A subject-level split needs a subject or group id for every image; "
                        "none (or not all) are known. Use the image-level split.")
    return p


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or np.any(~np.isfinite(fr)) or np.any(fr < 0) or fr[0] <= 0 \
            or abs(fr.sum() - 1.0) > 1e-6:
        raise DataError(f"Split fractions must be three non-negative numbers summing to 1 with "
                        f"a positive training share, not {tuple(fractions)}.")
    return fr


def _encode(labels: np.ndarray) -> np.ndarray:
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"Only one class ({_BINARY_NAMES.get(classes[0], classes[0])}) in the "
                        "labels; two are needed to split.")
    return y.astype(np.int64)


def _group_counts(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) group code of each sample and (G, K) images of each class in each group."""
    names, codes = np.unique(np.array([str(g) for g in groups]), return_inverse=True)
    counts = np.zeros((len(names), int(y.max()) + 1))
    np.add.at(counts, (codes, y), 1)
    return codes.astype(np.int64), counts


def _name(labels: np.ndarray, y: np.ndarray, c: int) -> str:
    raw = labels[np.flatnonzero(y == c)[0]]
    try:
        return _BINARY_NAMES.get(int(raw), str(raw))
    except (TypeError, ValueError):
        return str(raw)


def _allocate(n: int, fr: np.ndarray) -> np.ndarray:
    """Split n items over parts by fractions (largest remainder), >= 1 per non-zero part."""
    raw = fr * n
    k = np.floor(raw).astype(int)
    order = np.argsort(-(raw - k), kind="stable")
    k[order[: n - k.sum()]] += 1
    for s in np.flatnonzero((fr > 0) & (k == 0)):
        donor = int(np.argmax(k))
        k[donor] -= 1
        k[s] += 1
    return k


def _image_assignment(y: np.ndarray, fr: np.ndarray, rng: np.random.Generator,
                      labels: np.ndarray) -> np.ndarray:
    n_parts = int((fr > 0).sum())
    assign = np.empty(len(y), dtype=np.int64)
    for c in range(y.max() + 1):
        idx = np.flatnonzero(y == c)
        if len(idx) < n_parts:
            raise DataError(f"Class '{_name(labels, y, c)}' has {len(idx)} image(s); a "
                            f"stratified split into {n_parts} parts needs at least {n_parts}.")
        idx = rng.permutation(idx)
        k = _allocate(len(idx), fr)
        assign[idx] = np.repeat(np.arange(3), k)
    return assign


def _check_group_feasible(counts: np.ndarray, n_parts: int, labels, y, what: str) -> None:
    for c in range(counts.shape[1]):
        n_groups = int((counts[:, c] > 0).sum())
        if n_groups < n_parts:
            raise DataError(
                f"Subject-level split impossible: class '{_name(labels, y, c)}' comes from "
                f"only {n_groups} subject(s)/group(s), but {what}. Use the "
                "image-level split (split=image) or fewer parts.")


def _assign_groups(counts: np.ndarray, fr: np.ndarray, rng: np.random.Generator,
                   n_trials: int | None = None) -> np.ndarray | None:
    """Assign groups to parts so each part's class counts approach fr * class totals.

    counts: (G, K) images of each class per group; fr: (S,) part fractions.
    Randomised greedy with restarts: each trial first gives every non-empty part
    min(``MIN_PART_GROUPS``, groups of the class // parts) groups of every class (at least one), so that a
    part's figures rest on several subjects wherever the data have them, then adds the remaining
    groups largest first to the part whose class counts get closest to target. Balancing images
    alone gave C-NMC's test split one normal subject (its three largest hold most normal crops).
    Returns (G,) part index of the best trial in which every non-empty part holds every class, or None.
    """
    G, K = counts.shape
    S = len(fr)
    totals = counts.sum(0)
    target = np.outer(fr, totals)
    scale = 1.0 / np.maximum(totals, 1) ** 2
    active = np.flatnonzero(fr > 0)
    sizes = counts.sum(1)
    if n_trials is None:
        n_trials = int(max(8, min(64, 20000 // max(G, 1))))
    best, best_cost = None, np.inf
    has = counts > 0
    need = np.maximum(1, np.minimum(MIN_PART_GROUPS, has.sum(0) // max(len(active), 1)))  # (K,) per part
    for _ in range(n_trials):
        cur = np.zeros((S, K))
        n_in = np.zeros((S, K), dtype=np.int64)  # groups with images of each class in each part
        assign = np.full(G, -1, dtype=np.int64)
        ok = True
        for _round in range(int(need.max())):
            for s in active[np.argsort(fr[active], kind="stable")]:  # smallest parts first
                for c in rng.permutation(K):
                    if n_in[s, c] >= need[c]:
                        continue
                    cand = np.flatnonzero((assign < 0) & has[:, c])
                    if len(cand) == 0:
                        ok = False
                        break
                    g = int(rng.choice(cand))
                    assign[g] = s
                    cur[s] += counts[g]
                    n_in[s] += has[g]
                if not ok:
                    break
            if not ok:
                break
        if not ok:
            continue
        rest = np.flatnonzero(assign < 0)
        rest = rest[np.argsort(-sizes[rest] * rng.uniform(0.6, 1.4, len(rest)), kind="stable")]
        for g in rest:
            before = ((cur[active] - target[active]) ** 2 * scale).sum(1)
            after = ((cur[active] + counts[g] - target[active]) ** 2 * scale).sum(1)
            s = active[int(np.argmin(after - before))]
            assign[g] = s
            cur[s] += counts[g]
        if np.any(cur[active][:, totals > 0] == 0):
            continue
        cost = float(((cur - target) ** 2 * scale).sum())
        if cost < best_cost:
            best, best_cost = assign.copy(), cost
    return best
