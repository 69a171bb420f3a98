"""What a bundle's manifest says of each model, and the models rebuilt only when first asked for."""
from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.inference.bundle.trust import rebuild_model
from trainer.inference.results import band_report
from trainer.util.errors import BundleError


def describe(m: Any) -> tuple[float, list[str]]:
    """(threshold, feature blocks) of a fitted AllModel, as the manifest records them."""
    return float(m.threshold_), [str(b) for b in m.backbones]


def manifest_entry(m: Any, member: str) -> dict[str, Any]:
    """What the manifest says of one model: its member, threshold and feature blocks."""
    threshold, blocks = describe(m)
    return {"member": member, "threshold": threshold, "blocks": blocks}


def card_bands(card: dict) -> dict[str, float]:
    """Model key -> the uncertain band the card says that model fitted (``method.uncertain_band.band``).

    Models whose card section names no band (saved before bands were fitted) are left out.
    """
    reports = {key: band_report(card, key) for key in ((card or {}).get("models") or {})}
    return {key: float(r["band"]) for key, r in reports.items() if r and isinstance(r.get("band"), (int, float))}


def model_summary(models, key: str) -> tuple[float, list[str]]:
    """(threshold, feature blocks) of model ``key`` of a dict or :class:`LazyModels`, without rebuilding it."""
    if isinstance(models, LazyModels):
        return models.summary(key)
    return describe(models[key])


class LazyModels(Mapping):
    """Model key -> AllModel of a bundle with one member per model, each rebuilt when first asked for.

    The members' bytes were read and checksummed with the bundle; rebuilding one runs skops' audited load
    and the same checks as an eager load (:func:`trust.rebuild_model`), and refuses a model whose threshold
    or feature blocks differ from the manifest's (which :func:`model_summary` gives before it is rebuilt),
    or whose band differs from ``bands`` (the card's, :func:`card_bands`, which the app shows and uses
    before the model is rebuilt). Thread-safe.
    """

    def __init__(self, payloads: dict[str, bytes], table: dict[str, dict[str, Any]], path: Path,
                 bands: dict[str, float] | None = None):
        self._payloads = dict(payloads)
        self._table = table
        self._path = path
        self._bands = dict(bands or {})
        self._models: dict[str, Any] = {}     # key -> AllModel
        self._lock = threading.RLock()

    def __getitem__(self, key: str):
        with self._lock:
            if key not in self._models:
                if key not in self._table:
                    raise KeyError(key)
                m = rebuild_model(self._payloads[key], self._path)
                band = getattr(m, "band_", None)
                if describe(m) != self.summary(key) or (
                        key in self._bands and (band is None or float(band) != self._bands[key])):
                    raise BundleError(f"{self._path.name} has been altered: the manifest does not describe "
                                      f"its {key} model.")
                self._models[key] = m
                del self._payloads[key]
            return self._models[key]

    def __contains__(self, key) -> bool:  # without rebuilding it
        return key in self._table

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def loaded(self, key: str) -> bool:
        """Whether model ``key`` has been rebuilt."""
        return key in self._models

    def summary(self, key: str) -> tuple[float, list[str]]:
        """(threshold, feature blocks) of model ``key`` as the manifest gives them."""
        entry = self._table[key]
        return float(entry["threshold"]), list(entry["blocks"])
