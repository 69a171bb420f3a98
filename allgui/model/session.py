"""The loaded model as the app knows it, free of Qt: its identity, name, card, thresholds and uncertainty bands.

One hash names a model everywhere in the app: the SHA-256 of its bundle file (of its card when it has no
file), the hash its reviews record. The user's thresholds are kept in the settings under it, one per model
key (crop model, field model). Thresholds saved by earlier versions under a shorter key (a SHA-1 of name,
date and file name) are still read when none are saved under the hash.

The uncertainty band of a model key is asked of the session alone: a fitted model may carry its own
(``band_``), else the default band of :mod:`trainer.inference.results`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any, Protocol

from trainer.cases import file_sha256
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND


class Settings(Protocol):
    """Where preferences persist (``QSettings`` is one)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...


def model_identity(path: str | None, card: dict) -> str:
    """SHA-256 of the model bundle file, or of its card when there is no file."""
    if path and Path(path).is_file():
        return file_sha256(path)
    return hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()


def fitted_band(model: Any) -> float:
    """The uncertainty band a fitted model carries (``band_``), else the default band."""
    # looked up statically: a model read-out answers unknown attributes by rebuilding the whole estimator
    band = inspect.getattr_static(model, "band_", DEFAULT_UNCERTAINTY_BAND)
    return float(band) if isinstance(band, (int, float)) else DEFAULT_UNCERTAINTY_BAND


class ModelSession:
    """One loaded model: its predictor, bundle path, identity, card, default thresholds and bands.

    Build it with :meth:`open`, off the GUI thread (it may read the whole bundle file).

    Parameters
    ----------
    predictor
        The loaded model (:class:`trainer.inference.predictor.Predictor` or alike).
    path : str, optional
        Its bundle file (None for a model that has none).
    sha256 : str
        Its identity (:func:`model_identity`).
    bands : dict of str to float, optional
        Model key -> uncertainty band (default: the default band for every key).
    """

    def __init__(self, predictor: Any, path: str | None, sha256: str, bands: dict[str, float] | None = None) -> None:
        self.predictor = predictor
        self.path = str(path) if path else None
        self.sha256 = sha256
        self.card: dict = dict(getattr(predictor, "model_card", None) or {})
        self.name = str(self.card.get("name") or (Path(self.path).stem if self.path else "model"))
        thresholds = getattr(predictor, "thresholds", None) or {"any": getattr(predictor, "threshold", 0.5)}
        #: model key -> the model's own decision threshold (its validation optimum)
        self.default_thresholds = {str(k): float(v) for k, v in thresholds.items()}
        self.bands = {k: float((bands or {}).get(k, DEFAULT_UNCERTAINTY_BAND)) for k in self.default_thresholds}

    @classmethod
    def open(cls, predictor: Any, path: str | None = None) -> ModelSession:
        """The session of ``predictor`` loaded from ``path``: hashes the file and reads each model's band."""
        path = str(path) if path else None
        card = dict(getattr(predictor, "model_card", None) or {})
        models = getattr(predictor, "models", None) or {}
        return cls(predictor, path, model_identity(path, card), {k: fitted_band(m) for k, m in models.items()})

    @property
    def keys(self) -> list[str]:
        """Model keys ("single_cell", "field" or "any"), the first model's first."""
        return list(self.default_thresholds)

    @property
    def training_kinds(self) -> dict:
        """Shares of single-cell crops and smear fields among the training images (from the card)."""
        return dict((self.card.get("trained_on") or {}).get("image_kinds") or {})

    def band(self, key: str | None = None) -> float:
        """The uncertainty band of model ``key`` (default: the first model's)."""
        return self.bands.get(key if key is not None else self.keys[0], DEFAULT_UNCERTAINTY_BAND)

    # ---- thresholds the user set, kept per model ---------------------------------------------------
    def _legacy_key(self) -> str:
        ident = f"{self.name}|{self.card.get('created', '')}|{Path(self.path).name if self.path else ''}"
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    def saved_thresholds(self, settings: Settings) -> dict[str, float]:
        """The thresholds the user last set for this model (keys without one are left out)."""
        for ident in (self.sha256, self._legacy_key()):
            saved = {k: float(v) for k in self.default_thresholds
                     if (v := settings.value(f"threshold/{ident}/{k}")) is not None}
            if saved:
                return saved
        return {}

    def save_thresholds(self, settings: Settings, thresholds: dict[str, float]) -> None:
        """Keep ``thresholds`` (model key -> threshold) for this model."""
        for key, t in thresholds.items():
            if key in self.default_thresholds:
                settings.setValue(f"threshold/{self.sha256}/{key}", float(t))
