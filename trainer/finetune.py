"""Fine-tuning the CNN backbones as ALL-vs-normal classifiers before their features are extracted.

The paper's training setup: Adam (lr 1e-4, weight decay 1e-3), batch 32, up to 50 epochs, early
stopping with patience 10 on the validation loss (best weights kept), the paper's training
augmentations (``trainer.preprocess.train_transform``: rotation +-20 deg, flips, contrast, Gaussian
noise, normalisation). Each backbone gets a ``Linear(D, 1)`` head and is trained with
``BCEWithLogitsLoss(pos_weight = n_normal / n_ALL)`` of the training split (class imbalance).
The head is dropped afterwards: the returned backbone state_dict is what
``build_backbone(name, state_dict=...)`` and ``FeatureExtractor(state_dicts=...)`` load.

Speed on CUDA: autocast (bfloat16 where supported, else float16 with a GradScaler), channels_last,
fused Adam, pinned-memory DataLoader with persistent workers, ``cudnn.benchmark``; losses are summed
on the device and read once per epoch (no host-device sync inside the batch loop).

Reproducibility: the shuffling of epoch ``e`` and the augmentation of sample ``i`` in epoch ``e``
are functions of ``(seed, e, i)`` only, whatever the number of workers, so a resumed run draws the
same batches as an uninterrupted one. ``deterministic=True`` also turns on
``torch.use_deterministic_algorithms`` (warning on ops that have no deterministic kernel).

Checkpoints: with ``checkpoint_dir`` set, ``finetune_<backbone>.pt`` is written atomically after
every epoch (model, optimiser, scaler, epoch, early-stopping state, best weights, history, config;
tensors and plain containers only, read back with ``torch.load(weights_only=True)``); a later call
with the same data and settings resumes from it.

Several GPUs or machines: start the same command with ``torchrun``; with ``WORLD_SIZE > 1`` the
process group is joined (NCCL on CUDA, Gloo on CPU), the model is wrapped in
DistributedDataParallel, every process trains on its shard of each epoch (``batch_size`` is per
process), only rank 0 reports progress and writes files::

    torchrun --standalone --nproc_per_node=4 -m trainer.finetune DATA --output finetuned.safetensors

Command line: ``python -m trainer.finetune --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.atomic import atomic_write
from trainer.errors import AllguiError, Cancelled, DataError
from trainer.progress import CancelCheck, Progress
from trainer.progress import stage as progress_stage

CHECKPOINT_FORMAT = "allgui-finetune-checkpoint/1"

# Settings that change what a run computes; a checkpoint is resumed only when they are unchanged.
# (epochs, patience and min_delta may change: a finished run can be extended.)
_RUN_FIELDS = ("weights", "lr", "weight_decay", "batch_size", "image_size", "gamma", "seed", "amp",
               "deterministic", "channels_last", "sync_bn")


# --------------------------------------------------------------------------------------- config
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


def _as_finetune_config(cfg: Any) -> FinetuneConfig:
    if isinstance(cfg, FinetuneConfig):
        return cfg
    if cfg is None:
        return FinetuneConfig()
    if isinstance(cfg, Mapping):
        return FinetuneConfig.from_dict(cfg)
    return FinetuneConfig.from_train_config(cfg)


# ---------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``); idempotent.

    NCCL when CUDA is used, else Gloo. Without torchrun this does nothing and returns rank 0 of 1.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    use_cuda = torch.cuda.is_available() and str(device).lower() != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def dist_info() -> DistInfo:
    """The current process group's rank/world (rank 0 of 1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it: only this process should save or report."""
    return dist_info().is_main


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------------------- data
def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index)) % (2**63 - 1)


