"""``allgui-train evaluate``: the full evaluation report."""
from __future__ import annotations

import argparse

from trainer.cli.common import ProgressBar, check_names, check_output_dir, csv_list, int_range, non_negative_int
from trainer.cli.options import add_data_options, add_model_options, check_model_args, config_from_args
from trainer.config import PROTOCOLS


def register(sub) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``sub`` (an argparse subparsers object)."""
    e = sub.add_parser("evaluate", help="full evaluation report (tables, figures, statistics)",
                       description="Reproduce the paper's evaluation: held-out metrics with bootstrap CIs, ROC/PR, "
                                   "calibration, 5-fold CV with paired tests, ablations, both split protocols.")
    add_data_options(e)
    add_model_options(e)
    e.add_argument("--out", default="report", help="output folder for report.md, report.json and figures")
    e.add_argument("--folds", type=int_range(2), default=5, help="cross-validation folds, 2 or more (default: 5)")
    e.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for CIs (default: 1000)")
    e.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="split protocols to compare (default: %(default)s; subject needs group ids)")
    e.add_argument("--no-ablation", action="store_true", help="skip the backbone / PCA ablation")
    e.add_argument("--finetune-ablation", action="store_true",
                   help="add frozen vs fine-tuned backbone features on the primary split (fine-tunes both "
                        "backbones with --epochs/--patience/--finetune-lr; slow on a CPU)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run)
    return e


def run(a) -> int:
    from trainer.evaluation import run_evaluation  # torch and matplotlib load only for this command
    check_model_args(a)
    check_output_dir(a.out, "--out")
    check_names(a.protocols, PROTOCOLS, "protocols")
    config = config_from_args(a).validate()
    bar = ProgressBar(a.quiet)
    try:
        out = run_evaluation(config, a.out, progress=bar, n_folds=a.folds, n_boot=a.bootstrap,
                             protocols=tuple(csv_list(a.protocols) or PROTOCOLS),
                             ablation=not a.no_ablation, finetune_ablation=a.finetune_ablation)
    finally:
        bar.close()
    print(f"Report written to {out}")
    return 0

