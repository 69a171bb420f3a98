"""Each model's headline: repeated subject-grouped cross-validation of the pipeline as shipped.

One split of a few dozen subjects says little: which subjects land in the test split moves the figures
more than any setting does. So every model is also judged by cross-validation on all its images: the
subjects (or image blocks) are dealt into folds, ``cv_repeats`` times with other seeds, and in every fold
the whole classical stage is refitted on the other folds exactly as :func:`trainer.training.pipeline.train`
fits the shipped model (its own inner subject-level train / validation split, the feature blocks and
settings of the shipped model, cross-fit calibration, the Youden threshold and the uncertain band) and
then decides the held-out fold's images. Each image is thus decided once per repeat by a model that never
saw its subject.

Figures (each the mean over the repeats): AUC of the pooled out-of-fold calibrated probabilities;
sensitivity, specificity and balanced accuracy of the decisions at each fold's own threshold; coverage
(the share of images outside the fold's uncertain band) and the accuracy of those decided images.
Intervals resample subjects: the same subject resamples are applied to every repeat and the repeat mean
is taken in each, so an interval reflects which subjects were sampled, not how they were dealt into
folds. None is given on fewer than 3 subjects of a class (:func:`trainer.stats.intervals.interval`).

The features are the ones already extracted for the shipped model: nothing is re-extracted, so a stain
reference (``--stain reinhard``) is the shipped model's, fitted on its training split, in every fold
(stated in the result).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from trainer.classical.model import fit_model, subset
from trainer.config import TrainConfig
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND
from trainer.io.splits import cv_folds, max_folds, split_train_val_test
from trainer.stats.intervals import group_counts, interval, subject_bootstrap_weights, weighted_aucs
from trainer.util.errors import AllguiError, Cancelled, DataError
from trainer.util.progress import Progress

METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy", "coverage", "accuracy_decided")
N_BOOT = 1000
_CHUNK = 100  # bootstrap resamples at a time: (chunk, N) weights stay small


def _inner_split(y: np.ndarray, groups, strata, train: np.ndarray, fractions, seed: int):
    """(fit rows, validation rows) of a training fold, in the configured train : validation proportion.

    Grouped and stratified as the shipped model's split is (by source class where the subjects allow it).
    """
    f_tr, f_va = float(fractions[0]), float(fractions[1])
    fr = (f_tr / (f_tr + f_va), f_va / (f_tr + f_va), 0.0)
    g = None if groups is None else groups[train]
    protocol = "image" if groups is None else "subject"
    for labels in ([strata[train]] if strata is not None else []) + [y[train]]:
        try:
            fit_i, val_i, _ = split_train_val_test(labels, g, protocol=protocol, fractions=fr, seed=seed)
        except DataError:
            continue
        if len(np.unique(y[train][val_i])) == 2:
            return train[fit_i], train[val_i]
    raise DataError("a training fold cannot be split into fit and validation rows with both classes")


def _fold_scores(feats, y, groups, strata, config: TrainConfig, k: int, repeats: int, backbones,
                 progress: Progress | None, cancel: Callable[[], bool] | None, domain_columns=None):
    """(R, N) calibrated probabilities, thresholds and bands of the fold that held each image out, and facts."""
    n = len(y)
    P, T, B = (np.full((repeats, n), np.nan) for _ in range(3))
    facts: dict[str, Any] = {"fits": 0, "fits_failed": 0, "calibrated_on": {}, "inner_folds": []}
    protocol = "image" if groups is None else "subject"
    total = repeats * k
    for r in range(repeats):
        seed = int(config.seed) + r
        for j, (tr, te) in enumerate(cv_folds(y, groups, protocol=protocol, n_splits=k, seed=seed,
                                              strata=strata)):
            if cancel is not None and cancel():
                raise Cancelled("Training was cancelled; nothing was written.")
            if progress is not None:
                progress((r * k + j) / total, f"Cross-validation: repeat {r + 1}/{repeats}, fold {j + 1}/{k}")
            try:
                fit_i, val_i = _inner_split(y, groups, strata, np.asarray(tr), config.fractions, seed)
                model = fit_model(feats, y, fit_i, val_i, config, backbones=backbones, groups=groups,
                                  domain_columns=domain_columns)
            except (AllguiError, ValueError):
                facts["fits_failed"] += 1  # its images stay undecided in this repeat; the result says how many
                continue
            det = model.predict_details(subset(feats, te))
            P[r, te] = det["calibrated"]
            T[r, te] = model.threshold_
            # an image outside the fold model's training domain is never decided (inference.results)
            outside = det["novelty"] > 1 if "novelty" in det else np.zeros(len(te), bool)
            B[r, te] = np.where(outside, np.inf, getattr(model, "band_", DEFAULT_UNCERTAINTY_BAND))
            facts["fits"] += 1
            on = getattr(model, "calibrated_on_", "validation")
            facts["calibrated_on"][on] = facts["calibrated_on"].get(on, 0) + 1
            cross = (getattr(model, "inner_folds_", None) or {}).get("cross_fit")
            if cross is not None:
                facts["inner_folds"].append(cross["realised"])
    return P, T, B, facts


def _rates(y: np.ndarray, P: np.ndarray, T: np.ndarray, B: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of one repeat's out-of-fold decisions under (b, N) image weights ``w`` -> (b,)."""
    call = P >= T
    decided = np.abs(P - T) >= B  # inference.results.decide: inside the band is "uncertain, review"
    pos, neg = (y == 1).astype(float), (y == 0).astype(float)

    def share(num, den):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w * num).sum(1) / (w * den).sum(1)

    sens, spec = share(call * pos, pos), share(~call * neg, neg)
    return {"auc": weighted_aucs(y, P, w), "sensitivity": sens, "specificity": spec,
            "balanced_accuracy": (sens + spec) / 2, "coverage": share(decided, np.ones_like(pos)),
            "accuracy_decided": share(decided * (call == (y == 1)), decided.astype(float))}


