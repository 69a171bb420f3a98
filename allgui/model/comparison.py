"""The model in use beside a newly trained one, free of Qt: the figures a pathologist weighs before switching.

For each image kind (single-cell crops, smear fields) and each model: AUC, sensitivity, specificity,
decided accuracy and coverage, with image and subject counts, from three sources:

``test``   each model's held-out test split, as its model card gives it (AUC with its interval,
           sensitivity and specificity at the model's threshold), decided accuracy and coverage from
           the test scores its bundle keeps, at the model's threshold and uncertainty band;
``cv``     the card's cross-validated headline by subject (``card["models"][key]["cv"]``) where the
           model has one;
``cases``  reviewed case images that neither model was trained on, the reviewer's decision as the
           truth, both models run on the same images (:func:`case_figures`, in the training process).

:func:`compare` lines the two up and says, as warnings, where the new model is worse or lacks a model
for an image kind the current one has. :func:`comparison_job` gathers everything in the child process
that trained the new model.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from allgui.model.session import fitted_band
from trainer.util.errors import ImageReadError

KINDS = ("single_cell", "field")
KIND_LABELS = {"single_cell": "single-cell crops", "field": "smear fields", "any": "all images"}
SOURCES = {"test": "held-out test split", "cv": "cross-validated by subject", "cases": "reviewed case images"}
#: (key, label, format); a figure is worse when it is lower as shown (so noise below the shown digits is not)
METRICS = (("auc", "AUC", "{:.3f}"), ("sensitivity", "sensitivity", "{:.1%}"),
           ("specificity", "specificity", "{:.1%}"), ("accuracy_decided", "decided accuracy", "{:.1%}"),
           ("coverage", "coverage", "{:.1%}"))


def fmt(key: str, value: float | None) -> str:
    """A figure as the comparison shows it ("\u2014" where there is none; a count as it is)."""
    if value is None:
        return "\u2014"
    return next((f for k, _, f in METRICS if k == key), "{}").format(value)


def is_worse(key: str, current: float | None, new: float | None) -> bool:
    """Whether the new model's figure is lower than the current one's, as both are shown."""
    return current is not None and new is not None and fmt(key, new) != fmt(key, current) and new < current


def band_figures(y, p, threshold: float, band: float, groups=None) -> dict[str, Any]:
    """The five figures of scores ``p`` (NaN: not assessable) against labels ``y`` at ``threshold`` +- ``band``.

    AUC needs both classes, sensitivity ALL blasts, specificity normal cells (else None). Decided: outside
    the band (as the app decides); coverage = decided / all; decided accuracy = right among the decided.
    """
    # scikit-learn (a second to import) only where figures are made
    from trainer.stats import metrics as M

    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    ok = np.isfinite(p)
    called = np.where(ok, p >= threshold, False)
    decided = ok & (np.abs(np.where(ok, p, threshold) - threshold) >= band)
    pos, neg = ok & (y == 1), ok & (y == 0)
    out: dict[str, Any] = {"n": int(y.size), "n_all": int(np.sum(y == 1)), "n_normal": int(np.sum(y == 0)),
                           "n_subjects": None if groups is None else len(set(np.asarray(groups).tolist())),
                           "auc": M.auc(y[ok], p[ok]) if pos.any() and neg.any() else None, "auc_ci": None,
                           "sensitivity": float(called[pos].mean()) if pos.any() else None,
                           "specificity": float(1 - called[neg].mean()) if neg.any() else None,
                           "coverage": float(decided.mean()) if y.size else None,
                           "accuracy_decided": (float(np.mean(called[decided] == (y[decided] == 1)))
                                                if decided.any() else None)}
    return out


def _value(x: Any) -> tuple[float | None, list | None]:
    """(value, interval) of a card figure: a number, or ``{"mean", "ci"}``."""
    if isinstance(x, bool):
        return None, None
    if isinstance(x, (int, float)):
        return float(x), None
    if isinstance(x, dict):
        v = x.get("mean", x.get("value"))
        ci = x.get("ci")
        return (float(v) if isinstance(v, (int, float)) else None,
                list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None)
    return None, None


def cv_figures(section: dict[str, Any]) -> dict[str, Any] | None:
    """The cross-validated headline of a card's model section, None where it has none."""
    cv = section.get("cv")
    if not isinstance(cv, dict):
        return None
    out: dict[str, Any] = {k: _value(cv.get(k))[0] for k, _, _ in METRICS}
    out["auc_ci"] = _value(cv.get("auc"))[1]
    groups = cv.get("n_groups")
    out["n_subjects"] = int(groups) if isinstance(groups, (int, float)) else None
    out["n"] = int(cv["n"]) if isinstance(cv.get("n"), (int, float)) else None
    return out if any(out[k] is not None for k, _, _ in METRICS) else None


