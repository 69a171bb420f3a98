"""Segmentation time per single-cell crop and per smear field.

    python benchmarks/segmentation.py                     # synthetic 450x450 crop, 224x224 field
    python benchmarks/segmentation.py --crop A.bmp --field B.jpg --repeats 20

Prints the median and 90th-percentile wall time of ``segment_nuclei`` + ``find_cells`` per image.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from trainer.io.imageio import read_image
from trainer.io.synthetic import make_cell_image, make_smear_field
from trainer.vision.segmentation import cells_from_segmentation, segment_nuclei


def _time(img: np.ndarray, repeats: int) -> tuple[float, float, int, str]:
    seg = segment_nuclei(img)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        seg = segment_nuclei(img)
        cells = cells_from_segmentation(seg, img.shape)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.percentile(times, 90)), len(cells), seg.kind


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", help="a single-cell crop image (default: synthetic 450x450)")
    ap.add_argument("--field", help="a smear field image (default: synthetic 224x224, 5 white cells)")
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)
    crop = read_image(a.crop) if a.crop else make_cell_image(450, malignant=True, rng=0)[0]
    field = read_image(a.field) if a.field else make_smear_field(224, n_wbc=5, rng=0)[0]
    for name, img in (("crop", crop), ("field", field)):
        med, p90, n, kind = _time(img, a.repeats)
        h, w = img.shape[:2]
        print(f"{name:5s} {w}x{h} ({kind}, {n} cell(s)): median {med * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
