"""The evaluation itself, on pre-extracted deep features.

Held-out test metrics, 5-fold cross-validation with significance tests, backbone / PCA ablation, both split
protocols.

Everything returned is a JSON-ready dict of plain Python numbers and lists (see
:func:`evaluate_features`). Models are fitted through :func:`trainer.classical.model.fit_model`;
splits come from :mod:`trainer.io.data` so evaluation and training split identically.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from trainer.classical.model import fit_model, subset
from trainer.classical.scoring import ENSEMBLE, ENSEMBLE_CAL, score_report
from trainer.config import PROTOCOLS, TrainConfig
from trainer.io.samples import sample_groups
from trainer.io.splits import cv_folds, max_folds, one_sided_strata, source_strata, split_train_val_test, stratum_name
from trainer.stats import metrics as M
from trainer.stats.significance import compare_folds, holm
from trainer.training.pipeline import feature_blocks, split_dataset
from trainer.util.errors import AllguiError, Cancelled, DataError
from trainer.util.progress import CancelCheck, Progress, check_cancel

log = logging.getLogger(__name__)


PROTOCOL_LABELS = {"image": "image-level random split (paper)",
                   "subject": "subject-level grouped split"}
CV_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
MAX_CURVE_POINTS = 400


class _Steps:
    """Progress over a known number of model fits, with cancellation."""

    def __init__(self, total: int, progress: Progress | None, cancel: CancelCheck | None,
                 start: float = 0.0, stop: float = 1.0):
        self.total, self.done = max(1, total), 0
        self.progress, self.cancel, self.start, self.stop = progress, cancel, start, stop

    def step(self, message: str) -> None:
        check_cancel(self.cancel)
        if self.progress is not None:
            frac = self.start + (self.stop - self.start) * min(1.0, self.done / self.total)
            self.progress(frac, message)
        self.done += 1


# --------------------------------------------------------------------------- helpers
def _thin(*arrays: np.ndarray, n: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``n`` points of parallel curve arrays (always first and last)."""
    k = len(arrays[0])
    keep = np.unique(np.linspace(0, k - 1, n).round().astype(int)) if k > n else np.arange(k)
    return [np.asarray(a, dtype=float)[keep].tolist() for a in arrays]


