"""Model bundles: one zip file holding a fitted model, its config, model card and arrays.

Layout (format ``allgui-model``, version 3)::

    manifest.json          format, version, config, model card, metrics, versions, SHA-256 of members;
                           ``models``: per model key its member, threshold and feature blocks, and
                           ``readout`` where its numpy read-out was checked against it when saved
    model-<key>.skops      one fitted :class:`trainer.classical.model.AllModel` per image kind (skops: no code
                           runs on load); ``load_bundle(lazy=True)`` rebuilds only the first until another
                           is asked for. Bundles of versions 1 and 2 hold one ``model.skops`` instead
                           (a KindModels, or one AllModel).
    arrays.safetensors     numpy arrays, per model key ``<key>/validation/...``, ``<key>/test/...``,
                           ``<key>/stain_reference``; ``probe64/<backbone>`` fingerprints; optional
                           explanation probes ``<key>/explain/<backbone>/{mean,scale,coef,intercept,reference}``
                           (plain float arrays, see :mod:`trainer.inference.explain`): bundles written before
                           them load and predict unchanged, they only cannot show heatmaps
    backbones.safetensors  optional backbone weights ("<backbone>/<param>"), e.g. fine-tuned ones

Version 1 bundles (one AllModel, arrays ``validation/...`` and ``test/...``) still load: they come
back as a KindModels with the single key ``"any"``. Versions 1 and 2 store the fingerprints at the model's
input size (``probe/<backbone>``, see :mod:`trainer.vision.fingerprint`); version 3 at a small input size,
so an allgui that reads only versions 1 and 2 refuses a newer bundle instead of skipping its check.

Loading never unpickles: skops reconstructs only skops' default-trusted types plus an explicit
allow-list (the scikit-learn estimators allgui writes, four scikit-learn internals and this package's
estimators; see ``trainer.classical.serialise``), the base classifiers must be of the five kinds allgui
writes, and safetensors holds raw tensors. A read-out (``load_bundle(readouts=True)``) builds no object
from the file at all: it reads its JSON and arrays. Every member's hash is checked, so a truncated or
altered file is refused with :class:`BundleError`. Writes go to a temporary file in the target folder and
are moved into place atomically.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import threading
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

from trainer import __version__
from trainer.classical import readout
from trainer.classical.kinds import KindModels
from trainer.config import TrainConfig
from trainer.inference.manifest_schema import check_manifest
from trainer.util.atomic import atomic_write
from trainer.util.errors import BundleError
from trainer.util.limits import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_MEMBER_BYTES,
    MAX_COMPRESSION_RATIO,
    MAX_MANIFEST_BYTES,
    RATIO_FLOOR_BYTES,
    check_regular_file,
    format_bytes,
)
from trainer.util.versions import torchvision_version
from trainer.vision.fingerprint import is_fingerprint

FORMAT = "allgui-model"
FORMAT_VERSION = 3
#: a manifest's ``models.<key>.readout``: the model's classical stage was checked, when saved, to compute
#: the same with :class:`trainer.classical.readout.ModelReadout` (numpy only) as with scikit-learn
READOUT_VERSION = 1
READABLE_VERSIONS = (1, 2, 3)
SUFFIX = ".allmodel"
OWN_TYPES = frozenset({
    "trainer.classical.model.AllModel", "trainer.classical.model.KindModels", "trainer.classical.kinds.KindModels",
    "trainer.classical.stacking.StackedCombiner", "trainer.classical.fusion.FeatureFusion",
    "trainer.classical.ensemble.WeightedVotingEnsemble", "trainer.classical.calibration.ScoreCalibrator",
    "trainer.classical.domain.DomainCheck", "trainer.classical.domain._Scorer",
})
#: the modules of this package's estimators in bundles written before the package was cut into
#: layers; such a bundle's type names are mapped to today's modules before anything is trusted
LEGACY_MODULES = {
    "trainer.model": "trainer.classical.model", "trainer.stacking": "trainer.classical.stacking",
    "trainer.fusion": "trainer.classical.fusion", "trainer.ensemble": "trainer.classical.ensemble",
    "trainer.calibration": "trainer.classical.calibration",
}
#: scikit-learn internals an AllModel holds that skops does not trust by default; nothing else is
#: accepted beyond these, SKLEARN_ESTIMATORS and skops' own defaults (numpy, builtins).
SKLEARN_INTERNALS = frozenset({
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer", "sklearn.tree._tree.Tree",
})
#: the classes each base classifier of a model written by allgui may have
CLASSIFIER_TYPES = frozenset({
    "CalibratedClassifierCV", "KNeighborsClassifier", "RandomForestClassifier",
    "AdaBoostClassifier", "MLPClassifier",
})


@dataclass
class ModelBundle:
    """A fitted model with everything needed to use and to describe it."""

    model: Any                                    # trainer.classical.model.AllModel
    config: TrainConfig
    card: dict[str, Any] = field(default_factory=dict)     # JSON-able model card
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    backbone_state: dict[str, dict[str, Any]] | None = None  # name -> state_dict (torch tensors)
    path: Path | None = None


def package_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    import sklearn  # only when saving: prediction from a read-out never imports scikit-learn

    return {"allgui": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__,
            "torchvision": torchvision_version()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(path: str | os.PathLike, bundle: ModelBundle) -> Path:
    """Write ``bundle`` to ``path`` atomically; returns the path."""
    from trainer.classical.serialise import skops_io  # scikit-learn and skops: not needed to predict

    path = Path(path)
    members: dict[str, bytes] = {}
    table: dict[str, dict[str, Any]] = {}
    if isinstance(bundle.model, KindModels):  # one member per model: each can be rebuilt alone
        for key, m in bundle.model.models.items():
            if not _MODEL_KEY.match(key):
                raise ValueError(f"model key {key!r} is not a lower-case word")
            members[f"model-{key}.skops"] = payload = skops_io.dumps(m)
            table[key] = _summary(m, f"model-{key}.skops")
            if readout.agrees(m, payload):  # offered to predictions that would rather not import scikit-learn
                table[key]["readout"] = READOUT_VERSION
    else:
        members["model.skops"] = skops_io.dumps(bundle.model)
    arrays = {k: np.ascontiguousarray(v) for k, v in bundle.arrays.items()}
    members["arrays.safetensors"] = safetensors.numpy.save(arrays) if arrays else b""
    if bundle.backbone_state:
        flat = {f"{name}/{k}": v.detach().cpu().contiguous()
                for name, sd in bundle.backbone_state.items() for k, v in sd.items()}
        members["backbones.safetensors"] = safetensors.torch.save(flat)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": bundle.card.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": bundle.config.to_dict(), "card": bundle.card,
        "versions": package_versions(),
        "members": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in members.items()},
    }
    if table:
        manifest["models"] = table
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, default=_json_default))
        for name, data in members.items():
            # float weights do not deflate; storing them keeps saving fast
            zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name == "backbones.safetensors"
                        else zipfile.ZIP_DEFLATED)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    bundle.path = path
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest alone (cheap: no model is reconstructed). Raises BundleError."""
    with _open_zip(Path(path)) as zf:
        return _manifest(zf, Path(path))


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        if path.exists():
            raise BundleError(f"{path.name} is not a model file: it is not a regular file.")
        raise BundleError(f"Model file not found: {path}")
    try:
        check_regular_file(path, MAX_BUNDLE_BYTES)  # no FIFO or device; bounded size
    except ValueError as e:
        raise BundleError(f"{path.name} is not an allgui model file: {e}.") from None
    except OSError as e:
        raise BundleError(f"{path.name} cannot be read: {e.strerror or e}.") from None
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BundleError(f"{path.name} is not an allgui model file (or it is truncated): {e}") from None


