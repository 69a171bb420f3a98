"""Fine-tuning the CNN backbones as ALL-vs-normal classifiers before their features are extracted.

The paper's training setup: Adam (lr 1e-4, weight decay 1e-3), batch 32, up to 50 epochs, early
stopping with patience 10 on the validation loss (best weights kept), the paper's training
augmentations (``trainer.vision.preprocess.train_transform``: rotation +-20 deg, flips, contrast, Gaussian
noise, normalisation), and with ``finetuning.stain_jitter`` a colour augmentation in stain space for
robustness to another laboratory's staining (off by default, as in the paper). Each backbone gets a
``Linear(D, 1)`` head and is trained with ``BCEWithLogitsLoss(pos_weight = n_normal / n_ALL)`` of the
training split (class imbalance).
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

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.config import BACKBONE_NAMES, ConfigError, FinetuneConfig, TrainConfig, as_train_config, problem
from trainer.training.checkpoints import (
    EarlyStopping,
    FinetuneRun,
    checkpoint_path,
    checkpoint_to_resume,
    cpu_state,
    data_fingerprint,
    run_key,
)
from trainer.training.distributed import DistInfo, all_reduce_sum, barrier, dist_info, setup_distributed
from trainer.training.finetune_data import EpochShardSampler, FinetuneDataset, auto_workers, make_loader
from trainer.training.precision import Precision, amp_dtype, determinism, resolve_training_device
from trainer.util.atomic import atomic_write
from trainer.util.errors import AllguiError, Cancelled, DataError
from trainer.util.progress import CancelCheck, Progress, Stages, check_cancel
from trainer.vision.backbones import BACKBONES, build_classifier_model


def _check_labels(labels: np.ndarray, what: str) -> None:
    if labels.size == 0:
        raise DataError(f"The {what} split for fine-tuning is empty.")
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise DataError(f"Fine-tuning needs labels 0 (normal) and 1 (ALL); the {what} split has {sorted(bad)}.")


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader, precision: Precision,
                    on_batch: Callable[[int], None] | None = None,
                    cancelled: Callable[[], bool] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``loader`` with an optimiser step per batch.

    Parameters
    ----------
    model, criterion, optimizer, scaler
        The (possibly DDP-wrapped) network, its loss, optimiser and fp16 gradient scaler.
    loader
        Batches of ``(images, labels)``.
    precision
        Device, autocast dtype and memory format of the batches.
    on_batch
        Called with the batch index after every step (progress).
    cancelled
        Asked before every batch; True raises :class:`Cancelled`.

    Returns
    -------
    loss_sum, n_counted : torch.Tensor
        Sum of the batch losses times their sizes, and the images they cover, on the device
        (no host-device sync here); steps with a non-finite loss (skipped fp16 overflow) are left out.
    n_images : int
        Images seen.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float32, device=precision.device)
    n_counted = torch.zeros((), dtype=torch.float32, device=precision.device)
    n_images = 0
    for b, (x, y) in enumerate(loader):
        check_cancel(cancelled, "Fine-tuning was cancelled.")
        x, y = precision.batch(x, y)
        with precision.autocast():
            logits = model(x).squeeze(1)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        finite = torch.isfinite(loss.detach())
        loss_sum += torch.where(finite, loss.detach(), 0.0) * x.shape[0]
        n_counted += finite.float() * x.shape[0]
        n_images += x.shape[0]
        if on_batch is not None:
            on_batch(b)
    return loss_sum, n_counted, n_images


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, loader, precision: Precision) -> torch.Tensor:
    """Validation totals of ``model`` (unwrapped: no DDP collectives, ranks may hold unequal shards).

    Returns
    -------
    torch.Tensor
        ``[loss sum, correct, images]`` on the device; the loss sum weights each batch by its size.
    """
    model.eval()
    loss_sum, correct, images = torch.zeros(3, dtype=torch.float32, device=precision.device)
    for x, y in loader:
        x, y = precision.batch(x, y)
        with precision.autocast():
            logits = model(x).squeeze(1)
        logits = logits.float()
        loss_sum += criterion(logits, y) * x.shape[0]
        correct += ((logits > 0).float() == y).sum()
        images += x.shape[0]
    return torch.stack([loss_sum, correct, images])


def _labels(train_labels, val_labels) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Checked 0/1 label arrays and the training split's (n_ALL, n_normal)."""
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_val = np.asarray(val_labels, dtype=np.int64)
    _check_labels(y_train, "training")
    _check_labels(y_val, "validation")
    n_pos, n_neg = int(y_train.sum()), int((y_train == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("The training split for fine-tuning holds only one class; it needs both "
                        "normal and ALL images.")
    return y_train, y_val, n_pos, n_neg


def _network(name: str, cfg: SimpleNamespace, report: Progress | None) -> tuple[nn.Module, str]:
    """Backbone + Linear(D, 1) head, trainable, and what it started from.

    Started from ImageNet weights when asked for and available, else from scratch (the issue's rule).
    """
    init = str(cfg.weights)
    try:
        model = build_classifier_model(name, cfg.weights, num_classes=1, seed=cfg.seed)
    except AllguiError as exc:
        if init.lower() != "imagenet":
            raise
        init = f"none (ImageNet weights unavailable: {exc})"
        if report:
            report(0.0, f"{name}: ImageNet weights unavailable, fine-tuning from scratch")
        model = build_classifier_model(name, "none", num_classes=1, seed=cfg.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, init


def finetune_backbone(name: str, train_items: Sequence, train_labels: Sequence[int], val_items: Sequence,
                      val_labels: Sequence[int], cfg: TrainConfig | FinetuneConfig | Any = None,
                      device: str | torch.device = "auto", progress: Progress | None = None,
                      cancel: CancelCheck | None = None, checkpoint_dir: str | os.PathLike | None = None,
                      resume: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune one backbone and keep the weights of the epoch with the lowest validation loss.

    The backbone gets a Linear(D, 1) head, trained with ``BCEWithLogitsLoss(pos_weight=n_normal /
    n_ALL)``; the head is dropped afterwards.

    Parameters
    ----------
    name : str
        Backbone name (see :data:`trainer.vision.backbones.BACKBONES`).
    train_items, val_items : sequence
        Image paths or RGB uint8 arrays (H, W, 3).
    train_labels, val_labels : sequence of int
        0 = normal, 1 = ALL.
    cfg : TrainConfig, FinetuneConfig or dict, optional
        The run's settings: the config's ``finetuning`` part with its image size, gamma, initial
        weights, seed and workers (a FinetuneConfig alone: with the default TrainConfig; default:
        the paper's set-up).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or a device.
    progress, cancel : callable, optional
        Progress callback and cancel check (see :mod:`trainer.util.progress`).
    checkpoint_dir : path, optional
        Write a checkpoint there after every epoch; with ``resume`` a rerun of the same data and
        settings continues from it.
    resume : bool
        Resume from a matching checkpoint.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        The backbone's weights only (CPU tensors, loadable by ``build_backbone(name, state_dict=...)``).
    history : dict
        Per-epoch lists ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds``,
        ``train_images_per_s``, and ``best_epoch``, ``best_val_loss``, ``stopped_early``,
        ``resumed_from_epoch``, ``pos_weight``, ``device``, ``amp``, ``init`` (the initial weights:
        ImageNet when asked for and available, else from scratch), ``world_size``, ``config``.

    Raises
    ------
    Cancelled
        On cancel (the last finished epoch stays in the checkpoint).
    DataError
        For empty or one-class splits.
    AllguiError
        When training diverges.
    """
    settings = _run_settings(name, cfg)
    y_train, y_val, n_pos, n_neg = _labels(train_labels, val_labels)
    setup = _setup(name, settings, device, progress, cancel)
    loaders = _loaders(setup, (train_items, y_train), (val_items, y_val))
    model, init = _network(name, setup.cfg, setup.report)
    run, criterion = _new_run(setup, model, pos_weight=n_neg / n_pos)
    key = run_key(name, settings, setup.info.world_size, data_fingerprint(train_items, y_train),
                  data_fingerprint(val_items, y_val))
    ckpt_file = checkpoint_path(checkpoint_dir, name) if checkpoint_dir is not None else None
    ckpt = checkpoint_to_resume(ckpt_file, key, resume, setup.info, setup.precision.device, name, setup.report)
    if ckpt is not None:
        run.resume(ckpt)
        if setup.report:
            setup.report(run.epoch / setup.cfg.epochs, f"{name}: resumed after epoch {run.epoch}")
    resumed_from = run.epoch

    def save(improved: bool) -> None:
        if ckpt_file is not None and setup.info.is_main:
            atomic_write(ckpt_file, functools.partial(torch.save, run.checkpoint(name, key, settings, improved)))

    train_epochs(setup, run, criterion, loaders, save)
    return _backbone_state(run), _history(setup, run, init, resumed_from, n_neg / n_pos)


@dataclass
class _Setup:
    """What every step of one backbone's fine-tuning reads."""

    name: str
    cfg: SimpleNamespace          # the run's flat settings (``TrainConfig.finetune_summary``)
    settings: dict[str, Any]      # the same as a dict: in the checkpoints and the history
    info: DistInfo
    precision: Precision          # device, autocast dtype, memory format
    report: Progress | None       # the progress callback, on the main process only
    cancel: CancelCheck | None


class _Loaders(NamedTuple):
    """The run's data loaders and what the epochs loop needs of them."""

    train: Any                    # DataLoader of (images, labels) over train_sampler
    val: Any
    train_sampler: EpochShardSampler
    n_batches: int                # training batches per epoch and process


def _run_settings(name: str, cfg) -> dict[str, Any]:
    """The checked flat settings of fine-tuning backbone ``name`` with ``cfg`` (see :func:`finetune_backbone`)."""
    config = as_train_config(cfg)
    config.finetuning.validate()
    if problem("image_size", config.image_size):
        raise ConfigError(problem("image_size", config.image_size) + ".")
    if name not in BACKBONES:
        raise AllguiError(f"Unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.")
    return config.finetune_summary()


def _setup(name: str, settings: dict[str, Any], device, progress: Progress | None,
           cancel: CancelCheck | None) -> _Setup:
    """The run's device, arithmetic and process place (under torchrun only rank 0 reports progress)."""
    cfg = SimpleNamespace(**settings)
    info = dist_info()
    dev = resolve_training_device(device, info)
    amp = amp_dtype(dev, cfg.amp)
    channels_last = dev.type == "cuda" if cfg.channels_last is None else bool(cfg.channels_last)
    precision = Precision(dev, amp, torch.channels_last if channels_last else torch.contiguous_format)
    report = progress if (progress is not None and info.is_main) else None
    return _Setup(name, cfg, settings, info, precision, report, cancel)


def _loaders(setup: _Setup, train: tuple, val: tuple) -> _Loaders:
    """Training and validation loaders of ``(items, labels)`` pairs, sharded over the processes."""
    cfg, info, dev = setup.cfg, setup.info, setup.precision.device
    train_ds = FinetuneDataset(*train, cfg.image_size, cfg.gamma, train=True, seed=cfg.seed,
                               stain_jitter=cfg.stain_jitter)
    val_ds = FinetuneDataset(*val, cfg.image_size, cfg.gamma, train=False)
    train_sampler = EpochShardSampler(len(train_ds), True, cfg.seed, info.rank, info.world_size, pad=True)
    val_sampler = EpochShardSampler(len(val_ds), False, cfg.seed, info.rank, info.world_size, pad=False)
    bs = int(cfg.batch_size)
    drop_last = len(train_sampler) > bs  # avoid a last batch of 1 (BatchNorm) unless the split is tiny
    n_batches = len(train_sampler) // bs if drop_last else math.ceil(len(train_sampler) / bs)
    workers = auto_workers(dev, n_batches, info.world_size) if cfg.num_workers is None else cfg.num_workers
    return _Loaders(make_loader(train_ds, train_sampler, bs, int(workers), dev, drop_last),
                    make_loader(val_ds, val_sampler, bs, int(workers), dev, False), train_sampler, n_batches)


def _new_run(setup: _Setup, model: nn.Module, pos_weight: float) -> tuple[FinetuneRun, nn.Module]:
    """(the run's state at epoch 0 with ``model`` on the device, the weighted loss)."""
    cfg, dev, precision = setup.cfg, setup.precision.device, setup.precision
    if setup.info.active and cfg.sync_bn and dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dev, memory_format=precision.memory_format)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], dtype=torch.float32, device=dev))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=(dev.type == "cuda") or None)
    run = FinetuneRun(model, optimizer, torch.amp.GradScaler(dev.type, enabled=precision.amp_dtype == torch.float16),
                      EarlyStopping(cfg.patience, cfg.min_delta))
    return run, criterion


