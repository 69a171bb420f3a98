"""Speed of ``allgui-train predict``'s error path, against the header checks' speed in the same run.

  python benchmarks/predict_errors.py [--model BUNDLE] [--n 2000] [--code OLD_CHECKOUT]

Measures files/s of ``cli.classify_files`` (the command's batch loop, model loaded lazily as the command
loads it) on three folders of N files each:

  header     PNG signature then garbage: refused by the header checks, never decoded (the baseline)
  too_small  valid 2x2-pixel PNGs: decoded, then refused as too small to analyse
  mixed      the two kinds alternating

and the ratio of each to ``header`` (goal for ``too_small`` and ``mixed``: >= 0.3, i.e. a file decoded
and then refused costs at most about three header checks; it was ~0.003 while such files went through
the networks).
Without ``--model`` a small stand-in bundle is trained on generated data first (48 px, random
networks): the error path never reaches the networks, so their size does not matter. ``--code DIR``
measures the trainer package in DIR instead (e.g. an export of an older commit).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE))

# isort: off
import trainer  # noqa: F401 - OpenMP wait policy before torch
import cv2
import numpy as np
# isort: on


def stand_in_bundle(tmp: Path) -> str:
    from trainer.config import TrainConfig
    from trainer.io.synthetic import write_dataset
    from trainer.training.pipeline import train

    data = write_dataset(tmp / "data", layout="cnmc", n_per_class=12, size=64, seed=0, n_subjects=6)
    cfg = TrainConfig(data=str(data), image_size=48, num_workers=0, batch_size=16,
                      output=str(tmp / "stand_in.allmodel"), cache_dir=str(tmp / "cache"))
    return str(train(cfg).bundle_path)


def write_folder(folder: Path, n: int, kind: str) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        f = folder / f"{i:05d}.png"
        if kind == "header" or (kind == "mixed" and i % 2):
            f.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(24))
        else:
            cv2.imwrite(str(f), rng.integers(0, 256, (2, 2, 3), dtype=np.uint8))
        files.append(f)
    return files


def rate(predictor, files: list[Path]) -> float:
    """Files/s of classify_files on ``files`` (every one must get an error row)."""
    from trainer.cli.predict import classify_files

    rows: list = []
    t0 = time.perf_counter()
    n_ok, n_err, _ = classify_files(predictor, files, dict(predictor.thresholds), rows.extend)
    secs = time.perf_counter() - t0
    assert (n_ok, n_err) == (0, len(files)), (n_ok, n_err)
    return len(files) / secs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--code", help="folder holding the trainer package to measure (default: this checkout)")
    a = ap.parse_args(argv)
    from trainer.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = a.model or stand_in_bundle(tmp)
        predictor = Predictor.from_bundle(model, device="cpu", lazy=True)
        folders = {k: write_folder(tmp / k, a.n, k) for k in ("header", "too_small", "mixed")}
        rate(predictor, folders["header"][:32])  # warm-up: lazy loads, first-call costs
        out = {"n": a.n, "cpus": os.cpu_count(), "code": str(CODE)}
        for k, files in folders.items():
            out[f"{k}_files_per_s"] = round(rate(predictor, files), 1)
        for k in ("too_small", "mixed"):
            out[f"{k}_ratio_to_header"] = round(out[f"{k}_files_per_s"] / out["header_files_per_s"], 3)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
