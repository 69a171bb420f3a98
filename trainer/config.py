"""One configuration object for a training run, stored in every model bundle and checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSIFIER_NAMES = ("svm", "knn", "rf", "adaboost", "mlp")
BACKBONE_NAMES = ("densenet121", "resnet34")
#: choices of TrainConfig fields, kept here (no heavy imports) for the command line
CALIBRATE_ON = ("validation", "cross-fit")   # trainer.model
COMBINERS = ("weighted", "stacked")          # trainer.stacking
STAIN_METHODS = ("none", "reinhard")         # trainer.stain


@dataclass
class TrainConfig:
    """Everything that determines a training run.

    Paths are kept as strings so the config round-trips through JSON unchanged.
    """

    data: str | list[str] = ""          # dataset root folder, or several merged by subject id
    cases: tuple[str, ...] = ()         # case files whose reviewed images are added (trainer.cases)
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
    combiner: str = "weighted"          # ensemble score: "weighted" (eq. 8) or "stacked" (see trainer.stacking)
    block_l2: bool = False              # L2-normalise each feature block before fusion
    calibrate_on: str = "validation"    # calibration + threshold data: "validation" or "cross-fit" (OOF + validation)
    nucleus_features: bool = True       # add the hand-crafted nucleus block (trainer.handcrafted)
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
