"""Inference on new images with a saved model bundle: the API the desktop app calls.

``Predictor.from_bundle(path).predict(image_or_path)`` returns a
:class:`trainer.inference.results.ImagePrediction`: the nuclei found, every classifier's probability and
vote, the ensemble's raw and calibrated probability for the whole crop, and, on a smear field,
the same for every white cell found.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.special  # noqa: F401 - before torch: see the note below
import torch

from trainer.classical.kinds import operating_point
from trainer.config import PRECISIONS, TrainConfig
from trainer.inference.bundle import LazyModels, ModelBundle, load_bundle, model_summary, read_manifest
from trainer.inference.notes import image_notes
from trainer.inference.results import (
    DEFAULT_UNCERTAINTY_BAND,
    CellPrediction,
    ClassifierVote,
    ImagePrediction,
)
from trainer.io.imageio import as_rgb_uint8, read_image
from trainer.util.errors import AllguiError, BundleError, ImageReadError
from trainer.util.progress import Stages, check_cancel
from trainer.vision import fingerprint, handcrafted, initcache, segmentation
from trainer.vision.backbones import BACKBONES
from trainer.vision.crop_quality import crop_quality_flags, featureless
from trainer.vision.devices import cpu_has_bf16, resolve_device
from trainer.vision.features import NUCLEUS, FeatureExtractor, nucleus_block

# Rebuilding a model imports skops, which looks up each of SciPy's ~450 ufuncs by walking every module
# loaded before ``scipy.special`` (in import order): with torch's thousands of modules ahead of it, that
# walk is the largest part of skops' import, so SciPy is imported first here.
MIN_SIDE = 16  # pixels; smaller images cannot be segmented or classified meaningfully
#: images per forward pass when predicting on the CPU: the two networks' activations side by side bound the
#: resident size of a folder run; 16 (with the heap trimmed between batches, ``release_memory``) keeps it
#: well under what 32 took, at the same speed (``predict_throughput.py --rss``; benchmarks/README.md)
CPU_FORWARD_BATCH = 16
#: predict_batch's stages and their weights (rough shares of a batch's time on a CPU)
PREDICT_STAGES = (("segmentation", 30), ("features", 65), ("results", 5))


class Prepared(NamedTuple):
    """What :meth:`Predictor.prepare` makes of one image before the networks."""

    path: str | None
    image: np.ndarray                 # RGB uint8
    single: bool                      # a single-cell crop (else a smear field)
    cells: list                       # the white cells of a field to judge one by one (bbox, nucleus)
    seg: segmentation.Segmentation


class Predictor:
    """A loaded model ready to classify images.

    A bundle holds one model per image kind (``"single_cell"`` crops, ``"field"`` smear fields)
    or, for older bundles, one model for every image (``"any"``); each image is judged by the
    model of its detected kind (see :meth:`route`).

    Attributes
    ----------
    models : dict or LazyModels of str to AllModel
        Model key -> fitted AllModel (a LazyModels after ``from_bundle(lazy=True)``: each model is loaded
        when first asked for).
    thresholds : dict of str to float
        Model key -> default decision threshold on the calibrated probability (the centre of the model's
        uncertain band, fitted around Youden's J optimum on the data that set the calibration; Youden's
        threshold itself for models saved before); ``threshold`` is the first model's.
    classifier_names, classifier_weights
        The base classifiers and the first model's ensemble weight of each.
    model_card : dict
        The bundle's JSON-able model card.
    validation_roc : dict
        The first model's ``fpr``, ``tpr``, ``thresholds``.
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", cache_dir=None, verify: bool = True,
                 precision: str | None = None, prebuilt: tuple | None = None):
        self.bundle = bundle
        self.kind_models = bundle.model
        models = bundle.model.models
        #: model key -> AllModel; a :class:`LazyModels` loads a model when it first judges an image
        self.models = models if isinstance(models, LazyModels) else dict(models)
        summary = {k: model_summary(self.models, k) for k in self.models}  # (threshold, blocks)
        self.config = cfg = bundle.config
        #: precision of the forward passes: see :func:`inference_precision`
        self.precision = _precision(cfg, precision, device)
        networks = tuple(dict.fromkeys(b for _, blocks in summary.values() for b in blocks if b in BACKBONES))

        def extractor(blocks, ref=None, version=handcrafted.VERSION) -> FeatureExtractor:
            return _extractor(cfg, blocks, device, cache_dir, self.precision, bundle.backbone_state, ref, version)

        # ``prebuilt``: (base extractor, its fingerprint) made by ``from_bundle`` while the bundle loaded
        if prebuilt is not None and tuple(prebuilt[0].backbones) == networks and bundle.backbone_state is None:
            base, probes = prebuilt
        else:
            base, probes = extractor(networks), None
        if verify:
            try:
                fingerprint.verify(base, bundle.arrays, computed=probes)
            except BundleError:
                # networks read from the network cache are drawn afresh once before the bundle is refused
                if bundle.backbone_state is not None or not any([initcache.forget(n, cfg.seed) for n in networks]):
                    raise
                base = extractor(networks)
                fingerprint.verify(base, bundle.arrays)
        self.extractors: dict[str, FeatureExtractor] = {}
        for key, (_, blocks) in summary.items():
            ex = extractor(tuple(blocks), bundle.arrays.get(f"{key}/stain_reference"),
                           nucleus_version(bundle.card, key))
            ex.use_networks_of(base)
            self.extractors[key] = ex
        self.extractor = self.extractors[self.keys[0]]
        #: the segmentation of the nucleus block the (first) model learnt: images are segmented once, as it saw them
        self.segmentation_method = handcrafted.segmentation_method(self.extractor.nucleus_version)
        #: the networks alone, for :meth:`predict`'s whole-image pass beside segmentation; that pass is the
        #: same for every model unless a model normalises stain (its networks then see other colours)
        self._networks = base
        self._side: ThreadPoolExecutor | None = None
        self._overlap = all(ex.stain_reference is None for ex in self.extractors.values())
        self.thresholds = {k: threshold for k, (threshold, _) in summary.items()}
        self.threshold = self.thresholds[self.keys[0]]
        first = self.models[self.keys[0]]
        self.model = first
        self.classifier_names = list(first.classifier_names_)
        self.classifier_weights = dict(zip(self.classifier_names, map(float, first.ensemble_.weights_)))
        self.model_card = dict(bundle.card)
        kinds = (self.model_card.get("trained_on") or {}).get("image_kinds") or {}
        #: how a smear field is decided, per model key: a model trained mostly on fields judges the
        #: whole field (its cells are shown for review); one trained on crops judges each cell
        self.field_units = {k: ("image" if k == "field" or (k == "any" and kinds.get("field", 0.0) >= 0.5)
                                else "cells") for k in self.models}
        self.field_unit = self.field_units[self.route("field")]

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str = "auto", cache_dir=None,
                    precision: str | None = None, lazy: bool = False) -> Predictor:
        """Load and verify ``path``. Raises :class:`trainer.util.errors.BundleError`.

        The networks are built and fingerprinted in a second thread while the classifiers are read
        (torch releases the interpreter lock while it computes, so the two overlap). ``lazy``: load a
        model other than the first only when an image of its kind arrives (see ``load_bundle``); its
        BundleError, if any, is then raised by the prediction.
        """
        manifest = read_manifest(path)
        if "backbones.safetensors" in manifest.get("members", {}):  # fine-tuned weights: in the bundle itself
            return cls(load_bundle(path, lazy=lazy), device=device, cache_dir=cache_dir,
                       precision=precision)
        cfg = TrainConfig.from_dict(manifest.get("config", {}))
        prec = _precision(cfg, precision, device)
        legacy = manifest["format_version"] < 3  # fingerprinted at the model's input size
        with ThreadPoolExecutor(1, thread_name_prefix="allgui-networks") as pool:
            ready = pool.submit(_networks_ready, cfg, device, cache_dir, prec, legacy)
            bundle = load_bundle(path, lazy=lazy)
            prebuilt = ready.result()
        return cls(bundle, device=device, cache_dir=cache_dir, precision=precision, prebuilt=prebuilt)

    def warm_up(self) -> None:
        """One batch-of-one forward pass through every network.

        The first image opened then does not pay for the kernels' one-time set-up (call it where the model
        is loaded, off the GUI thread).
        """
        ex = self.extractor
        x = torch.zeros(1, 3, int(ex.image_size), int(ex.image_size), device=ex.torch_device)
        x = x.contiguous(memory_format=torch.channels_last)
        done: set[str] = set()
        for e in self.extractors.values():  # every network once, side by side as images go through them
            todo = [name for name in e.networks if name not in done]
            if todo:
                e.forward({name: x for name in todo})
                done.update(todo)

    @functools.cached_property
    def validation_roc(self) -> dict[str, np.ndarray]:
        """The first model's ROC on its validation split (computed when first asked for)."""
        return self.validation_roc_for()

    @property
    def path(self) -> Path | None:
        return self.bundle.path

    @property
    def keys(self) -> list[str]:
        """Model keys in bundle order (``"single_cell"``, ``"field"`` or ``"any"``)."""
        return list(self.models)

    def route(self, image_kind: str) -> str:
        """Key of the model that judges an image of ``image_kind`` ("single_cell" or "field")."""
        return self.kind_models.route(image_kind)

    def has_model_for(self, image_kind: str) -> bool:
        """True when the bundle has a model trained for ``image_kind`` (or one for every kind)."""
        return image_kind in self.models or "any" in self.models

    def _key(self, key: str | None) -> str:
        return self.keys[0] if key is None or key not in self.models else key

    def validation_roc_for(self, key: str | None = None) -> dict[str, np.ndarray]:
        """ROC (``fpr``, ``tpr``, ``thresholds``) of model ``key`` on its validation split."""
        return self.models[self._key(key)].validation_roc()

    def operating_point(self, threshold: float, key: str | None = None) -> tuple[float, float]:
        """(sensitivity, specificity) model ``key`` had on its validation split at ``threshold``.

        The validation split also chose the threshold and the calibration, so these are optimistic;
        :meth:`test_operating_point` gives the held-out view.
        """
        return self.models[self._key(key)].operating_point(threshold)

    def band_for(self, key: str | None = None) -> float:
        """Half-width of model ``key``'s uncertain band.

        Fitted per model, or the old fixed band for a model saved before bands were fitted.
        """
        band = getattr(self.models[self._key(key)], "band", None)
        return DEFAULT_UNCERTAINTY_BAND if band is None else band

    def has_domain_check(self, key: str | None = None) -> bool:
        """True when model ``key`` can tell images unlike its training images (saved with a domain check)."""
        return getattr(self.models[self._key(key)], "domain_", None) is not None

    def test_operating_point(self, threshold: float, key: str | None = None) -> tuple[float, float] | None:
        """(sensitivity, specificity) of model ``key`` on its held-out test split at ``threshold``; None without one."""
        key = self._key(key)
        y, p = self.bundle.arrays.get(f"{key}/test/y"), self.bundle.arrays.get(f"{key}/test/calibrated")
        if y is None or p is None or len(y) == 0 or len(np.unique(y)) < 2:
            return None
        return operating_point(y, p, threshold)

    # ------------------------------------------------------------------ predict
    def predict(self, image_or_path, path: str | None = None) -> ImagePrediction:
        """Classify one image (an RGB uint8 array or a file path). Raises ImageReadError.

        The whole image goes through the networks while a second thread segments it and computes its
        nucleus block: an opened crop waits for little more than the networks. Results equal
        ``predict_batch([image])``'s.
        """
        t0 = time.perf_counter()
        img, path = self._decode(image_or_path, path)
        if not self._overlap:
            return self.predict_batch([img], paths=[path])[0]
        if self._side is None:
            self._side = ThreadPoolExecutor(1, thread_name_prefix="allgui-segment")
        side = self._side.submit(self._prepare_with_nucleus, img, path)
        try:
            whole = self._networks.extract([img])
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: wait for the thread, but its error must not replace this
            side.exception()
            raise
        except Exception:
            side.result()  # a bad image: the thread's error names it better than the networks' does
            raise
        prep, nucleus = side.result()
        given = {name: v[0] for name, v in whole.items()}
        if nucleus is not None:
            given[NUCLEUS] = nucleus
        result = self.predict_batch([img], paths=[path], prepared=[prep], blocks=[given])[0]
        result.seconds = time.perf_counter() - t0  # the whole of it, networks included
        return result

    def _prepare_with_nucleus(self, img: np.ndarray, path: str | None) -> tuple[Prepared, np.ndarray | None]:
        """(what :meth:`prepare` returns, the whole image's nucleus block or None)."""
        prep = self.prepare(img, path)
        key = self.route("single_cell" if prep.single else "field")
        ex = self.extractors[key]
        return prep, (nucleus_block(img, ex.gamma, prep.seg, ex.nucleus_version) if NUCLEUS in ex.backbones else None)

    @staticmethod
    def _decode(item, path: str | None) -> tuple[np.ndarray, str | None]:
        if isinstance(item, (str, os.PathLike)):
            return read_image(item), path or str(item)
        return as_rgb_uint8(item), path

    def prepare(self, item, path: str | None = None) -> Prepared:
        """The work before the networks for one image: decode (a path) and segment.

        Thread-safe, so the next images can be prepared while the networks judge the current ones; pass the
        results to :meth:`predict_batch` as ``prepared``. Raises ImageReadError.
        """
        img, path = self._decode(item, path)
        if min(img.shape[:2]) < MIN_SIDE:
            raise ImageReadError(f"{Path(path).name if path else 'The image'} is too small to analyse "
                                 f"({img.shape[1]}x{img.shape[0]} pixels; at least {MIN_SIDE} are needed).")
        single, cells, seg = self._segment(img)
        return Prepared(path, img, single, cells, seg)

    def predict_batch(self, items: Iterable, paths: list | None = None,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: Callable[[], bool] | None = None,
                      prepared: list | None = None, blocks: list | None = None) -> list[ImagePrediction]:
        """Classify many images; crops of all of them go through the networks together.

        ``prepared`` may hold, per item, what :meth:`prepare` returned for it (or the exception it
        raised, raised here): the images are then not read or segmented again. ``blocks`` may hold, per
        item, feature blocks of the whole image computed already (``{block: (D,)}``).
        """
        items = list(items)
        paths = list(paths) if paths is not None else [None] * len(items)
        t0 = time.perf_counter()
        stages = Stages(progress, PREDICT_STAGES)
        prepared, crops, owners = _crops(items, paths, prepared, self.prepare, stages.start("segmentation"), cancel)
        # one pass per model: each image (and its cells) through the model of its kind
        keys = [self.route("single_cell" if prep.single else "field") for prep in prepared]
        where: list[tuple[str, int]] = []          # crop row -> (model key, row in that model's batch)
        counts: dict[str, int] = {}
        for owner, _ in owners:
            key = keys[owner]
            where.append((key, counts.get(key, 0)))
            counts[key] = counts.get(key, 0) + 1
        per_model = Stages(stages.start("features"), list(counts.items()))  # each model's share: its crops
        dets: dict[str, dict] = {}
        for key in counts:
            rows = [r for r, (k, _) in enumerate(where) if k == key]
            # the whole image's segmentation is the nucleus block's too: not made twice
            segs = [prepared[owners[r][0]].seg if owners[r][1] < 0 else None for r in rows]
            known = ([blocks[owners[r][0]] if owners[r][1] < 0 else None for r in rows]
                     if blocks is not None else None)
            feats = self.extractors[key].extract([crops[r] for r in rows], cancel=cancel, segs=segs, given=known,
                                                 progress=per_model.start(key))
            dets[key] = self.models[key].predict_details(feats)
        stages.start("results")
        results = []
        for i, prep in enumerate(prepared):
            rows = [r for r, (owner, _) in enumerate(owners) if owner == i]
            results.append(self._image_prediction(prep, keys[i], dets[keys[i]], [where[r][1] for r in rows]))
        elapsed = time.perf_counter() - t0
        for r in results:
            r.seconds = elapsed / max(len(results), 1)
        stages.done(f"Classified {len(results)} images")
        return results

    def _image_prediction(self, prep: Prepared, key: str, det: dict, rows: list[int]) -> ImagePrediction:
        """One image's result from model ``key``'s details ``det``; ``rows``: its crops' rows there, whole first."""
        p, img, single, cells, seg = prep
        main = _largest(seg.nuclei) if single else None
        whole = self._cell_prediction(det, rows[0], -1, (0, 0, img.shape[1], img.shape[0]), main, key)
        cell_preds = [self._cell_prediction(det, r, k, cells[k].bbox, cells[k].nucleus, key)
                      for k, r in enumerate(rows[1:])]
        kind = "single_cell" if single else "field"
        if single:
            whole.quality_flags = crop_quality_flags(img)
        notes = image_notes(whole, cell_preds, single, bool(seg.nuclei), key, self.has_domain_check(key),
                            self.field_units[key] == "cells" and not single, self.has_model_for(kind))
        return ImagePrediction(path=p, shape=(int(img.shape[0]), int(img.shape[1])), kind=kind,
                               nucleus_mask=seg.mask, whole=whole, cells=cell_preds, unit=self.field_units[key],
                               notes=notes, model=key)

    def _segment(self, img: np.ndarray):
        """(is_single_cell, cells to classify separately, Segmentation)."""
        seg = segmentation.segment_nuclei(img, gamma=self.config.gamma, method=self.segmentation_method)
        if featureless(img):      # one flat colour: whatever was segmented, there is no cell to judge
            none = np.zeros(img.shape[:2], bool)
            seg = dataclasses.replace(seg, mask=none, labels=none.astype(np.int32), nuclei=[])
        if seg.kind == segmentation.KIND_SINGLE:
            return True, [], seg
        return False, segmentation.cells_from_segmentation(seg, img.shape), seg

    def _cell_prediction(self, det, row: int, index: int, bbox, nucleus, key: str) -> CellPrediction:
        votes = [ClassifierVote(name=n, probability=float(det["probabilities"][row, j]),
                                vote=int(det["votes"][row, j]), weight=float(det["weights"][j]))
                 for j, n in enumerate(self.models[key].classifier_names_)]
        out = CellPrediction(index=index, bbox=tuple(int(v) for v in bbox),
                             contour=np.zeros((0, 2), np.int32), votes=votes,
                             vote_share=float(det["vote_share"][row]), raw_probability=float(det["raw"][row]),
                             probability=float(det["calibrated"][row]))
        if nucleus is not None:
            out.contour = np.asarray(nucleus.contour, dtype=np.int32).reshape(-1, 2)
            out.area_px = float(nucleus.area_px)
            out.perimeter_px = float(nucleus.perimeter_px)
            out.circularity = float(nucleus.circularity)
            out.nc_ratio = None if nucleus.nc_ratio is None else float(nucleus.nc_ratio)
            out.cytoplasm_visible = nucleus.cytoplasm_visible
            out.segmentation_confidence = None if nucleus.confidence is None else float(nucleus.confidence)
        if "novelty" in det:
            out.novelty = float(det["novelty"][row])
            out.domain_checks = self.models[key].domain_.fired(det["domain_flags"][row])
        return out


