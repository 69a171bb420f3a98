"""Prediction speed, start-up, memory and bfloat16 agreement, each with its baseline in the same run.

  python benchmarks/predict_throughput.py --crops DIR --fields DIR [--model BUNDLE] [--n 32]
         [--agreement 300] [--rss 300] [--startup] [--startup-only]
         [--startup-runs 12]
         [--baseline OLD_CHECKOUT --baseline-model OLD.allmodel]

Measures (ratios against a baseline taken in the same process, never absolute goals):

  raw        images/s of the two networks alone, float32, batches of 32 of ready tensors (baseline), as the
             extractor runs them (side by side on the CPU); also one after the other on all threads
  crops      images/s of ``allgui-train predict``'s path (its lazy load, ``cli.classify_files``) on N crops,
             default precision, and its ratio to ``raw`` (goal >= 1.0)
  fields     network passes/s (each field + each white cell found = one pass) on N fields through
             the same path, and its ratio to ``raw`` (goal >= 0.9)
  open       one crop opened -> result (``Predictor.predict`` on a warm model), median, against one
             batch-of-one forward pass of the two networks in the same precision (goal <= 1.3x); in the
             default precision and in float32; the pass is timed as the app runs it (side by side) and,
             for comparison, one network after the other
  startup    (``--startup``, ``--startup-only``) ``python -m trainer predict`` of one crop, start to
             exit, seconds, median of ``--startup-runs`` after one warm-up run (goal <= 4 s), with
             ``python -c "import torch"`` as its floor (also timed without the interpreter's teardown,
             which the CLI skips); with ``--baseline DIR [--baseline-model BUNDLE]`` another checkout
             runs in turn with this one, and ``startup_ratio_to_baseline`` is the median per-round ratio
  agreement  (``--agreement K``) K images predicted in float32 and in bfloat16: share of identical
             decisions and the largest probability difference (bfloat16 is the default only where
             this is >= 99.5 %)
  rss        (``--rss K``) resident memory after every batch of K fields through the CLI path, in a
             process of its own that loads the bundle as ``allgui-train predict`` does:
             growth after the first 100 images (goal: flat)

Without ``--model`` a stand-in bundle of the shipped architecture (DenseNet-121 + ResNet-34,
224 px, nucleus block, one model per image kind) is trained on generated data first: speed does not
depend on what the classifiers learnt. Keep N small on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# --code DIR measures the trainer package in DIR instead (e.g. an export of an older commit)
CODE = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE))

# isort: off
import trainer  # noqa: F401 - OpenMP wait policy before torch
import numpy as np
import torch
# isort: on

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def images_in(folder: str, n: int, seed: int = 0) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images in {folder}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(files))[:n]
    return [files[i] for i in sorted(pick)]


def stand_in_bundle(tmp: Path) -> str:
    from trainer.config import TrainConfig
    from trainer.io.synthetic import write_dataset
    from trainer.training.pipeline import train

    data = write_dataset(tmp / "data", layout="folders", n_per_class=12, size=64, seed=0, n_subjects=4,
                         kind="mixed")
    cfg = TrainConfig(data=str(data), layout="folders", image_size=224, weights="none", num_workers=0,
                      batch_size=16, output=str(tmp / "stand_in.allmodel"), calibrate_on="validation")
    return str(train(cfg).bundle_path)


def load(model: str, precision: str | None, lazy: bool = False):
    """The bundle's predictor as the app loads it, or with ``lazy`` as ``allgui-train predict`` does."""
    from trainer.inference.predictor import Predictor

    for kwargs in ({"precision": precision, "lazy": lazy}, {"precision": precision}, {}):
        try:  # older code (to measure the code before a change) takes fewer arguments
            return Predictor.from_bundle(model, device="cpu", **kwargs)
        except TypeError:
            continue
    raise TypeError("Predictor.from_bundle takes none of the arguments tried")


def raw_rate(predictor, batch: int = 32, repeats: int = 2, side_by_side: bool = True) -> float:
    """Images/s of the predictor's networks on ready (batch, 3, S, S) tensors, in its precision.

    ``side_by_side``: as the extractor runs them (on the CPU, one lane per network, see
    ``FeatureExtractor.forward``); False: one after the other, each on all of torch's threads (as
    before the lanes, for comparison).
    """
    ex = predictor.extractor
    x = torch.randn(batch, 3, ex.image_size, ex.image_size).contiguous(memory_format=torch.channels_last)
    run = (lambda b: ex.forward({name: b for name in ex.networks})) if side_by_side else (
        lambda b: [ex.forward({name: b}) for name in ex.networks])
    run(x[:2])
    t0 = time.perf_counter()
    for _ in range(repeats):
        run(x)
    return batch * repeats / (time.perf_counter() - t0)