def _summary(y, units, P, T, B, n_boot: int, seed: int, n_groups, unit: str) -> dict[str, Any]:
    """Mean over repeats of every metric, its sd over repeats, and the subject-resampled interval."""
    R = P.shape[0]
    point = [_rates(y, P[r], T[r], B[r], np.ones((1, len(y)))) for r in range(R)]
    out: dict[str, Any] = {}
    boots: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, n_boot, _CHUNK):
        w = subject_bootstrap_weights(y, units, min(_CHUNK, n_boot - start), seed + start)
        reps = [_rates(y, P[r], T[r], B[r], w) for r in range(R)]
        for m in METRICS:
            boots[m].append(np.mean([x[m] for x in reps], axis=0))
    for m in METRICS:
        per_repeat = np.array([float(p[m][0]) for p in point])
        b = np.concatenate(boots[m])
        b = b[np.isfinite(b)]
        lo, hi = (np.percentile(b, [2.5, 97.5]) if b.size else (None, None))
        mean = float(np.nanmean(per_repeat)) if np.isfinite(per_repeat).any() else None
        out[m] = {"mean": mean, **interval(lo, hi, n_groups, unit),
                  "sd_repeats": float(np.nanstd(per_repeat, ddof=1)) if R > 1 and mean is not None else None,
                  "per_repeat": [None if not np.isfinite(v) else float(v) for v in per_repeat]}
    return out