class FinetuneDataset(Dataset):
    """Images (paths or RGB uint8 arrays (H, W, 3)) and 0/1 labels as (tensor (3,S,S), float label).

    Indexed by ``i`` or by ``(i, epoch)``; with ``(i, epoch)`` the random augmentation is seeded
    from ``(seed, epoch, i)`` so it does not depend on worker processes or earlier draws.
    """

    def __init__(self, items: Sequence, labels: Sequence[int], image_size: int, gamma: float = 1.0,
                 train: bool = True, seed: int = 0) -> None:
        from trainer.preprocess import eval_transform, train_transform

        if len(items) != len(labels):
            raise DataError(f"{len(items)} images but {len(labels)} labels.")
        self.items = list(items)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        self.train = train
        self.seed = int(seed)
        make = train_transform if train else eval_transform
        self.transform = make(int(image_size), float(gamma))

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, i: int) -> np.ndarray:
        from trainer.imageio import as_rgb_uint8, read_image

        item = self.items[i]
        return as_rgb_uint8(item) if isinstance(item, np.ndarray) else read_image(item)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)
        img = self._image(i)
        if self.train and epoch is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_sample_seed(self.seed, epoch, i))
                x = self.transform(img)
        else:
            x = self.transform(img)
        return x, self.labels[i]


class EpochShardSampler(Sampler):
    """Yields ``(index, epoch)``: a permutation seeded by ``(seed, epoch)`` (or the identity when
    ``shuffle`` is False), this rank's share ``perm[rank::world_size]``.

    With ``pad`` the permutation is padded by wrapping so every rank gets the same number of
    samples (needed for DDP training); without it ranks may differ by one (exact evaluation).
    Call ``set_epoch`` before each epoch (works with persistent workers: indices are made here).
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size, self.pad = int(rank), int(world_size), bool(pad)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.pad and self.world_size > 1 and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order += (order * (extra // max(self.n, 1) + 1))[:extra]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter([(i, self.epoch) for i in self._indices()])

    def __len__(self) -> int:
        if self.pad and self.world_size > 1:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))


def _worker_init(worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 - OpenCV is optional here
        pass


def _auto_workers(device: torch.device, n_batches: int, world_size: int) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus // max(world_size, 1) - 1))
    return min(2, cpus) if n_batches > 1 else 0


def _loader(ds: FinetuneDataset, sampler: EpochShardSampler, batch_size: int, workers: int,
            device: torch.device, drop_last: bool) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


# ---------------------------------------------------------------------------- early stopping
class EarlyStopping:
    """Patience rule on a loss: ``step(loss)`` returns True when the loss is a new best
    (``loss < best - min_delta``); ``should_stop`` once ``patience`` epochs in a row did not improve."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.epochs = 0

    def step(self, loss: float) -> bool:
        self.epochs += 1
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = float(loss), self.epochs, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.epochs = int(state["epochs"])


# ------------------------------------------------------------------------------- checkpoints
def checkpoint_path(checkpoint_dir: str | os.PathLike, name: str) -> Path:
    """Where the checkpoint of backbone ``name`` lives."""
    return Path(checkpoint_dir) / f"finetune_{name}.pt"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fine-tuning checkpoint safely (``weights_only=True``: tensors and containers only)."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AllguiError(f"Cannot read the fine-tuning checkpoint {Path(path).name}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise AllguiError(f"{Path(path).name} is not an allgui fine-tuning checkpoint.")
    return ckpt


