"""Fine-tuning and extraction throughput on one device, and a check of the mixed-precision path.

Synthetic single-cell crops (``trainer.io.synthetic``) in memory; both backbones are fine-tuned for a
few epochs with the paper's settings, with mixed precision (bf16 where supported, else fp16 with a
GradScaler) and, with ``--fp32``, once more without, then features are extracted with the
fine-tuned weights. Prints training images/s per epoch (the first epoch includes cuDNN autotuning
and worker start-up), extraction images/s, the AMP dtype used and whether every loss was finite.

Usage: python benchmarks/finetune_gpu.py --n 2048 --size 224 --epochs 3 [--fp32] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="training images (validation: n/4)")
    p.add_argument("--size", type=int, default=224, help="network input side, pixels")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--backbones", default="densenet121,resnet34")
    p.add_argument("--device", default="auto")
    p.add_argument("--fp32", action="store_true", help="also run without mixed precision")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from trainer.config import FinetuneConfig, TrainConfig
    from trainer.io.synthetic import make_cell_image
    from trainer.training.finetune import finetune_backbone
    from trainer.vision.features import FeatureExtractor

    rng = np.random.default_rng(0)
    n_val = max(8, args.n // 4)
    labels = np.arange(args.n + n_val) % 2
    images = [make_cell_image(args.size, bool(m), rng)[0] for m in labels]
    tr, va = images[: args.n], images[args.n:]
    ytr, yva = labels[: args.n], labels[args.n:]
    dev = args.device
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()})"
             if torch.cuda.is_available() else ""), flush=True)

    results: dict = {"args": vars(args), "runs": []}
    for amp in ([True, False] if args.fp32 else [True]):
        for name in args.backbones.split(","):
            cfg = TrainConfig(image_size=args.size, num_workers=args.num_workers, batch_size=args.batch_size,
                              finetuning=FinetuneConfig(epochs=args.epochs, patience=args.epochs, amp=amp))
            t0 = time.perf_counter()
            sd, h = finetune_backbone(name, tr, ytr, va, yva, cfg, device=dev)
            train_s = time.perf_counter() - t0
            ext = FeatureExtractor(backbones=(name,), image_size=args.size, batch_size=128,
                                   num_workers=args.num_workers, device=dev, state_dicts={name: sd})
            ext.extract(va[:64])  # warm-up
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            feats = ext.extract(tr)[name]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ext_s = time.perf_counter() - t1
            finite = all(math.isfinite(v) for v in h["train_loss"] + h["val_loss"]) and bool(
                np.isfinite(feats).all())
            run = {"backbone": name, "amp": h["amp"], "device": h["device"],
                   "train_images_per_s": [round(v, 1) for v in h["train_images_per_s"]],
                   "train_loss": [round(v, 4) for v in h["train_loss"]],
                   "val_loss": [round(v, 4) for v in h["val_loss"]],
                   "train_seconds": round(train_s, 1), "extract_images_per_s": round(len(tr) / ext_s, 1),
                   "all_finite": finite}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["all_finite"] for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
