"""Fine-tuning the CNN backbones as ALL-vs-normal classifiers before their features are extracted.

The paper's training setup: Adam (lr 1e-4, weight decay 1e-3), batch 32, up to 50 epochs, early
stopping with patience 10 on the validation loss (best weights kept), the paper's training
augmentations (``trainer.vision.preprocess.train_transform``: rotation +-20 deg, flips, contrast, Gaussian
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

import contextlib
import functools
import math
import os
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.config import FinetuneConfig, as_finetune_config
from trainer.training.checkpoints import (
    CHECKPOINT_FORMAT,
    EarlyStopping,
    checkpoint_path,
    cpu_state,
    data_fingerprint,
    load_checkpoint,
    run_key,
)
from trainer.training.distributed import DistInfo, all_reduce_sum, barrier, dist_info, setup_distributed
from trainer.training.finetune_data import EpochShardSampler, FinetuneDataset, auto_workers, make_loader
from trainer.util.atomic import atomic_write
from trainer.util.errors import AllguiError, Cancelled, DataError
from trainer.util.progress import CancelCheck, Progress
from trainer.vision.backbones import BACKBONES, build_classifier_model
from trainer.vision.features import resolve_device


def _resolve_device(device: Any, info: DistInfo) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    else:
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
    cfg = as_finetune_config(cfg)
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
        workers = auto_workers(dev, n_batches, info.world_size)
    train_loader = make_loader(train_ds, train_sampler, bs, int(workers), dev, drop_last)
    val_loader = make_loader(val_ds, val_sampler, bs, int(workers), dev, False)

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
    key = run_key(name, cfg, info.world_size, data_fingerprint(train_items, y_train),
                  data_fingerprint(val_items, y_val))
    if ckpt_file is not None and resume:
        ckpt = None
        if ckpt_file.is_file():
            try:
                ckpt = load_checkpoint(ckpt_file)
            except AllguiError as exc:
                if report:
                    report(0.0, f"{name}: starting afresh ({exc})")
            if ckpt is not None and ckpt.get("run_key") != key:
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
            totals = all_reduce_sum(totals).tolist()  # the one host-device sync of the epoch
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
                best_state = cpu_state(model)
            if report:
                report(epoch / epochs,
                       f"{name}: epoch {epoch}/{epochs} train loss {train_loss:.4f}, "
                       f"validation loss {val_loss:.4f}, accuracy {val_acc:.3f}")
            if ckpt_file is not None and info.is_main:
                atomic_write(ckpt_file, functools.partial(torch.save, {
                    "format": CHECKPOINT_FORMAT, "backbone": name, "run_key": key,
                    "config": cfg.to_dict(), "epoch": epoch, "model": best_state if improved else cpu_state(model),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "stopper": stopper.state_dict(),
                    # None: the best weights are this epoch's ("model"), not stored twice
                    "best_model": None if improved else best_state,
                    "history": {k: list(v) for k, v in history.items()},
                }))
            barrier()
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
