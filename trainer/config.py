"""The one source of truth for settings.

:class:`TrainConfig` with its fine-tuning part nested as :class:`FinetuneConfig`.

Every default, every set of choices, every allowed range and every short description lives here, in
the dataclass fields (``metadata`` keys ``choices``, ``bounds`` and ``help``). The command line builds its
options from them (:func:`choices`, :func:`describe`) and so does the app's Retrain dialog; nothing
restates a default. A config is stored in every model bundle and checkpoint as JSON
(:meth:`TrainConfig.to_dict`) and read back by :meth:`TrainConfig.from_dict`, which also reads the flat
``finetune_*`` keys that bundles written before the nesting hold. :func:`problem` says what is wrong with
one value, by the field's choices and range: :meth:`TrainConfig.validate` (the command line, the app)
and the bundle loader (``trainer.inference.manifest_schema``) both refuse with its message.

This module is light to import (no numpy, no torch), so the command line can show ``--help`` fast.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.util.errors import AllguiError

CLASSIFIER_NAMES = ("svm", "knn", "rf", "adaboost", "mlp")
BACKBONE_NAMES = ("densenet121", "resnet34")   # the paper's two networks (trainer.vision.backbones)
BACKBONE_LABELS = {"densenet121": "DenseNet-121", "resnet34": "ResNet-34"}   # their names for people
CALIBRATE_ON = ("validation", "cross-fit")   # trainer.classical.model
COMBINERS = ("weighted", "stacked")          # trainer.classical.stacking
STAIN_METHODS = ("none", "reinhard")         # trainer.vision.stain
LAYOUTS = ("auto", "cnmc", "folders")
PROTOCOLS = ("subject", "image")            # grouped by subject, or the paper's image-level split
SPLITS = ("auto", *PROTOCOLS)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
CALIBRATIONS = ("auto", "platt", "isotonic")
WEIGHTS = ("none", "imagenet")               # or the path of a state_dict file
FINETUNE_CHOICES = ("auto", "on", "off")     # the tri-state the command line and the app offer
GAMMA_RANGE = (0.8, 1.2)                     # eq. 1
STAIN_JITTER_MAX = 0.5                       # the largest stain jitter (trainer.vision.preprocess.StainJitter)
IMAGE_KINDS = ("single_cell", "field", "any")  # model keys (trainer.classical.model.KindModels)
MIN_IMAGE_SIZE = 32                          # the smallest input both backbones accept
#: the largest network input: an image is resized to size x size before both networks, whose activations
#: grow with the square of the size (a 100000 px setting would ask for tens of gigabytes per image)
MAX_IMAGE_SIZE = 1024
MAX_BATCH = 4096
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1                         # numpy's and torch's seeds are 32-bit here


class ConfigError(AllguiError):
    """A setting that cannot work (an unknown choice, a value out of range)."""


def _opt(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, bounds: tuple | None = None,
         exclude: tuple = (), help: str = "", factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its choices or bounds and a one-line description in ``metadata``.

    ``bounds``: (lowest, highest) allowed, both included; for a tuple, of every element; ``exclude``:
    values inside the bounds that are not allowed. A field annotated ``... | None`` also takes None.
    """
    meta = {"choices": choices, "bounds": bounds, "exclude": exclude, "help": help}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def cache_home() -> str:
    """The per-user cache folder of allgui: ``$XDG_CACHE_HOME/allgui`` (``~/.cache/allgui``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "allgui")


def default_cache_dir() -> str:
    """The feature cache folder used unless another is given: ``$XDG_CACHE_HOME/allgui/features``."""
    return os.path.join(cache_home(), "features")


def finetune_wanted(choice: str, device: str) -> bool:
    """Resolve the ``auto|on|off`` fine-tuning choice: auto fine-tunes when training will run on CUDA."""
    if choice != "auto":
        return choice == "on"
    if device == "cpu":
        return False
    import torch  # only when asked: reading the settings must not load torch

    return bool(torch.cuda.is_available())


@dataclass
class FinetuneConfig:
    """How the backbones are fine-tuned (defaults.

    The paper's set-up), nested in :class:`TrainConfig` as ``finetuning``.

    Image size, gamma, initial weights, seed, workers and (unless ``batch_size`` is set) the batch
    size are the enclosing TrainConfig's: they are not restated here.
    """

    epochs: int = _opt(50, bounds=(1, MAX_EPOCHS), help="fine-tuning epochs at most")
    patience: int = _opt(10, bounds=(1, MAX_EPOCHS), help="early-stopping patience in epochs (validation loss)")
    min_delta: float = _opt(0.0, bounds=(0.0, 1.0),
                            help="an epoch improves when the validation loss drops by more than this")
    lr: float = _opt(1e-4, bounds=(0.0, 1.0), help="Adam learning rate for fine-tuning")
    weight_decay: float = _opt(1e-3, bounds=(0.0, 1.0), help="Adam weight decay for fine-tuning")
    batch_size: int | None = _opt(None, bounds=(1, MAX_BATCH),
                                  help="batch per process when fine-tuning (default: the batch size)")
    stain_jitter: float = _opt(0.0, bounds=(0.0, STAIN_JITTER_MAX),
                               help="colour augmentation in stain space while fine-tuning: each stain's "
                                    "strength drawn within +-this (0 = off; 0.05 is common)")
    amp: bool = _opt(True, help="mixed precision on CUDA (bf16 where supported, else fp16)")
    deterministic: bool = _opt(False, help="deterministic fine-tuning (slower)")
    channels_last: bool | None = _opt(None, help="channels_last memory format (default: on CUDA only)")
    sync_bn: bool = _opt(False, help="SyncBatchNorm under DDP on CUDA")
    checkpoint_dir: str | None = _opt(None, help="fine-tuning checkpoints, one per epoch; a rerun resumes")

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings that cannot work."""
        _refuse_problems(self, "finetuning.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneConfig:
        """The settings in ``d``; unknown keys (of other versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: flat keys of configs written before fine-tuning was nested -> FinetuneConfig field
LEGACY_FINETUNE_KEYS = {
    "finetune_epochs": "epochs", "finetune_patience": "patience", "finetune_lr": "lr",
    "finetune_weight_decay": "weight_decay", "finetune_amp": "amp",
    "finetune_deterministic": "deterministic", "finetune_checkpoint_dir": "checkpoint_dir",
}


@dataclass
class TrainConfig:
    """Everything that determines a training run.

    Paths are kept as strings so the config round-trips through JSON unchanged.
    """

    data: str | list[str] = _opt("", help="data folder(s); several are merged by subject id")
    cases: tuple[str, ...] = _opt((), help="case files (the app's review databases) whose reviewed images "
                                           "are added with the reviewer's labels")
    layout: str = _opt("auto", choices=LAYOUTS,
                       help="folder layout: cnmc = all/ and hem/ folders; folders = one folder per class")
    positive: list[str] | None = _opt(None, help="class folders counted as ALL (folders layout)")
    labels_csv: str | None = _opt(None, help="labels.csv with path, label or class, and group columns")
    group_column: str | None = _opt(None, help="column of labels.csv with subject/group ids")
    split: str = _opt("auto", choices=SPLITS,
                      help="subject: no subject on two sides (default where ids are known); "
                           "image: the paper's random image-level split")
    fractions: tuple[float, float, float] = _opt((0.70, 0.15, 0.15), bounds=(0.0, 1.0),
                                                 help="train / validation / test")
    backbones: tuple[str, ...] = _opt(BACKBONE_NAMES, choices=BACKBONE_NAMES, help="CNN backbones")
    weights: str = _opt("none", choices=WEIGHTS,
                        help="backbone weights: none (random init), imagenet (torch cache) or a state_dict file")
    image_size: int = _opt(224, bounds=(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), help="network input size in pixels")
    gamma: float = _opt(1.0, bounds=GAMMA_RANGE, help="gamma correction (eq. 1), in [0.8, 1.2]")
    batch_size: int = _opt(32, bounds=(1, MAX_BATCH), help="images per batch")
    num_workers: int | None = _opt(None, bounds=(0, 256), help="data loader workers (default: automatic)")
    device: str = _opt("auto", choices=DEVICES, help="auto uses a CUDA GPU when one is present")
    precision: str = _opt("auto", choices=PRECISIONS,
                          help="feature extraction arithmetic: auto = mixed precision on CUDA, float32 on the "
                               "CPU; bf16 = bfloat16 also on CPUs with native support")
    pca: bool = _opt(True, help="PCA keeping pca_variance of the variance")
    pca_variance: float = _opt(0.98, bounds=(0.01, 1.0), help="variance PCA keeps")
    classifiers: tuple[str, ...] = _opt(CLASSIFIER_NAMES, choices=CLASSIFIER_NAMES, help="base classifiers")
    calibration: str = _opt("auto", choices=CALIBRATIONS,
                            help="auto keeps the method with the lower cross-validated Brier score")
    combiner: str = _opt("weighted", choices=COMBINERS,
                         help="ensemble score: weighted = the paper's eq. 8 weights (validation accuracy); "
                              "stacked = a logistic regression with non-negative weights on the classifiers' "
                              "out-of-fold probabilities")
    block_l2: bool = _opt(False, help="L2-normalise each feature block before fusion")
    calibrate_on: str = _opt("cross-fit", choices=CALIBRATE_ON,
                             help="data that set the calibration and the Youden threshold: cross-fit = "
                                  "out-of-fold scores of the training split plus the validation split; "
                                  "validation = the validation split alone")
    nucleus_features: bool = _opt(True, help="add the hand-crafted nucleus block (morphology, GLCM/LBP "
                                             "texture, colour) beside the networks")
    stain: str = _opt("none", choices=STAIN_METHODS,
                      help="colour normalisation before feature extraction, reference fitted on the "
                           "training images: none or reinhard")
    per_kind: bool = _opt(True, help="one calibrated model per image kind (single-cell crops, smear fields)")
    domain_rate: float = _opt(0.03, bounds=(0.001, 0.49),
                              help="share of held-out subjects' images the domain check flags as outside "
                                   "training (thresholds fitted on out-of-fold training rows)")
    decided_accuracy: float = _opt(0.95, bounds=(0.5, 0.999),
                                   help="accuracy the uncertain band is fitted to: the band around the "
                                        "threshold that decides the most held-out images at it")
    cv_repeats: int = _opt(3, bounds=(0, 100),
                           help="repeats of the subject-grouped cross-validation that is each model's headline "
                                "(the whole pipeline refitted in every fold); 0 = none")
    cv_folds: int = _opt(5, bounds=(2, 100),
                         help="folds of that cross-validation (fewer where a class has fewer subjects)")
    block_groups: tuple[str, ...] = _opt((), help="image kinds (single_cell, field, any) whose group ids are "
                                                  "blocks of images rather than subjects; the card says so")
    seed: int = _opt(0, bounds=(0, MAX_SEED), help="seed for splits, initialisation and classifiers")
    jobs: int | None = _opt(-1, bounds=(-1, 1024), exclude=(0,),
                            help="classifier fits run side by side (the final ones and those of the "
                                 "internal folds): -1 = one per CPU core, 1 = one after another; the "
                                 "model is the same either way")
    cache_dir: str | None = _opt(None, help="feature cache folder (None: no disk cache)")
    output: str = _opt("model.allmodel", help="model bundle to write")
    finetune: bool = _opt(False, help="fine-tune the backbones on the training split first")
    finetuning: FinetuneConfig = _opt(factory=FinetuneConfig, help="how the backbones are fine-tuned")
    allow_finetune_overlap: bool = _opt(False, help="test on images the weights were fine-tuned on (stated)")
    extra: dict[str, Any] = _opt(factory=dict, help="free-form notes (model name, data description)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists; ``finetuning`` a nested table)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict`'s output.

        Fields of other versions are ignored and the flat ``finetune_*`` keys of older bundles land in
        ``finetuning``.
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        nested: dict[str, Any] = {LEGACY_FINETUNE_KEYS[k]: v for k, v in d.items() if k in LEGACY_FINETUNE_KEYS}
        for k, v in d.items():
            if k not in names:
                continue  # tolerate fields of newer versions
            if k == "finetuning":
                nested.update(v if isinstance(v, Mapping) else {})
                continue
            default = names[k].default
            kwargs[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
        return cls(**kwargs, finetuning=FinetuneConfig.from_dict(nested))

    def resolved_output(self) -> Path:
        """Where the bundle goes, ``~`` expanded."""
        return Path(self.output).expanduser()

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` for a setting that cannot work; returns the config."""
        _refuse_problems(self)
        unknown = [k for k in self.block_groups if k not in IMAGE_KINDS]
        if unknown:
            raise ConfigError(f"Unknown image kind {', '.join(map(str, unknown))} in block groups; choose from "
                              f"{', '.join(IMAGE_KINDS)}.")
        if len(self.fractions) != 3:
            raise ConfigError(f"Split fractions must be three numbers, not {self.fractions}.")
        self.finetuning.validate()
        return self

    # ---- the fine-tuning run, resolved against this config's shared settings -------------------
    @property
    def finetune_batch_size(self) -> int:
        """The batch per process when fine-tuning: ``finetuning.batch_size`` or the batch size."""
        return int(self.finetuning.batch_size or self.batch_size)

    def finetune_summary(self) -> dict[str, Any]:
        """The settings a fine-tuning run used, flat (stored in checkpoints, weight files and the card)."""
        ft = self.finetuning
        return {"epochs": int(ft.epochs), "patience": int(ft.patience), "min_delta": float(ft.min_delta),
                "lr": float(ft.lr), "weight_decay": float(ft.weight_decay), "batch_size": self.finetune_batch_size,
                "image_size": int(self.image_size), "gamma": float(self.gamma), "weights": str(self.weights),
                "seed": int(self.seed), "num_workers": self.num_workers, "amp": bool(ft.amp),
                "deterministic": bool(ft.deterministic), "channels_last": ft.channels_last,
                "sync_bn": bool(ft.sync_bn), "stain_jitter": float(ft.stain_jitter)}


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def _owner(name: str) -> tuple[type, str]:
    """(class, field) of a setting: ``"layout"`` or ``"finetuning.epochs"``."""
    if name.startswith("finetuning."):
        return FinetuneConfig, name.split(".", 1)[1]
    return TrainConfig, name


def _allowed(meta: Mapping[str, Any]) -> str:
    """The allowed values of a field with ``meta``, in words."""
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo, hi = meta["bounds"]
    return f"{lo} to {hi}" + "".join(f", not {v}" for v in meta.get("exclude", ()))


def problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for setting ``name`` (``"image_size"``, ``"finetuning.epochs"``); None if nothing.

    Checks the field's ``choices`` (every element of a tuple; ``weights`` may also name a file) and
    ``bounds``; the value's type is the caller's to check. The message names the setting and what it allows.
    """
    f = _field(*_owner(name))
    meta = f.metadata
    if value is None and "None" in str(f.type):
        return None
    values = list(value) if isinstance(value, (tuple, list)) else [value]
    if meta.get("choices") and name != "weights":
        bad = [v for v in values if v not in meta["choices"]]
        if bad or not values:
            found = ", ".join(map(str, bad)) if bad else "nothing"
            return f"setting {name} is {found}; allowed: {_allowed(meta)}"
    elif meta.get("bounds"):
        lo, hi = meta["bounds"]
        for v in values:
            try:
                ok = lo <= v <= hi and v not in meta.get("exclude", ())  # NaN is neither
            except TypeError:
                ok = False
            if not ok:
                return f"setting {name} is {v!r}; allowed: {_allowed(meta)}"
    return None


def _refuse_problems(config: Any, prefix: str = "") -> None:
    """Raise ConfigError with the first :func:`problem` of ``config``'s fields (``prefix``: its place)."""
    for f in dataclasses.fields(config):
        if f.metadata.get("choices") or f.metadata.get("bounds"):
            message = problem(prefix + f.name, getattr(config, f.name))
            if message:
                raise ConfigError(message[0].upper() + message[1:] + ".")


def choices(name: str) -> tuple:
    """The allowed values of setting ``name`` (e.g. ``"layout"``); () when it is open."""
    return tuple(_field(*_owner(name)).metadata.get("choices") or ())


def describe(name: str) -> str:
    """The one-line description of setting ``name`` (e.g. ``"finetuning.lr"``)."""
    return str(_field(*_owner(name)).metadata.get("help") or "")


def default(name: str) -> Any:
    """The default value of setting ``name`` (e.g. ``"finetuning.patience"``)."""
    cls, attr = _owner(name)
    return getattr(cls(), attr)


def as_train_config(cfg: Any) -> TrainConfig:
    """A TrainConfig from a TrainConfig, a FinetuneConfig (nested into defaults), a mapping or None."""
    if isinstance(cfg, TrainConfig):
        return cfg
    if cfg is None:
        return TrainConfig()
    if isinstance(cfg, FinetuneConfig):
        return TrainConfig(finetuning=cfg)
    if isinstance(cfg, Mapping):
        return TrainConfig.from_dict(cfg)
    raise TypeError(f"not a training config: {type(cfg).__name__}")