def _crops(items: list, paths: list, given: list | None, prepare, progress, cancel) -> tuple[list, list, list]:
    """(Prepared per item, crops, crop owners): each image whole, then each of its cells.

    ``given``: what ``prepare(item, path)`` made of each item already (or the exception it raised, raised
    here), else None. ``owners[r]`` is ``(item index, cell index)`` of crop ``r``, -1 for the whole image.
    """
    prepared, crops, owners = [], [], []
    for i, (item, p) in enumerate(zip(items, paths)):
        check_cancel(cancel)
        if given is not None:
            if isinstance(given[i], BaseException):
                raise given[i]
            prep = given[i]
        else:
            prep = prepare(item, p)
        prepared.append(prep)
        crops.append(prep.image)
        owners.append((i, -1))
        for k, cell in enumerate(prep.cells):
            x, y, w, h = cell.bbox
            crops.append(prep.image[y:y + h, x:x + w])
            owners.append((i, k))
        progress((i + 1) / len(items), f"Segmented {i + 1}/{len(items)} images")
    return prepared, crops, owners


def _precision(cfg, requested: str | None, device: str) -> str:
    """The forward precision for a bundle's config: the caller's choice, else the bundle's, else auto."""
    return inference_precision(requested if requested is not None or cfg.precision == "auto" else cfg.precision,
                               device)


