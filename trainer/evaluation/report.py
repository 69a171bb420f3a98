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
from trainer.evaluation.report_text import (
    ALPHA,
    _finetune_md,
    _ms,
    _num,
    _ordered,
    _p,
    _p_holm,
    _pct,
    _table,
    _variants_md,
    headline_md,
)
from trainer.util.atomic import atomic_write
from trainer.util.plain import to_jsonable


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
    lines += [f"Ensemble weights (validation balanced accuracy, normalised; the paper's eq. 8 uses plain "
              f"accuracy): {w}. Fused features after PCA: {h['n_components']} dimensions.", ""]
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
    lines += headline_md(results)
    models = results.get("models")
    for key, sub in (models or {"": results}).items():
        if models:
            m = sub["meta"]
            lines += [f"# {sub.get('name', key).capitalize()}: {m['n']} images ({m['n_positive']} ALL), "
                      f"{m['n_groups']} {sub.get('group_kind', 'subject')}s", ""]
            lines += [f"- {w}" for w in sub.get("warnings") or []] + ([""] if sub.get("warnings") else [])
        lines += _model_md(sub, figs.get(key, {}) if models else figs)
    if results.get("variants"):
        lines += _variants_md(results["variants"])
    if results.get("finetune_ablation"):
        lines += _finetune_md(results["finetune_ablation"])
    return "\n".join(lines) + "\n"


def _model_md(results: dict[str, Any], figs: dict[str, dict[str, str]]) -> list[str]:
    """One model's held-out split and 5-fold CV per protocol, its ablation and the protocol comparison."""
    meta, lines = results["meta"], []
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
    return lines + _protocol_md(results, figs.get("summary", {}).get("protocols"))


def write_figures(results: dict[str, Any], out_dir: Path, prefix: str = "") -> dict[str, Any]:
    """All PNGs into ``out_dir``; returns section -> kind -> file name (per model key, with ``models``)."""
    if results.get("models"):
        return {k: write_figures(sub, out_dir, f"{k}_") for k, sub in results["models"].items()}
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
                                         out_dir / f"{prefix}roc_{p}.png").name
            out[p]["pr"] = F.pr_figure(h, f"Precision-recall, held-out test set (n={n})\n{label}",
                                       out_dir / f"{prefix}pr_{p}.png").name
        if h["calibration"]:
            out[p]["reliability"] = F.reliability_figure(
                h, f"Reliability of the ensemble, held-out test set (n={n})\n{label}",
                out_dir / f"{prefix}reliability_{p}.png").name
        out[p]["confusion"] = F.confusion_figure(
            h, f"Confusion matrices, held-out test set (n={n}), {label}",
            out_dir / f"{prefix}confusion_{p}.png").name
        if e.get("cv"):
            out[p]["cv"] = F.cv_folds_figure(e["cv"], f"Per-fold accuracy, {label}",
                                             out_dir / f"{prefix}cv_folds_{p}.png").name
    out["summary"] = {}
    if results.get("ablation"):
        ab = results["ablation"]
        out["summary"]["ablation"] = F.ablation_figure(
            ab, f"Ablation: ensemble on the held-out test set ({PROTOCOL_LABELS[ab['protocol']]})",
            out_dir / f"{prefix}ablation.png").name
    if any(e.get("cv") for e in results["protocols"].values()):
        out["summary"]["protocols"] = F.protocol_figure(results, out_dir / f"{prefix}protocols.png").name
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
    return {"json": json_path, "markdown": md_path, "figures": [out_dir / f for f in _files(figs)]}


def _files(figs: dict[str, Any]) -> list[str]:
    return [f for v in figs.values() for f in (_files(v) if isinstance(v, dict) else [v])]
