"""PNG figures of an evaluation result (matplotlib, Agg backend; no display needed).

Every function takes the JSON-ready result dict of :func:`trainer.evaluation.evaluate_features`
(or one of its parts) and a file path, and writes one PNG at 150 dpi.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from trainer.config import BACKBONE_LABELS
from trainer.evaluation.core import ENSEMBLE, ENSEMBLE_CAL, PROTOCOL_LABELS

DISPLAY = {"svm": "SVM", "knn": "KNN", "rf": "RF", "adaboost": "AdaBoost", "mlp": "BPN (MLP)",
           ENSEMBLE: "Ensemble", ENSEMBLE_CAL: "Ensemble, calibrated"}
BACKBONE_DISPLAY = BACKBONE_LABELS
COLORS = {"svm": "#1f77b4", "knn": "#ff7f0e", "rf": "#2ca02c", "adaboost": "#9467bd",
          "mlp": "#8c564b", ENSEMBLE: "#d62728", ENSEMBLE_CAL: "#e377c2"}
STYLES = {"svm": "-", "knn": "--", "rf": "-.", "adaboost": ":", "mlp": (0, (5, 1, 1, 1))}
DPI = 150


def display(name: str) -> str:
    return DISPLAY.get(name, name)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _models(holdout: dict[str, Any]) -> list[str]:
    return list(holdout["classifier_names"]) + [ENSEMBLE]


def roc_figure(holdout: dict[str, Any], title: str, path: Path) -> Path:
    """ROC curves of every classifier and the ensemble, AUC with 95 % CI in the legend."""
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for name in _models(holdout):
        c = holdout["curves"].get(name)
        if c is None:
            continue
        r = holdout["rows"][name]
        ci = r.get("auc_ci")
        ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], color=COLORS.get(name),
                lw=2.4 if name == ENSEMBLE else 1.4, ls=STYLES.get(name, "-"),
                label=f"{display(name)}: AUC {r['auc']:.3f}{ci_txt}")
    op = holdout["rows"].get(ENSEMBLE_CAL)
    if op is not None:
        ax.plot(1 - op["specificity"], op["sensitivity"], "k*", ms=12,
                label=f"Operating point (threshold {holdout['threshold']:.3f} from validation)")
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="Chance (AUC 0.5)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5)
    return _save(fig, path)


def pr_figure(holdout: dict[str, Any], title: str, path: Path) -> Path:
    """Precision-recall curves with average precision; prevalence as the no-skill line."""
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for name in _models(holdout):
        c = holdout["curves"].get(name)
        if c is None:
            continue
        ap = holdout["rows"][name]["average_precision"]
        ax.plot(c["pr"]["recall"], c["pr"]["precision"], color=COLORS.get(name),
                lw=2.4 if name == ENSEMBLE else 1.4, drawstyle="steps-post",
                ls=STYLES.get(name, "-"), label=f"{display(name)}: AP {ap:.3f}")
    prev = holdout["rows"][ENSEMBLE]["prevalence"]
    ax.axhline(prev, ls="--", color="0.6", lw=1, label=f"No skill (prevalence {prev:.2f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="Recall (sensitivity)",
           ylabel="Precision (positive predictive value)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def reliability_figure(holdout: dict[str, Any], title: str, path: Path) -> Path:
    """Reliability diagram of the ensemble score before and after calibration, with counts."""
    cal = holdout["calibration"]
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6.0, 7.0), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="Perfect calibration")
    edges = np.asarray(cal["raw"]["curve"]["bin_edges"])
    width = np.diff(edges)
    for key, label, color, off in (("raw", "Before (weighted soft vote)", "#1f77b4", 0.28),
                                   ("calibrated", f"After ({holdout['calibration_method']})",
                                    "#d62728", 0.72)):
        c = cal[key]["curve"]
        mp = np.array([np.nan if v is None else v for v in c["mean_predicted"]], dtype=float)
        fp = np.array([np.nan if v is None else v for v in c["fraction_positive"]], dtype=float)
        ok = np.isfinite(mp)
        ax.plot(mp[ok], fp[ok], "o-", color=color,
                label=f"{label}: Brier {cal[key]['brier']:.3f}, ECE {cal[key]['ece']:.3f}")
        axh.bar(edges[:-1] + width * off, c["count"], width=width * 0.42,
                color=color, alpha=0.7, label=label.split(":")[0])
    ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="Observed fraction ALL",
           title=title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8.5)
    axh.set(xlabel="Predicted probability of ALL (10 equal-width bins)", ylabel="Test images")
    axh.grid(alpha=0.3)
    return _save(fig, path)


def confusion_figure(holdout: dict[str, Any], title: str, path: Path) -> Path:
    """Grid of 2 x 2 confusion matrices (counts and row %) for every classifier and ensemble."""
    names = list(holdout["classifier_names"]) + [ENSEMBLE, ENSEMBLE_CAL]
    ncol = 4
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 3.0 * nrow + 0.4))
    axes = np.atleast_1d(axes).ravel()
    for ax, name in zip(axes, names):
        cm = holdout["rows"][name]["confusion_matrix"]
        m = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=float)
        rows = m.sum(1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(m[i, j])}\n{100 * frac[i, j]:.1f}%", ha="center",
                        va="center", fontsize=10, color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["normal", "ALL"])
        ax.set_yticks([0, 1], ["normal", "ALL"])
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        acc = holdout["rows"][name]["accuracy"]
        extra = f", threshold {holdout['threshold']:.3f}" if name == ENSEMBLE_CAL else ""
        ax.set_title(f"{display(name)}\naccuracy {100 * acc:.1f}%{extra}", fontsize=10)
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def ablation_label(row: dict[str, Any]) -> str:
    b = " +\n".join(BACKBONE_DISPLAY.get(x, x) for x in row["backbones"])
    return f"{b}\nPCA {'on (' + str(row['n_components']) + ')' if row['pca'] else 'off'}"


def ablation_figure(ablation: dict[str, Any], title: str, path: Path) -> Path:
    """Ensemble accuracy, precision, recall, F1 and AUC for each feature set, PCA on / off."""
    metrics = ("accuracy", "precision", "recall", "f1", "auc")
    rows = ablation["rows"]
    x = np.arange(len(rows))
    w = 0.16
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(rows)), 4.8))
    for k, m in enumerate(metrics):
        vals = [100 * (r["rows"][ENSEMBLE][m] or 0.0) for r in rows]
        bars = ax.bar(x + (k - 2) * w, vals, w, label=m.upper() if m == "auc" else m.capitalize())
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center",
                    va="bottom", fontsize=6.5, rotation=90)
    ax.set_xticks(x, [ablation_label(r) for r in rows], fontsize=8)
    ax.set(ylim=(0, 118), ylabel="Ensemble, held-out test (%)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    return _save(fig, path)


def protocol_figure(results: dict[str, Any], path: Path) -> Path:
    """Accuracy and AUC per model under each protocol: CV mean +- sd bars, held-out markers."""
    protos = [p for p, e in results["protocols"].items() if e.get("cv")]
    names = None
    for p in protos:
        names = list(results["protocols"][p]["cv"]["classifier_names"]) + [ENSEMBLE]
        break
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    if not protos:
        for ax in axes:
            ax.text(0.5, 0.5, "no protocol could be evaluated", ha="center", transform=ax.transAxes)
        return _save(fig, path)
    x = np.arange(len(names))
    w = 0.8 / len(protos)
    colors = {"image": "#ff7f0e", "subject": "#1f77b4"}
    for ax, m in zip(axes, ("accuracy", "auc")):
        k_scale = 100 if m == "accuracy" else 1
        for k, p in enumerate(protos):
            e = results["protocols"][p]
            s = e["cv"]["summary"]
            mean = [k_scale * (s[n][m]["mean"] or 0) for n in names]
            sd = [k_scale * (s[n][m]["sd"] or 0) for n in names]
            pos = x + (k - (len(protos) - 1) / 2) * w
            ax.bar(pos, mean, w, yerr=sd, capsize=3, color=colors.get(p), alpha=0.8,
                   label=f"{PROTOCOL_LABELS[p]}: {e['cv']['n_folds']}-fold CV mean ± sd")
            if e.get("holdout"):
                ho = [k_scale * (e["holdout"]["rows"][n][m] or 0) for n in names]
                ax.plot(pos, ho, "kD", ms=4, label="held-out test set" if k == 0 else None)
        if m == "auc":
            ax.axhline(0.5, ls="--", color="0.5", lw=1, label="chance (AUC 0.5)")
        ax.set_xticks(x, [display(n) for n in names], fontsize=8)
        ax.set(ylim=(0, 105 if m == "accuracy" else 1.05),
               ylabel="Accuracy (%)" if m == "accuracy" else "AUC",
               title=f"{'AUC' if m == 'auc' else 'Accuracy'} by split protocol")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8.5, loc="lower center", ncol=2,
               bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return _save(fig, path)


def cv_folds_figure(cv: dict[str, Any], title: str, path: Path) -> Path:
    """Per-fold accuracy of each model (lines), the data behind the paired tests."""
    names = list(cv["classifier_names"]) + [ENSEMBLE]
    folds = [f["fold"] for f in cv["folds"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for n in names:
        ax.plot(folds, [100 * f["metrics"][n]["accuracy"] for f in cv["folds"]], "o-",
                color=COLORS.get(n), lw=2.4 if n == ENSEMBLE else 1.2, label=display(n))
    ax.set_xticks(folds)
    ax.set(xlabel="Cross-validation fold", ylabel="Test-fold accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)