def train_epochs(setup: _Setup, run: FinetuneRun, criterion: nn.Module, loaders: _Loaders,
                 save: Callable[[bool], None]) -> None:
    """Epochs until ``cfg.epochs`` or early stopping; ``save(improved)`` after each (the checkpoint).

    Raises Cancelled (every rank after the same epoch under DDP) and AllguiError when the loss diverges.
    """
    name, info, dev, epochs = setup.name, setup.info, setup.precision.device, int(setup.cfg.epochs)
    train_model: nn.Module = run.model
    if info.active:
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        train_model = DDP(run.model, device_ids=ids, gradient_as_bucket_view=True)

    def cancelled() -> bool:
        return setup.cancel is not None and bool(setup.cancel())

    with determinism(setup.cfg.deterministic, dev):
        while run.epoch < epochs and not run.stopper.should_stop:
            t0 = time.perf_counter()
            loaders.train_sampler.set_epoch(run.epoch)
            try:
                loss_sum, n_counted, n_images = train_one_epoch(
                    train_model, criterion, run.optimizer, run.scaler, loaders.train, setup.precision,
                    _batch_reporter(setup, run.epoch, loaders.n_batches), None if info.active else cancelled)
            except Cancelled:
                raise Cancelled(f"Fine-tuning {name} was cancelled.") from None
            val = evaluate(run.model, criterion, loaders.val, setup.precision)
            stop_flag = torch.tensor([1.0 if (info.active and cancelled()) else 0.0], device=dev)
            totals = torch.cat([torch.stack([loss_sum, n_counted]), val, stop_flag])
            totals = EpochTotals(*all_reduce_sum(totals).tolist())  # the one host-device sync of the epoch
            save(_end_epoch(run, name, totals, n_images * info.world_size, time.perf_counter() - t0, epochs,
                            setup.report))
            barrier()
            if totals.stop > 0:  # distributed cancel: every rank stops after the same epoch
                raise Cancelled(f"Fine-tuning {name} was cancelled.")