def nucleus_version(card: dict, key: str) -> str:
    """The nucleus-block version model ``key`` of a bundle was trained with, from its card.

    Models that recorded none computed nucleus-v1. Raises BundleError for a version this code does not know.
    """
    version = handcrafted.LEGACY_VERSION
    for section in (((card.get("models") or {}).get(key) or {}), card):
        blocks = (section.get("method") or {}).get("feature_blocks") or {}
        if NUCLEUS in blocks:
            version = str(blocks[NUCLEUS])
            break
    if version not in handcrafted.SEGMENTATION_OF:
        raise BundleError(f"This model was trained with nucleus features '{version}', which this version of "
                          "allgui does not know: update allgui to use it.")
    return version


def _extractor(cfg, blocks, device, cache_dir, precision, state_dicts, reference=None,
               version=handcrafted.VERSION) -> FeatureExtractor:
    """A FeatureExtractor of ``blocks`` (nucleus block ``version``) as the bundle's config ``cfg`` describes it."""
    batch = cfg.batch_size if resolve_device(device).type == "cuda" else min(cfg.batch_size, CPU_FORWARD_BATCH)
    return FeatureExtractor(
        backbones=tuple(blocks), weights=cfg.weights, image_size=cfg.image_size, gamma=cfg.gamma,
        batch_size=batch, num_workers=0, device=device, cache_dir=cache_dir, state_dicts=state_dicts,
        seed=cfg.seed, precision=precision, stain_reference=reference,
        release_memory=True, nucleus_version=version)


