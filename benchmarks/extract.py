"""Throughput of fused feature extraction (trainer.vision.features) vs a naive per-image torchvision loop.

Both runs compute DenseNet-121 + ResNet-34 GAP features of the same N synthetic single-cell crops
(BMP files on disk, default 450 x 450) at the same network input size, with the same random
(``weights='none'``, seed 0) weights, in the same process:

- naive: per image, PIL open -> torchvision Resize/ToTensor/Normalize -> each model on a batch of 1
  under ``torch.no_grad``;
- fused: ``FeatureExtractor`` (one decode per image for both models, batches, inference_mode,
  channels_last, DataLoader workers), no disk cache.

Usage: python benchmarks/extract.py --n 64 --size 224 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from trainer.config import BACKBONE_NAMES


def make_images(folder: Path, n: int, crop: int, seed: int = 0) -> list[Path]:
    import cv2

    from trainer.io.synthetic import make_cell_image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img, _ = make_cell_image(crop, malignant=bool(i % 2), rng=rng)
        path = folder / f"cell_{i:04d}.bmp"
        cv2.imwrite(str(path), img[:, :, ::-1])
        paths.append(path)
    return paths


def naive(paths: list[Path], models: dict[str, torch.nn.Module], size: int) -> dict[str, np.ndarray]:
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([
        T.Resize((size, size)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    out: dict[str, list[np.ndarray]] = {name: [] for name in models}
    with torch.no_grad():
        for path in paths:
            x = tf(Image.open(path).convert("RGB")).unsqueeze(0)
            for name, model in models.items():
                out[name].append(model(x)[0].numpy())
    return {name: np.stack(v) for name, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    ap.add_argument("--size", type=int, default=224, help="network input side in pixels (default 224)")
    ap.add_argument("--crop", type=int, default=450, help="side of the synthetic crops in pixels (default 450)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (the naive loop always runs on CPU)")
    ap.add_argument("--precision", default="fp32,bf16",
                    help="comma-separated FeatureExtractor precisions to time (default fp32,bf16)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from trainer.vision.backbones import build_backbone
    from trainer.vision.features import FeatureExtractor

    names = BACKBONE_NAMES
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.n, args.crop)
        models = {name: build_backbone(name, "none", seed=0) for name in names}
        # warm-up (allocators, oneDNN kernels) on a couple of images
        naive(paths[:1], models, args.size)
        t0 = time.perf_counter()
        ref = naive(paths, models, args.size)
        t_naive = time.perf_counter() - t0
        rate_naive = args.n / t_naive
        print(f"images: {args.n} synthetic {args.crop}x{args.crop} BMP crops -> {args.size}x{args.size}, "
              f"torch threads {args.threads}, CPU cores {os.cpu_count()}")
        print(f"naive per-image torchvision loop (fp32): {t_naive:7.2f} s  {rate_naive:7.2f} images/s")
        for precision in [p.strip() for p in args.precision.split(",") if p.strip()]:
            extractor = FeatureExtractor(names, weights="none", image_size=args.size, batch_size=args.batch_size,
                                         num_workers=args.workers, device=args.device, seed=0,
                                         precision=precision)
            extractor.extract(paths[:2])
            t0 = time.perf_counter()
            fused = extractor.extract(paths)
            t_fused = time.perf_counter() - t0
            rate_fused = args.n / t_fused
            print(f"fused FeatureExtractor, {extractor.preprocessing_tag().split('|')[-1]:>13s} on "
                  f"{extractor.torch_device}: {t_fused:7.2f} s  {rate_fused:7.2f} images/s "
                  f"(batch {args.batch_size}); speed-up {rate_fused / rate_naive:.2f}x")
            for name in names:
                err = float(np.linalg.norm(ref[name] - fused[name]) / (np.linalg.norm(ref[name]) or 1.0))
                print(f"  {name}: ||naive - fused|| / ||naive|| = {err:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