def _bounded_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path):
    """Refuse a member that would inflate too far, before anything is inflated.

    Too far: a declared size over ``limit`` or a compression ratio over MAX_COMPRESSION_RATIO.
    """
    if info.file_size > limit:
        raise BundleError(f"{path.name} is not an allgui model file: {info.filename} would inflate to "
                          f"{format_bytes(info.file_size)} (at most {format_bytes(limit)}).")
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise BundleError(f"{path.name} is not an allgui model file: {info.filename} is compressed "
                          f"{info.file_size // max(info.compress_size, 1)}:1 (a zip bomb?); refused.")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, digest=None) -> bytes:
    """The member's bytes, read in chunks and never more than its declared size."""
    chunks, total = [], 0
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(min(1 << 20, info.file_size + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > info.file_size:
                raise BundleError(f"{path.name} is damaged: {info.filename} is longer than declared.")
            if digest is not None:
                digest.update(chunk)
            chunks.append(chunk)
    return b"".join(chunks)


def _manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = zf.getinfo("manifest.json")
        _bounded_member(zf, info, MAX_MANIFEST_BYTES, path)
        manifest = json.loads(_read_member(zf, info, path))
    except KeyError:
        raise BundleError(f"{path.name} is not an allgui model file: it has no manifest.") from None
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, RecursionError,
            NotImplementedError) as e:
        raise BundleError(f"{path.name}: the manifest is damaged ({e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path.name} is not an allgui model file.")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{path.name} uses model format version {manifest.get('format_version')}; "
                          f"this allgui reads versions {', '.join(map(str, READABLE_VERSIONS))}.")
    return check_manifest(manifest, path.name)


