"""The data and model options ``train`` and ``evaluate`` share, and the config they describe."""
from __future__ import annotations

import argparse
from pathlib import Path

from trainer.cli.common import UsageError, check_names, csv_list, positive_int, switch
from trainer.config import (
    BACKBONE_NAMES,
    CALIBRATE_ON,
    CLASSIFIER_NAMES,
    COMBINERS,
    STAIN_METHODS,
    TrainConfig,
    default_cache_dir,
    finetune_wanted,
)
from trainer.util.csvsafe import printable


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="+", help="data folder(s): C-NMC layout (training_data/fold_*/{all,hem} or "
                                           "all/ + hem/) or one sub-folder per class; several folders are "
                                           "merged by subject id (identical images once)")
    g.add_argument("--layout", choices=("auto", "cnmc", "folders"), default="auto",
                   help="folder layout (default: detect)")
    g.add_argument("--positive", metavar="CLASSES",
                   help="comma-separated class folders that are ALL, e.g. Early,Pre,Pro (folders layout)")
    g.add_argument("--labels-csv", metavar="FILE",
                   help="labels.csv with path, label or class, and group columns (default: DATA/labels.csv if present)")
    g.add_argument("--group-column", metavar="NAME", help="column of labels.csv with subject/group ids")
    g.add_argument("--split", choices=("auto", "subject", "image"), default="auto",
                   help="subject: grouped 70/15/15 split, no subject on two sides (default where subject or "
                        "group ids are known); image: the paper's stratified image-level split")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and classifiers")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features and model")
    g.add_argument("--weights", default="none",
                   help="backbone weights: 'none' (random init), 'imagenet' (torchvision weights from the torch "
                        "cache, downloaded there when online) or a local state_dict file (default: none)")
    g.add_argument("--backbones", default=",".join(BACKBONE_NAMES),
                   help=f"comma-separated backbones (default: {','.join(BACKBONE_NAMES)})")
    g.add_argument("--image-size", type=positive_int, default=224, help="network input size in pixels (default: 224)")
    g.add_argument("--gamma", type=float, default=1.0, help="gamma correction in [0.8, 1.2] (default: 1.0)")
    g.add_argument("--batch-size", type=positive_int, default=32)
    g.add_argument("--workers", type=int, default=None, help="data loader workers (default: automatic)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses a CUDA GPU when one is present")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="feature extraction arithmetic: auto = mixed precision on CUDA, float32 on the CPU; "
                        "bf16 = bfloat16 also on CPUs with native support (about 2x faster, features within "
                        "~0.5%% of float32)")
    g.add_argument("--no-pca", action="store_true", help="skip PCA (default: PCA keeping 98%% of the variance)")
    g.add_argument("--classifiers", default=",".join(CLASSIFIER_NAMES),
                   help=f"comma-separated subset of {','.join(CLASSIFIER_NAMES)}")
    g.add_argument("--calibration", choices=("auto", "platt", "isotonic"), default="auto",
                   help="auto keeps the method with the lower cross-validated Brier score on validation data")
    d = TrainConfig()
    g.add_argument("--combiner", choices=COMBINERS, default=d.combiner,
                   help="ensemble score: weighted = the paper's eq. 8 weights (validation accuracy); stacked = "
                        "a logistic regression with non-negative weights on the classifiers' out-of-fold "
                        "probabilities (default: %(default)s)")
    switch(g, "--nucleus-features", d.nucleus_features,
            "add the hand-crafted nucleus block (morphology, GLCM/LBP texture, colour) beside the networks")
    switch(g, "--block-l2", d.block_l2, "L2-normalise each feature block before fusion")
    g.add_argument("--stain", choices=STAIN_METHODS, default=d.stain,
                   help="colour normalisation before feature extraction, reference fitted on the training "
                        "images: none or reinhard (default: %(default)s)")
    g.add_argument("--calibrate-on", choices=CALIBRATE_ON, default=d.calibrate_on,
                   help="data that set the calibration and the Youden threshold: cross-fit = out-of-fold scores "
                        "of the training split plus the validation split; validation = the validation split "
                        "alone (default: %(default)s)")
    switch(g, "--per-kind", d.per_kind, "one calibrated model per image kind (single-cell crops, smear fields)")
    g.add_argument("--cache-dir", default=default_cache_dir(),
                   help="feature cache folder (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    g.add_argument("--finetune", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="fine-tune both backbones on the training split before extracting features; "
                        "auto (default) = on when training on a CUDA GPU, off on the CPU")
    g.add_argument("--epochs", type=positive_int, default=50, help="fine-tuning epochs at most (default: 50)")
    g.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default: 10)")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate for fine-tuning (default: 1e-4)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="fine-tuning checkpoints, one per epoch; a rerun resumes from them")
    g.add_argument("--deterministic", action="store_true", help="deterministic fine-tuning (slower)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision when fine-tuning on CUDA")


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(a.data[0]) if len(a.data) == 1 else [str(d) for d in a.data], layout=a.layout, positive=csv_list(a.positive), labels_csv=a.labels_csv,
        group_column=a.group_column, split=a.split, seed=a.seed, weights=a.weights,
        backbones=tuple(csv_list(a.backbones) or BACKBONE_NAMES), image_size=a.image_size,
        gamma=a.gamma, batch_size=a.batch_size, num_workers=a.workers, device=a.device, precision=a.precision,
        pca=not a.no_pca, classifiers=tuple(csv_list(a.classifiers) or CLASSIFIER_NAMES),
        calibration=a.calibration, cache_dir=None if a.no_cache else a.cache_dir,
        combiner=a.combiner, nucleus_features=a.nucleus_features == "on", block_l2=a.block_l2 == "on",
        stain=a.stain, per_kind=a.per_kind == "on", calibrate_on=a.calibrate_on,
        output=str(getattr(a, "output", "model.allmodel")), finetune=finetune_wanted(a.finetune, a.device),
        finetune_epochs=a.epochs, finetune_patience=a.patience, finetune_lr=a.finetune_lr,
        finetune_checkpoint_dir=a.checkpoint_dir, finetune_deterministic=a.deterministic,
        finetune_amp=not a.no_amp)


def check_model_args(a) -> None:
    """Everything about the model options that can be checked before data is read."""
    check_names(a.classifiers, CLASSIFIER_NAMES, "classifiers")
    check_names(a.backbones, BACKBONE_NAMES, "backbones")
    if not 0.8 <= a.gamma <= 1.2:
        raise UsageError(f"--gamma must be between 0.8 and 1.2, not {a.gamma}.")
    if a.weights not in ("none", "imagenet") and not Path(a.weights).is_file():
        raise UsageError(f"--weights: no such file {printable(a.weights)} (or use 'none' or 'imagenet').")