def _batch_reporter(setup: _Setup, epoch: int, n_batches: int) -> Callable[[int], None] | None:
    """``on_batch(b)`` for :func:`train_one_epoch`: progress through the epochs, batch by batch."""
    if not setup.report:
        return None
    epochs = int(setup.cfg.epochs)

    def on_batch(b: int) -> None:
        setup.report((epoch + (b + 1) / max(n_batches, 1)) / epochs,
                     f"{setup.name}: epoch {epoch + 1}/{epochs}, batch {b + 1}/{n_batches}")

    return on_batch


def _backbone_state(run: FinetuneRun) -> dict[str, torch.Tensor]:
    """The best epoch's backbone weights (the head dropped), also loaded into ``run.model``."""
    assert run.best_state is not None
    run.model.load_state_dict(run.best_state)
    return {k[len("backbone."):]: v for k, v in run.best_state.items() if k.startswith("backbone.")}


def _history(setup: _Setup, run: FinetuneRun, init: str, resumed_from: int, pos_weight: float) -> dict[str, Any]:
    """The run's per-epoch history with its summary (see :func:`finetune_backbone`'s Returns)."""
    amp = setup.precision.amp_dtype
    run.history.update({
        "backbone": setup.name, "init": init, "best_epoch": run.stopper.best_epoch,
        "best_val_loss": run.stopper.best,
        "stopped_early": run.stopper.should_stop and len(run.history["epoch"]) < int(setup.cfg.epochs),
        "resumed_from_epoch": resumed_from, "pos_weight": pos_weight, "device": str(setup.precision.device),
        "amp": str(amp).replace("torch.", "") if amp is not None else "off",
        "world_size": setup.info.world_size, "config": setup.settings,
    })
    return run.history


