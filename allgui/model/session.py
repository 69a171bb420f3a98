"""The loaded model as the app knows it, free of Qt: its identity, name, card, thresholds and uncertainty bands.

One hash names a model everywhere in the app: the SHA-256 of its bundle file (of its card when it has no
file), the hash its reviews record. The user's thresholds are kept in the settings under it, one per model
key (crop model, field model). Thresholds saved by earlier versions under a shorter key (a SHA-1 of name,
date and file name) are still read when none are saved under the hash.

The uncertainty band of a model key is asked of the session alone: a fitted model carries its own
(``band_``, also in its card's ``uncertain_band``), else the default band of :mod:`trainer.inference.results`.
A band the user sets is kept, like a threshold, per model key under the model's hash. What the band rests on
(its target, the coverage and accuracy it had on held-out subjects) comes from the card: :meth:`ModelSession.band_text`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from trainer.cases import file_sha256
from trainer.inference.results import DEFAULT_UNCERTAINTY_BAND, MODEL_NAMES, band_report


class Settings(Protocol):
    """Where preferences persist (``QSettings`` is one)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...

    def remove(self, key: str) -> None: ...


def model_identity(path: str | None, card: dict) -> str:
    """SHA-256 of the model bundle file, or of its card when there is no file."""
    if path and Path(path).is_file():
        return file_sha256(path)
    return hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()


def fitted_band(model: Any, report: dict | None = None) -> float:
    """The uncertainty band a fitted model carries (``band_``, else its card's ``report``), else the default band."""
    band = getattr(model, "band_", None)
    if not isinstance(band, (int, float)) and report:
        band = report.get("band")
    return float(band) if isinstance(band, (int, float)) else DEFAULT_UNCERTAINTY_BAND


def _band_of(models: Any, key: str, report: dict | None) -> float:
    """Model ``key``'s band; a model not rebuilt yet (of a lazily loaded bundle) is not rebuilt for it.

    The card's report was written from the same fitted band, and a model whose band differs from its
    card's is refused when it is rebuilt, before it judges an image (:class:`trainer.inference.bundle.LazyModels`).
    """
    loaded = getattr(models, "loaded", None)
    if loaded is not None and not loaded(key) and report and isinstance(report.get("band"), (int, float)):
        return float(report["band"])
    return fitted_band(models[key], report)


def _units(report: dict | None) -> str:
    """What the model's groups are, plural: "subjects", or "image blocks" where the data had no subject ids."""
    return f"{(report or {}).get('group_kind') or 'subject'}s"


def _subjects(report: dict) -> str:
    """'5 normal and 5 ALL subjects' from a band report's risk-coverage group counts ('' without them)."""
    groups = (report.get("risk_coverage") or {}).get("n_groups") or {}
    if not groups:
        return ""
    return f", {groups.get('0', 0)} normal and {groups.get('1', 0)} ALL {_units(report)}"


def band_summary(name: str, report: dict | None, band: float) -> str:
    """What the uncertain band of the model ``name`` rests on, in words, from its card's ``report``.

    ``band`` is the band in use; where the user set another than the model's own, the text says so.
    """
    if report is None:
        return (f"Uncertain band \u00b1{band:.3f}: a fixed band; the {name} was saved before bands were fitted "
                "to its held-out subjects (retrain it for one).")
    own = float(report.get("band", band))
    target = float(report.get("target", 0.95))
    units = _units(report)
    rests = str(report.get("rests_on") or f"{report.get('n_rows', '?')} images") + _subjects(report)
    if report.get("reached"):
        text = (f"Uncertain band \u00b1{own:.3f} (the {name}'s own): decides {report['coverage']:.0%} of images "
                f"of held-out {units}, right in {report['accuracy_decided']:.0%} of them (target {target:.0%}; "
                f"{rests}).")
    else:
        text = (f"Uncertain band \u00b1{own:.3f} (the {name}'s own): no band reached the target of {target:.0%} "
                f"right on images of held-out {units}, so it decides none of them: treat every result as "
                f"uncertain ({rests}).")
    youden = report.get("youden_threshold")
    if report.get("reached") and isinstance(youden, (int, float)) and {"below", "above"} <= set(report):
        lo, hi = max(youden - report["below"], 0.0), min(youden + report["above"], 1.0)
        text += (f" Its two sides were fitted apart: uncertain from {lo:.3f} to {hi:.3f}, and the default "
                 f"threshold is the band's centre (Youden's J threshold: {youden:.3f}).")
    if abs(band - own) > 5e-4:
        text += f" You set \u00b1{band:.3f}: that band's accuracy is not known (Model default restores the own one)."
    return text


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
        #: model key -> the card's account of its fitted band (None: saved before bands were fitted)
        self.band_reports = {k: band_report(self.card, k) for k in self.default_thresholds}

    @classmethod
    def open(cls, predictor: Any, path: str | None = None) -> ModelSession:
        """The session of ``predictor`` loaded from ``path``: hashes the file and reads each model's band."""
        path = str(path) if path else None
        card = dict(getattr(predictor, "model_card", None) or {})
        models = getattr(predictor, "models", None) or {}
        return cls(predictor, path, model_identity(path, card),
                   {k: _band_of(models, k, band_report(card, k)) for k in models})

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

    def band_text(self, key: str, band: float | None = None) -> str:
        """What model ``key``'s band rests on, in words (:func:`band_summary`); ``band``: the one in use."""
        name = MODEL_NAMES.get(key, key)
        return band_summary(name, self.band_reports.get(key), self.band(key) if band is None else band)

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

    def saved_bands(self, settings: Settings) -> dict[str, float]:
        """The uncertain bands the user set for this model (keys where the model's own is in use are left out)."""
        return {k: float(v) for k in self.default_thresholds
                if (v := settings.value(f"band/{self.sha256}/{k}")) is not None}

    def save_bands(self, settings: Settings, bands: dict[str, float]) -> None:
        """Keep the bands (model key -> band) that differ from the model's own; forget the others."""
        for key, b in bands.items():
            if key not in self.default_thresholds:
                continue
            if abs(float(b) - self.band(key)) > 1e-9:
                settings.setValue(f"band/{self.sha256}/{key}", float(b))
            elif settings.value(f"band/{self.sha256}/{key}") is not None:
                settings.remove(f"band/{self.sha256}/{key}")
