"""The data and model options ``train`` and ``evaluate`` share, and the config they describe."""
from __future__ import annotations

import argparse
from pathlib import Path

from trainer.cli.common import UsageError, check_names, check_output_dir, csv_list, positive_int, switch
from trainer.config import (
    BACKBONE_NAMES,
    CLASSIFIER_NAMES,
    FINETUNE_CHOICES,
    GAMMA_RANGE,
    WEIGHTS,
    FinetuneConfig,
    TrainConfig,
    choices,
    default,
    default_cache_dir,
    describe,
    finetune_wanted,
)
from trainer.util.csvsafe import printable


def setting(group, flag: str, name: str, help: str | None = None, **kw) -> None:
    """An option for config setting ``name``: default, choices and help come from the config."""
    allowed = choices(name)
    if allowed and "choices" not in kw and kw.get("action") is None:
        kw["choices"] = allowed
    kw.setdefault("default", default(name))
    text = (help or describe(name)).replace("%", "%%")
    if "(default" not in text:
        text += " (default: %(default)s)"
    group.add_argument(flag, help=text, **kw)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The data a run reads and how it is split."""
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="+", help="data folder(s): C-NMC layout (training_data/fold_*/{all,hem} or "
                                           "all/ + hem/) or one sub-folder per class; several folders are "
                                           "merged by subject id (identical images once)")
    setting(g, "--layout", "layout")
    g.add_argument("--positive", metavar="CLASSES",
                   help="comma-separated class folders that are ALL, e.g. Early,Pre,Pro (folders layout)")
    g.add_argument("--labels-csv", metavar="FILE",
                   help="labels.csv with path, label or class, and group columns; it gives the labels in every "
                        "layout, with one data folder (default: DATA/labels.csv if present, in the folders layout)")
    g.add_argument("--group-column", metavar="NAME", help=describe("group_column"))
    setting(g, "--split", "split")
    setting(g, "--seed", "seed", type=int)
    g.add_argument("--add-case", action="append", default=[], metavar="CASE",
                   help="a case file (allgui's review database); its reviewed images are added with the "
                        "reviewer's labels (unclassifiable ones left out), grouped by case; repeatable")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Features, classical stage and fine-tuning options."""
    g = p.add_argument_group("features and model")
    setting(g, "--weights", "weights", choices=None,
            help="backbone weights: 'none' (random init), 'imagenet' (torchvision weights from the torch cache, "
                 "downloaded there when online) or a local state_dict file")
    setting(g, "--backbones", "backbones", choices=None, default=",".join(default("backbones")),
            help=f"comma-separated backbones from {','.join(BACKBONE_NAMES)}")
    setting(g, "--image-size", "image_size", type=positive_int)
    setting(g, "--gamma", "gamma", type=float)
    setting(g, "--batch-size", "batch_size", type=positive_int)
    setting(g, "--workers", "num_workers", type=int)
    setting(g, "--device", "device")
    setting(g, "--precision", "precision")
    keep = f"{default('pca_variance'):.0%}".replace("%", "%%")
    g.add_argument("--no-pca", action="store_true", help=f"skip PCA (default: PCA keeping {keep} of the variance)")
    setting(g, "--classifiers", "classifiers", choices=None, default=",".join(default("classifiers")),
            help=f"comma-separated subset of {','.join(CLASSIFIER_NAMES)}")
    setting(g, "--calibration", "calibration")
    setting(g, "--combiner", "combiner")
    switch(g, "--nucleus-features", default("nucleus_features"), describe("nucleus_features"))
    switch(g, "--block-l2", default("block_l2"), describe("block_l2"))
    setting(g, "--stain", "stain")
    setting(g, "--calibrate-on", "calibrate_on")
    setting(g, "--jobs", "jobs", type=int)
    switch(g, "--per-kind", default("per_kind"), describe("per_kind"))
    setting(g, "--domain-rate", "domain_rate", type=float)
    setting(g, "--decided-accuracy", "decided_accuracy", type=float)
    setting(g, "--cv-repeats", "cv_repeats", type=int)
    setting(g, "--cv-folds", "cv_folds", type=positive_int)
    setting(g, "--block-groups", "block_groups", default="", metavar="KINDS",
            help="comma-separated image kinds (single_cell, field) whose group ids are blocks of images, "
                 "not subjects; the card and report call them image blocks")
    g.add_argument("--cache-dir", default=default_cache_dir(), help="feature cache folder (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    g.add_argument("--finetune", nargs="?", const="on", default="auto", choices=FINETUNE_CHOICES,
                   help="fine-tune both backbones on the training split before extracting features; "
                        "auto (default) = on when training on a CUDA GPU, off on the CPU")
    setting(g, "--epochs", "finetuning.epochs", type=positive_int)
    setting(g, "--patience", "finetuning.patience", type=int)
    setting(g, "--finetune-lr", "finetuning.lr", type=float)
    setting(g, "--stain-jitter", "finetuning.stain_jitter", type=float)
    setting(g, "--checkpoint-dir", "finetuning.checkpoint_dir")
    g.add_argument("--deterministic", action="store_true", help=describe("finetuning.deterministic"))
    g.add_argument("--no-amp", action="store_true", help="no mixed precision when fine-tuning on CUDA")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed ``train`` / ``evaluate`` options describe."""
    return TrainConfig(
        data=str(a.data[0]) if len(a.data) == 1 else [str(d) for d in a.data], layout=a.layout,
        positive=csv_list(a.positive), labels_csv=a.labels_csv,
        cases=tuple(str(c) for c in getattr(a, "add_case", None) or ()),
        group_column=a.group_column, split=a.split, seed=a.seed, weights=a.weights,
        backbones=tuple(csv_list(a.backbones) or BACKBONE_NAMES), image_size=a.image_size,
        gamma=a.gamma, batch_size=a.batch_size, num_workers=a.workers, device=a.device, precision=a.precision,
        pca=not a.no_pca, classifiers=tuple(csv_list(a.classifiers) or CLASSIFIER_NAMES),
        calibration=a.calibration, cache_dir=None if a.no_cache else a.cache_dir,
        combiner=a.combiner, nucleus_features=a.nucleus_features == "on", block_l2=a.block_l2 == "on",
        stain=a.stain, per_kind=a.per_kind == "on", calibrate_on=a.calibrate_on, jobs=a.jobs,
        domain_rate=a.domain_rate, decided_accuracy=a.decided_accuracy,
        cv_repeats=a.cv_repeats, cv_folds=a.cv_folds, block_groups=tuple(csv_list(a.block_groups) or ()),
        output=str(getattr(a, "output", default("output"))), finetune=finetune_wanted(a.finetune, a.device),
        finetuning=FinetuneConfig(epochs=a.epochs, patience=a.patience, lr=a.finetune_lr,
                                  stain_jitter=a.stain_jitter, checkpoint_dir=a.checkpoint_dir,
                                  deterministic=a.deterministic, amp=not a.no_amp))


def check_model_args(a) -> None:
    """Everything about the data and model options that can be checked before data is read."""
    if a.labels_csv and len(a.data) > 1:  # one file cannot hold the paths of several folders
        raise UsageError(f"--labels-csv applies to one data folder, not {len(a.data)}: give one folder, or a "
                         "labels.csv inside each folder of the folders layout (read without the option).")
    if not a.no_cache:  # the default may be created with its parents; a folder the user typed may not
        check_output_dir(a.cache_dir, "--cache-dir", parents=a.cache_dir == default_cache_dir())
    if a.checkpoint_dir:
        check_output_dir(a.checkpoint_dir, "--checkpoint-dir")
    check_names(a.classifiers, CLASSIFIER_NAMES, "classifiers")
    check_names(a.backbones, BACKBONE_NAMES, "backbones")
    lo, hi = GAMMA_RANGE
    if not lo <= a.gamma <= hi:
        raise UsageError(f"--gamma must be between {lo} and {hi}, not {a.gamma}.")
    if a.weights not in WEIGHTS and not Path(a.weights).is_file():
        raise UsageError(f"--weights: no such file {printable(a.weights)} (or use 'none' or 'imagenet').")
    for case in getattr(a, "add_case", None) or ():
        from trainer.cases.store import CaseStore  # refused here, before any work, when it cannot be read
        CaseStore.open(case, readonly=True).close()