def test_figures(section: dict[str, Any], y, p, threshold: float, band: float) -> dict[str, Any] | None:
    """Held-out test figures of one model: the card's, plus decided accuracy and coverage from its scores."""
    ens = ((section.get("metrics") or {}).get("test") or {}).get("ensemble_calibrated") or {}
    arrays = (band_figures(y, p, threshold, band) if y is not None and p is not None and len(y) else None)
    if not ens and arrays is None:
        return None
    out = dict(arrays or {k: None for k, _, _ in METRICS})
    for key in ("auc", "sensitivity", "specificity"):   # as the model card says them
        if isinstance(ens.get(key), (int, float)):
            out[key] = float(ens[key])
    ci = ens.get("auc_ci")
    out["auc_ci"] = list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None
    out["n"] = int(ens["n"]) if isinstance(ens.get("n"), (int, float)) else out.get("n")
    groups = ((section.get("data") or {}).get("n_groups") or {}).get("test")
    out["n_subjects"] = int(groups) if isinstance(groups, (int, float)) else None
    return out


def model_facts(bundle, label: str) -> dict[str, Any]:
    """What the comparison needs of one loaded bundle (:class:`trainer.inference.bundle.ModelBundle`)."""
    # the bundle reader (skops, safetensors) only in the training process, never at the window's start-up
    from trainer.inference.bundle import model_summary

    card = dict(bundle.card or {})
    models = bundle.model.models
    sections = card.get("models") or {"any": {"name": "model", "metrics": card.get("metrics") or {}}}
    keys = {}
    for key in models:
        threshold = model_summary(models, key)[0]
        band = fitted_band(models[key])
        sec = sections.get(key) or {}
        keys[key] = {"name": sec.get("name", key), "threshold": threshold, "band": band,
                     "test": test_figures(sec, bundle.arrays.get(f"{key}/test/y"),
                                          bundle.arrays.get(f"{key}/test/calibrated"), threshold, band),
                     "cv": cv_figures(sec)}
    return {"label": label, "name": str(card.get("name") or Path(str(bundle.path or label)).stem),
            "keys": keys, "split": _split_identity(card)}


def _split_identity(card: dict[str, Any]) -> list | None:
    """What fixes a model's held-out subjects: its data, split protocol, seed and fractions."""
    fp = (card.get("trained_on") or {}).get("fingerprint")
    split = card.get("split") or {}
    if not fp:
        return None
    return [fp, split.get("protocol"), split.get("seed"), split.get("fractions")]


def key_for(facts: dict[str, Any], kind: str) -> str | None:
    """The model key that judges ``kind`` in a model with a model of its own for it (None: it has none)."""
    keys = facts["keys"]
    return kind if kind in keys else "any" if "any" in keys else None