def one_forward(predictor, repeats: int = 7, side_by_side: bool = True) -> float:
    """Median seconds of one batch-of-one forward pass through the two networks, in the predictor's precision.

    ``side_by_side``: as ``predictor.warm_up`` runs it (the networks in lanes on the CPU); False: one
    network after the other on all of torch's threads.
    """
    ex = predictor.extractor
    x = torch.zeros(1, 3, ex.image_size, ex.image_size).contiguous(memory_format=torch.channels_last)
    run = predictor.warm_up if side_by_side else (lambda: [ex.forward({name: x}) for name in ex.networks])
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()  # side by side: exactly warm_up, one (1, 3, size, size) pass through every network
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def open_time(predictor, img, repeats: int = 7) -> float:
    """Median seconds of ``predictor.predict`` on one decoded crop (warm model)."""
    predictor.predict(img)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict(img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_path(predictor, files: list[Path]) -> tuple[float, int, list]:
    """(seconds, network passes, rows) of cli.classify_files on ``files``."""
    from trainer.cli.predict import classify_files

    rows: list = []
    t0 = time.perf_counter()
    n_ok, n_err, _ = classify_files(predictor, files, dict(predictor.thresholds), rows.extend)
    secs = time.perf_counter() - t0
    passes = sum(1 for r in rows if "error" not in r)
    return secs, passes, rows


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (e.g. ``VmRSS``), MB; NaN where there is none."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Largest resident size of this process so far (VmHWM), MB."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """Resident size of this process now (VmRSS), MB."""
    return _status_mb("VmRSS")


def startup_times(model: str, crop: Path, tmp: Path, runs: int, baseline: str | None = None,
                  baseline_model: str | None = None) -> dict[str, float]:
    """``python -m trainer predict`` of one crop, start to exit: medians over ``runs`` fresh processes.

    Each round runs this code, then (with ``baseline``, another checkout's folder, and its model) the
    baseline, then ``import torch`` with and without teardown, one after the other: a host whose speed
    drifts slows all of them alike, and ``startup_ratio_to_baseline`` is the median of the per-round
    ratios. One warm-up run of each comes first (disk cache, byte code, the network cache).
    """
    def env_for(code: Path) -> dict:
        env = dict(os.environ, PYTHONPATH=str(code))
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte code cached
        return env

    def predict(code: Path, bundle: str) -> tuple[list[str], dict, Path]:
        return ([sys.executable, "-m", "trainer", "predict", "-m", str(Path(bundle).resolve()), str(crop.resolve()),
                 "-o", str(tmp / "one.csv"), "-q"], env_for(code), code)

    cmds = {"startup_predict_one": predict(CODE, model),
            "startup_import_torch": ([sys.executable, "-c", "import torch"], env_for(CODE), CODE),
            # the same without the interpreter's teardown, as the CLI's console entry exits
            "startup_import_torch_no_teardown": ([sys.executable, "-c", "import os, torch; os._exit(0)"],
                                                 env_for(CODE), CODE)}
    if baseline:
        cmds["startup_baseline_predict_one"] = predict(Path(baseline).resolve(), baseline_model or model)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(runs + 1):
        for name, (cmd, env, cwd) in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=cwd, capture_output=True)
            if r:
                times[name].append(time.perf_counter() - t0)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    if baseline:
        out["startup_ratio_to_baseline"] = statistics.median(
            t / b for t, b in zip(times["startup_predict_one"], times["startup_baseline_predict_one"]))
    return out