class EpochTotals(NamedTuple):
    """An epoch's sums over every rank.

    What :func:`train_one_epoch` and :func:`evaluate` return, and the ranks' cancel flags.
    """

    train_loss_sum: float
    train_images: float      # the images of steps with a finite loss
    val_loss_sum: float
    val_correct: float
    val_images: float
    stop: float              # ranks asked to stop


def _end_epoch(run: FinetuneRun, name: str, totals: EpochTotals, n_images: int, seconds: float, epochs: int,
               report: Progress | None) -> bool:
    """Record an epoch's losses in the run's history and early-stopping rule; True when it is a new best."""
    train_loss = totals.train_loss_sum / totals.train_images if totals.train_images > 0 else math.nan
    val_loss = totals.val_loss_sum / max(totals.val_images, 1.0)
    val_acc = totals.val_correct / max(totals.val_images, 1.0)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise AllguiError(
            f"Fine-tuning {name} diverged at epoch {run.epoch + 1} (training loss {train_loss}, "
            f"validation loss {val_loss}); lower the learning rate or turn mixed precision off.")
    run.epoch += 1
    for k, v in (("epoch", run.epoch), ("train_loss", train_loss), ("val_loss", val_loss),
                 ("val_accuracy", val_acc), ("seconds", seconds),
                 ("train_images_per_s", n_images / max(seconds, 1e-9))):
        run.history[k].append(v)
    improved = run.stopper.step(val_loss) or run.best_state is None
    if improved:
        run.best_state = cpu_state(run.model)
    if report:
        report(run.epoch / epochs, f"{name}: epoch {run.epoch}/{epochs} train loss {train_loss:.4f}, "
                                   f"validation loss {val_loss:.4f}, accuracy {val_acc:.3f}")
    return improved