def _curves(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    fpr, tpr, _ = M.roc(y, s)
    prec, rec, _ = M.pr_curve(y, s)
    fpr, tpr = _thin(fpr, tpr)
    prec, rec = _thin(prec, rec)
    return {"roc": {"fpr": fpr, "tpr": tpr}, "pr": {"precision": prec, "recall": rec}}


def _reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    c = M.reliability_curve(y, p, n_bins)
    return {"brier": M.brier(y, p), "ece": M.expected_calibration_error(y, p, n_bins),
            "curve": {k: np.asarray(v).tolist() for k, v in c.items()}}


def _both(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def _group_leak(groups: np.ndarray | None, train: np.ndarray, test: np.ndarray) -> float | None:
    """Fraction of test samples whose group also occurs in the training rows."""
    if groups is None or len(test) == 0:
        return None
    seen = set(groups[train].tolist())
    return float(np.mean([g in seen for g in groups[test]]))


def _score_rows(model, det: dict[str, np.ndarray], y: np.ndarray, n_boot: int, seed: int,
                curves: bool, groups: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics per classifier and for the two ensemble read-outs; optionally their curves.

    ``groups`` (len(y),) subject ids make every AUC interval a group bootstrap.
    """
    rows = score_report(model, det, y, n_boot, seed, groups)
    rows[ENSEMBLE]["rule"] = "weighted hard vote > 0.5 (eq. 8); ranking metrics on the soft vote"
    rows[ENSEMBLE_CAL]["rule"] = "calibrated probability >= validation Youden threshold"
    curve: dict[str, Any] = {}
    if curves and _both(y):
        for i, name in enumerate(model.classifier_names_):
            curve[name] = _curves(y, det["probabilities"][:, i])
        curve[ENSEMBLE] = _curves(y, det["raw"])
    return rows, curve


# --------------------------------------------------------------------------- held-out split
def evaluate_holdout(feats: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None,
                     split: tuple[np.ndarray, np.ndarray, np.ndarray], config: TrainConfig,
                     n_boot: int = 2000, backbones: Sequence[str] | None = None,
                     pca: bool | None = None, curves: bool = True) -> dict[str, Any]:
    """Fit on train (+ validation for weights, calibration, threshold); score the test rows.

    Returns ``{"split", "classifier_names", "weights", "val_accuracy", "calibration_method",
    "threshold", "n_components", "rows", "calibration", "auc_tests", "curves"}``. ``rows`` maps
    each classifier and ``ensemble`` / ``ensemble_calibrated`` to :func:`metrics.binary_report`.
    With ``groups`` (N,) every interval and the paired AUC tests resample test subjects (group
    bootstrap); ``auc_tests`` carry Holm-adjusted p-values (``p_value_holm``) over the classifiers.
    """
    train, val, test = (np.asarray(a, dtype=int) for a in split)
    # subject ids reach the fit in every protocol: the inner folds (cross-fit calibration, the SVM's
    # Platt scaling) are grouped as in the shipped model, whatever the outer split
    model = fit_model(feats, y, train, val, config, backbones=backbones, pca=pca, groups=groups)
    yt = y[test]
    gt = None if groups is None else np.asarray(groups, dtype=object)[test]
    det = model.predict_details(subset(feats, test))
    rows, curve = _score_rows(model, det, yt, n_boot, config.seed, curves, gt)
    out: dict[str, Any] = {
        "split": {"n_train": int(train.size), "n_val": int(val.size), "n_test": int(test.size),
                  "n_test_positive": int(yt.sum()),
                  "test_in_train_groups": _group_leak(groups, train, test)},
        "classifier_names": list(model.classifier_names_),
        "weights": dict(zip(model.classifier_names_, np.asarray(det["weights"], float).tolist())),
        "val_accuracy": {k: float(v) for k, v in model.ensemble_.val_accuracy_.items()},
        "calibration_method": str(getattr(model.calibrator_, "method_", config.calibration)),
        "threshold": float(model.threshold_),
        "n_components": int(getattr(model.fusion_, "n_components_", 0)),
        "rows": rows, "calibration": None, "auc_tests": {}, "curves": curve,
    }
    if _both(yt):
        out["calibration"] = {"raw": _reliability(yt, det["raw"]),
                              "calibrated": _reliability(yt, det["calibrated"])}
        for i, name in enumerate(model.classifier_names_):
            out["auc_tests"][name] = M.bootstrap_auc_diff_test(
                yt, det["raw"], det["probabilities"][:, i], n=n_boot, seed=config.seed, groups=gt)
        _holm_into(list(out["auc_tests"].values()), "p_value")
    return out


def _holm_into(tests: list[dict[str, Any]], key: str) -> None:
    """Add ``<key>_holm``: Holm's adjustment of ``t[key]`` over the family ``tests``."""
    for t, adj in zip(tests, holm([t.get(key) for t in tests])):
        t[f"{key}_holm"] = adj


# --------------------------------------------------------------------------- cross-validation
def _inner_split(samples, train: np.ndarray, protocol: str, fractions, seed: int):
    """Split a CV training fold into (fit rows, validation rows) in the configured train .

    Validation proportion, with the same protocol (groups never straddle), stratified by label x source
    class where the groups allow it (as the held-out split is).
    """
    f_tr, f_va = float(fractions[0]), float(fractions[1])
    part = [samples[i] for i in train]
    fit_i, val_i, _ = split_train_val_test(part, protocol=protocol,
                                           fractions=(f_tr / (f_tr + f_va), f_va / (f_tr + f_va), 0.0),
                                           seed=seed, strata=source_strata(part))
    return train[fit_i], train[val_i]


def _cell_list(cells: list[str]) -> str:
    return ", ".join(stratum_name(c) for c in cells)


def split_warnings(strata: np.ndarray, what: str, fit: np.ndarray, val: np.ndarray,
                   test: np.ndarray) -> list[str]:
    """Sentences naming each source x class cell that falls on one side of a split.

    Cells of ``strata`` entirely on one side of (fit + validation) vs test, or of fit vs validation.
    """
    out = []
    outer = one_sided_strata(strata, np.concatenate([fit, val]), test)
    if outer["only_b"]:
        out.append(f"{what}: all {_cell_list(outer['only_b'])} images are in the test part; the "
                   "training rows have none of them.")
    if outer["only_a"]:
        out.append(f"{what}: no {_cell_list(outer['only_a'])} image in the test part.")
    inner = one_sided_strata(strata, fit, val)
    if inner["only_b"]:
        out.append(f"{what}: all {_cell_list(inner['only_b'])} images are in the validation rows, "
                   "none in the rows the classifiers are fitted on; validation may learn the "
                   "image source.")
    if inner["only_a"]:
        out.append(f"{what}: no {_cell_list(inner['only_a'])} image in the validation rows "
                   "(ensemble weights, calibration and threshold never see them).")
    return out


def cv_plan(samples, protocol: str, n_folds: int, config: TrainConfig
            ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """The CV folds and their inner splits: ``([(fit, val, test) rows per fold], warnings)``.

    Folds and inner splits are stratified by label x source class (``"label:class_name"``) where
    the groups allow it, else by label. ``warnings`` names every source x class cell that falls
    entirely on one side: all in a test fold (that fold trains on none of it), absent from a test
    fold, or, within a training fold, all in the fit or all in the validation rows.
    """
    strata = source_strata(samples)
    folds = cv_folds(samples, n_splits=n_folds, protocol=protocol, seed=config.seed, strata=strata)
    plan, warnings = [], []
    for tr, te in folds:
        tr, te = np.asarray(tr, dtype=int), np.asarray(te, dtype=int)
        fit_i, val_i = _inner_split(samples, tr, protocol, config.fractions, config.seed)
        plan.append((fit_i, val_i, te))
    if strata is None:
        return plan, warnings
    for k, (fit_i, val_i, te) in enumerate(plan, start=1):
        warnings += split_warnings(strata, f"{protocol} CV fold {k}", fit_i, val_i, te)
    for w in warnings:
        log.warning(w)
    return plan, warnings


def evaluate_cv(feats, samples, y, protocol: str, config: TrainConfig, n_folds: int = 5,
                steps: _Steps | None = None, backbones: Sequence[str] | None = None) -> dict[str, Any]:
    """``n_folds``-fold CV: per-fold metrics, mean +- sd, ensemble vs each classifier tests.

    Within each training fold a grouped/stratified inner split provides the validation rows
    the ensemble weights, calibrator and threshold need (see :func:`cv_plan`; its warnings are
    returned as ``warnings``). Tests (paired t, Wilcoxon, Nadeau-Bengio) compare the ensemble's
    per-fold accuracy and AUC with each classifier's; each test's p-values are also given
    Holm-adjusted (``p_value_holm``) over the family of classifiers x metrics.
    """
    note = ""
    feasible = max_folds(samples, protocol=protocol)
    if feasible < n_folds:
        unit = "subjects/groups" if protocol == "subject" else "images"
        note = (f"{n_folds} folds requested, {feasible} used: the smaller class has only "
                f"{feasible} {unit}, and every test fold needs both classes.")
        n_folds = feasible
    folds, warnings = cv_plan(samples, protocol, n_folds, config)
    groups = sample_groups(samples)
    per_fold = []
    names: list[str] = []
    for k, (fit_i, val_i, te) in enumerate(folds):
        if steps:
            steps.step(f"{protocol} split: cross-validation fold {k + 1}/{len(folds)}")
        tr = np.concatenate([fit_i, val_i])
        model = fit_model(feats, y, fit_i, val_i, config, backbones=backbones, groups=groups)
        names = list(model.classifier_names_)
        det = model.predict_details(subset(feats, te))
        rows, _ = _score_rows(model, det, y[te], 0, config.seed, curves=False)
        per_fold.append({"fold": k + 1, "n_train": int(tr.size), "n_test": int(te.size),
                         "n_test_positive": int(y[te].sum()),
                         "metrics": {n: {m: r[m] for m in CV_METRICS} for n, r in rows.items()}})
    models = names + [ENSEMBLE, ENSEMBLE_CAL]
    summary = {}
    for n in models:
        summary[n] = {}
        for m in CV_METRICS:
            vals = np.array([f["metrics"][n][m] for f in per_fold if f["metrics"][n][m] is not None],
                            dtype=float)
            summary[n][m] = {"mean": float(vals.mean()) if vals.size else None,
                             "sd": float(vals.std(ddof=1)) if vals.size > 1 else None,
                             "n": int(vals.size)}
    n_train = float(np.mean([f["n_train"] for f in per_fold]))
    n_test = float(np.mean([f["n_test"] for f in per_fold]))
    tests: dict[str, Any] = {}
    for m in ("accuracy", "auc"):
        tests[m] = {}
        for n in names:
            a = [f["metrics"][ENSEMBLE][m] for f in per_fold]
            b = [f["metrics"][n][m] for f in per_fold]
            if any(v is None for v in a + b):
                continue
            tests[m][n] = compare_folds(a, b, n_train, n_test)
    family = [t for m in tests for t in tests[m].values()]
    for kind in ("t_test", "wilcoxon", "nadeau_bengio"):
        _holm_into([t[kind] for t in family], "p_value")
    return {"n_folds": len(folds), "note": note, "classifier_names": names, "folds": per_fold,
            "summary": summary, "tests": tests, "n_train_mean": n_train, "n_test_mean": n_test,
            "n_comparisons": len(family), "warnings": warnings}


# --------------------------------------------------------------------------- ablation
def evaluate_ablation(feats, y, split, config: TrainConfig, n_boot: int = 2000,
                      steps: _Steps | None = None, groups: np.ndarray | None = None
                      ) -> list[dict[str, Any]]:
    """Each single backbone and the fusion, with PCA on and off, on one identical split (``groups``.

    Subject ids for group-bootstrap intervals).
    """
    avail = [b for b in config.backbones if b in feats]
    sets = [(b,) for b in avail] + ([tuple(avail)] if len(avail) > 1 else [])
    out = []
    for bs in sets:
        for pca in (True, False):
            if steps:
                steps.step(f"ablation: {' + '.join(bs)}, PCA {'on' if pca else 'off'}")
            r = evaluate_holdout(feats, y, groups, split, config, n_boot, backbones=bs, pca=pca,
                                 curves=False)
            out.append({"backbones": list(bs), "pca": pca, "n_components": r["n_components"],
                        "feature_dim": int(sum(np.asarray(feats[b]).shape[1] for b in bs)),
                        "rows": r["rows"]})
    return out


# --------------------------------------------------------------------------- everything
def _primary(config: TrainConfig, has_groups: bool) -> str:
    if config.split in PROTOCOLS:
        return config.split
    return "subject" if has_groups else "image"


class _Data(NamedTuple):
    """One dataset's features and what every protocol reads of it."""

    feats: dict[str, np.ndarray]      # block -> (N, D), rows aligned with samples
    samples: Sequence
    y: np.ndarray                     # (N,) 0/1
    groups: np.ndarray | None         # (N,) subject/group ids
    strata: np.ndarray | None         # (N,) source strata (source_strata)
    backbones: Sequence[str]          # the feature blocks the model uses


def evaluate_features(feats: dict[str, np.ndarray], samples: Sequence, config: TrainConfig,
                      protocols: Sequence[str] = PROTOCOLS, n_boot: int = 2000, n_folds: int = 5,
                      ablation: bool = True, progress: Progress | None = None,
                      cancel: CancelCheck | None = None, splits: dict | None = None,
                      backbones: Sequence[str] | None = None) -> dict[str, Any]:
    """Full evaluation of one dataset's features.

    ``backbones``: the feature blocks the model uses (default: every block of ``feats`` that the config
    names, the nucleus block included), as the shipped model does; ``splits``: protocol -> (train,
    validation, test) rows to use instead of splitting ``samples`` afresh (e.g. the training run's split
    restricted to one image kind).

    ``feats``: backbone name -> (N, D) array, rows aligned with ``samples`` (objects with
    ``label`` 0/1 and ``group``). Returns ``{"meta", "protocols": {protocol: {"available",
    "reason", "holdout", "cv"}}, "ablation": {"protocol", "rows"}}``; the subject protocol is
    reported unavailable (with the reason) when samples carry no groups. ``"warnings"`` lists
    source x class cells that fall entirely on one side of a split (see :func:`cv_plan`) and test
    sets with fewer than 3 subjects of a class; each protocol entry has its own ``"warnings"``.
    With subject/group ids, every interval and paired AUC test is a group bootstrap.
    """
    data = _checked_data(feats, samples, config, backbones)
    primary = _primary(config, data.groups is not None)
    protocols = [p for p in protocols if p in PROTOCOLS]
    if primary not in protocols:
        protocols = [primary] + protocols
    steps = _Steps(len(protocols) * (1 + n_folds) + (_ablation_fits(config, feats) if ablation else 0),
                   progress, cancel)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"protocols": {}, "ablation": None}
    timings: dict[str, float] = {}
    primary_split = None
    for proto in protocols:
        if proto == "subject" and data.groups is None:
            res["protocols"][proto] = _entry(proto, available=False, reason="the images carry no subject/group ids")
            continue
        t = time.perf_counter()
        res["protocols"][proto], held_out = _evaluate_protocol(proto, data, config, n_boot, n_folds, steps,
                                                               (splits or {}).get(proto))
        timings[proto] = time.perf_counter() - t
        if proto == primary and held_out is not None:
            primary_split = held_out
    if ablation and primary_split is not None:
        t = time.perf_counter()
        res["ablation"] = {"protocol": primary,
                           "rows": evaluate_ablation(feats, data.y, primary_split, config, n_boot, steps,
                                                     data.groups)}
        timings["ablation"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    res["warnings"] = _all_warnings(res["protocols"])
    res["meta"] = {"n": int(data.y.size), "n_positive": int(data.y.sum()),
                   "n_groups": len(set(data.groups.tolist())) if data.groups is not None else 0,
                   "primary_protocol": primary, "n_boot": int(n_boot), "n_folds": int(n_folds),
                   "seed": int(config.seed), "backbones": list(data.backbones),
                   "feature_dims": {b: int(np.asarray(f).shape[1]) for b, f in feats.items()},
                   "config": config.to_dict(), "timings_s": timings}
    if progress is not None:
        progress(1.0, "evaluation finished")
    return res


def _checked_data(feats: dict[str, np.ndarray], samples: Sequence, config: TrainConfig, backbones) -> _Data:
    """:class:`_Data` of ``feats`` and ``samples``; DataError for one class or rows that do not match."""
    y = np.array([int(s.label) for s in samples], dtype=int)
    groups = sample_groups(samples)
    if not _both(y):
        raise DataError("Evaluation needs images of both classes (normal and ALL).")
    for b, f in feats.items():
        if len(f) != len(samples):
            raise DataError(f"{b} features have {len(f)} rows for {len(samples)} images.")
    if backbones is None:
        backbones = [b for b in feature_blocks(config) if b in feats] or list(feats)
    return _Data(feats, samples, y, groups, source_strata(samples), backbones)


def _ablation_fits(config: TrainConfig, feats: dict[str, np.ndarray]) -> int:
    """How many model fits :func:`evaluate_ablation` makes (for the progress steps)."""
    nb = len([b for b in config.backbones if b in feats])
    return 2 * (nb + (1 if nb > 1 else 0))


def _evaluate_protocol(proto: str, data: _Data, config: TrainConfig, n_boot: int, n_folds: int, steps: _Steps,
                       split=None) -> tuple[dict[str, Any], tuple | None]:
    """(protocol ``proto``'s entry of the results, its held-out split or None when no held-out test was scored).

    ``split``: the (train, validation, test) rows to use; None splits as `train` does.
    """
    entry = _entry(proto)
    held_out = None
    try:
        steps.step(f"{proto} split: held-out test set")
        split = split or split_dataset(data.samples, proto, config)  # as `train` splits
        if data.strata is not None:
            for w in split_warnings(data.strata, f"{proto} held-out split", *split):
                log.warning(w)
                entry["warnings"].append(w)
        entry["holdout"] = evaluate_holdout(data.feats, data.y, data.groups, split, config, n_boot,
                                            backbones=data.backbones)
        held_out = split
        entry["cv"] = evaluate_cv(data.feats, data.samples, data.y, proto, config, n_folds, steps,
                                  backbones=data.backbones)
        entry["warnings"] += entry["cv"]["warnings"]
    except Cancelled:
        raise
    except (AllguiError, ValueError) as exc:
        entry.update(available=entry["holdout"] is not None, reason=str(exc))
    return entry, held_out


def _entry(proto: str, **kw) -> dict[str, Any]:
    """A protocol's entry of the results before it is evaluated (``kw`` overrides)."""
    return {"label": PROTOCOL_LABELS[proto], "available": True, "reason": "", "holdout": None, "cv": None,
            "warnings": [], **kw}


def _all_warnings(protocols: dict[str, dict[str, Any]]) -> list[str]:
    """Every protocol's warnings, then each held-out test set's interval warnings."""
    out = [w for e in protocols.values() for w in e["warnings"]]
    for p, e in protocols.items():
        h = e.get("holdout")
        if h:
            out += sorted({f"{p} held-out test set: {r['ci_warning']}" for r in h["rows"].values()
                           if r.get("ci_warning")})
    return out
