"""Bundles of earlier versions: this package's types under their old module names, and the one-model layout.

A bundle written before the package was cut into layers names its estimators ``trainer.model.AllModel``
and the like; :func:`current_type_names` maps those names to today's modules before skops audits them
(data, no code: nothing more is trusted). A version-1 bundle holds one AllModel: :func:`as_kind_models`
makes it the single model ``"any"`` of a KindModels and re-keys its arrays.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from trainer.classical.kinds import KindModels
from trainer.vision.fingerprint import is_fingerprint

#: the modules of this package's estimators in bundles written before the package was cut into
#: layers; such a bundle's type names are mapped to today's modules before anything is trusted
LEGACY_MODULES = {
    "trainer.model": "trainer.classical.model", "trainer.stacking": "trainer.classical.stacking",
    "trainer.fusion": "trainer.classical.fusion", "trainer.ensemble": "trainer.classical.ensemble",
    "trainer.calibration": "trainer.classical.calibration",
}


def _renamed(node: Any) -> Any:
    """A skops schema (nested dicts and lists) with every ``__module__`` in LEGACY_MODULES renamed."""
    if isinstance(node, dict):
        out = {k: _renamed(v) for k, v in node.items()}
        if out.get("__module__") in LEGACY_MODULES:
            out["__module__"] = LEGACY_MODULES[out["__module__"]]
        return out
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def current_type_names(data: bytes) -> bytes:
    """A skops payload whose schema names this package's types by today's modules.

    A bundle written before the layered package names e.g. ``trainer.model.AllModel``, which becomes
    ``trainer.classical.model.AllModel``. Only the type names change (data, no code); a payload without old
    names is returned as it is.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        schema = zin.read("schema.json")
        if not any(f'"{old}"'.encode() in schema for old in LEGACY_MODULES):
            return data
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                payload = zin.read(info)
                if info.filename == "schema.json":
                    payload = json.dumps(_renamed(json.loads(payload))).encode()
                zout.writestr(info.filename, payload)
    return buf.getvalue()


def as_kind_models(model: Any, arrays: dict[str, np.ndarray]) -> tuple[Any, dict[str, np.ndarray]]:
    """(model, arrays) of a one-model bundle as a KindModels of the single key ``"any"``.

    A version-1 bundle's AllModel and its arrays ``validation/...`` become ``any/validation/...``
    (fingerprints keep their keys); anything else is returned as it is.
    """
    if isinstance(model, KindModels):
        return model, arrays
    from trainer.classical.model import AllModel  # scikit-learn: imported by the rebuild that made ``model``

    if isinstance(model, AllModel):
        model = KindModels(models={"any": model})
        arrays = {(k if is_fingerprint(k) else f"any/{k}"): v for k, v in arrays.items()}
    return model, arrays
