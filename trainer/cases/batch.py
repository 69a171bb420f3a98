"""Batch pre-classification into a case, as laboratories run analysers overnight.

``allgui-train predict DIR --case CASE.sqlite`` wraps its predictor in a :class:`CaseRecorder`: every
result is also appended to the case file, the same rows the app appends when it analyses an image
(:func:`~trainer.cases.records.prediction_record`: the model bundle's SHA-256 and card, the image's
SHA-256 and path, threshold and band, probabilities, votes, decision, outlines), one transaction per
batch. The app then opens the case (File ▸ Open case…, or the folder when the case is its
``allgui-case.sqlite``) with the images and their results, ready for review; ``allgui-train report``
lists them as not reviewed until they are.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.cases.records import card_summary, prediction_record
from trainer.cases.schema import file_sha256
from trainer.cases.store import CaseStore
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND
from trainer.util.errors import CaseError


def open_for_predictions(path: str | os.PathLike) -> CaseStore:
    """The case file ``path`` opened for writing, created (named after the file) when there is none."""
    path = Path(path)
    if path.exists():
        return CaseStore.open(path)
    if path.suffix.lower() not in (".sqlite", ".db", ".sqlite3"):
        raise CaseError(f"A new case file needs the .sqlite extension: {path.name}")
    return CaseStore.create(path)


class CaseRecorder:
    """A predictor (``predict``, ``predict_batch``, the rest passed through) that records its results.

    ``thresholds``: model key -> the threshold each image is decided at (as the CSV rows are);
    ``band``: the uncertainty band of a predictor without per-model bands (``band_for``). Results of images
    given as arrays (no file) are not recorded. :attr:`recorded` counts the results written.
    """

    def __init__(self, predictor, store: CaseStore, model_path: str | os.PathLike, thresholds: dict[str, float],
                 band: float = DEFAULT_UNCERTAINTY_BAND) -> None:
        self._inner = predictor
        self.store = store
        self.thresholds = dict(thresholds)
        self.band = float(band)
        # the model's identity as the app computes it: the bundle file's SHA-256 and the card's name
        self.model_sha256 = file_sha256(model_path)
        card = dict(getattr(predictor, "model_card", {}) or {})
        self.model_name = str(card.get("name") or Path(model_path).stem)
        self._card = card_summary(card)
        self.recorded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def predict(self, item, *args, **kwargs):
        result = self._inner.predict(item, *args, **kwargs)
        self._record([(item, result)])
        return result

    def predict_batch(self, items, *args, **kwargs):
        items = list(items)
        results = self._inner.predict_batch(items, *args, **kwargs)
        self._record(list(zip(items, results)))
        return results

    def _record(self, results: list[tuple[Any, Any]]) -> None:
        records = []
        for item, r in results:
            if not isinstance(item, (str, os.PathLike)):
                continue
            try:
                sha = file_sha256(item)
            except OSError:               # gone since it was read: its CSV row stands, the case skips it
                continue
            band = self._inner.band_for(r.model) if hasattr(self._inner, "band_for") else self.band
            records.append(prediction_record(r, sha, os.path.abspath(item), self.model_sha256,
                                             self.thresholds[r.model], band))
        if records:
            if not self.recorded:
                self.store.record_model(self.model_sha256, self.model_name, self._card)
            self.store.record_predictions(records)
            self.recorded += len(records)