def finetune_backbones(
    train_items: Sequence,
    train_labels: Sequence[int],
    val_items: Sequence,
    val_labels: Sequence[int],
    cfg: TrainConfig | FinetuneConfig | Any = None,
    backbones: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Fine-tune every backbone in turn; returns ``({name: state_dict}, {name: history})``.

    ``backbones`` defaults to ``cfg.backbones`` for a TrainConfig, else both paper backbones.
    ``checkpoint_dir`` defaults to the config's ``finetuning.checkpoint_dir``. Under torchrun the
    process group is joined first (see ``setup_distributed``).
    """
    if checkpoint_dir is None:
        checkpoint_dir = getattr(getattr(cfg, "finetuning", cfg), "checkpoint_dir", None)
    if backbones is None:
        backbones = tuple(getattr(cfg, "backbones", None) or BACKBONE_NAMES)
    setup_distributed(str(device))
    states: dict[str, dict[str, torch.Tensor]] = {}
    histories: dict[str, dict[str, Any]] = {}
    # an equal share of the bar per backbone, named by position (a name given twice is fine-tuned twice)
    stages = Stages(progress, [(str(j), 1) for j in range(len(backbones))])
    for j, name in enumerate(backbones):
        states[name], histories[name] = finetune_backbone(
            name, train_items, train_labels, val_items, val_labels, cfg, device, stages.start(str(j)), cancel,
            checkpoint_dir, resume)
    return states, histories
