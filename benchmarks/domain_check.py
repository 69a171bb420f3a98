"""Does the model know its domain? Subject-grouped cross-validation of the domain check and the fitted band.

  python benchmarks/domain_check.py --cnmc-fold1 PATH --cnmc-sample PATH --other-lab PATH/cutouts \
         [--aria PATH] --cache-dir CACHE [--folds 5] [--stain none|reinhard] [--out result.json]

For each kind of image (C-NMC crops; with ``--aria``, smear fields grouped by image block) the model is
fitted as ``allgui-train train`` fits it (the default settings of the default model: random-init
networks at 224 px, nucleus block, cross-fit calibration, domain check and fitted band) on the subjects
of all folds but one, with a validation split of its own subjects, and judges the held-out subjects
and, for crops, every cell of the other laboratory (normal white cells cut out onto black as C-NMC
crops are; none is a blast). Reported, pooled over the folds and per fold:

  held-out subjects   share flagged outside training; AUC; coverage and accuracy of the decided images
                      at the fitted band ("after") and at the old fixed band of +-0.05 with no domain
                      check ("before")
  other lab           per cell type: share flagged outside training, called normal, called ALL blast,
                      before and after
  band shapes         the band of one width on both sides of the threshold (as shipped) against one whose
                      two sides are fitted apart (:func:`fit_two_sided_band`), each fitted to 95 % and
                      97 % on the fold model's own cross-fit pool: coverage and accuracy of the decided
                      held-out images (inside the domain)
  methods             the feature-space score of the check against two alternatives, each fitted on the
                      same fused training rows: AUROC of held-out C-NMC crops against the other lab's
                      cells and the share of the other lab's cells above the held-out 97th percentile
  hindsight           the two-sided band fitted on the pooled held-out scores themselves (inside the
                      domain), to 90, 95 and 97 %: an upper bound of what any band can decide of them

Subjects never straddle a fold (StratifiedGroupKFold); the subject counts are printed beside every
figure. Features come from the feature cache where they are there (the same key as training).

``--stain reinhard`` normalises every image (crops, the other lab's cells, fields) to one Reinhard
reference before all feature blocks, networks included, as ``--stain reinhard`` training does. Training
fits the reference on its training images; here one reference is fitted on all C-NMC crops (and one on
all fields), labels unused, so that the features are extracted once rather than once per fold: the
held-out subjects' colours take a small part in the reference.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sklearn.covariance import LedoitWolf
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import NearestNeighbors

from trainer.classical.domain import fit_band, fit_two_sided_band
from trainer.classical.model import fit_model, subset
from trainer.classical.stacking import inner_folds
from trainer.config import TrainConfig
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND
from trainer.io.data import load_dataset, merge_datasets
from trainer.training.pipeline import feature_blocks, make_extractor, stain_reference
from trainer.vision.input_checks import input_check_columns

#: accuracies the bands are fitted to besides the model's own (issue targets: 95 % crops, 97 % fields)
BAND_TARGETS = (0.95, 0.97)

#: C-NMC subjects whose crops are the app's samples: left out, as the default model leaves them out
SAMPLE_SUBJECTS = ("1", "11", "13", "H1", "H11", "H12")


def features(config: TrainConfig, paths, reference=None) -> dict[str, np.ndarray]:
    extractor = make_extractor(config, backbones=feature_blocks(config), stain_reference=reference)
    return extractor.extract([str(p) for p in paths])


def decided(y, p, t, band, inside=None):
    """(coverage, accuracy of the decided, n decided): decided = outside the band (and inside the domain)."""
    keep = np.abs(p - t) >= band
    if inside is not None:
        keep &= inside
    acc = float(np.mean((p[keep] >= t) == y[keep])) if keep.any() else float("nan")
    return float(np.mean(keep)), acc, int(keep.sum())


def method_scores(Z_train, Z_test):
    """Feature-space novelty scores of Z_test by three methods fitted on Z_train."""
    nn = NearestNeighbors(n_neighbors=5).fit(Z_train)
    lw = LedoitWolf().fit(Z_train)
    iso = IsolationForest(n_estimators=200, random_state=0).fit(Z_train)
    return {"knn": nn.kneighbors(Z_test)[0].mean(axis=1), "mahalanobis": lw.mahalanobis(Z_test),
            "isolation_forest": -iso.score_samples(Z_test)}


def cross_validate(name, feats, y, groups, config, folds, other=None, other_kinds=None):
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=config.seed)
    cols = input_check_columns(feature_blocks(config))
    pooled = {k: [] for k in ("y", "p", "inside", "t", "band", "fold")}
    shapes = {f"{shape}@{tg}": [] for shape in ("symmetric", "two_sided") for tg in BAND_TARGETS}
    pooled_ty: list[np.ndarray] = []
    per_fold, other_rows, methods = [], [], []
    for f, (tr, te) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        fit_i, val_i = inner_folds(y[tr], groups[tr], 5, config.seed)[0]  # one fifth of the subjects validates
        model = fit_model(subset(feats, tr), y[tr], fit_i, val_i, config, backbones=feature_blocks(config),
                          groups=groups[tr], domain_columns=cols)
        det = model.predict_details(subset(feats, te))
        p, inside = det["calibrated"], det["novelty"] <= 1
        t, band = model.threshold_, model.band_
        ty = model.band_report_.get("youden_threshold", t)  # "before": the Youden threshold, +-0.05, no check
        n_sub = {c: len(set(groups[te][y[te] == c])) for c in (0, 1)}
        cov, acc, _ = decided(y[te], p, t, band, inside)
        cov0, acc0, _ = decided(y[te], p, ty, DEFAULT_UNCERTAINTY_BAND)
        per_fold.append({"fold": f, "n_images": int(len(te)), "subjects": n_sub, "flagged": float(1 - inside.mean()),
                         "auc": float(roc_auc_score(y[te], p)) if len(set(y[te])) == 2 else None,
                         "band": band, "coverage": cov, "accuracy_decided": acc,
                         "coverage_before": cov0, "accuracy_decided_before": acc0})
        print(json.dumps(per_fold[-1]), flush=True)
        # both band shapes fitted on the fold model's own cross-fit pool, judged on the held-out subjects
        pool_y, pool_p = model.validation_["y"], model.validation_["calibrated"]
        pooled_ty.append(np.full(len(te), ty))
        for tg in BAND_TARGETS:
            sym = fit_band(pool_y, pool_p, ty, tg)["band"]
            two = fit_two_sided_band(pool_y, pool_p, ty, tg)
            shapes[f"symmetric@{tg}"].append(((p <= ty - sym) | (p >= ty + sym)) & inside)
            shapes[f"two_sided@{tg}"].append(((p <= ty - two["below"]) | (p >= ty + two["above"])) & inside)
        for k, v in (("y", y[te]), ("p", p), ("inside", inside), ("t", np.full(len(te), t)),
                     ("band", np.full(len(te), band)), ("fold", np.full(len(te), f))):
            pooled[k].append(v)
        if other is not None:
            od = model.predict_details(other)
            po, oin = od["calibrated"], od["novelty"] <= 1
            for kind in sorted(set(other_kinds)):
                m = other_kinds == kind
                called_all = (po[m] >= t + band) & oin[m]
                called_normal = (po[m] <= t - band) & oin[m]
                other_rows.append({"fold": f, "kind": kind, "n": int(m.sum()), "flagged": float(1 - oin[m].mean()),
                                   "called_normal": float(called_normal.mean()), "called_all": float(called_all.mean()),
                                   "called_all_before": float(np.mean(po[m] >= ty + DEFAULT_UNCERTAINTY_BAND)),
                                   "called_normal_before": float(np.mean(po[m] <= ty - DEFAULT_UNCERTAINTY_BAND))})
            X_tr = model.fusion_.transform(model._stack(subset(feats, tr)))
            X_te = model.fusion_.transform(model._stack(subset(feats, te)))
            X_o = model.fusion_.transform(model._stack(other))
            s_te, s_o = method_scores(X_tr, X_te), method_scores(X_tr, X_o)
            for meth in s_te:
                q = np.quantile(s_te[meth], 0.97)
                methods.append({"fold": f, "method": meth, "auroc": float(roc_auc_score(
                    np.r_[np.zeros(len(te)), np.ones(len(X_o))], np.r_[s_te[meth], s_o[meth]])),
                    "other_above_q97": float(np.mean(s_o[meth] > q))})
    P = {k: np.concatenate(v) for k, v in pooled.items()}
    n_sub = {c: len(set(groups[y == c])) for c in (0, 1)}
    keep = (np.abs(P["p"] - P["t"]) >= P["band"]) & P["inside"]
    T0 = np.concatenate(pooled_ty)
    keep0 = np.abs(P["p"] - T0) >= DEFAULT_UNCERTAINTY_BAND
    summary = {
        "kind": name, "images": int(len(y)), "subjects": n_sub, "folds": folds,
        "flagged_held_out": float(1 - P["inside"].mean()),
        "auc_pooled": float(roc_auc_score(P["y"], P["p"])),
        "after": _decided_share(keep, P, P["t"]),
        "before": _decided_share(keep0, P, T0),
        "per_fold": per_fold,
        "band_shapes": {name: _decided_share(np.concatenate(keeps), P, T0)
                        for name, keeps in shapes.items()},
        "hindsight": hindsight_bands(P["y"][P["inside"]], P["p"][P["inside"]]),
    }
    if other_rows:
        summary["other_lab"] = _pool_other(other_rows)
        summary["methods"] = {m: {"auroc_mean": float(np.mean([r["auroc"] for r in methods if r["method"] == m])),
                                  "other_above_q97_mean": float(np.mean([r["other_above_q97"] for r in methods
                                                                         if r["method"] == m]))}
                              for m in sorted({r["method"] for r in methods})}
    return summary


def hindsight_bands(y, p) -> dict:
    """Per target, the two-sided band fitted on the held-out scores ``p`` themselves, around their own Youden threshold.

    Fitted on the very rows it is judged on, no band of this shape fitted on other rows can decide more of
    them at the target: an upper bound of what fitting the band can give this model's held-out scores.
    """
    fpr, tpr, thr = roc_curve(y, p)
    youden = float(thr[np.argmax(tpr - fpr)])
    return {str(tg): dict(fit_two_sided_band(y, p, youden, tg), threshold=youden) for tg in BAND_TARGETS + (0.90,)}


def _decided_share(keep, P, t) -> dict:
    """Coverage and accuracy of the decided held-out rows ``keep`` of the pooled folds ``P``, decided at ``t``."""
    acc = float(np.mean((P["p"][keep] >= t[keep]) == P["y"][keep])) if keep.any() else None
    return {"coverage": float(keep.mean()), "accuracy_decided": acc}


def _pool_other(rows):
    out = {}
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        out[kind] = {"n": rs[0]["n"], **{k: float(np.mean([r[k] for r in rs])) for k in
                                          ("flagged", "called_normal", "called_all", "called_all_before",
                                           "called_normal_before")}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cnmc-fold1", type=Path, required=True)
    ap.add_argument("--cnmc-sample", type=Path, required=True)
    ap.add_argument("--other-lab", type=Path, required=True, help="cut-out cells: <type>/*.png and labels.csv")
    ap.add_argument("--aria", type=Path, default=None, help="smear fields with labels.csv (group = image block)")
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--stain", choices=("none", "reinhard"), default="none")
    ap.add_argument("--limit", type=int, default=0, help="every n-th crop only (a quick look), 0 = all")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    config = TrainConfig(weights="none", image_size=224, seed=0, cache_dir=a.cache_dir, stain=a.stain)
    cnmc = [s for s in merge_datasets([load_dataset(a.cnmc_fold1), load_dataset(a.cnmc_sample, layout="cnmc")])
            if s.group not in SAMPLE_SUBJECTS]
    if a.limit:
        cnmc = cnmc[::a.limit]
    y = np.array([s.label for s in cnmc])
    groups = np.array([f"cnmc-{s.group}" for s in cnmc])
    with open(a.other_lab / "labels.csv", newline="") as fh:
        other_rows = list(csv.DictReader(fh))
    print(f"C-NMC: {len(cnmc)} crops, {len(set(groups))} subjects; other lab: {len(other_rows)} cells", flush=True)
    ref = stain_reference(config, [s.path for s in cnmc])
    feats = features(config, [s.path for s in cnmc], ref)
    other = features(config, [a.other_lab / r["path"] for r in other_rows], ref)
    results = [cross_validate("crops", feats, y, groups, config, a.folds, other,
                              np.array([r["class"] for r in other_rows]))]
    if a.aria is not None:
        aria = list(load_dataset(a.aria, layout="folders", positive=["Early", "Pre", "Pro"], group_column="group"))
        fa = features(config, [s.path for s in aria], stain_reference(config, [s.path for s in aria]))
        results.append(cross_validate("fields", fa, np.array([s.label for s in aria]),
                                      np.array([f"aria-{s.group}" for s in aria]), config, a.folds))
    text = json.dumps(results, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
