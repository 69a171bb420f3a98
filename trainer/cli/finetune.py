"""``allgui-train finetune`` (also ``python -m trainer.finetune``).

Fine-tune the CNN backbones on the training split and write their weights to a safetensors file; under
``torchrun`` on several GPUs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from trainer.cli.common import check_output_dir, check_output_file
from trainer.cli.options import setting
from trainer.config import FinetuneConfig, TrainConfig, default, describe
from trainer.util.errors import AllguiError

DESCRIPTION = ("Fine-tune the CNN backbones as ALL-vs-normal classifiers (the paper's setup) and write their "
               "weights to a safetensors file. Run it under torchrun for several GPUs.")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``allgui-train finetune`` and ``python -m trainer.finetune`` (defaults from the config)."""
    parser.add_argument("data", help="data folder (C-NMC layout or class folders / labels.csv)")
    g = parser.add_argument_group("data and fine-tuning")
    setting(g, "--layout", "layout")
    g.add_argument("--positive", default=None, help="comma-separated class names counted as ALL")
    g.add_argument("--labels-csv", default=None)
    g.add_argument("--group-column", default=None)
    setting(g, "--split", "split")
    setting(g, "--backbones", "backbones", choices=None, default=",".join(default("backbones")),
            help="comma-separated backbones")
    setting(g, "--weights", "weights", choices=None)
    setting(g, "--image-size", "image_size", type=int)
    setting(g, "--gamma", "gamma", type=float)
    setting(g, "--epochs", "finetuning.epochs", type=int)
    setting(g, "--patience", "finetuning.patience", type=int)
    setting(g, "--lr", "finetuning.lr", type=float)
    setting(g, "--weight-decay", "finetuning.weight_decay", type=float)
    setting(g, "--stain-jitter", "finetuning.stain_jitter", type=float)
    setting(g, "--batch-size", "batch_size", type=int, help="images per batch and process")
    setting(g, "--num-workers", "num_workers", type=int)
    setting(g, "--device", "device", choices=None)  # also a device such as cuda:1
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--deterministic", action="store_true", help=describe("finetuning.deterministic"))
    g.add_argument("--sync-bn", action="store_true", help=describe("finetuning.sync_bn"))
    setting(g, "--seed", "seed", type=int)
    setting(g, "--checkpoint-dir", "finetuning.checkpoint_dir", help="checkpoint every epoch here; resume from it")
    g.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    g.add_argument("--output", default="finetuned.safetensors",
                   help="safetensors file for the fine-tuned backbone weights")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe (fine-tuning settings nested)."""
    return TrainConfig(
        layout=args.layout, split=args.split, seed=args.seed, weights=args.weights, image_size=args.image_size,
        gamma=args.gamma, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()),
        finetuning=FinetuneConfig(epochs=args.epochs, patience=args.patience, lr=args.lr,
                                  weight_decay=args.weight_decay, stain_jitter=args.stain_jitter,
                                  amp=not args.no_amp,
                                  deterministic=args.deterministic, sync_bn=args.sync_bn,
                                  checkpoint_dir=args.checkpoint_dir))


def register(sub) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to ``sub`` (an argparse subparsers object)."""
    f = add_finetune_arguments(sub.add_parser("finetune", help="fine-tune the backbones; write their weights",
                                              description=DESCRIPTION))
    f.set_defaults(func=run)
    return f


def run(args: argparse.Namespace) -> int:
    """Fine-tune as ``args`` say, inside and then out of the torchrun process group."""
    check_output_file(args.output, "--output")  # before the hours of fine-tuning, not after them
    if args.checkpoint_dir:
        check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
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
    from trainer.training.distributed import barrier, setup_distributed
    from trainer.training.finetune import finetune_backbones
    from trainer.training.pipeline import load_config_dataset, resolve_protocol, split_dataset
    from trainer.training.weights import FINETUNE_IMAGES_KEY, finetune_provenance, save_state_dicts

    info = setup_distributed(args.device)
    say = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    config = dataclasses.replace(config_from_args(args), data=str(args.data), positive=args.positive,
                                 labels_csv=args.labels_csv, group_column=args.group_column).validate()
    ds = load_config_dataset(config)  # read as train/evaluate read it (duplicates once), so the splits agree
    # the very split `allgui-train train/evaluate` use, so their test images are never fine-tuned on
    protocol = resolve_protocol(config, ds)
    tr, va, _ = split_dataset(ds.samples, protocol, config)
    paths, y, groups = ds.paths, ds.labels, ds.groups
    say(f"{len(ds)} images: {len(tr)} training, {len(va)} validation; world size {info.world_size}")
    last = [-1.0]

    def progress(f: float, msg: str) -> None:
        if "batch" not in msg or f - last[0] >= 0.02:
            last[0] = f
            say(f"[{100 * f:5.1f}%] {msg}")

    states, histories = finetune_backbones(
        [paths[i] for i in tr], y[tr], [paths[i] for i in va], y[va], config, config.backbones, args.device,
        progress, None, config.finetuning.checkpoint_dir, not args.no_resume)
    if info.is_main:
        out = save_state_dicts(args.output, states, {
            "finetune_config": config.finetune_summary(),
            FINETUNE_IMAGES_KEY: finetune_provenance([paths[i] for i in tr], [paths[i] for i in va],
                                                     *((None, None) if groups is None else (groups[tr], groups[va]))),
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
