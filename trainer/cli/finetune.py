"""``allgui-train finetune`` (also ``python -m trainer.finetune``): fine-tune the CNN backbones on the
training split and write their weights to a safetensors file; under ``torchrun`` on several GPUs."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from trainer.config import FinetuneConfig, TrainConfig
from trainer.util.errors import AllguiError

DESCRIPTION = ("Fine-tune the CNN backbones as ALL-vs-normal classifiers (the paper's setup) and write their "
               "weights to a safetensors file. Run it under torchrun for several GPUs.")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``allgui-train finetune`` and ``python -m trainer.finetune``."""
    d = FinetuneConfig()
    parser.add_argument("data", help="data folder (C-NMC layout or class folders / labels.csv)")
    parser.add_argument("--layout", default="auto", choices=("auto", "cnmc", "folders"))
    parser.add_argument("--positive", default=None, help="comma-separated class names counted as ALL")
    parser.add_argument("--labels-csv", default=None)
    parser.add_argument("--group-column", default=None)
    parser.add_argument("--split", default="auto", choices=("auto", "subject", "image"))
    parser.add_argument("--backbones", default="densenet121,resnet34")
    parser.add_argument("--weights", default=d.weights, help="'none', 'imagenet' or a state_dict file")
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--gamma", type=float, default=d.gamma)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint every epoch here; resume from it")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--output", default="finetuned.safetensors",
                        help="safetensors file for the fine-tuned backbone weights")
    return parser


def register(sub) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to ``sub`` (an argparse subparsers object)."""
    f = add_finetune_arguments(sub.add_parser("finetune", help="fine-tune the backbones; write their weights",
                                              description=DESCRIPTION))
    f.set_defaults(func=run)
    return f


def run(args: argparse.Namespace) -> int:
    """Fine-tune as ``args`` say, inside and then out of the torchrun process group."""
    if args.deterministic:  # must be set before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from trainer.training.distributed import cleanup_distributed  # torch loads only for this command

    try:
        return run_cli(args)
    finally:
        cleanup_distributed()


def run_cli(args: argparse.Namespace) -> int:
    """Load the data, split it, fine-tune, write ``--output`` (rank 0). Returns an exit code."""
    # torch and the training code load only when this command runs, not for ``allgui-train --help``
    from trainer.io.data import load_dataset
    from trainer.training.distributed import barrier, setup_distributed
    from trainer.training.finetune import finetune_backbones
    from trainer.training.pipeline import resolve_protocol, split_dataset
    from trainer.training.weights import FINETUNE_IMAGES_KEY, finetune_provenance, save_state_dicts

    info = setup_distributed(args.device)
    say = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    ds = load_dataset(args.data, layout=args.layout, positive=args.positive,
                      labels_csv=args.labels_csv, group_column=args.group_column)
    # the very split `allgui-train train/evaluate` use, so their test images are never fine-tuned on
    protocol = resolve_protocol(TrainConfig(split=args.split), ds)
    tr, va, _ = split_dataset(ds.samples, protocol, TrainConfig(seed=args.seed))
    paths, y = ds.paths, ds.labels
    cfg = FinetuneConfig(epochs=args.epochs, patience=args.patience, lr=args.lr,
                         weight_decay=args.weight_decay, batch_size=args.batch_size,
                         image_size=args.image_size, gamma=args.gamma, weights=args.weights,
                         seed=args.seed, num_workers=args.num_workers, amp=not args.no_amp,
                         deterministic=args.deterministic, sync_bn=args.sync_bn)
    say(f"{len(ds)} images: {len(tr)} training, {len(va)} validation; world size {info.world_size}")
    last = [-1.0]

    def progress(f: float, msg: str) -> None:
        if "batch" not in msg or f - last[0] >= 0.02:
            last[0] = f
            say(f"[{100 * f:5.1f}%] {msg}")

    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    states, histories = finetune_backbones(
        [paths[i] for i in tr], y[tr], [paths[i] for i in va], y[va], cfg, backbones, args.device,
        progress, None, args.checkpoint_dir, not args.no_resume)
    if info.is_main:
        out = save_state_dicts(args.output, states, {
            "finetune_config": cfg.to_dict(),
            FINETUNE_IMAGES_KEY: finetune_provenance([paths[i] for i in tr], [paths[i] for i in va]),
            "history": {k: {kk: vv for kk, vv in h.items() if kk != "config"} for k, h in histories.items()},
        })
        for name, h in histories.items():
            say(f"{name}: best epoch {h['best_epoch']} of {len(h['epoch'])}, "
                f"validation loss {h['best_val_loss']:.4f}")
        say(f"Fine-tuned weights written to {out}")
    barrier()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.finetune``: the same command on its own."""
    parser = add_finetune_arguments(argparse.ArgumentParser(prog="python -m trainer.finetune",
                                                            description=DESCRIPTION))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except AllguiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
