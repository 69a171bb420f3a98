"""One configuration object for a training run, stored in every model bundle and checkpoint."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from trainer.util.errors import AllguiError

CLASSIFIER_NAMES = ("svm", "knn", "rf", "adaboost", "mlp")
BACKBONE_NAMES = ("densenet121", "resnet34")
#: choices of TrainConfig fields, kept here (no heavy imports) for the command line
CALIBRATE_ON = ("validation", "cross-fit")   # trainer.classical.model
COMBINERS = ("weighted", "stacked")          # trainer.classical.stacking
STAIN_METHODS = ("none", "reinhard")         # trainer.vision.stain


def default_cache_dir() -> str:
    """The feature cache folder used unless another is given: ``$XDG_CACHE_HOME/allgui/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "allgui", "features")


def finetune_wanted(choice: str, device: str) -> bool:
    """Resolve --finetune auto|on|off: auto fine-tunes when training will run on a CUDA GPU."""
    if choice != "auto":
        return choice == "on"
    if device == "cpu":
        return False
    import torch  # only when asked: reading the settings must not load torch
    return bool(torch.cuda.is_available())


@dataclass
class TrainConfig:
    """Everything that determines a training run.

    Paths are kept as strings so the config round-trips through JSON unchanged.
    """

    data: str | list[str] = ""          # dataset root folder, or several merged by subject id
    layout: str = "auto"                # "auto", "cnmc" or "folders"
    positive: list[str] | None = None   # class folder names counted as ALL (folders layout)
    labels_csv: str | None = None       # optional labels.csv (path, label/class, group)
    group_column: str | None = None     # column of labels.csv holding subject / group ids
    split: str = "auto"                 # "subject" (grouped), "image" (paper) or "auto"
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)  # train / validation / test
    backbones: tuple[str, ...] = BACKBONE_NAMES
    weights: str = "none"               # "none", "imagenet" or a local state_dict file
    image_size: int = 224               # network input, pixels (square)
    gamma: float = 1.0                  # gamma correction, eq. (1), in [0.8, 1.2]
    batch_size: int = 32
    num_workers: int | None = None      # DataLoader workers; None = automatic
    device: str = "auto"                # "auto", "cpu" or "cuda"
    precision: str = "auto"             # feature extraction: "auto", "fp32" or "bf16" (see FeatureExtractor)
    pca: bool = True                    # PCA keeping `pca_variance` of the variance
    pca_variance: float = 0.98
    classifiers: tuple[str, ...] = CLASSIFIER_NAMES
    calibration: str = "auto"           # "auto" (lower validation Brier), "platt" or "isotonic"
    combiner: str = "weighted"          # ensemble score: "weighted" (eq. 8) or "stacked" (see trainer.classical.stacking)
    block_l2: bool = False              # L2-normalise each feature block before fusion
    calibrate_on: str = "validation"    # calibration + threshold data: "validation" or "cross-fit" (OOF + validation)
    nucleus_features: bool = True       # add the hand-crafted nucleus block (trainer.vision.handcrafted)
    stain: str = "none"                 # colour normalisation before every block: "none" or "reinhard"
    per_kind: bool = True               # one model per image kind (single-cell crops, smear fields)
    seed: int = 0
    cache_dir: str | None = None        # feature cache; None = no disk cache
    output: str = "model.allmodel"      # where the model bundle is written
    finetune: bool = False              # fine-tune the backbones first (issue: backbone fine-tuning)
    finetune_epochs: int = 50
    finetune_patience: int = 10
    finetune_lr: float = 1e-4
    finetune_weight_decay: float = 1e-3
    finetune_amp: bool = True           # mixed precision on CUDA (bf16 where supported, else fp16)
    finetune_deterministic: bool = False  # deterministic algorithms (slower)
    finetune_checkpoint_dir: str | None = None  # per-epoch checkpoints; a rerun resumes from them
    allow_finetune_overlap: bool = False  # test on images the weights file was fine-tuned on (stated)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k not in names:
                continue  # tolerate fields of newer versions
            default = names[k].default
            kwargs[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
        return cls(**kwargs)

    def resolved_output(self) -> Path:
        return Path(self.output).expanduser()


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (defaults: the paper's training setup).

    ``batch_size`` is per process under torchrun. ``channels_last`` None = on CUDA only.
    ``num_workers`` None = automatic (see ``_auto_workers``).
    """

    epochs: int = 50
    patience: int = 10              # epochs without a lower validation loss before stopping
    min_delta: float = 0.0          # an epoch improves when val_loss < best - min_delta
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 32
    image_size: int = 224           # network input side, pixels
    gamma: float = 1.0              # gamma correction (eq. 1) before the transforms
    weights: str = "none"           # initial weights: 'none', 'imagenet' or a state_dict file
    seed: int = 0
    num_workers: int | None = None
    amp: bool = True                # mixed precision on CUDA (ignored on CPU)
    deterministic: bool = False
    channels_last: bool | None = None
    sync_bn: bool = False           # SyncBatchNorm under DDP on CUDA

    @classmethod
    def from_train_config(cls, config: Any) -> "FinetuneConfig":
        """The fine-tuning part of a ``trainer.config.TrainConfig``."""
        return cls(
            epochs=int(config.finetune_epochs),
            patience=int(config.finetune_patience),
            lr=float(config.finetune_lr),
            weight_decay=float(config.finetune_weight_decay),
            batch_size=int(getattr(config, "finetune_batch_size", None) or config.batch_size),
            image_size=int(config.image_size),
            gamma=float(config.gamma),
            weights=str(config.weights),
            seed=int(config.seed),
            num_workers=config.num_workers,
            amp=bool(getattr(config, "finetune_amp", True)),
            deterministic=bool(getattr(config, "finetune_deterministic", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        if int(self.epochs) < 1:
            raise AllguiError(f"Fine-tuning needs at least 1 epoch, not {self.epochs}.")
        if int(self.patience) < 1:
            raise AllguiError(f"Early-stopping patience must be at least 1 epoch, not {self.patience}.")
        if not float(self.lr) >= 0:
            raise AllguiError(f"The fine-tuning learning rate must be >= 0, not {self.lr}.")
        if int(self.batch_size) < 1:
            raise AllguiError(f"The fine-tuning batch size must be at least 1, not {self.batch_size}.")
        if int(self.image_size) < 32:
            raise AllguiError(f"Image size must be at least 32 pixels, not {self.image_size}.")


def as_finetune_config(cfg: Any) -> FinetuneConfig:
    if isinstance(cfg, FinetuneConfig):
        return cfg
    if cfg is None:
        return FinetuneConfig()
    if isinstance(cfg, Mapping):
        return FinetuneConfig.from_dict(cfg)
    return FinetuneConfig.from_train_config(cfg)
