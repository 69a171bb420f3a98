"""Inference on new images with a saved model bundle: the API the desktop app calls.

``Predictor.from_bundle(path).predict(image_or_path)`` returns a
:class:`trainer.results.ImagePrediction`: the nuclei found, every classifier's probability and
vote, the ensemble's raw and calibrated probability for the whole crop, and, on a smear field,
the same for every white cell found.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import fingerprint
from .bundle import ModelBundle, load_bundle
from .errors import Cancelled
from .features import FeatureExtractor
from .errors import ImageReadError
from .imageio import as_rgb_uint8, read_image
from .model import operating_point
from .results import CellPrediction, ClassifierVote, ImagePrediction, decide  # noqa: F401
from . import segmentation


MIN_SIDE = 16  # pixels; smaller images cannot be segmented or classified meaningfully


class Predictor:
    """A loaded model ready to classify images.

    Attributes: ``threshold`` (default decision threshold on the calibrated probability:
    Youden's J optimum on the validation split), ``classifier_names``, ``classifier_weights``
    (name -> ensemble weight), ``model_card`` (JSON-able dict), ``validation_roc``
    (``fpr``, ``tpr``, ``thresholds`` arrays on the validation split).
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", cache_dir=None, verify: bool = True):
        self.bundle = bundle
        self.model = bundle.model
        self.config = bundle.config
        cfg = bundle.config
        self.extractor = FeatureExtractor(
            backbones=tuple(self.model.backbones), weights=cfg.weights, image_size=cfg.image_size,
            gamma=cfg.gamma, batch_size=cfg.batch_size, num_workers=0, device=device,
            cache_dir=cache_dir, state_dicts=bundle.backbone_state, seed=cfg.seed,
            precision=cfg.precision)
        if verify:
            fingerprint.verify(self.extractor, bundle.arrays)
        self.threshold = float(self.model.threshold_)
        self.classifier_names = list(self.model.classifier_names_)
        self.classifier_weights = dict(zip(self.classifier_names,
                                           map(float, self.model.ensemble_.weights_)))
        self.model_card = dict(bundle.card)
        self.validation_roc = self.model.validation_roc()
        kinds = (self.model_card.get("trained_on") or {}).get("image_kinds") or {}
        #: how a smear field is decided: a model trained mostly on fields judges the whole field
        #: (its cells are shown for review); one trained on single-cell crops judges each cell
        self.field_unit = "image" if kinds.get("field", 0.0) >= 0.5 else "cells"

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, device: str = "auto", cache_dir=None) -> "Predictor":
        """Load and verify ``path``. Raises :class:`trainer.errors.BundleError`."""
        return cls(load_bundle(path), device=device, cache_dir=cache_dir)

    @property
    def path(self) -> Path | None:
        return self.bundle.path

    def operating_point(self, threshold: float) -> tuple[float, float]:
        """(sensitivity, specificity) the model had on its validation split at ``threshold``.

        The validation split also chose the threshold and the calibration, so these are optimistic;
        :meth:`test_operating_point` gives the held-out view."""
        return self.model.operating_point(threshold)

    def test_operating_point(self, threshold: float) -> tuple[float, float] | None:
        """(sensitivity, specificity) on the held-out test split at ``threshold``; None without one."""
        y, p = self.bundle.arrays.get("test/y"), self.bundle.arrays.get("test/calibrated")
        if y is None or p is None or len(y) == 0 or len(np.unique(y)) < 2:
            return None
        return operating_point(y, p, threshold)

    # ------------------------------------------------------------------ predict
    def predict(self, image_or_path, path: str | None = None) -> ImagePrediction:
        """Classify one image (an RGB uint8 array or a file path). Raises ImageReadError."""
        return self.predict_batch([image_or_path], paths=[path])[0]

    def predict_batch(self, items: Iterable, paths: list | None = None,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> list[ImagePrediction]:
        """Classify many images; crops of all of them go through the networks together."""
        items = list(items)
        paths = list(paths) if paths is not None else [None] * len(items)
        t0 = time.perf_counter()
        prepared, crops, owners = [], [], []
        for i, (item, p) in enumerate(zip(items, paths)):
            if cancel is not None and cancel():
                raise Cancelled()
            if isinstance(item, (str, os.PathLike)):
                p = p or str(item)
                img = read_image(item)
            else:
                img = as_rgb_uint8(item)
            if min(img.shape[:2]) < MIN_SIDE:
                raise ImageReadError(f"{Path(p).name if p else 'The image'} is too small to analyse "
                                     f"({img.shape[1]}x{img.shape[0]} pixels; at least {MIN_SIDE} are needed).")
            single, cells, seg = self._segment(img)
            prepared.append((p, img, single, cells, seg))
            crops.append(img)
            owners.append((i, -1))
            for k, cell in enumerate(cells):
                x, y, w, h = cell.bbox
                crops.append(img[y:y + h, x:x + w])
                owners.append((i, k))
            if progress is not None:
                progress(0.3 * (i + 1) / len(items), f"Segmented {i + 1}/{len(items)} images")
        feats = self.extractor.extract(
            crops, cancel=cancel,
            progress=(lambda f, m: progress(0.3 + 0.65 * f, m)) if progress is not None else None)
        det = self.model.predict_details(feats)
        results = []
        for i, (p, img, single, cells, seg) in enumerate(prepared):
            rows = [r for r, (owner, _) in enumerate(owners) if owner == i]
            whole_row, cell_rows = rows[0], rows[1:]
            main = _largest(seg.nuclei) if single else None
            whole = self._cell_prediction(det, whole_row, -1, (0, 0, img.shape[1], img.shape[0]), main)
            cell_preds = [self._cell_prediction(det, r, k, cells[k].bbox, cells[k].nucleus)
                          for k, r in enumerate(cell_rows)]
            notes = []
            if not seg.nuclei:
                notes.append("No nucleus was found in this crop: the result is not meaningful." if single else
                             "No white cell was found in this image: the result is not meaningful.")
            results.append(ImagePrediction(
                path=p, shape=(int(img.shape[0]), int(img.shape[1])),
                kind="single_cell" if single else "field", nucleus_mask=seg.mask,
                whole=whole, cells=cell_preds, unit=self.field_unit, notes=notes))
        elapsed = time.perf_counter() - t0
        for r in results:
            r.seconds = elapsed / max(len(results), 1)
        if progress is not None:
            progress(1.0, f"Classified {len(results)} images")
        return results

    def _segment(self, img: np.ndarray):
        """(is_single_cell, cells to classify separately, Segmentation)."""
        seg = segmentation.segment_nuclei(img, gamma=self.config.gamma)
        if seg.kind == segmentation.KIND_SINGLE:
            return True, [], seg
        return False, segmentation.cells_from_segmentation(seg, img.shape), seg

    def _cell_prediction(self, det, row: int, index: int, bbox, nucleus) -> CellPrediction:
        votes = [ClassifierVote(name=n, probability=float(det["probabilities"][row, j]),
                                vote=int(det["votes"][row, j]), weight=float(det["weights"][j]))
                 for j, n in enumerate(self.classifier_names)]
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
        return out


def _largest(nuclei):
    return max(nuclei, key=lambda n: n.area_px) if nuclei else None
