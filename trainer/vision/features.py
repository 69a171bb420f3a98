"""Deep features: GAP embeddings of several backbones from one pass over the images, with a disk cache.

``FeatureExtractor(...).extract(items)`` returns ``{backbone name: (N, D) float32}`` for N images
(paths or RGB uint8 arrays (H, W, 3)). Each image is decoded, gamma-corrected and resized once and
the same batch goes through every backbone. With ``cache_dir`` set, every (image, backbone) vector
is stored as a ``.npy`` file keyed by the image content hash, the backbone, its weights identity
and the pre-processing (size, gamma, normalisation version, precision), so re-running with only
the classifiers changed decodes and computes nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import wait
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.config import BACKBONE_NAMES, PRECISIONS, problem
from trainer.io.imageio import as_rgb_uint8, content_hash, read_image
from trainer.util.atomic import atomic_write
from trainer.util.errors import AllguiError, ImageReadError
from trainer.util.memory import release_freed_memory
from trainer.util.progress import Progress, check_cancel
from trainer.util.threads import network_lanes
from trainer.util.versions import torchvision_version
from trainer.vision import handcrafted
from trainer.vision.backbones import BACKBONES, build_backbone, weights_identity
from trainer.vision.devices import cpu_has_bf16, extraction_workers, resolve_device
from trainer.vision.preprocess import eval_transform, gamma_correct
from trainer.vision.stain import reinhard

#: Bump when the evaluation pre-processing changes (resize method, mean/std): old cache entries
#: then stop matching.
PREPROCESS_VERSION = "eval-v1-imagenet-norm"

#: the hand-crafted nucleus block (see :mod:`trainer.vision.handcrafted`), extracted beside the networks
NUCLEUS = "nucleus"
#: every feature block an extractor can produce: block name -> dimension D
BLOCKS: dict[str, int] = {**BACKBONES, NUCLEUS: handcrafted.NUCLEUS_DIM}


def nucleus_block(img: np.ndarray, gamma: float, seg=None, version: str = handcrafted.VERSION) -> np.ndarray:
    """The hand-crafted nucleus block (NUCLEUS_DIM,) float32 of an RGB uint8 image, as ``extract`` makes it.

    ``seg``: the image's :func:`trainer.vision.segmentation.segment_nuclei` result with this gamma, if
    made already (then not segmented again where made by ``version``'s method).
    """
    img = img if gamma == 1.0 else gamma_correct(img, gamma)
    return handcrafted.nucleus_features(img, seg=seg, version=version)


class _Images(Dataset):
    """Decode, stain-normalise and prepare the selected items.

    Each item gives ``(index, tensor CHW | None, nucleus features | None, error | None)``: the
    network input (gamma, resize, scale, normalise) when ``tensor`` is set and the hand-crafted
    nucleus block when ``nucleus`` is set.
    """

    def __init__(self, items: Sequence, indices: Sequence[int], image_size: int, gamma: float,
                 stain_reference=None, tensor: bool = True, nucleus: bool = False,
                 segs: Sequence | None = None, nucleus_version: str = handcrafted.VERSION) -> None:

        self.items = items
        self.indices = list(indices)
        self.transform = eval_transform(image_size, gamma)  # gamma, resize, scale, normalise
        self.gamma = float(gamma)
        self.stain_reference = None if stain_reference is None else np.asarray(stain_reference, float)
        self.tensor = tensor
        self.nucleus = nucleus
        self.nucleus_version = nucleus_version
        # segmentations made already (of the gamma-corrected image): the nucleus block reuses them;
        # only valid without stain normalisation, which changes the colours it segments
        self.segs = segs if stain_reference is None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        item = self.items[i]
        try:
            img = as_rgb_uint8(item) if isinstance(item, np.ndarray) else read_image(item)
            if self.stain_reference is not None:

                img = reinhard(img, self.stain_reference)
            x = self.transform(img) if self.tensor else None
            hand = None
            if self.nucleus:
                seg = self.segs[i] if self.segs is not None else None
                hand = torch.from_numpy(nucleus_block(img, self.gamma, seg, self.nucleus_version))
            return i, x, hand, None
        except AllguiError as exc:
            return i, None, None, str(exc)
        except Exception as exc:  # reported to the user with the image named
            name = "array" if isinstance(item, np.ndarray) else Path(item).name
            return i, None, None, f"Cannot prepare image '{name}': {exc}"


def _collate(batch):
    errors = [err for _, _, _, err in batch if err]
    if errors:
        return None, None, None, errors[0]
    idx = torch.tensor([i for i, _, _, _ in batch], dtype=torch.long)
    x = torch.stack([x for _, x, _, _ in batch]) if batch[0][1] is not None else None
    hand = torch.stack([h for _, _, h, _ in batch]) if batch[0][2] is not None else None
    return idx, x, hand, None


def _features(model: torch.nn.Module, x: torch.Tensor, device_type: str, amp: torch.dtype | None) -> np.ndarray:
    """(B, D) float32 GAP features of ``x`` (B, 3, S, S); the contexts are set here, as the thread may be a lane."""
    autocast = torch.autocast(device_type=device_type, dtype=amp) if amp is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        return model(x).float().cpu().numpy()


def _worker_init(_: int) -> None:
    try:

        cv2.setNumThreads(1)
    except Exception:
        pass


class FeatureExtractor:
    """Fused, batched, cached GAP feature extraction for several backbones.

    Parameters
    ----------
    backbones: feature blocks: network names from ``trainer.vision.backbones.BACKBONES`` and/or
        ``"nucleus"`` (the hand-crafted block of :mod:`trainer.vision.handcrafted`).
    weights: ``'none'``, ``'imagenet'`` or a path to a state_dict file (see ``build_backbone``).
    image_size: network input side, pixels (images are resized to image_size x image_size).
    gamma: gamma correction (eq. 1) in [0.8, 1.2], applied before resizing; 1.0 = none.
    batch_size: images per forward pass.
    num_workers: DataLoader worker processes; None = automatic (see :func:`trainer.vision.devices.extraction_workers`).
    device: ``'auto'``, ``'cpu'`` or ``'cuda'``; on CUDA the forward runs under autocast
        (bfloat16 when supported, else float16); outputs are always float32.
    cache_dir: folder for the feature cache; None = no disk cache.
    state_dicts: optional ``{backbone name: state_dict}`` overriding ``weights`` (fine-tuned).
    seed: seeds the random initialisation when ``weights='none'``.
    precision: ``'auto'`` (autocast on CUDA, float32 on the CPU), ``'fp32'`` (never autocast) or
        ``'bf16'`` (bfloat16 autocast also on CPUs that compute it natively: faster there, features
        close to float32's; see benchmarks/README.md). Part of the cache key.
    stain_reference: optional Reinhard reference (6,): Lab mean and std that every image's
        foreground is mapped to before any block is computed (see :mod:`trainer.vision.stain`).
        Part of the cache key.
    release_memory: give freed memory back to the system after each batch of an extraction of
        several (each lane's allocator keeps a batch's activations); costs a few per cent of the speed,
        so it is for prediction, whose resident size is bounded, not for training.
    nucleus_version: the nucleus block's version (:data:`trainer.vision.handcrafted.SEGMENTATION_OF`):
        new trainings the current one, prediction the one its model was trained with. Part of the cache key.
    """

    def __init__(
        self,
        backbones: Sequence[str] = BACKBONE_NAMES,
        weights: str | os.PathLike = "none",
        image_size: int = 224,
        gamma: float = 1.0,
        batch_size: int = 32,
        num_workers: int | None = None,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        state_dicts: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        seed: int = 0,
        precision: str = "auto",
        stain_reference: Sequence[float] | None = None,
        release_memory: bool = False,
        nucleus_version: str = handcrafted.VERSION,
    ) -> None:
        self.backbones = tuple(backbones)
        self.weights = weights
        self.image_size = image_size
        self.gamma = gamma
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.cache_dir = cache_dir
        self.state_dicts = state_dicts
        self.seed = seed
        self.precision = precision
        self.stain_reference = (None if stain_reference is None
                                else tuple(float(v) for v in np.asarray(stain_reference).ravel()))
        self.release_memory = release_memory
        handcrafted.segmentation_method(nucleus_version)  # an unknown version fails here, not mid-extraction
        self.nucleus_version = nucleus_version
        self._models: dict[str, torch.nn.Module] | None = None
        self._identities: dict[str, str] | None = None
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ set-up
    def _validate(self) -> None:
        if not self.backbones:
            raise AllguiError("No backbone selected for feature extraction.")
        for name in self.backbones:
            if name not in BLOCKS:
                raise AllguiError(f"Unknown backbone or feature block {name!r}; choose from: {', '.join(BLOCKS)}.")
        if self.stain_reference is not None and len(self.stain_reference) != 6:
            raise AllguiError("A stain reference is six numbers (Lab mean and standard deviation).")
        for setting in ("image_size", "gamma", "batch_size"):  # the ranges of a training config
            wrong = problem(setting, getattr(self, setting))
            if wrong:
                raise AllguiError(wrong[0].upper() + wrong[1:] + ".")

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension D of each block."""
        return {name: BLOCKS[name] for name in self.backbones}

    @property
    def networks(self) -> tuple[str, ...]:
        """The blocks computed by a network (all but the hand-crafted one)."""
        return tuple(b for b in self.backbones if b in BACKBONES)

    @property
    def torch_device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.device)
        return self._device

    def _amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype of the forward pass, or None for float32 (see ``precision``)."""
        if self.precision not in PRECISIONS:
            raise AllguiError(f"Unknown precision '{self.precision}'; use one of {', '.join(PRECISIONS)}.")
        if self.precision == "fp32":
            return None
        if self.torch_device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if self.precision == "bf16" and cpu_has_bf16():
            return torch.bfloat16
        return None

    def identities(self) -> dict[str, str]:
        """``{backbone: weights identity}`` (see ``trainer.vision.backbones.weights_identity``)."""
        if self._identities is None:
            sds = self.state_dicts or {}
            ids = {name: weights_identity(name, self.weights, sds.get(name)) for name in self.networks}
            if NUCLEUS in self.backbones:
                ids[NUCLEUS] = self.nucleus_version
            # random weights differ by seed
            self._identities = {k: f"none:seed={self.seed}" if v == "none" else v for k, v in ids.items()}
        return dict(self._identities)

    def models(self) -> dict[str, torch.nn.Module]:
        """The backbones, built once (eval mode, channels_last, on the device) and kept."""
        if self._models is None:
            self._validate()
            sds = self.state_dicts or {}
            models = {}
            for name in self.networks:
                m = build_backbone(name, self.weights, state_dict=sds.get(name), seed=self.seed)
                models[name] = m.to(self.torch_device, memory_format=torch.channels_last).eval()
            self._models = models
        return self._models

    def forward(self, batches: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """GAP features ``{network: (B, D) float32}`` of ready batches ``{network: (B, 3, S, S)}`` on the device.

        In this extractor's precision, without gradients. On the CPU two or more networks run side by
        side, each on its share of torch's threads (see :func:`trainer.util.threads.network_lanes`).
        """
        models = self.models()
        amp = self._amp_dtype()
        device = self.torch_device.type
        threads = torch.get_num_threads()
        if device != "cpu" or len(batches) < 2 or threads < len(batches):
            return {name: _features(models[name], x, device, amp) for name, x in batches.items()}
        lanes = network_lanes(len(batches), threads // len(batches))
        futures = {name: lanes.submit(_features, models[name], x, device, amp) for name, x in batches.items()}
        wait(futures.values())                    # every lane done, also when one of them failed
        return {name: f.result() for name, f in futures.items()}

    def use_networks_of(self, other: FeatureExtractor) -> None:
        """Share ``other``'s built networks (same backbones and weights) instead of building copies."""
        own = set(self.networks)
        self._models = {k: v for k, v in other.models().items() if k in own}
        missing = own - set(self._models)
        if missing:
            raise AllguiError(f"Cannot share networks: {', '.join(sorted(missing))} not built.")

    def preprocessing_tag(self) -> str:
        """The pre-processing part of the cache key (size, gamma, normalisation, precision, stain)."""
        amp = self._amp_dtype()
        precision = "fp32" if amp is None else f"amp-{str(amp).replace('torch.', '')}"
        tag = f"size={int(self.image_size)}|gamma={float(self.gamma):.6g}|{PREPROCESS_VERSION}|{precision}"
        if self.stain_reference is not None:
            tag += "|reinhard=" + ",".join(f"{v:.6g}" for v in self.stain_reference)
        return tag

    def cache_key(self, image_hash: str, name: str) -> str:
        """Hex key of one (image, backbone) vector in the cache.

        Includes the torch and torchvision versions: a seeded random initialisation or a
        kernel may change between releases, and old vectors must then not be mixed in.
        """
        text = (f"{image_hash}|{name}|{self.identities()[name]}|{self.preprocessing_tag()}|"
                f"torch={torch.__version__}|torchvision={torchvision_version()}")
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------- cache
    def _cache_path(self, name: str, key: str) -> Path:
        return Path(self.cache_dir) / name / key[:2] / f"{key}.npy"

    def _cache_load(self, name: str, key: str) -> np.ndarray | None:
        path = self._cache_path(name, key)
        if not path.is_file():
            return None
        try:
            vec = np.load(path, allow_pickle=False)
        except Exception:  # a damaged entry is recomputed
            return None
        if vec.shape != (BLOCKS[name],) or vec.dtype != np.float32 or not np.all(np.isfinite(vec)):
            return None
        return vec

    def _cache_save(self, name: str, key: str, vec: np.ndarray) -> None:
        path = self._cache_path(name, key)
        data = np.ascontiguousarray(vec, dtype=np.float32)
        try:  # no fsync: a lost cache entry is simply recomputed
            atomic_write(path, lambda fh: np.save(fh, data, allow_pickle=False), fsync=False)
        except OSError as exc:
            raise AllguiError(f"Cannot write the feature cache in {self.cache_dir}: {exc}") from exc

    # ----------------------------------------------------------------- extract
    def extract(
        self,
        items: Iterable,
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
        segs: Sequence | None = None,
        given: Sequence[dict[str, np.ndarray] | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Features of every item: ``{backbone: (N, D) float32}``, rows in the order of ``items``.

        ``given`` may hold, per item, blocks computed already (``{block: (D,)}``, e.g. by a second
        thread): they are used as they are, neither recomputed nor cached.

        ``items`` are image paths or RGB uint8 arrays (H, W, 3). ``segs`` may give, per item, the
        :func:`trainer.vision.segmentation.segment_nuclei` result of that image made with this
        extractor's gamma (or None): the nucleus block then does not segment it again (ignored
        with a stain reference). Raises ``ImageReadError`` naming the first image that cannot be
        read, ``Cancelled`` when ``cancel()`` turns True.
        """
        self._validate()
        items = list(items)
        n = len(items)
        out = {name: np.zeros((n, BLOCKS[name]), dtype=np.float32) for name in self.backbones}
        if n == 0:
            return out
        missing, keys = self._known_blocks(items, out, given, cancel)
        todo = np.flatnonzero(np.any(np.stack([missing[nm] for nm in self.backbones]), axis=0))
        cached = n - len(todo)
        if progress is not None:
            progress(cached / n, f"Features: {cached}/{n} images from the cache")
        if len(todo) == 0:
            return out

        # one decode per image, one batch through every backbone that still needs it
        check_cancel(cancel, "Feature extraction was cancelled.")
        models = self.models()
        loader = self._loader(items, todo, missing, segs)
        self._amp_dtype()  # an unknown precision is refused before any image is read (forward() applies it)
        done = 0
        many = self.release_memory and len(todo) > int(self.batch_size)
        iterator = iter(loader)
        try:
            with torch.inference_mode():
                for idx, x, hand, err in iterator:
                    check_cancel(cancel, "Feature extraction was cancelled.")
                    if err is not None:
                        raise ImageReadError(err)
                    self._store_batch(idx.numpy(), x, hand, models, out, missing, keys)
                    done += len(idx)
                    if progress is not None:
                        progress((cached + done) / n, f"Features: {cached + done}/{n} images")
                    if many:  # each lane's allocator keeps a batch's activations: give them back
                        release_freed_memory()
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:  # stop DataLoader workers now, also on errors / cancel
                shutdown()
            del iterator
        return out

    def _known_blocks(self, items: list, out: dict[str, np.ndarray], given, cancel) -> tuple[dict, dict]:
        """Fill ``out`` with cached and ``given`` blocks (hashing only, no decoding).

        Returns ``({block: (N,) bool still to compute}, {block: [cache key per item]})`` (no keys without a cache).
        """
        missing = {name: np.ones(len(items), dtype=bool) for name in self.backbones}
        keys: dict[str, list[str]] = {}
        if self.cache_dir is not None:
            keys = {name: [] for name in self.backbones}
            for i, item in enumerate(items):
                if i % 64 == 0:
                    check_cancel(cancel, "Feature extraction was cancelled.")
                h = content_hash(np.ascontiguousarray(item) if isinstance(item, np.ndarray) else item)
                for name in self.backbones:
                    key = self.cache_key(h, name)
                    keys[name].append(key)
                    vec = self._cache_load(name, key)
                    if vec is not None:
                        out[name][i] = vec
                        missing[name][i] = False
        for i, blocks in enumerate(given or ()):
            for name, vec in (blocks or {}).items():
                if name in missing:
                    out[name][i] = vec
                    missing[name][i] = False
        return missing, keys

    def _loader(self, items: list, todo: np.ndarray, missing: dict, segs) -> DataLoader:
        """Batches of the ``todo`` items, each decoded once for the blocks it still needs."""
        workers = self.num_workers
        if workers is None:
            workers = extraction_workers(self.torch_device, len(todo), int(self.batch_size))
        images = _Images(items, todo, self.image_size, self.gamma, self.stain_reference,
                         tensor=any(missing[name][todo].any() for name in self.networks),
                         nucleus=NUCLEUS in self.backbones and bool(missing[NUCLEUS][todo].any()),
                         segs=None if segs is None else list(segs), nucleus_version=self.nucleus_version)
        return DataLoader(images, batch_size=int(self.batch_size), shuffle=False, num_workers=int(workers),
                          collate_fn=_collate, pin_memory=self.torch_device.type == "cuda",
                          worker_init_fn=_worker_init if workers else None)

    def _store_batch(self, rows: np.ndarray, x, hand, models, out: dict[str, np.ndarray], missing: dict,
                     keys: dict) -> None:
        """One batch's missing blocks into ``out`` rows ``rows`` (and the cache).

        ``hand``: the nucleus block as the loader's workers computed it; ``x``: the networks' input batch.
        """
        device = self.torch_device
        if hand is not None:
            need = missing[NUCLEUS][rows]
            vecs = hand.numpy()[need]
            out[NUCLEUS][rows[need]] = vecs
            if self.cache_dir is not None:
                for r, vec in zip(rows[need], vecs):
                    self._cache_save(NUCLEUS, keys[NUCLEUS][r], vec)
        if x is not None:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        jobs = {}
        for name in models:
            need = missing[name][rows]
            if need.any():
                jobs[name] = (need, x if need.all() else x[torch.from_numpy(need).to(device)])
        found = self.forward({name: xb for name, (_, xb) in jobs.items()})
        for name, (need, _) in jobs.items():
            out[name][rows[need]] = found[name]
            if self.cache_dir is not None:
                for r, vec in zip(rows[need], found[name]):
                    self._cache_save(name, keys[name][r], vec)
