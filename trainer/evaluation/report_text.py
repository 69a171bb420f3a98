"""The Markdown pieces of the evaluation report: number formats, the headline, the ablation tables.

The headline of each model comes first: its repeated subject-grouped cross-validation, then its test split as
one split, in the words of :func:`trainer.inference.card_text.headline_lines` (the app's model card and the
case report say the same).
"""
from __future__ import annotations

import math
from typing import Any

from trainer.evaluation import figures as F
from trainer.evaluation.core import ENSEMBLE_CAL, PROTOCOL_LABELS
from trainer.inference.card_text import headline_lines
from trainer.inference.results import MODEL_NAMES

PAPER_ORDER = ("knn", "adaboost", "svm", "rf", "mlp")
ALPHA = 0.05


# --------------------------------------------------------------------------- formatting
def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "undefined"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _p_holm(t: dict[str, Any]) -> str:
    """Raw and Holm-adjusted p of one test, "0.030 / 0.150"."""
    if "p_value_holm" not in t:
        return _p(t.get("p_value"))
    return f"{_p(t.get('p_value'))} / {_p(t.get('p_value_holm'))}"


def _ms(s: dict[str, Any], pct: bool = True) -> str:
    if s["mean"] is None:
        return "n/a"
    k = 100 if pct else 1
    sd = "" if s["sd"] is None else f" ± {k * s['sd']:.{1 if pct else 3}f}"
    return f"{k * s['mean']:.{1 if pct else 3}f}{sd}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _ordered(names: list[str]) -> list[str]:
    return [n for n in PAPER_ORDER if n in names] + [n for n in names if n not in PAPER_ORDER]


def _variants_md(v: dict[str, Any]) -> list[str]:
    """Grouped-CV ablation of the feature and ensemble variants, one table per image kind."""
    names = {"single_cell": "single-cell crops", "field": "smear fields"}
    lines = ["## Ablation: feature and ensemble variants (grouped cross-validation)", "",
             f"{PROTOCOL_LABELS.get(v['protocol'], v['protocol'])}, {v['n_folds']} folds stratified by label x "
             "source class, an inner grouped split of each training fold for validation. AUC of the pooled "
             "out-of-fold ensemble scores with a 95 % interval that resamples subjects (groups); sensitivity, "
             "specificity and balanced accuracy of the calibrated ensemble at each fold's own threshold. The "
             "Reinhard reference of the stain-normalised rows was fitted once, on the held-out split's "
             f"{v.get('stain_reference_rows', '?')} training images (a colour target, no labels).", ""]
    for kind, e in v["kinds"].items():
        g = e.get("n_groups") or {}
        lines += [f"### {names.get(kind, kind)}: {e['n']} images"
                  + (f", {g.get('1', '?')} ALL / {g.get('0', '?')} normal subjects" if g else ""), ""]
        if not e.get("rows"):
            lines += [f"Not evaluated: {e.get('reason', 'too few subjects')}", ""]
            continue
        rows = []
        for r in e["rows"]:
            fold = (f"{r['fold_auc_mean']:.3f} ± {r['fold_auc_sd']:.3f}" if r.get("fold_auc_sd") is not None
                    else _num(r.get("fold_auc_mean")))
            ci = (f"{r['auc_ci'][0]:.3f}-{r['auc_ci'][1]:.3f}, {r['ci_method']}" if r.get("auc_ci")
                  else r.get("ci_note") or "no interval")
            rows.append([r["variant"], f"{r['auc']:.3f} ({ci})", fold, _pct(r["sensitivity"]), _pct(r["specificity"]),
                         _pct(r["balanced_accuracy"])])
        lines += _table(["Variant", "AUC (95% CI, resampling)", "Fold AUC mean ± sd", "Sensitivity (%)",
                         "Specificity (%)", "Balanced accuracy (%)"], rows)
        for w in e.get("warnings") or []:
            lines.append(f"- {w}")
        lines.append("")
    return lines


def _finetune_md(ft: dict[str, Any]) -> list[str]:
    """Frozen vs fine-tuned backbone features, same split, same classical stages."""
    lines = ["## Ablation: frozen vs fine-tuned backbone features", "",
             f"One split ({PROTOCOL_LABELS[ft['protocol']]}); both backbones fine-tuned on its training "
             f"part (early stopping on its validation part) from weights `{ft['weights']}`, then the same "
             "classical stages on frozen and on fine-tuned features; test-set metrics. *Ensemble* is the "
             "full calibrated pipeline at its validation Youden threshold, *logistic regression* a plain "
             "linear probe at 0.5. Caveat: with fine-tuning, the classical stages are fitted on features "
             "of images the CNN was trained on, which it separates better than unseen test images.", ""]
    rows = []
    for clf in ft["classifiers"]:
        for kind in ("frozen", "finetuned"):
            m = ft[kind][clf]
            rows.append([{"ensemble": "Ensemble, calibrated", "logreg": "Logistic regression"}.get(clf, clf),
                         "fine-tuned" if kind == "finetuned" else "frozen", _pct(m["accuracy"]),
                         _pct(m["balanced_accuracy"]), _num(m["auc"])])
    lines += _table(["Classical stage", "Backbone features", "Accuracy (%)", "Balanced accuracy (%)", "AUC"],
                    rows)
    epochs = ", ".join(f"{F.BACKBONE_DISPLAY.get(b, b)}: best epoch {h['best_epoch']} of {len(h['epoch'])}"
                       for b, h in ft.get("histories", {}).items())
    sec = ft.get("seconds", {})
    lines += [f"Fine-tuning: {epochs}. Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in sec.items()), ""]
    return lines


def headline_md(results: dict[str, Any]) -> list[str]:
    """The headline of every model: cross-validation first, then its test split as one split."""
    models = results.get("models") or {"": results}
    lines = ["## Headline: cross-validation first, then the test split (one split)", "",
             "Cross-validation refits the whole pipeline as `train` ships it (feature blocks, per-kind models, "
             "calibration, threshold and uncertain band) in every fold of subjects, several times over; its "
             "intervals resample subjects. The test split is one draw of subjects. No interval is given on "
             "fewer than 3 subjects of a class.", ""]
    for key, sub in models.items():
        h = ((sub.get("protocols") or {}).get(sub.get("meta", {}).get("primary_protocol", "subject")) or {})
        test = ((h.get("holdout") or {}).get("rows") or {}).get(ENSEMBLE_CAL)
        section = {"cv": sub.get("cv_headline"), "group_kind": sub.get("group_kind", "subject"),
                   "metrics": {"test": {"ensemble_calibrated": test} if test else {}}}
        name = sub.get("name") or MODEL_NAMES.get(key, "model")
        lines += [f"**{name.capitalize()}**", ""] + [f"- {x}" for x in headline_lines(section)] + [""]
    return lines