def _verified(zf: zipfile.ZipFile, manifest: dict, name: str, path: Path) -> bytes:
    meta = manifest.get("members", {}).get(name)
    if meta is None:
        raise BundleError(f"{path.name} is incomplete: {name} is not listed in its manifest.")
    digest = hashlib.sha256()
    try:
        info = zf.getinfo(name)
        if info.file_size != meta.get("bytes"):
            raise BundleError(f"{path.name} has been altered: {name} has the wrong size.")
        _bounded_member(zf, info, MAX_BUNDLE_MEMBER_BYTES, path)
        data = _read_member(zf, info, path, digest)
    except KeyError:
        raise BundleError(f"{path.name} is incomplete: {name} is missing.") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise BundleError(f"{path.name} is damaged or truncated ({e}).") from None
    if digest.hexdigest() != meta.get("sha256"):
        raise BundleError(f"{path.name} has been altered or damaged: the checksum of {name} does not match.")
    return data


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


def _load_model(data: bytes, path: Path):
    """Rebuild the pickle-free model part in one pass.

    Only allgui's own types, the scikit-learn estimators and internals it writes and skops' defaults are accepted;
    skops audits the types while loading.
    """
    # scikit-learn and skops cost a second of start-up: imported when a model is rebuilt, not to read a bundle
    from trainer.classical.serialise import SKLEARN_ESTIMATORS, skops_io

    try:
        return skops_io.loads(current_type_names(data),
                              trusted=sorted(OWN_TYPES | SKLEARN_INTERNALS | SKLEARN_ESTIMATORS))
    except skops_io.exceptions.UntrustedTypesFoundException as e:
        found = re.findall(r"'([^']+)'", str(e)) or [str(e)]
        raise BundleError(f"{path.name} contains object types allgui does not load: "
                          f"{', '.join(sorted(found)[:5])}. It was not written by allgui.") from None
    except Exception as e:  # malformed skops payload
        raise BundleError(f"{path.name}: the model part cannot be reconstructed ({e}).") from None


