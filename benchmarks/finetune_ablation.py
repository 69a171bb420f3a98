"""Ablation: classical stage on frozen backbone features vs on fine-tuned ones (trainer.evaluation.finetune_ablation).

Loads a labelled data folder, splits it (subject-level when groups are known), fine-tunes the
backbones on the training split (early stopping on the validation split), extracts features with
the initial (frozen) and the fine-tuned weights, fits the classical stage on each and reports test
accuracy / balanced accuracy / AUC and the time taken.

Usage (CPU, from scratch, reduced resolution):
    nice -n 5 python benchmarks/finetune_ablation.py DATA --positive Early,Pre,Pro \\
        --image-size 64 --epochs 5 --classifiers ensemble,logreg --json ablation.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--positive", default=None)
    p.add_argument("--labels-csv", default=None)
    p.add_argument("--group-column", default=None)
    p.add_argument("--split", default="auto", choices=("auto", "subject", "image"))
    p.add_argument("--backbones", default="densenet121,resnet34")
    p.add_argument("--weights", default="none")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifiers", default="ensemble,logreg")
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)

    import torch

    from trainer.config import FinetuneConfig, TrainConfig
    from trainer.evaluation.finetune_ablation import frozen_vs_finetuned
    from trainer.io.data import load_dataset
    from trainer.io.splits import split_train_val_test

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_dataset(args.data, positive=args.positive, labels_csv=args.labels_csv,
                      group_column=args.group_column)
    protocol = None if args.split == "auto" else args.split
    tr, va, te = split_train_val_test(ds, protocol=protocol, seed=args.seed)
    cfg = TrainConfig(data=args.data, backbones=tuple(args.backbones.split(",")), weights=args.weights,
                      image_size=args.image_size, batch_size=args.batch_size,
                      num_workers=args.num_workers, seed=args.seed, finetune=True,
                      finetuning=FinetuneConfig(epochs=args.epochs, patience=args.patience, lr=args.lr))
    y = ds.labels
    print(f"{len(ds)} images ({int(y.sum())} ALL); split train/val/test {len(tr)}/{len(va)}/{len(te)}; "
          f"{args.image_size} px, weights {args.weights}, device {args.device}", flush=True)
    last = [-1.0]

    def progress(f: float, msg: str) -> None:
        if "batch" not in msg and "images" not in msg or f - last[0] >= 0.05:
            last[0] = f
            print(f"[{100 * f:5.1f}%] {msg}", flush=True)

    res = frozen_vs_finetuned(ds.paths, y, tr, va, te, cfg,
                              classifiers=tuple(args.classifiers.split(",")), device=args.device,
                              progress=progress, checkpoint_dir=args.checkpoint_dir, groups=ds.groups)
    total = time.perf_counter() - t0
    print(f"\n{'features':<10} {'classifier':<9} {'accuracy':>8} {'bal.acc':>8} {'AUC':>6}")
    for kind in ("frozen", "finetuned"):
        for clf, m in res[kind].items():
            print(f"{kind:<10} {clf:<9} {m['accuracy']:8.3f} {m['balanced_accuracy']:8.3f} {m['auc']:6.3f}")
    for name, h in res["histories"].items():
        print(f"{name}: {len(h['epoch'])} epochs, best {h['best_epoch']} (val loss {h['best_val_loss']:.4f}), "
              f"train loss {[round(v, 3) for v in h['train_loss']]}, "
              f"{sum(h['seconds']):.0f} s, {sum(h['train_images_per_s']) / len(h['epoch']):.1f} img/s")
    print(f"seconds: {json.dumps({k: round(v, 1) for k, v in res['seconds'].items()})}, total {total:.0f}")
    if args.json:
        out = {k: v for k, v in res.items() if k != "state_dicts"}
        out.update(total_seconds=total, args=vars(args), n_images=len(ds),
                   split={"train": len(tr), "val": len(va), "test": len(te)})
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