def _data_fingerprint(items: Sequence, labels: Sequence[int]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for item, label in zip(items, labels):
        if isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            h.update(f"a{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
        else:
            h.update(f"p{os.fspath(item)}".encode())
        h.update(f"|{int(label)};".encode())
    return h.hexdigest()


def _run_key(name: str, cfg: FinetuneConfig, world_size: int, train_fp: str, val_fp: str) -> str:
    d = cfg.to_dict()
    text = json.dumps({"backbone": name, "world_size": world_size, "train": train_fp, "val": val_fp,
                       **{k: d[k] for k in _RUN_FIELDS}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` in the standard (contiguous) layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------- helpers
def _resolve_device(device: Any, info: DistInfo) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    else:
        from trainer.features import resolve_device

        dev = resolve_device(str(device or "auto"))
    if dev.type == "cuda" and info.active and info.world_size > 1:
        dev = torch.device("cuda", info.local_rank)
    return dev


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def _determinism(deterministic: bool, device: torch.device):
    """Set cuDNN / deterministic-algorithm flags for the run and restore them afterwards."""
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev[2], prev[3]


def _check_labels(labels: np.ndarray, what: str) -> None:
    if labels.size == 0:
        raise DataError(f"The {what} split for fine-tuning is empty.")
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise DataError(f"Fine-tuning needs labels 0 (normal) and 1 (ALL); the {what} split has {sorted(bad)}.")


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ------------------------------------------------------------------------------------ training
def finetune_backbone(
    name: str,
    train_items: Sequence,
    train_labels: Sequence[int],
    val_items: Sequence,
    val_labels: Sequence[int],
    cfg: FinetuneConfig | Any = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune backbone ``name`` (+ a Linear(D, 1) head) on the training images; keep the
    weights of the epoch with the lowest validation loss.

    Items are image paths or RGB uint8 arrays (H, W, 3); labels 0 = normal, 1 = ALL. ``cfg`` is a
    ``FinetuneConfig``, a ``TrainConfig`` or a dict. Returns ``(state_dict, history)``: the
    backbone's weights only (CPU tensors, loadable by ``build_backbone(name, state_dict=...)``) and a
    history dict with per-epoch lists ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``,
    ``seconds``, ``train_images_per_s`` and ``best_epoch``, ``best_val_loss``, ``stopped_early``,
    ``resumed_from_epoch``, ``pos_weight``, ``device``, ``amp``, ``init`` (the initial weights: ImageNet
    when asked for and available, else from scratch), ``config``.

    Raises ``Cancelled`` (the last finished epoch stays in the checkpoint), ``DataError`` for empty or
    one-class splits, ``AllguiError`` when training diverges.
    """
    from trainer.backbones import BACKBONES, build_classifier_model

    cfg = _as_finetune_config(cfg)
    cfg.validate()
    if name not in BACKBONES:
        raise AllguiError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.")
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_val = np.asarray(val_labels, dtype=np.int64)
    _check_labels(y_train, "training")
    _check_labels(y_val, "validation")
    n_pos, n_neg = int(y_train.sum()), int((y_train == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("The training split for fine-tuning holds only one class; it needs both "
                        "normal and ALL images.")

    info = dist_info()
    dev = _resolve_device(device, info)
    report = progress if (progress is not None and info.is_main) else None
    amp_dtype = _amp_dtype(dev, cfg.amp)
    use_scaler = amp_dtype == torch.float16
    channels_last = dev.type == "cuda" if cfg.channels_last is None else bool(cfg.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    # ---- data
    train_ds = FinetuneDataset(train_items, y_train, cfg.image_size, cfg.gamma, train=True, seed=cfg.seed)
    val_ds = FinetuneDataset(val_items, y_val, cfg.image_size, cfg.gamma, train=False)
    train_sampler = EpochShardSampler(len(train_ds), True, cfg.seed, info.rank, info.world_size, pad=True)
    val_sampler = EpochShardSampler(len(val_ds), False, cfg.seed, info.rank, info.world_size, pad=False)
    bs = int(cfg.batch_size)
    drop_last = len(train_sampler) > bs  # avoid a last batch of 1 (BatchNorm) unless the split is tiny
    n_batches = len(train_sampler) // bs if drop_last else math.ceil(len(train_sampler) / bs)
    workers = cfg.num_workers
    if workers is None:
        workers = _auto_workers(dev, n_batches, info.world_size)
    train_loader = _loader(train_ds, train_sampler, bs, int(workers), dev, drop_last)
    val_loader = _loader(val_ds, val_sampler, bs, int(workers), dev, False)

    # ---- model, loss, optimiser
    init = str(cfg.weights)
    try:
        model = build_classifier_model(name, cfg.weights, num_classes=1, seed=cfg.seed)
    except AllguiError as exc:
        if init.lower() != "imagenet":
            raise
        # the rule: ImageNet weights when available, from scratch otherwise
        init = f"none (ImageNet weights unavailable: {exc})"
        if report:
            report(0.0, f"{name}: ImageNet weights unavailable, fine-tuning from scratch")
        model = build_classifier_model(name, "none", num_classes=1, seed=cfg.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    if info.active and cfg.sync_bn and dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dev, memory_format=memory_format)
    pos_weight = torch.tensor([n_neg / n_pos], dtype=torch.float32, device=dev)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    fused = dev.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=fused or None)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_scaler)
    stopper = EarlyStopping(cfg.patience, cfg.min_delta)
    history: dict[str, Any] = {"epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": [],
                               "seconds": [], "train_images_per_s": []}
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 0
    resumed_from = 0

    # ---- resume
    ckpt_file = checkpoint_path(checkpoint_dir, name) if checkpoint_dir is not None else None
    run_key = _run_key(name, cfg, info.world_size, _data_fingerprint(train_items, y_train),
                       _data_fingerprint(val_items, y_val))
    if ckpt_file is not None and resume:
        ckpt = None
        if ckpt_file.is_file():
            try:
                ckpt = load_checkpoint(ckpt_file)
            except AllguiError as exc:
                if report:
                    report(0.0, f"{name}: starting afresh ({exc})")
            if ckpt is not None and ckpt.get("run_key") != run_key:
                if report:
                    report(0.0, f"{name}: the checkpoint is for other data or settings; starting afresh")
                ckpt = None
        if info.active:  # every rank takes part, with or without a file: resume only if all can
            ok = torch.tensor([0 if ckpt is None else 1], device=dev if dev.type == "cuda" else "cpu")
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if int(ok.item()) == 0:
                ckpt = None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scaler"] and scaler.is_enabled():  # empty when saved without fp16 scaling
                scaler.load_state_dict(ckpt["scaler"])
            stopper.load_state_dict(ckpt["stopper"])
            history.update({k: list(v) for k, v in ckpt["history"].items() if k in history})
            best_state = ckpt["best_model"] if ckpt["best_model"] is not None else ckpt["model"]
            start_epoch = resumed_from = int(ckpt["epoch"])
            if report:
                report(start_epoch / cfg.epochs, f"{name}: resumed after epoch {start_epoch}")

    train_model: nn.Module = model
    if info.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        train_model = DDP(model, device_ids=ids, gradient_as_bucket_view=True)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=amp_dtype)

    def cancelled() -> bool:
        return cancel is not None and bool(cancel())

    epochs = int(cfg.epochs)
    with _determinism(cfg.deterministic, dev):
        epoch = start_epoch
        while epoch < epochs and not stopper.should_stop:
            t0 = time.perf_counter()
            train_sampler.set_epoch(epoch)
            # -- train
            train_model.train()
            loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
            n_seen = torch.zeros((), dtype=torch.float32, device=dev)
            n_images = 0
            for b, (x, y) in enumerate(train_loader):
                if not info.active and cancelled():
                    raise Cancelled(f"Fine-tuning {name} was cancelled.")
                x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
                y = y.to(dev, non_blocking=True)
                with autocast():
                    logits = train_model(x).squeeze(1)
                loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # skipped fp16 overflow steps do not poison the epoch mean; no sync here
                finite = torch.isfinite(loss.detach())
                loss_sum += torch.where(finite, loss.detach(), 0.0) * x.shape[0]
                n_seen += finite.float() * x.shape[0]
                n_images += x.shape[0]
                if report:
                    report((epoch + (b + 1) / max(n_batches, 1)) / epochs,
                           f"{name}: epoch {epoch + 1}/{epochs}, batch {b + 1}/{n_batches}")
            # -- validate (unwrapped model: no DDP collectives, ranks may hold unequal shards)
            model.eval()
            v_loss = torch.zeros((), dtype=torch.float32, device=dev)
            v_correct = torch.zeros((), dtype=torch.float32, device=dev)
            v_n = torch.zeros((), dtype=torch.float32, device=dev)
            with torch.inference_mode():
                for x, y in val_loader:
                    x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
                    y = y.to(dev, non_blocking=True)
                    with autocast():
                        logits = model(x).squeeze(1)
                    logits = logits.float()
                    v_loss += criterion(logits, y) * x.shape[0]
                    v_correct += ((logits > 0).float() == y).sum()
                    v_n += x.shape[0]
            stop_flag = torch.tensor(1.0 if (info.active and cancelled()) else 0.0, device=dev)
            totals = torch.stack([loss_sum, n_seen, v_loss, v_correct, v_n, stop_flag])
            totals = _all_reduce_sum(totals).tolist()  # the one host-device sync of the epoch
            train_loss = totals[0] / totals[1] if totals[1] > 0 else math.nan
            val_loss = totals[2] / max(totals[4], 1.0)
            val_acc = totals[3] / max(totals[4], 1.0)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                raise AllguiError(
                    f"Fine-tuning {name} diverged at epoch {epoch + 1} (training loss {train_loss}, "
                    f"validation loss {val_loss}); lower the learning rate or turn mixed precision off.")
            seconds = time.perf_counter() - t0
            epoch += 1
            history["epoch"].append(epoch)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            history["seconds"].append(seconds)
            history["train_images_per_s"].append(n_images * info.world_size / max(seconds, 1e-9))
            improved = stopper.step(val_loss) or best_state is None
            if improved:
                best_state = _cpu_state(model)
            if report:
                report(epoch / epochs,
                       f"{name}: epoch {epoch}/{epochs} train loss {train_loss:.4f}, "
                       f"validation loss {val_loss:.4f}, accuracy {val_acc:.3f}")
            if ckpt_file is not None and info.is_main:
                atomic_write(ckpt_file, functools.partial(torch.save, {
                    "format": CHECKPOINT_FORMAT, "backbone": name, "run_key": run_key,
                    "config": cfg.to_dict(), "epoch": epoch, "model": best_state if improved else _cpu_state(model),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "stopper": stopper.state_dict(),
                    # None: the best weights are this epoch's ("model"), not stored twice
                    "best_model": None if improved else best_state,
                    "history": {k: list(v) for k, v in history.items()},
                }))
            _barrier()
            if totals[5] > 0:  # distributed cancel: every rank stops after the same epoch
                raise Cancelled(f"Fine-tuning {name} was cancelled.")

    assert best_state is not None
    model.load_state_dict(best_state)
    backbone_state = {k[len("backbone."):]: v for k, v in best_state.items() if k.startswith("backbone.")}
    history.update({
        "backbone": name,
        "init": init,
        "best_epoch": stopper.best_epoch,
        "best_val_loss": stopper.best,
        "stopped_early": stopper.should_stop and len(history["epoch"]) < epochs,
        "resumed_from_epoch": resumed_from,
        "pos_weight": n_neg / n_pos,
        "device": str(dev),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
        "world_size": info.world_size,
        "config": cfg.to_dict(),
    })
    return backbone_state, history


def finetune_backbones(
    train_items: Sequence,
    train_labels: Sequence[int],
    val_items: Sequence,
    val_labels: Sequence[int],
    cfg: FinetuneConfig | Any = None,
    backbones: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Fine-tune every backbone in turn; returns ``({name: state_dict}, {name: history})``.

    ``backbones`` defaults to ``cfg.backbones`` for a TrainConfig, else both paper backbones.
    ``checkpoint_dir`` defaults to a TrainConfig's ``finetune_checkpoint_dir``. Under torchrun the
    process group is joined first (see ``setup_distributed``).
    """
    if checkpoint_dir is None:
        checkpoint_dir = getattr(cfg, "finetune_checkpoint_dir", None)
    if backbones is None:
        backbones = tuple(getattr(cfg, "backbones", None) or ("densenet121", "resnet34"))
    setup_distributed(str(device))
    states: dict[str, dict[str, torch.Tensor]] = {}
    histories: dict[str, dict[str, Any]] = {}
    k = len(backbones)
    for j, name in enumerate(backbones):
        sub = None
        if progress is not None:
            def sub(f: float, msg: str, j: int = j) -> None:
                progress((j + f) / k, msg)
        states[name], histories[name] = finetune_backbone(
            name, train_items, train_labels, val_items, val_labels, cfg, device, sub, cancel,
            checkpoint_dir, resume)
    return states, histories


# ------------------------------------------------------------------------------ weights files
def save_state_dicts(path: str | os.PathLike, state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
                     metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``{backbone: state_dict}`` to one safetensors file (keys ``<backbone>/<param>``, the
    layout of the model bundle), atomically; ``metadata`` is stored as JSON strings. Give it
    ``{"finetune_images": finetune_provenance(train, val)}`` so that evaluation and training can
    refuse to test on the fine-tuning images (see :func:`finetune_overlap`)."""
    from safetensors.torch import save

    path = Path(path)
    flat = {f"{name}/{k}": v.detach().cpu().contiguous()
            for name, sd in state_dicts.items() for k, v in sd.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    data = save(flat, metadata=meta)
    atomic_write(path, lambda fh: fh.write(data))
    return path


FINETUNE_IMAGES_KEY = "finetune_images"


def finetune_provenance(train_items: Sequence, val_items: Sequence) -> dict[str, list[str]]:
    """``{"train": [...], "validation": [...]}``: sorted content hashes
    (``trainer.imageio.content_hash``) of the images a run was fine-tuned and early-stopped on,
    for a weights file's metadata (key ``"finetune_images"``)."""
    from trainer.imageio import content_hash

    def hashes(items):
        return sorted({content_hash(np.ascontiguousarray(i) if isinstance(i, np.ndarray) else i)
                       for i in items})
    return {"train": hashes(train_items), "validation": hashes(val_items)}


def weights_metadata(weights: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a safetensors weights file (JSON values decoded); {} for 'none', 'imagenet',
    other files or a file without metadata."""
    if not isinstance(weights, (str, os.PathLike)) or str(weights).lower() in ("none", "imagenet"):
        return {}
    path = Path(weights)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw = fh.metadata() or {}
    except Exception:
        return {}  # unreadable weights are reported where they are loaded
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def finetune_overlap(weights: str | os.PathLike, items: Sequence, *, allow: bool = False,
                     what: str = "test") -> dict[str, Any] | None:
    """Refuse to test on images the backbone weights were fine-tuned on.

    ``weights``: the configured backbone weights; ``items``: the images that will be tested
    (paths or arrays). When the weights file records its fine-tuning images (see
    :func:`finetune_provenance`) and any of ``items`` is among them (same content, whatever the
    name), raises ``DataError`` unless ``allow``. Returns None when the file records nothing,
    else ``{"weights", "n_checked", "n_train", "n_validation", "allowed"}`` (counts of ``items``
    among the fine-tuning training / validation images).
    """
    from trainer.imageio import content_hash

    seen = weights_metadata(weights).get(FINETUNE_IMAGES_KEY)
    if not isinstance(seen, Mapping):
        return None
    tr, va = set(seen.get("train") or ()), set(seen.get("validation") or ())
    hashes = [content_hash(np.ascontiguousarray(i) if isinstance(i, np.ndarray) else i) for i in items]
    n_tr = sum(h in tr for h in hashes)
    n_va = sum(h in va and h not in tr for h in hashes)
    info = {"weights": Path(weights).name, "n_checked": len(hashes), "n_train": int(n_tr),
            "n_validation": int(n_va), "allowed": bool(allow)}
    if (n_tr or n_va) and not allow:
        raise DataError(
            f"{n_tr + n_va} of the {len(hashes)} {what} images were used to fine-tune the backbone "
            f"weights {Path(weights).name} ({n_tr} in its training, {n_va} in its validation "
            "images): results on them would be optimistic. Evaluate on other images, or pass "
            "--allow-finetune-overlap to go ahead anyway (the report then says so).")
    return info


def load_state_dicts(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a file written by ``save_state_dicts``: ``({backbone: state_dict}, metadata)``."""
    from safetensors import safe_open

    try:
        out: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            for key in fh.keys():
                name, _, param = key.partition("/")
                out.setdefault(name, {})[param] = fh.get_tensor(key)
    except Exception as exc:
        raise AllguiError(f"Cannot read fine-tuned weights from {Path(path).name}: {exc}") from exc
    return out, meta


# ---------------------------------------------------------------------------------- ablation
def _scores_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = (score >= threshold).astype(int)
    return {"accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auc": float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else math.nan,
            "threshold": float(threshold)}


def classical_stage_scores(feats: Mapping[str, np.ndarray], y: Sequence[int], train_idx, val_idx,
                           test_idx, config: Any, classifier: str = "ensemble") -> dict[str, float]:
    """Test metrics of the classical stage fitted on ``feats`` rows ``train_idx`` (validation rows
    ``val_idx``): ``classifier='ensemble'`` is ``trainer.model.fit_model`` (fusion, five classifiers,
    weighted vote, calibration, Youden threshold); ``'logreg'`` a standardised logistic regression
    on the concatenated features at threshold 0.5. Returns accuracy, balanced_accuracy, auc, threshold.
    """
    y = np.asarray(y, dtype=int)
    names = [b for b in getattr(config, "backbones", feats.keys()) if b in feats]
    if classifier == "ensemble":
        from trainer.model import fit_model, subset

        model = fit_model(feats, y, train_idx, val_idx, config, backbones=tuple(names))
        score = model.predict_details(subset(feats, test_idx))["calibrated"]
        return _scores_metrics(y[test_idx], score, model.threshold_)
    if classifier == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.hstack([np.asarray(feats[b], dtype=np.float64) for b in names])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000,
                                                                  class_weight="balanced"))
        clf.fit(X[train_idx], y[train_idx])
        return _scores_metrics(y[test_idx], clf.predict_proba(X[test_idx])[:, 1], 0.5)
    raise AllguiError(f"Unknown classifier {classifier!r} for the ablation; use 'ensemble' or 'logreg'.")


def frozen_vs_finetuned(
    items: Sequence,
    labels: Sequence[int],
    train_idx,
    val_idx,
    test_idx,
    config: Any,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    classifiers: Sequence[str] = ("ensemble",),
    device: str = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Ablation: the classical stage on frozen features (``config.weights``) vs on fine-tuned ones.

    Fine-tunes on ``train_idx`` / ``val_idx`` unless ``state_dicts`` are given. ``config`` is a
    TrainConfig (image_size, gamma, weights, seed, backbones, finetune_* and the classical-stage
    options). ``classifiers``: classical stages to compare, each ``'ensemble'`` or ``'logreg'``
    (see ``classical_stage_scores``). Returns ``{'frozen': {classifier: metrics}, 'finetuned':
    {classifier: metrics}, 'histories': {...}, 'state_dicts': {...}, 'seconds': {'finetune': s,
    'features': s, 'classical': s}}``; metrics on ``test_idx``.
    """
    from trainer.features import FeatureExtractor

    y = np.asarray(labels, dtype=int)
    items = list(items)
    train_idx, val_idx, test_idx = (np.asarray(i, dtype=int) for i in (train_idx, val_idx, test_idx))
    backbones = tuple(config.backbones)

    histories: dict[str, Any] = {}
    t0 = time.perf_counter()
    if state_dicts is None:
        state_dicts, histories = finetune_backbones(
            [items[i] for i in train_idx], y[train_idx], [items[i] for i in val_idx], y[val_idx],
            config, backbones, device, progress_stage(progress, 0.0, 0.7), cancel, checkpoint_dir)
    t1 = time.perf_counter()
    common = dict(backbones=backbones, image_size=config.image_size, gamma=config.gamma,
                  batch_size=config.batch_size, num_workers=config.num_workers, device=device,
                  seed=config.seed)
    frozen = FeatureExtractor(weights=config.weights, **common).extract(
        items, progress_stage(progress, 0.7, 0.8), cancel)
    tuned = FeatureExtractor(weights=config.weights, state_dicts=state_dicts, **common).extract(
        items, progress_stage(progress, 0.8, 0.9), cancel)
    t2 = time.perf_counter()
    out: dict[str, Any] = {
        kind: {c: classical_stage_scores(feats, y, train_idx, val_idx, test_idx, config, c)
               for c in classifiers}
        for kind, feats in (("frozen", frozen), ("finetuned", tuned))
    }
    out.update(histories=histories, state_dicts=dict(state_dicts),
               seconds={"finetune": t1 - t0, "features": t2 - t1, "classical": time.perf_counter() - t2})
    if progress is not None:
        progress(1.0, "Ablation done")
    return out


# ---------------------------------------------------------------------------------------- CLI
def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``python -m trainer.finetune`` (for reuse as an ``allgui-train finetune`` subcommand)."""
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


def run_cli(args: argparse.Namespace) -> int:
    """Load the data, split it, fine-tune, write ``--output`` (rank 0). Returns an exit code."""
    from trainer.data import load_dataset
    info = setup_distributed(args.device)
    say = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    ds = load_dataset(args.data, layout=args.layout, positive=args.positive,
                      labels_csv=args.labels_csv, group_column=args.group_column)
    from trainer.config import TrainConfig
    from trainer.pipeline import resolve_protocol, split_dataset

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
    _barrier()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_finetune_arguments(argparse.ArgumentParser(
        prog="python -m trainer.finetune",
        description="Fine-tune the CNN backbones as ALL-vs-normal classifiers (the paper's setup) and "
                    "write their weights to a safetensors file. Run it under torchrun for several GPUs."))
    args = parser.parse_args(argv)
    if args.deterministic:  # must be set before cuBLAS starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        return run_cli(args)
    except AllguiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
