"""Retraining speed: the code before the classical stage was trimmed and this checkout, in one run.

  python benchmarks/retrain.py DATA --cache-dir WARM_CACHE [--baseline REV] [--repeats N] [--jobs N]
         [--cold] [--keep DIR]

Measures (ratios against a baseline taken in the same run, never absolute goals):

  baseline  ``training.pipeline.train`` of DATA with default settings (what ``allgui-train train`` and the
            Retrain dialog run: read and check the images, detect their kinds, features from the cache,
            the classical stage, explanation probes, the bundle) with the trainer package of commit REV
            (default: the last commit before retraining was trimmed), exported from git to a temporary folder
  new       the same with this checkout's trainer package (``--jobs N``: its parallel classifier fits;
            default the config's)
  ratio     new / baseline, warm feature cache (goal: new <= 60 s for the 3,581 crops of C-NMC fold 1)
  stages    seconds spent in each step of both runs; ``member:*`` are classifier fits summed over all
            fits, which overlap when they run in parallel
  metrics   both models' validation and test metrics from their model cards: the calibrated ensemble's
            AUC, balanced accuracy at its threshold, Brier and ECE, and every classifier's AUC
  cold      (``--cold``) both again with an empty feature cache: the networks run on every image

Every run is a child process (``--child CODE``) that imports the trainer package from CODE and times
``train`` from its call to the written bundle (``seconds``) and from process start (``process``, imports
included). The warm cache is copied once to a temporary folder that all warm runs read, so the given
folder is never written. With ``--repeats N`` the runs alternate (baseline, new, baseline, ...) and the
medians are compared. The training itself is deterministic: both models are the same on every
repeat, only their speed varies. On a shared machine, keep other heavy work off while it runs.
"""
from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
#: the last commit before retraining was trimmed (image reading, BLAS threads, parallel fits, MLP early stopping)
BASELINE = "4e60181"

#: pipeline steps timed in the child: (module, attribute, label)
STAGES = [
    ("trainer.training.pipeline", "load_config_dataset", "read and check the images"),
    ("trainer.training.pipeline", "detect_kinds", "detect image kinds"),
    ("trainer.vision.features", "FeatureExtractor.extract", "features (cache or networks)"),
    ("trainer.training.pipeline", "fit_model", "classical stage (fit_model)"),
    ("trainer.classical.fusion", "FeatureFusion.fit", "  fusion + PCA"),
    ("trainer.classical.calibration", "ScoreCalibrator.fit", "  calibrator"),
    ("trainer.training.pipeline", "evaluate_split", "validation/test metrics"),
    ("trainer.training.pipeline", "fit_probes", "explanation probes"),
    ("trainer.training.pipeline", "reference_maps", "probe reference maps"),
    ("trainer.training.pipeline", "save_bundle", "write the bundle"),
]


# --------------------------------------------------------------------------- child: one timed training run
def _timed(owner, attr: str, label: str, totals: dict, by_first_arg: bool = False) -> None:
    f = getattr(owner, attr)

    @functools.wraps(f)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            key = f"{label}:{a[0]}" if by_first_arg else label
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - t

    setattr(owner, attr, wrapper)


def child(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(a.child).resolve()))
    import importlib

    import trainer
    from trainer.config import TrainConfig

    assert Path(trainer.__file__).resolve().is_relative_to(Path(a.child).resolve()), trainer.__file__
    totals: dict[str, float] = collections.OrderedDict()
    for module, attr, label in STAGES:
        owner = importlib.import_module(module)
        if "." in attr:
            cls, attr = attr.split(".")
            owner = getattr(owner, cls)
        _timed(owner, attr, label, totals)
    ensemble = importlib.import_module("trainer.classical.ensemble")
    _timed(ensemble, "fit_balanced", "member", totals, by_first_arg=True)
    from trainer.training.pipeline import train

    kw = dict(data=a.data, cache_dir=a.cache_dir, output=a.output, seed=0)
    if a.jobs is not None:
        kw["jobs"] = a.jobs
    t0 = time.perf_counter()
    result = train(TrainConfig(**kw))
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "process": time.perf_counter() - T_START, "stages": totals,
                      "bundle": str(result.bundle_path)}))


# --------------------------------------------------------------------------- parent
def export(rev: str, dest: Path) -> Path:
    """The trainer package of commit ``rev``, written under ``dest``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "trainer"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # a Python without extraction filters; the archive is our own repository's
            tar.extractall(dest)
    return dest


def run_child(code: Path, data: str, cache: Path, output: Path, jobs: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(code), data, "--cache-dir", str(cache),
           "--output", str(output)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def card_metrics(bundle: str) -> dict:
    """{model key: {split: {read-out: {metric: value}}}} from a bundle's model card."""
    with zipfile.ZipFile(bundle) as zf:
        card = json.loads(zf.read("manifest.json"))["card"]
    out = {}
    for key, section in card["models"].items():
        out[key] = {"calibration": section["method"]["calibration"]}
        for split in ("validation", "test"):
            rows = section["metrics"].get(split) or {}
            out[key][split] = {
                name: {"auc": r.get("auc"), "bacc": (r["sensitivity"] + r["specificity"]) / 2,
                       "brier": r.get("brier"), "ece": r.get("ece")}
                for name, r in rows.items()}
    return out