def load_bundle(path: str | os.PathLike, lazy: bool = False, readouts: bool = False) -> ModelBundle:
    """Read and verify a bundle. Raises :class:`BundleError` with a clear message.

    Every member is read and its checksum verified here. ``lazy``: of a bundle with one member per model,
    only the first model is rebuilt now and each other one when first asked for (see :class:`LazyModels`;
    a one-crop prediction then skips the field model's share of the start-up). ``readouts``: a model the
    manifest offers a read-out of comes back as a :class:`trainer.classical.readout.ModelReadout`, which
    predicts without scikit-learn and rebuilds the model only for what it leaves to it.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        manifest = _manifest(zf, path)
        table = manifest.get("models")
        if table:
            payloads = {key: _verified(zf, manifest, entry["member"], path) for key, entry in table.items()}
            pending = LazyModels(payloads, table, path, readouts=readouts)
            if lazy:
                pending[next(iter(pending))]  # the first model now, the others when asked for
                model = KindModels(models=pending)
            else:
                model = KindModels(models={key: pending[key] for key in pending})
        else:
            model = _load_model(_verified(zf, manifest, "model.skops", path), path)
        raw = _verified(zf, manifest, "arrays.safetensors", path)
        backbones = (_verified(zf, manifest, "backbones.safetensors", path)
                     if "backbones.safetensors" in manifest.get("members", {}) else None)
    try:
        arrays = safetensors.numpy.load(raw) if raw else {}
        state = None
        if backbones is not None:
            state = {}
            for key, t in safetensors.torch.load(backbones).items():
                name, _, param = key.partition("/")
                state.setdefault(name, {})[param] = t
    except Exception as e:
        raise BundleError(f"{path.name}: stored arrays cannot be read ({e}).") from None
    model, arrays = _as_kind_models(model, arrays, path)
    return ModelBundle(model=model, config=TrainConfig.from_dict(manifest.get("config", {})),
                       card=dict(manifest.get("card", {}), created=manifest.get("created"),
                                 versions=manifest.get("versions", {})),
                       arrays=arrays, backbone_state=state, path=path)


def _as_kind_models(model, arrays: dict[str, np.ndarray], path: Path):
    """(KindModels, arrays) of a loaded model.

    A version-1 AllModel becomes the single model ``"any"`` with its arrays re-keyed; every model's base
    classifiers are checked.
    """
    if not isinstance(model, KindModels):
        from trainer.classical.model import AllModel  # scikit-learn: loaded with the model, not for a read-out
        if isinstance(model, AllModel):
            model = KindModels(models={"any": model})
            arrays = {(k if is_fingerprint(k) else f"any/{k}"): v for k, v in arrays.items()}
    models = getattr(model, "models", None) if isinstance(model, KindModels) else None
    if isinstance(models, LazyModels):
        return model, arrays  # each model is checked as it is rebuilt
    if not isinstance(models, dict) or not models or not all(isinstance(k, str) for k in models):
        raise BundleError(f"{path.name} does not hold an allgui model.")
    for m in models.values():
        _check_model(m, path)
    return model, arrays


def _check_model(m, path: Path) -> None:
    """Raise BundleError unless ``m`` is an AllModel whose base classifiers are of the kinds allgui writes.

    A read-out was checked as it was read: it reads only those kinds.
    """
    if isinstance(m, readout.ModelReadout):
        return
    from trainer.classical.model import AllModel  # scikit-learn: imported by the rebuild that made ``m``

    if not isinstance(m, AllModel):
        raise BundleError(f"{path.name} does not hold an allgui model.")
    estimators = getattr(getattr(m, "ensemble_", None), "estimators_", {}) or {}
    odd = sorted({type(e).__name__ for e in estimators.values()} - CLASSIFIER_TYPES)
    if odd:
        raise BundleError(f"{path.name} holds classifiers allgui does not write ({', '.join(odd)}); refused.")


_MODEL_KEY = re.compile(r"^[a-z_]{1,32}$")


def _describe(m) -> tuple[float, list[str]]:
    """(threshold, feature blocks) of a fitted AllModel, as the manifest records them."""
    return float(m.threshold_), [str(b) for b in m.backbones]


def _summary(m, member: str) -> dict[str, Any]:
    """What the manifest says of one model: its member, threshold and feature blocks."""
    threshold, blocks = _describe(m)
    return {"member": member, "threshold": threshold, "blocks": blocks}


def model_summary(models, key: str) -> tuple[float, list[str]]:
    """(threshold, feature blocks) of model ``key`` of a dict or :class:`LazyModels`, without rebuilding it."""
    if isinstance(models, LazyModels):
        return models.summary(key)
    return _describe(models[key])


class LazyModels(Mapping):
    """Model key -> AllModel of a bundle with one member per model, each rebuilt when first asked for.

    The members' bytes were read and checksummed with the bundle; rebuilding one runs skops' audited load
    and the same checks as an eager load, and refuses a model whose threshold or feature blocks differ
    from the manifest's (which :func:`model_summary` gives before it is rebuilt). ``readouts``: a model
    whose manifest entry offers a read-out (``READOUT_VERSION``) comes back as a
    :class:`trainer.classical.readout.ModelReadout` instead, which rebuilds the AllModel only for what it
    leaves to it; a payload it cannot read is rebuilt as usual. Thread-safe.
    """

    def __init__(self, payloads: dict[str, bytes], table: dict[str, dict[str, Any]], path: Path,
                 readouts: bool = False):
        self._payloads = dict(payloads)
        self._table = table
        self._path = path
        self._readouts = readouts
        self._models: dict[str, Any] = {}     # key -> AllModel or ModelReadout, as handed out
        self._rebuilt: dict[str, Any] = {}    # key -> AllModel
        self._lock = threading.RLock()

    def __getitem__(self, key: str):
        with self._lock:
            if key not in self._models:
                if key not in self._table:
                    raise KeyError(key)
                model = None
                if self._readouts and self._table[key].get("readout") == READOUT_VERSION:
                    with contextlib.suppress(readout.SchemaError):  # unreadable: rebuilt instead
                        model = readout.ModelReadout(self._payloads[key], exact=lambda: self._rebuild(key))
                self._models[key] = self._described(key, model) if model is not None else self._rebuild(key)
            return self._models[key]

    def _rebuild(self, key: str):
        with self._lock:
            if key not in self._rebuilt:
                m = _load_model(self._payloads[key], self._path)
                _check_model(m, self._path)
                self._rebuilt[key] = self._described(key, m)
                del self._payloads[key]
            return self._rebuilt[key]

    def _described(self, key: str, model):
        """``model``, if its threshold and feature blocks are what the manifest says of model ``key``."""
        if _describe(model) != self.summary(key):
            raise BundleError(f"{self._path.name} has been altered: the manifest does not describe its {key} model.")
        return model

    def __contains__(self, key) -> bool:  # without rebuilding it
        return key in self._table

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def loaded(self, key: str) -> bool:
        """Whether model ``key`` has been handed out: rebuilt, or read out."""
        return key in self._models

    def rebuilt(self, key: str) -> bool:
        """Whether model ``key`` has been rebuilt by skops (a read-out alone does not count)."""
        return key in self._rebuilt

    def summary(self, key: str) -> tuple[float, list[str]]:
        """(threshold, feature blocks) of model ``key`` as the manifest gives them."""
        entry = self._table[key]
        return float(entry["threshold"]), list(entry["blocks"])