# ---- reviewed case images ------------------------------------------------------------------------
def trained_on_image(card: dict[str, Any], case_id: str, sha256: str, path: str) -> bool:
    """Whether the model of ``card`` may have learnt from a reviewed image of case ``case_id``.

    It did where it was trained with that case's reviews and the image was not in its held-out test
    split (``trained_on.reviewed.test_images``; a card without that list counts every such image), or
    where the image lies in its training data folder.
    """
    trained = card.get("trained_on") or {}
    reviewed = trained.get("reviewed") or {}
    used = {c.get("case_id") for c in reviewed.get("cases") or [] if isinstance(c, dict) and c.get("n_used")}
    if case_id in used and sha256 not in set(reviewed.get("test_images") or []):
        return True
    data = trained.get("data")
    if isinstance(data, str) and data and Path(data).is_dir():
        root = os.path.abspath(data)
        return os.path.commonpath([root, os.path.abspath(path)]) == root
    return False


def unseen_case_images(cases: list[str], cards: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Reviewed images (ALL blast / normal) of ``cases`` that none of the models of ``cards`` learnt from.

    Returns the images (``path``, ``label`` 1 = ALL blast, ``group``: subject or case) and how many
    reviewed images were left out because a model was trained on them.
    """
    # the training data readers only in the training process, never at the window's start-up
    from trainer.cases import file_sha256
    from trainer.cases.corrections import case_dataset

    images, seen, left_out = [], set(), 0
    for case in cases:
        dataset, info = case_dataset([case])
        case_id = info[0]["case_id"] if info else ""
        for sample in dataset.samples:
            sha = file_sha256(sample.path)
            if sha in seen:
                continue
            seen.add(sha)
            if any(trained_on_image(card, case_id, sha, str(sample.path)) for card in cards):
                left_out += 1
                continue
            images.append({"path": str(sample.path), "label": int(sample.label), "group": str(sample.group)})
    return images, left_out


def case_figures(predictors: dict[str, Any], images: list[dict[str, Any]],
                 progress: Callable[[float, str], None] = lambda f, m: None) -> dict[str, dict[str, Any]]:
    """Each model (``predictors``: label -> Predictor) on the same reviewed images, per image kind.

    ``{kind: {label: figures}}``: the figures of :func:`band_figures` at each prediction's model threshold
    and that model's own band; an image that cannot be read is left out for all.
    """
    rows: dict[str, list[tuple[int, str, dict[str, tuple[float, float, float]]]]] = {}
    for i, img in enumerate(images):
        progress(i / max(len(images), 1), f"Both models on the reviewed case images: {i}/{len(images)}")
        try:
            preds = {label: pr.predict(img["path"]) for label, pr in predictors.items()}
        except ImageReadError:
            continue
        kind = next(iter(preds.values())).kind
        scores = {}
        for label, pred in preds.items():
            pr = predictors[label]
            p = pred.probability if pred.assessable else float("nan")
            scores[label] = (p, float(pr.thresholds[pred.model]), fitted_band(pr.models[pred.model]))
        rows.setdefault(kind, []).append((img["label"], img["group"], scores))
    out: dict[str, dict[str, Any]] = {}
    for kind, items in rows.items():   # one kind: each model judges all its images with one of its models
        y = [it[0] for it in items]
        groups = [it[1] for it in items]
        out[kind] = {}
        for label in predictors:
            _, threshold, band = items[0][2][label]
            out[kind][label] = band_figures(y, [it[2][label][0] for it in items], threshold, band, groups)
    return out


# ---- side by side --------------------------------------------------------------------------------
def _kinds(current: dict[str, Any] | None, new: dict[str, Any], cases: dict[str, Any]) -> list[str]:
    """The image kinds to show: one row group for "all images" where both models judge every kind alike."""
    facts = [f for f in (current, new) if f is not None]
    if all(set(f["keys"]) == {"any"} for f in facts) and not set(cases) - {"any"}:
        return ["any"]
    return [k for k in KINDS if any(key_for(f, k) for f in facts) or k in cases]


def compare(current: dict[str, Any] | None, new: dict[str, Any],
            cases: dict[str, Any] | None = None) -> dict[str, Any]:
    """The current and the new model side by side, per image kind and source, with warnings and notes.

    ``current`` / ``new``: :func:`model_facts` (``current`` None: no model in use); ``cases``: the outcome
    of :func:`case_figures` with ``n_left_out`` and ``n_images``.
    """
    cases = cases or {}
    by_kind = cases.get("by_kind") or {}
    rows, warnings = [], []
    for kind in _kinds(current, new, by_kind):
        ck = key_for(current, kind) if current is not None else None
        nk = key_for(new, kind) if kind != "any" else "any"
        if ck is not None and nk is None:
            own = current["keys"][ck]["name"]
            warnings.append(f"The new model has no model for {KIND_LABELS[kind]}: they would be judged by a "
                            f"model trained on other images. The current model has one ({own}).")
        sources = {}
        for src in ("test", "cv"):
            pair = {"current": current["keys"][ck][src] if ck else None, "new": new["keys"][nk][src] if nk else None}
            if pair["current"] or pair["new"]:
                sources[src] = pair
        figs = by_kind.get(kind) or {}
        if figs:
            sources["cases"] = {"current": figs.get("current"), "new": figs.get("new")}
        for src, pair in sources.items():
            worse = [f"{label} {fmt(k, pair['new'][k])} vs {fmt(k, pair['current'][k])}"
                     for k, label, _ in METRICS if pair["current"] and pair["new"]
                     and is_worse(k, pair["current"][k], pair["new"][k])]
            if worse:
                warnings.append(f"The new model is worse on {KIND_LABELS[kind]}, {SOURCES[src]}: " + "; ".join(worse)
                                + ".")
        rows.append({"kind": kind, "label": KIND_LABELS[kind], "sources": sources})
    return {"current": None if current is None else current["name"], "new": new["name"], "rows": rows,
            "warnings": warnings, "notes": _notes(current, new, cases)}


def _notes(current: dict[str, Any] | None, new: dict[str, Any], cases: dict[str, Any]) -> list[str]:
    notes = []
    if current is None:
        return ["No model is in use: there is nothing to compare the new model with."]
    same = current["split"] is not None and current["split"] == new["split"]
    notes.append("Held-out test: both models on the same held-out subjects." if same else
                 "Held-out test: each model on its own held-out subjects (their data or splits differ), so "
                 "these two columns are not the same images.")
    n, left = cases.get("n_images", 0), cases.get("n_left_out", 0)
    if n:
        notes.append(f"Reviewed case images: both models on the same {n} reviewed images, the reviewer's "
                     "decision as the truth" + (f"; {left} more were left out because a model was trained "
                                                "on them." if left else "."))
    elif cases.get("cases"):
        notes.append("Reviewed case images: none that neither model was trained on"
                     + (f" ({left} left out)." if left else "."))
    return notes


def comparison_job(current_path: str | None, new_path: str, cases: list[str],
                   progress: Callable[[float, str], None] = lambda f, m: None) -> dict[str, Any]:
    """Everything :func:`compare` needs, gathered from the two bundle files and the case files."""
    # torch and the models only in the training process, never at the window's start-up
    from trainer.inference.bundle import load_bundle
    from trainer.inference.predictor import Predictor

    progress(0.0, "Comparing the new model with the current one")
    bundles = {"new": load_bundle(new_path, lazy=True)}
    if current_path and Path(current_path).is_file():
        bundles["current"] = load_bundle(current_path, lazy=True)
    facts = {label: model_facts(b, label) for label, b in bundles.items()}
    case_result: dict[str, Any] = {"cases": [Path(c).name for c in cases]}
    if "current" in bundles and cases:
        images, left = unseen_case_images(cases, [b.card for b in bundles.values()])
        case_result.update(n_images=len(images), n_left_out=left)
        if images:
            predictors = {label: Predictor.from_bundle(b.path) for label, b in bundles.items()}
            case_result["by_kind"] = case_figures(predictors, images, progress)
    progress(1.0, "Comparison done")
    return compare(facts.get("current"), facts["new"], case_result)
