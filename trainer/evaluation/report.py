"""Write an evaluation result as JSON, Markdown and PNG figures.

JSON holds every number; the Markdown has tables laid out like the paper's Tables 3, 4 and 5, plus
confidence intervals, calibration and the protocol comparison.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.evaluation import figures as F
from trainer.evaluation.core import ENSEMBLE, ENSEMBLE_CAL, PROTOCOL_LABELS
from trainer.util.atomic import atomic_write
from trainer.util.plain import to_jsonable

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


def _ci_units(r: dict[str, Any]) -> str:
    """How an interval was resampled: "5/4 groups" (normal/ALL subjects) or "images"."""
    k = r.get("n_groups")
    if r.get("ci_method") == "group" and k:
        return f"{k['0']}/{k['1']} groups"
    return "images"


def _auc_ci(r: dict[str, Any]) -> str:
    if r.get("auc") is None:
        return "n/a"
    ci = r.get("auc_ci")
    if ci:
        return f"{r['auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}; {_ci_units(r)})"
    note = r.get("ci_warning") or r.get("ci_note")
    return f"{r['auc']:.3f} ({note})" if note else f"{r['auc']:.3f}"


def _ci_method_text(rows: list[dict[str, Any]], n_boot: int) -> str:
    if any(r.get("ci_method") == "group" for r in rows):
        return (f"95 % group (cluster) bootstrap CI, {n_boot} seeded resamples: the test subjects/"
                "groups of each class (a group counts for the class most of its images have) are "
                "resampled with replacement and all images of a drawn group come along, because "
                "images of one subject are not independent; beside each CI the number of normal/ALL "
                "groups it rests on")
    return (f"95 % stratified image bootstrap CI ({n_boot} seeded resamples; no subject ids, so "
            "images are treated as independent and the CI is too narrow if several come from "
            "one subject)")


def _youden(r: dict[str, Any]) -> str:
    y = r.get("youden")
    if not y:
        return "n/a"
    return f"{y['threshold']:.3f} ({100 * y['sensitivity']:.1f} / {100 * y['specificity']:.1f})"


# --------------------------------------------------------------------------- sections
def _holdout_md(proto: str, e: dict[str, Any], figs: dict[str, str], n_boot: int) -> list[str]:
    h = e["holdout"]
    sp = h["split"]
    lines = [f"## Held-out test set: {PROTOCOL_LABELS[proto]}", ""]
    leak = sp.get("test_in_train_groups")
    lines.append(f"Train {sp['n_train']}, validation {sp['n_val']}, test {sp['n_test']} images "
                 f"({sp['n_test_positive']} ALL). "
                 + ("" if leak is None else
                    f"Test images whose subject/group also occurs in training: {100 * leak:.1f} %. "))
    lines.append("")
    lines.append("**Classification performance (layout of the paper's Table 3, plus the ensemble).** "
                 "Classifiers at their own 0.5 rule; *Ensemble* = weighted hard vote (eq. 8) with "
                 "AUC/AP/Brier from the weighted soft vote; *Ensemble, calibrated* = calibrated "
                 f"probability >= {h['threshold']:.3f} (Youden threshold chosen on the validation "
                 "split, the rule the app uses). AUC with "
                 + _ci_method_text(list(h["rows"].values()), n_boot)
                 + ". Youden threshold (sensitivity / specificity %) is "
                 "re-optimised on the test set as in the paper, hence optimistic.")
    lines.append("")
    rows = []
    for n in _ordered(h["classifier_names"]) + [ENSEMBLE, ENSEMBLE_CAL]:
        r = h["rows"][n]
        rows.append([F.display(n), _pct(r["accuracy"]), _pct(r["precision"]), _pct(r["recall"]),
                     _pct(r["specificity"]), _pct(r["f1"]), _auc_ci(r),
                     _num(r["average_precision"]), _num(r["brier"]), _youden(r)])
    lines += _table(["Model", "Accuracy (%)", "Precision (%)", "Recall (%)", "Specificity (%)",
                     "F1 (%)", "AUC (95% CI)", "AP", "Brier", "Youden thr. (sens / spec %)"], rows)
    w = ", ".join(f"{F.display(n)} {h['weights'][n]:.3f}" for n in _ordered(h["classifier_names"]))
    lines += [f"Ensemble weights (validation accuracy, normalised): {w}. Fused features after "
              f"PCA: {h['n_components']} dimensions.", ""]
    if h["auc_tests"]:
        first = next(iter(h["auc_tests"].values()))
        unit = ("subjects/groups (" + _ci_units(first) + ")" if first.get("ci_method") == "group"
                else "images")
        lines += ["**Ensemble AUC vs each classifier (paired bootstrap on the test set, resampling "
                  f"{unit}, two-sided; the paper's test is the SVM row).** p is the percentile "
                  "bootstrap p-value, consistent with the CI (smallest possible: 2/(resamples+1)); "
                  f"Holm p adjusts it for the {len(h['auc_tests'])} comparisons; the normal-"
                  "approximation p of pROC is in the JSON (`p_value_normal`).", ""]
        rows = []
        for n in _ordered(list(h["auc_tests"])):
            t = h["auc_tests"][n]
            ci = (f"({t['ci_low']:+.3f} to {t['ci_high']:+.3f})" if t.get("ci_low") is not None
                  else f"({t.get('warning') or 'no interval'})")
            rows.append([f"Ensemble vs {F.display(n)}", _num(t["auc1"]), _num(t["auc2"]), f"{t['diff']:+.3f} {ci}",
                         _p(t["p_value"]), _p(t.get("p_value_holm"))])
        lines += _table(["Comparison", "AUC ensemble", "AUC classifier", "Difference (95% CI)",
                         "p", "Holm p"], rows)
    if h["calibration"]:
        c = h["calibration"]
        lines += [f"**Calibration of the ensemble score on the test set** (method chosen on the "
                  f"validation split: {h['calibration_method']}).", ""]
        lines += _table(["Score", "Brier", "ECE (10 bins)"],
                        [["Before (weighted soft vote)", _num(c["raw"]["brier"]), _num(c["raw"]["ece"])],
                         ["After calibration", _num(c["calibrated"]["brier"]),
                          _num(c["calibrated"]["ece"])]])
    for key in ("roc", "pr", "reliability", "confusion"):
        if key in figs:
            lines += [f"![{key}]({figs[key]})", ""]
    return lines


def _cv_md(proto: str, cv: dict[str, Any], figs: dict[str, str]) -> list[str]:
    names = _ordered(cv["classifier_names"])
    models = names + [ENSEMBLE, ENSEMBLE_CAL]
    lines = [f"## {cv['n_folds']}-fold cross-validation: {PROTOCOL_LABELS[proto]}", ""]
    if cv.get("note"):
        lines += [f"> {cv['note']}", ""]
    lines += ["**Per-fold accuracy (%)**", ""]
    rows = [[str(f["fold"]), str(f["n_test"])] + [_pct(f["metrics"][n]["accuracy"]) for n in models]
            for f in cv["folds"]]
    lines += _table(["Fold", "Test images"] + [F.display(n) for n in models], rows)
    lines += ["**Mean ± sd over folds (%)**", ""]
    rows = [[F.display(n)] + [_ms(cv["summary"][n][m], pct=(m != "auc"))
                              for m in ("accuracy", "precision", "recall", "specificity", "f1", "auc")]
            for n in models]
    lines += _table(["Model", "Accuracy", "Precision", "Recall", "Specificity", "F1", "AUC"], rows)
    for m in ("accuracy", "auc"):
        tests = cv["tests"].get(m) or {}
        if not tests:
            continue
        n_cmp = cv.get("n_comparisons")
        lines += [f"**Ensemble vs each classifier on per-fold {m.upper() if m == 'auc' else m} "
                  "(layout of the paper's Table 5).** Two-sided. Nadeau-Bengio corrects the t-test "
                  "for the overlap of training folds "
                  f"(n_test/n_train = {cv['n_test_mean'] / cv['n_train_mean']:.3f}). Each cell is "
                  "raw p / Holm-adjusted p"
                  + (f" (Holm over the {n_cmp} comparisons: classifiers x accuracy and AUC)"
                     if n_cmp else "")
                  + "; the verdict uses the Holm-adjusted Nadeau-Bengio p.", ""]
        rows = []
        for n in _ordered(list(tests)):
            t = tests[n]
            k = 100 if m != "auc" else 1
            nb = t["nadeau_bengio"].get("p_value_holm", t["nadeau_bengio"]["p_value"])
            d = t["t_test"]["mean_diff"]
            sig = ("n/a" if nb is None or math.isnan(nb) else "Not significant" if nb >= ALPHA
                   else f"Significant, ensemble {'better' if d > 0 else 'worse'}")
            rows.append([f"Ensemble vs. {F.display(n)}",
                         f"{k * t['t_test']['mean_diff']:+.{1 if k == 100 else 3}f}",
                         _p_holm(t["t_test"]), _p_holm(t["wilcoxon"]), _p_holm(t["nadeau_bengio"]),
                         sig])
        lines += _table(["Comparison", "Mean difference" + (" (points)" if m != "auc" else ""),
                         "t-test (p / Holm)", "Wilcoxon (p / Holm)", "Nadeau-Bengio (p / Holm)",
                         "Significance"], rows)
        lines += [f"With {cv['n_folds']} folds the exact two-sided Wilcoxon test cannot give p "
                  f"below 2/2^{cv['n_folds']} = {2 / 2 ** cv['n_folds']:.4f} (higher still with zero "
                  "differences)"
                  + (", so it cannot reach significance at 0.05." if cv["n_folds"] <= 5 else ".")
                  + " Wilcoxon p-values below that, as in the paper's Table 5, are not possible.", ""]
    if "cv" in figs:
        lines += [f"![cv folds]({figs['cv']})", ""]
    return lines


def _ablation_md(ab: dict[str, Any], fig: str | None) -> list[str]:
    lines = ["## Ablation: feature sets and PCA (layout of the paper's Table 4)", "",
             f"One train/validation/test split ({PROTOCOL_LABELS[ab['protocol']]}) and the same "
             "settings for every row; metrics of the ensemble (eq. 8) on the held-out test set, and the best "
             "single classifier by accuracy.", ""]
    rows = []
    for r in ab["rows"]:
        e = r["rows"][ENSEMBLE]
        cls = {n: v for n, v in r["rows"].items() if n not in (ENSEMBLE, ENSEMBLE_CAL)}
        best = max(cls, key=lambda n: cls[n]["accuracy"])
        feats = " + ".join(F.BACKBONE_DISPLAY.get(b, b) for b in r["backbones"])
        dims = f"{r['feature_dim']} -> {r['n_components']}" if r["pca"] else str(r["feature_dim"])
        rows.append([feats, "on" if r["pca"] else "off", dims, _pct(e["accuracy"]),
                     _pct(e["precision"]), _pct(e["recall"]), _pct(e["f1"]), _auc_ci(e),
                     f"{F.display(best)} {_pct(cls[best]['accuracy'])}"])
    lines += _table(["Features", "PCA 98%", "Dimensions", "Accuracy (%)", "Precision (%)",
                     "Recall (%)", "F1 (%)", "AUC (95% CI)", "Best classifier, acc. (%)"], rows)
    if fig:
        lines += [f"![ablation]({fig})", ""]
    return lines


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


def _protocol_md(results: dict[str, Any], fig: str | None) -> list[str]:
    protos = [p for p, e in results["protocols"].items() if e.get("holdout")]
    lines = ["## Split protocols side by side", "",
             "The paper splits images at random, so images of one subject can sit in both training "
             "and test sets; the subject-level split keeps every subject/group on one side. The "
             "difference is the optimism that leakage adds.", ""]
    for p, e in results["protocols"].items():
        if not e.get("available"):
            lines += [f"- {PROTOCOL_LABELS[p]}: not evaluated ({e.get('reason')}).", ""]
        elif e.get("reason"):
            lines += [f"- {PROTOCOL_LABELS[p]}: partly evaluated ({e['reason']}).", ""]
    if not protos:
        return lines
    names = _ordered(results["protocols"][protos[0]]["holdout"]["classifier_names"]) + [ENSEMBLE]
    header = ["Model"]
    for p in protos:
        header += [f"{p}: held-out acc. (%)", f"{p}: CV acc. (%)", f"{p}: held-out AUC", f"{p}: CV AUC"]
    rows = []
    for n in names:
        row = [F.display(n)]
        for p in protos:
            e = results["protocols"][p]
            ho = e["holdout"]["rows"][n]
            s = e["cv"]["summary"][n] if e.get("cv") else None
            row += [_pct(ho["accuracy"]), _ms(s["accuracy"]) if s else "n/a",
                    _num(ho["auc"]), _ms(s["auc"], pct=False) if s else "n/a"]
        rows.append(row)
    lines += _table(header, rows)
    if fig:
        lines += [f"![protocols]({fig})", ""]
    return lines


def markdown(results: dict[str, Any], figs: dict[str, dict[str, str]]) -> str:
    """The human-readable report; ``figs`` maps section -> figure kind -> relative PNG path."""
    meta = results["meta"]
    cfg = meta.get("config", {})
    ds = meta.get("dataset", {})
    lines = ["# ALL blast detection: evaluation report", ""]
    counts = f"{meta['n']} images ({meta['n_positive']} ALL, {meta['n'] - meta['n_positive']} normal)"
    lines += [(f"Data: `{ds['name']}`, " if ds.get("name") else "") + counts
              + f", {meta['n_groups']} subjects/groups. Backbones: "
              + ", ".join(f"{F.BACKBONE_DISPLAY.get(b, b)} ({meta['feature_dims'][b]})"
                          for b in meta["backbones"])
              + f"; weights `{cfg.get('weights', '?')}`, input {cfg.get('image_size', '?')} px, "
              f"gamma {cfg.get('gamma', '?')}, PCA {'on' if cfg.get('pca', True) else 'off'}, "
              f"seed {meta['seed']}, bootstrap {meta['n_boot']} resamples, {meta['n_folds']} folds. "
              f"Primary protocol: {PROTOCOL_LABELS[meta['primary_protocol']]}.", ""]
    t = meta.get("timings_s", {})
    if t:
        lines += ["Time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    for note in meta.get("notes", []):
        lines += [f"> {note}", ""]
    if results.get("warnings"):
        lines += ["**Warnings**", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    if ds.get("n_skipped"):
        lines += [f"{ds['n_skipped']} file(s) could not be read and were left out: "
                  + "; ".join(f"{n} ({r})" for n, r in ds.get("skipped", [])[:10]), ""]
    if str(cfg.get("weights", "")) == "none":
        lines += ["> The backbones are randomly initialised (weights `none`): these numbers test "
                  "the pipeline, they are not comparable with the paper's pretrained features.", ""]
    order = [meta["primary_protocol"]] + [p for p in results["protocols"] if p != meta["primary_protocol"]]
    for p in order:
        e = results["protocols"].get(p)
        if not e or not e.get("holdout"):
            continue
        lines += _holdout_md(p, e, figs.get(p, {}), meta["n_boot"])
        if e.get("cv"):
            lines += _cv_md(p, e["cv"], figs.get(p, {}))
    if results.get("ablation"):
        lines += _ablation_md(results["ablation"], figs.get("summary", {}).get("ablation"))
    if results.get("variants"):
        lines += _variants_md(results["variants"])
    if results.get("finetune_ablation"):
        lines += _finetune_md(results["finetune_ablation"])
    lines += _protocol_md(results, figs.get("summary", {}).get("protocols"))
    return "\n".join(lines) + "\n"


def write_figures(results: dict[str, Any], out_dir: Path) -> dict[str, dict[str, str]]:
    """All PNGs into ``out_dir``; returns section -> kind -> file name."""
    out: dict[str, dict[str, str]] = {}
    for p, e in results["protocols"].items():
        h = e.get("holdout")
        if not h:
            continue
        label = PROTOCOL_LABELS[p]
        n = h["split"]["n_test"]
        out[p] = {}
        if h["curves"]:
            out[p]["roc"] = F.roc_figure(h, f"ROC, held-out test set (n={n})\n{label}",
                                         out_dir / f"roc_{p}.png").name
            out[p]["pr"] = F.pr_figure(h, f"Precision-recall, held-out test set (n={n})\n{label}",
                                       out_dir / f"pr_{p}.png").name
        if h["calibration"]:
            out[p]["reliability"] = F.reliability_figure(
                h, f"Reliability of the ensemble, held-out test set (n={n})\n{label}",
                out_dir / f"reliability_{p}.png").name
        out[p]["confusion"] = F.confusion_figure(
            h, f"Confusion matrices, held-out test set (n={n}), {label}",
            out_dir / f"confusion_{p}.png").name
        if e.get("cv"):
            out[p]["cv"] = F.cv_folds_figure(e["cv"], f"Per-fold accuracy, {label}",
                                             out_dir / f"cv_folds_{p}.png").name
    out["summary"] = {}
    if results.get("ablation"):
        ab = results["ablation"]
        out["summary"]["ablation"] = F.ablation_figure(
            ab, f"Ablation: ensemble on the held-out test set ({PROTOCOL_LABELS[ab['protocol']]})",
            out_dir / "ablation.png").name
    if any(e.get("cv") for e in results["protocols"].values()):
        out["summary"]["protocols"] = F.protocol_figure(results, out_dir / "protocols.png").name
    return out


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the PNG figures into ``out_dir``.

    Returns ``{"json": path, "markdown": path, "figures": [paths]}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = to_jsonable(results)
    figs = write_figures(clean, out_dir)
    clean.setdefault("meta", {})["figures"] = figs
    json_path = out_dir / "report.json"
    data = json.dumps(clean, indent=1, allow_nan=False).encode("utf-8")
    atomic_write(json_path, lambda fh: fh.write(data))
    md_path = out_dir / "report.md"
    text = markdown(clean, figs).encode("utf-8")
    atomic_write(md_path, lambda fh: fh.write(text))
    return {"json": json_path, "markdown": md_path,
            "figures": [out_dir / f for sec in figs.values() for f in sec.values()]}
