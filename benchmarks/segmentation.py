"""Segmentation + nucleus block time per image (the work beside the networks), with a baseline.

    python benchmarks/segmentation.py                             # synthetic 450x450 crops, 224x224 fields
    python benchmarks/segmentation.py --crops DIR --fields DIR --n 40 [--code OLD_CHECKOUT]

For each kind, the median time per image (wall and CPU time of the process: on a shared machine the
CPU time is the steadier figure) of ``segment_nuclei`` + ``nucleus_features`` (what prediction runs in its
side thread). With ``--code`` the same images also go through the trainer package in that
folder (a baseline commit), in a separate process, alternately with this checkout's, and the script
prints the time ratio, the share of images whose segmentations (label images) are identical and the
share of identical nucleus-feature vectors with the largest difference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def _images(folder: str | None, n: int, kind: str) -> list[str]:
    if folder:
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
        step = max(1, len(files) // n)
        return [str(p) for p in files[::step][:n]]
    import cv2

    from trainer.io.synthetic import make_cell_image, make_smear_field

    out = Path(tempfile.mkdtemp(prefix=f"seg_bench_{kind}_"))
    paths = []
    for i in range(n):
        img = (make_cell_image(450, malignant=i % 2 == 0, rng=i)[0] if kind == "crop"
               else make_smear_field(224, n_wbc=5, rng=i)[0])
        cv2.imwrite(str(out / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(str(out / f"{i:03d}.png"))
    return paths


def _worker(files: list[str], out: str) -> None:
    """Run in a child process with the code under test first on sys.path."""
    from trainer.io.imageio import read_image
    from trainer.vision.handcrafted import nucleus_features
    from trainer.vision.segmentation import segment_nuclei

    imgs = [read_image(f) for f in files]
    nucleus_features(imgs[0], segment_nuclei(imgs[0]))  # warm-up
    feats, labels, times, cpu = [], [], [], []
    for img in imgs:
        t, c = time.perf_counter(), time.process_time()
        seg = segment_nuclei(img)
        feats.append(nucleus_features(img, seg))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        labels.append(seg.labels)
    np.savez(out, feats=np.array(feats), times=np.array(times), cpu=np.array(cpu),
             **{f"labels_{i}": lab for i, lab in enumerate(labels)})


def _run(code: Path, files: list[str], tmp: Path, tag: str) -> dict:
    out = tmp / f"{tag}.npz"
    env = dict(os.environ, PYTHONPATH=str(code))
    subprocess.run([sys.executable, __file__, "--worker", str(out), "--files", json.dumps(files)],
                   check=True, env=env)
    return dict(np.load(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", help="folder of single-cell crops (default: synthetic)")
    ap.add_argument("--fields", help="folder of smear fields (default: synthetic)")
    ap.add_argument("--n", type=int, default=20, help="images of each kind")
    ap.add_argument("--code", help="folder holding a baseline trainer package")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each code")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(json.loads(a.files), a.worker)
        return
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="seg_bench_"))
    for kind, folder in (("crop", a.crops), ("field", a.fields)):
        files = _images(folder, a.n, kind)
        codes = {"this": ROOT} | ({"baseline": Path(a.code).resolve()} if a.code else {})
        times: dict[str, list[float]] = {k: [] for k in codes}
        cpu: dict[str, list[float]] = {k: [] for k in codes}
        last: dict[str, dict] = {}
        for r in range(a.rounds):
            for tag, code in codes.items():
                last[tag] = _run(code, files, tmp, f"{kind}_{tag}_{r}")
                times[tag].append(float(np.median(last[tag]["times"])))
                cpu[tag].append(float(np.median(last[tag]["cpu"])) if "cpu" in last[tag] else np.nan)
        line = (f"{kind:5s} {len(files)} images: this {1000 * min(times['this']):.1f} ms/img "
                f"(CPU {1000 * min(cpu['this']):.1f} ms)")
        if a.code:
            new, old = last["this"], last["baseline"]
            ratio = min(times["this"]) / min(times["baseline"])
            same_seg = np.mean([np.array_equal(new[f"labels_{i}"], old[f"labels_{i}"]) for i in range(len(files))])
            same = (new["feats"] == old["feats"]).all(axis=1)
            cpu_ratio = min(cpu["this"]) / min(cpu["baseline"])
            line += (f", baseline {1000 * min(times['baseline']):.1f} ms/img (CPU {1000 * min(cpu['baseline']):.1f} "
                     f"ms), ratio {ratio:.2f}, CPU-time ratio {cpu_ratio:.2f}; identical "
                     f"segmentations {same_seg:.1%}, identical nucleus vectors {same.mean():.1%} "
                     f"(largest difference {np.abs(new['feats'] - old['feats']).max():.2g})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
