"""The nucleus block alone, old and new version, judged by subject-grouped cross-validation on crops.

    python benchmarks/nucleus_cv.py DATA [DATA ...] --cache DIR [--versions nucleus-v1,nucleus-v2] [--repeats 1]

Each DATA folder is loaded as ``train`` loads it (several folders are merged by subject: a subject in two
folders is one group). For every version the nucleus block of every image is computed once (kept in
``DIR/<version>.npz`` with the CPU seconds it took) and the model's classical stage is cross-validated on that
block alone with ``cv_headline`` (the training's own subject-grouped folds, calibration and metrics). The
networks' blocks are left out: they are the same for both versions and cost tens of minutes on a laptop
CPU, so this measures what the nucleus block itself carries, not the shipped model's figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.config import TrainConfig
from trainer.io.data import load_dataset, merge_datasets
from trainer.io.imageio import read_image
from trainer.training.crossval import cv_headline
from trainer.vision.handcrafted import nucleus_features


def _blocks(samples, version: str, cache: Path) -> tuple[np.ndarray, float]:
    path = cache / f"{version}.npz"
    names = np.array([str(s.path) for s in samples])
    if path.is_file():
        got = np.load(path)
        if np.array_equal(got["names"], names):
            return got["x"], float(got["cpu"])
    rows, cpu = [], 0.0
    for i, s in enumerate(samples):
        img = read_image(s.path)
        t = time.process_time()
        rows.append(nucleus_features(img, version=version))
        cpu += time.process_time() - t
        if (i + 1) % 500 == 0:
            print(f"  {version}: {i + 1}/{len(samples)}", flush=True)
    x = np.array(rows)
    np.savez(path, x=x, names=names, cpu=cpu)
    return x, cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", help="image folders (C-NMC layout or with labels.csv)")
    ap.add_argument("--cache", required=True, help="folder for the computed blocks")
    ap.add_argument("--versions", default="nucleus-v1,nucleus-v2")
    ap.add_argument("--repeats", type=int, default=1, help="cross-validation repeats")
    a = ap.parse_args(argv)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = merge_datasets([load_dataset(d) for d in a.data])
    samples = list(data)
    y = np.array([s.label for s in samples])
    groups = np.array([str(s.group) for s in samples], dtype=object)
    print(f"{len(samples)} images, {len(set(groups[y == 1]))} ALL and {len(set(groups[y == 0]))} normal subjects")
    config = TrainConfig(cv_repeats=a.repeats, cv_folds=5)
    for version in a.versions.split(","):
        x, cpu = _blocks(samples, version, cache)
        cv = cv_headline({"nucleus": x}, y, groups, config, backbones=("nucleus",))
        metrics = ("auc", "balanced_accuracy", "sensitivity", "specificity", "coverage", "accuracy_decided")
        keep = {k: round(float(cv[k]["mean"]), 4) for k in metrics if isinstance(cv.get(k), dict) and "mean" in cv[k]}
        keep.update(folds=cv.get("folds"), n_groups=cv.get("n_groups"), notes=cv.get("notes"))
        ci = {k: cv[k].get("ci") for k in ("auc", "balanced_accuracy") if isinstance(cv.get(k), dict)}
        print(f"{version}: CPU {1000 * cpu / len(samples):.1f} ms/img; " + json.dumps(keep) + " CI " + json.dumps(ci),
              flush=True)


if __name__ == "__main__":
    main()