def rss_trace(model: str, precision: str | None, files: list[Path]) -> dict[str, float]:
    """Resident memory while ``files`` go through the CLI path: after 100 images, at the end, its peak.

    Run in a fresh process (``--rss-child``) that loads the bundle as ``allgui-train predict`` does.
    """
    from trainer.cli.predict import classify_files

    pred = load(model, precision, lazy=True)
    trace = []

    def emit(rows, seen=[0]):  # noqa: B006 - a counter kept between calls
        seen[0] += sum(1 for r in rows if r.get("cell", "image") == "image" or "error" in r)
        trace.append((seen[0], rss_mb()))

    classify_files(pred, files, dict(pred.thresholds), emit)
    after100 = [m for n, m in trace if n >= 100] or [trace[-1][1]]
    return {"rss_mb_at_100": after100[0], "rss_mb_end": trace[-1][1], "rss_images": trace[-1][0],
            "rss_growth_after_100_mb": trace[-1][1] - after100[0], "rss_peak_mb": peak_rss_mb()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--crops", required=True, help="folder of single-cell crops")
    ap.add_argument("--fields", help="folder of smear fields")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--precision", default=None, help="prediction precision (default: auto)")
    ap.add_argument("--agreement", type=int, default=0)
    ap.add_argument("--rss", type=int, default=0)
    ap.add_argument("--startup", action="store_true")
    ap.add_argument("--startup-runs", type=int, default=3, help="rounds of the start-up measure")
    ap.add_argument("--startup-only", action="store_true", help="only the start-up measure")
    ap.add_argument("--baseline", help="with --startup: a checkout of other code, run in turn with this one")
    ap.add_argument("--baseline-model", help="the bundle the baseline runs (default: --model)")
    ap.add_argument("--code", help="folder holding the trainer package to measure (default: this checkout)")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rss_child:
        print(json.dumps(rss_trace(a.model, a.precision, images_in(a.fields, a.rss, seed=2))))
        return {}

    from trainer.cli import predict as cli
    from trainer.vision.devices import cpu_has_bf16
    out: dict = {"cpu_bf16": cpu_has_bf16(), "torch_threads": torch.get_num_threads()}
    tmp = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    model = a.model or stand_in_bundle(tmp)
    out["model"] = model
    if a.startup_only:
        out.update(startup_times(model, images_in(a.crops, 1)[0], tmp, a.startup_runs, a.baseline,
                                 a.baseline_model or model))
        for k, v in out.items():
            print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
        return out
    pred = load(model, a.precision)              # as the app loads it: opening an image
    cli_pred = load(model, a.precision, lazy=True)  # as allgui-train predict loads it: folders
    getattr(pred, "warm_up", lambda: None)()
    out["precision"] = getattr(pred, "precision", "fp32")
    fp32 = load(model, "fp32")

    out["raw_fp32_img_s"] = raw = raw_rate(fp32)
    out["raw_fp32_one_after_the_other_img_s"] = raw_rate(fp32, side_by_side=False)
    crops = images_in(a.crops, a.n)
    cli_pred.predict(crops[0])
    secs, passes, _ = cli_path(cli_pred, crops)
    out["crops_img_s"] = len(crops) / secs
    out["crops_ratio_to_raw"] = out["crops_img_s"] / raw
    if a.fields:
        fields = images_in(a.fields, a.n)
        secs, passes, _ = cli_path(cli_pred, fields)
        out["fields_passes_s"] = passes / secs
        out["fields_ratio_to_raw"] = out["fields_passes_s"] / raw
        out["fields_img_s"] = len(fields) / secs

    from trainer.io.imageio import read_image

    img = read_image(crops[0])
    # open -> result against one forward pass in the same precision: the default precision (bfloat16
    # where the CPU has it) and float32 (what every CPU without bfloat16 runs), each against its own
    for tag, p in (("", pred), ("_fp32", fp32)):
        out[f"open{tag}_s"] = open_time(p, img)
        out[f"one_forward{tag}_s"] = one_forward(p)
        out[f"open{tag}_ratio_to_one_forward"] = out[f"open{tag}_s"] / out[f"one_forward{tag}_s"]
        out[f"one_forward{tag}_one_after_the_other_s"] = one_forward(p, side_by_side=False)

    if a.agreement:
        files = images_in(a.crops, a.agreement // 2, seed=1) + (
            images_in(a.fields, a.agreement - a.agreement // 2, seed=1) if a.fields else [])
        bf = load(model, "bf16")
        same, diffs = 0, []
        for start in range(0, len(files), cli.PREDICT_BATCH):
            batch = files[start:start + cli.PREDICT_BATCH]
            for r32, r16 in zip(fp32.predict_batch(batch), bf.predict_batch(batch)):
                p32, p16 = r32.whole.probability, r16.whole.probability
                diffs.append(abs(p32 - p16))
                t = fp32.thresholds[r32.model]
                same += (p32 >= t) == (p16 >= t)
        out["agreement_images"] = len(files)
        out["agreement_identical_decisions"] = same / len(files)
        out["agreement_max_prob_diff"] = float(max(diffs))
        out["agreement_mean_prob_diff"] = float(np.mean(diffs))

    if a.rss and a.fields:
        # in a process of its own that loads the bundle as allgui-train predict does, and nothing else
        run = subprocess.run([sys.executable, __file__, "--rss-child", "--model", model, "--crops", a.crops,
                              "--fields", a.fields, "--rss", str(a.rss)] + (["--precision", a.precision]
                                                                           if a.precision else []),
                             check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        out.update(json.loads(run.stdout.strip().splitlines()[-1]))

    if a.startup:
        out.update(startup_times(model, crops[0], tmp, a.startup_runs, a.baseline, a.baseline_model or model))

    for k, v in out.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    return out


if __name__ == "__main__":
    main()