def show_stages(title: str, stages: dict) -> None:
    print(f"\n{'stage (' + title + ')':36s} {'baseline':>9s} {'new':>9s}")
    for stage in dict.fromkeys([*stages["baseline"], *stages["new"]]):
        b, n = (stages[k].get(stage, float("nan")) for k in ("baseline", "new"))
        print(f"{stage:36s} {b:9.2f} {n:9.2f}")


def _fmt(v) -> str:
    return "   -  " if v is None else f"{v:6.3f}"


def show_metrics(base: dict, new: dict) -> None:
    for key in new:
        print(f"\n{key} model (calibration: baseline {base[key]['calibration']}, new {new[key]['calibration']})")
        for split in ("validation", "test"):
            print(f"  {split:10s} {'':20s}  AUC base/new     bal.acc base/new   Brier base/new    ECE base/new")
            for name, r in new[key][split].items():
                b = base[key][split].get(name, {})
                cells = "  ".join(f"{_fmt(b.get(m))} {_fmt(r.get(m))}" for m in ("auc", "bacc", "brier", "ece"))
                print(f"  {'':10s} {name:20s}  {cells}")


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a labelled data folder (e.g. C-NMC fold 1)")
    ap.add_argument("--cache-dir", help="a warm feature cache for DATA (copied, never written)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs of each (default: 1)")
    ap.add_argument("--jobs", type=int, default=None, help="the new code's parallel classifier fits")
    ap.add_argument("--cold", action="store_true", help="also time both with an empty feature cache")
    ap.add_argument("--keep", help="folder to keep the bundles in (default: a temporary one, removed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a)
    if not a.cache_dir and not a.cold:
        ap.error("give --cache-dir (a warm cache), or --cold")

    tmp = Path(tempfile.mkdtemp(prefix="retrain_bench_"))
    out_dir = Path(a.keep) if a.keep else tmp
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        codes = {"baseline": export(a.baseline, tmp / "baseline"), "new": ROOT}
        jobs = {"baseline": None, "new": a.jobs}
        runs: dict[str, list[dict]] = {"baseline": [], "new": []}
        if a.cache_dir:
            warm = tmp / "cache"
            shutil.copytree(a.cache_dir, warm)
            for r in range(a.repeats):
                for name, code in codes.items():
                    res = run_child(code, a.data, warm, out_dir / f"{name}.allmodel", jobs[name])
                    runs[name].append(res)
                    print(f"warm {name:8s} run {r + 1}: {res['seconds']:6.1f} s (process {res['process']:.1f} s)",
                          flush=True)
        cold = {}
        if a.cold:
            for name, code in codes.items():
                cache = tmp / f"cold-{name}"
                cold[name] = run_child(code, a.data, cache, out_dir / f"{name}-cold.allmodel", jobs[name])
                shutil.rmtree(cache, ignore_errors=True)
                print(f"cold {name:8s}: {cold[name]['seconds']:6.1f} s (process {cold[name]['process']:.1f} s)",
                      flush=True)

        out: dict = {"baseline_rev": a.baseline}
        if runs["new"]:
            med = {n: statistics.median(r["seconds"] for r in rs) for n, rs in runs.items()}
            out.update(warm_baseline_s=med["baseline"], warm_new_s=med["new"], warm_ratio=med["new"] / med["baseline"])
            print(f"\nwarm retrain (median of {a.repeats}): baseline {med['baseline']:.1f} s, new {med['new']:.1f} s, "
                  f"ratio {med['new'] / med['baseline']:.2f} (goal: new <= 60 s)")
            show_stages("warm, last run", {n: rs[-1]["stages"] for n, rs in runs.items()})
            metrics = {n: card_metrics(rs[-1]["bundle"]) for n, rs in runs.items()}
            show_metrics(metrics["baseline"], metrics["new"])
            out["metrics"] = metrics
        if cold:
            out.update(cold_baseline_s=cold["baseline"]["seconds"], cold_new_s=cold["new"]["seconds"],
                       cold_ratio=cold["new"]["seconds"] / cold["baseline"]["seconds"])
            print(f"\ncold retrain: baseline {out['cold_baseline_s']:.1f} s, new {out['cold_new_s']:.1f} s, "
                  f"ratio {out['cold_ratio']:.2f}")
            show_stages("cold", {n: r["stages"] for n, r in cold.items()})
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