def _networks_ready(cfg, device, cache_dir, precision, legacy=False) -> tuple[FeatureExtractor, dict[str, np.ndarray]]:
    """(extractor of the config's networks, built, with its fingerprint computed) for ``from_bundle``.

    ``legacy``: the fingerprint as bundles of formats 1 and 2 store it (see :func:`fingerprint.compute`).
    """
    ex = _extractor(cfg, [b for b in cfg.backbones if b in BACKBONES], device, cache_dir, precision, None)
    return ex, fingerprint.compute(ex, legacy=legacy)


def inference_precision(requested: str | None = None, device: str = "auto") -> str:
    """Precision of prediction's forward passes: ``"fp32"`` or ``"bf16"`` as asked; ``None`` or ``"auto"``.

    Bfloat16 where the CPU computes it natively (AVX512-BF16 / AMX, see
    :func:`trainer.vision.devices.cpu_has_bf16`), else float32 (on CUDA ``"auto"`` keeps autocast).
    """
    req = (requested or "auto").lower()
    if req not in PRECISIONS:
        raise AllguiError(f"Unknown precision '{requested}'; use one of {', '.join(PRECISIONS)}.")
    if req != "auto":
        return req
    if (device or "auto").lower().startswith("cuda"):
        return "auto"
    return "bf16" if AUTO_BF16 and cpu_has_bf16() else "fp32"


#: whether ``"auto"`` predicts in bfloat16 on CPUs that have it: only while bfloat16 and float32 decide
#: the shipped model's real images alike (``benchmarks/predict_throughput.py --agreement``; the last
#: check is in benchmarks/README.md)
AUTO_BF16 = True


def _largest(nuclei):
    return max(nuclei, key=lambda n: n.area_px) if nuclei else None