def cv_headline(feats: dict[str, np.ndarray], y, groups, config: TrainConfig, *, backbones=None,
                strata=None, group_kind: str = "subject", progress: Progress | None = None, domain_columns=None,
                cancel: Callable[[], bool] | None = None, n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """Repeated subject-grouped cross-validation of one model's pipeline, JSON-ready; None when turned off.

    Parameters
    ----------
    feats : dict
        Feature block -> (N, D) array of all the model's images (training, validation and test rows).
    y, groups : array of shape (N,)
        0/1 labels and subject (or image block) ids; without ids the folds are folds of images
        (``grouped`` False).
    config : TrainConfig
        The settings the shipped model was fitted with (``cv_repeats``, ``cv_folds``, ``fractions``, seed
        and the classical stage's).
    backbones : tuple of str, optional
        The feature blocks the shipped model uses.
    strata : array of shape (N,), optional
        Source classes (``"label:class"``) to stratify folds and inner splits by, where subjects allow.
    domain_columns : dict, optional
        The domain check's input checks, as the shipped model has them (an image outside a fold model's
        domain is not decided).
    group_kind : str
        ``"subject"`` or ``"image block"``: what a group is, in the result's words.

    Returns
    -------
    dict or None
        ``{"source": "cross-validation", "grouped", "group_kind", "repeats", "folds", "folds_requested",
        "n_groups": {"0", "1"}, "n_images": {"0", "1"}, "auc", "sensitivity", "specificity",
        "balanced_accuracy", "coverage", "accuracy_decided", "fits", "fits_failed", "calibrated_on",
        "inner_folds", "notes"}``; each metric ``{"mean", "ci", "ci_note", "sd_repeats", "per_repeat"}``.
        Where no fold can be fitted (e.g. 2 subjects of a class: a training fold holds one, too few for its
        own validation split) the metrics are absent and ``notes`` says why.
    """
    repeats, requested = int(config.cv_repeats), int(config.cv_folds)
    if repeats < 1:
        return None
    y = np.asarray(y).astype(int)
    grouped = groups is not None
    g = np.asarray(groups, dtype=object) if grouped else None
    units = g if grouped else np.arange(len(y)).astype(str)
    kind = group_kind if grouped else "image"
    n_groups = group_counts(y, units)
    out: dict[str, Any] = {"source": "cross-validation", "grouped": grouped, "group_kind": kind,
                           "repeats": repeats, "folds_requested": requested, "n_groups": n_groups,
                           "n_images": {str(c): int(np.sum(y == c)) for c in (0, 1)}, "notes": []}
    k = min(requested, max_folds(y, g, protocol="subject" if grouped else "image"))
    out["folds"] = int(k) if k >= 2 else 0
    if k < 2:
        out["notes"].append(f"No cross-validation: {n_groups['0']} normal and {n_groups['1']} ALL "
                            f"{kind}s, and every fold needs both classes.")
        return out
    if k < requested:
        out["notes"].append(f"{requested} folds requested, {k} used: the smaller class has {k} {kind}s.")
    if not grouped:
        out["notes"].append("No subject ids: folds and intervals are of images, which flatters the figures "
                            "when several images come from one subject.")
    if config.stain != "none":
        out["notes"].append("The stain reference is the shipped model's (fitted on its training split), "
                            "not refitted in each fold.")
    s = None if strata is None else np.asarray(strata).astype(str)
    P, T, B, facts = _fold_scores(feats, y, g, s, config, k, repeats, backbones, progress, cancel, domain_columns)
    out.update(fits=facts["fits"], fits_failed=facts["fits_failed"], calibrated_on=facts["calibrated_on"],
               inner_folds=({"min": int(min(facts["inner_folds"])), "max": int(max(facts["inner_folds"]))}
                            if facts["inner_folds"] else None))
    ok = np.isfinite(P).all(axis=0)
    if facts["fits_failed"]:
        out["notes"].append(f"{facts['fits_failed']} of {repeats * k} fold fits failed (too few subjects for "
                            f"an inner validation split); {int((~ok).sum())} images left out of the figures.")
    if not ok.any() or len(np.unique(y[ok])) < 2:
        out["notes"].append("No fold could be fitted.")
        return out
    out.update(_summary(y[ok], units[ok], P[:, ok], T[:, ok], B[:, ok], n_boot, int(config.seed),
                        n_groups, kind))
    out["n_boot"] = int(n_boot)
    return out
