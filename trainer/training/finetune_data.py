"""What fine-tuning feeds the networks.

A dataset of augmented images and a sampler whose shuffling and augmentation depend only on ``(seed, epoch,
index)``, so a resumed or a distributed run draws the same batches as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.io.imageio import as_rgb_uint8, read_image
from trainer.util.errors import DataError
from trainer.vision.preprocess import eval_transform, train_transform


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index)) % (2**63 - 1)


class FinetuneDataset(Dataset):
    """Images (paths or RGB uint8 arrays (H, W, 3)) and 0/1 labels as (tensor (3,S,S), float label).

    Indexed by ``i`` or by ``(i, epoch)``; with ``(i, epoch)`` the random augmentation is seeded
    from ``(seed, epoch, i)`` so it does not depend on worker processes or earlier draws.
    """

    def __init__(self, items: Sequence, labels: Sequence[int], image_size: int, gamma: float = 1.0,
                 train: bool = True, seed: int = 0, stain_jitter: float = 0.0) -> None:
        if len(items) != len(labels):
            raise DataError(f"{len(items)} images but {len(labels)} labels.")
        self.items = list(items)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
        self.train = train
        self.seed = int(seed)
        self.transform = (train_transform(int(image_size), float(gamma), float(stain_jitter)) if train
                          else eval_transform(int(image_size), float(gamma)))

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, i: int) -> np.ndarray:
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
    """Yields ``(index, epoch)``.

    A permutation seeded by ``(seed, epoch)`` (or the identity when ``shuffle`` is False), this rank's share
    ``perm[rank::world_size]``.

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

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    try:

        cv2.setNumThreads(1)
    except Exception:  # OpenCV is optional here
        pass


def auto_workers(device: torch.device, n_batches: int, world_size: int) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus // max(world_size, 1) - 1))
    return min(2, cpus) if n_batches > 1 else 0


def make_loader(ds: FinetuneDataset, sampler: EpochShardSampler, batch_size: int, workers: int,
            device: torch.device, drop_last: bool) -> DataLoader:
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
