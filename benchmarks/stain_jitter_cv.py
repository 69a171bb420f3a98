"""Does stain jitter while fine-tuning help on new subjects and another laboratory? Subject-grouped CV.

  python benchmarks/stain_jitter_cv.py --cnmc-fold1 PATH --cnmc-sample PATH --other-lab PATH/cutouts \
         [--jitter 0,0.05] [--folds 5] [--backbone resnet34] [--image-size 64] [--epochs 4] [--limit N] \
         [--out result.json]

For each fold of a StratifiedGroupKFold over the C-NMC subjects (fold_1 and the sample merged by subject,
less the six subjects of the app's samples, as ``domain_check.py``) and each jitter: one backbone is
fine-tuned (``finetune_backbone``, the paper's augmentations plus :class:`StainJitter` of that sigma) on the
training subjects, with a grouped fifth of them as its validation split for early stopping; its GAP
features then feed the paper's classical chain in small (standardise, L2, PCA 98 %, logistic
regression), fitted on the training subjects. Reported per jitter, pooled over the folds: the held-out
subjects' AUC, and the other laboratory's normal cells (none is a blast) called ALL at the Youden
threshold of the training rows' out-of-fold scores, per cell type.

A CPU-sized judgement (a reduced image size, few epochs, one backbone): it compares the jitters with
each other under the same budget, not with the shipped model.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domain_check import SAMPLE_SUBJECTS
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from trainer.classical.fusion import FeatureFusion
from trainer.classical.stacking import inner_folds
from trainer.config import FinetuneConfig, TrainConfig
from trainer.io.data import load_dataset, merge_datasets
from trainer.training.finetune import finetune_backbone
from trainer.vision.features import FeatureExtractor


def chain(dim: int):
    """The paper's fusion of one ``dim``-wide block (standardise, L2, PCA 98 %), then logistic regression."""
    return make_pipeline(FeatureFusion(dims=(dim,)), LogisticRegression(C=1.0, max_iter=2000))


def one_fold(paths, y, groups, tr, te, other, config: TrainConfig, backbone: str) -> dict:
    """Held-out scores and the other lab's scores of one fold, with the backbone fine-tuned on ``tr``."""
    fit_i, val_i = inner_folds(y[tr], groups[tr], 5, config.seed)[0]
    fit, val = tr[fit_i], tr[val_i]
    state, history = finetune_backbone(backbone, [paths[i] for i in fit], y[fit], [paths[i] for i in val],
                                       y[val], config, device="cpu")
    ex = FeatureExtractor(backbones=(backbone,), image_size=config.image_size, state_dicts={backbone: state},
                          device="cpu", batch_size=64)
    f_tr = ex.extract([paths[i] for i in tr])[backbone]
    f_te = ex.extract([paths[i] for i in te])[backbone]
    f_o = ex.extract(other)[backbone]
    oof = cross_val_predict(chain(f_tr.shape[1]), f_tr, y[tr], groups=groups[tr], method="predict_proba",
                            cv=StratifiedGroupKFold(5, shuffle=True, random_state=config.seed))[:, 1]
    fpr, tpr, thr = roc_curve(y[tr], oof)
    youden = float(thr[np.argmax(tpr - fpr)])
    model = chain(f_tr.shape[1]).fit(f_tr, y[tr])
    return {"p_test": model.predict_proba(f_te)[:, 1], "p_other": model.predict_proba(f_o)[:, 1],
            "threshold": youden, "epochs": len(history["epoch"]), "best_epoch": history["best_epoch"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cnmc-fold1", type=Path, required=True)
    ap.add_argument("--cnmc-sample", type=Path, required=True)
    ap.add_argument("--other-lab", type=Path, required=True, help="cut-out cells: <type>/*.png and labels.csv")
    ap.add_argument("--jitter", default="0,0.05", help="comma-separated stain jitters to compare")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=0, help="every n-th crop only (a quick look), 0 = all")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    cnmc = [s for s in merge_datasets([load_dataset(a.cnmc_fold1), load_dataset(a.cnmc_sample, layout="cnmc")])
            if s.group not in SAMPLE_SUBJECTS]
    if a.limit:
        cnmc = cnmc[::a.limit]
    paths = [str(s.path) for s in cnmc]
    y = np.array([s.label for s in cnmc])
    groups = np.array([f"cnmc-{s.group}" for s in cnmc])
    with open(a.other_lab / "labels.csv", newline="") as fh:
        other_rows = list(csv.DictReader(fh))
    other = [str(a.other_lab / r["path"]) for r in other_rows]
    kinds = np.array([r["class"] for r in other_rows])
    n_sub = {c: len(set(groups[y == c])) for c in (0, 1)}
    print(f"C-NMC: {len(y)} crops, {n_sub[0]} normal / {n_sub[1]} ALL subjects; other lab: {len(other)} cells",
          flush=True)
    results = []
    cv = list(StratifiedGroupKFold(a.folds, shuffle=True, random_state=0).split(paths, y, groups))
    for jitter in (float(j) for j in a.jitter.split(",")):
        config = TrainConfig(weights="none", image_size=a.image_size, seed=0, num_workers=0, batch_size=32,
                             finetuning=FinetuneConfig(epochs=a.epochs, patience=2, stain_jitter=jitter))
        t0 = time.perf_counter()
        p_test, called, folds = np.zeros(len(y)), [], []
        for f, (tr, te) in enumerate(cv):
            r = one_fold(paths, y, groups, tr, te, other, config, a.backbone)
            p_test[te] = r["p_test"]
            called.append(r["p_other"] >= r["threshold"])
            folds.append({"fold": f, "auc": float(roc_auc_score(y[te], r["p_test"])), "epochs": r["epochs"],
                          "best_epoch": r["best_epoch"], "threshold": r["threshold"]})
            print(json.dumps({"jitter": jitter, **folds[-1]}), flush=True)
        called_all = np.mean(called, axis=0)  # per cell, the share of fold models that call it ALL
        results.append({"jitter": jitter, "auc_pooled": float(roc_auc_score(y, p_test)), "per_fold": folds,
                        "other_called_all": {k: float(called_all[kinds == k].mean()) for k in sorted(set(kinds))},
                        "seconds": round(time.perf_counter() - t0)})
        print(json.dumps(results[-1]), flush=True)
    out = {"crops": len(y), "subjects": n_sub, "other_cells": len(other), "backbone": a.backbone,
           "image_size": a.image_size, "epochs": a.epochs, "folds": a.folds, "results": results}
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
