"""The values of a skops payload, read with numpy alone: no skops, no scikit-learn, no code run.

A skops file is a zip: ``schema.json`` describes the object tree and numpy arrays are ``.npy``
members. :func:`read` turns the tree into Python values: JSON values, lists, tuples, dicts, numpy
arrays (``allow_pickle=False``) and, for an object, an :class:`Obj` naming its type and holding its
attributes. It builds no object of the named types, so nothing here has to be trusted; what a type name
means is up to the caller (:mod:`trainer.classical.readout`). Anything it does not know raises
:class:`SchemaError`.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

MAX_SCHEMA_BYTES = 64 << 20  # schema.json of a model written by allgui: about 2 MB


class SchemaError(ValueError):
    """The payload holds something this reader does not know (or is damaged)."""


class Obj:
    """An object of the payload: its full type name (``module.Class``) and its attributes.

    An attribute is read when it is first asked for, so parts of the tree nobody asks for (an optimiser's
    state, a random generator) are never read.
    """

    def __init__(self, type_: str, nodes: dict[str, Any], reader: _Reader) -> None:
        self.type = type_
        self._nodes = nodes
        self._reader = reader
        self._values: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            if name not in self._nodes:
                raise SchemaError(f"{self.type} has no attribute {name!r}")
            self._values[name] = _guarded(lambda: self._reader.value(self._nodes[name]))
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._nodes else default

    def __contains__(self, name: str) -> bool:
        return name in self._nodes


def read(data: bytes) -> Any:
    """The object tree of skops payload ``data`` (objects as :class:`Obj`). Raises SchemaError.

    The payload stays in memory while any of its objects is in use: their attributes are read from it
    when first asked for.
    """
    return _guarded(lambda: _Reader(data).root())


def _guarded(read_it):
    try:
        return read_it()
    except SchemaError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, EOFError, RecursionError) as e:
        raise SchemaError(f"unreadable payload ({e})") from None


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    # skops stores its members uncompressed: none can be larger than the payload itself
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > limit:
        raise SchemaError(f"unexpected member {info.filename!r}")
    return zf.read(info)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.zf = zipfile.ZipFile(io.BytesIO(data))
        self.infos = {i.filename: i for i in self.zf.infolist()}
        self.limit = len(data)
        self.arrays: dict[str, np.ndarray] = {}

    def root(self) -> Any:
        info = self.infos.get("schema.json")
        if info is None or info.file_size > MAX_SCHEMA_BYTES:
            raise SchemaError("no schema, or an oversized one")
        return self.value(json.loads(_member(self.zf, info, self.limit)))

    def value(self, node: Any) -> Any:
        if not isinstance(node, dict):
            raise SchemaError("malformed schema")
        loader = node.get("__loader__")
        content = node.get("content")
        if loader == "JsonNode" and node.get("is_json") is True and isinstance(content, str):
            return json.loads(content)
        if loader == "NdArrayNode" and node.get("type") == "numpy":
            return self.array(node.get("file"))
        if loader in ("ListNode", "TupleNode") and isinstance(content, list):
            items = [self.value(v) for v in content]
            return items if loader == "ListNode" else tuple(items)
        if loader == "DictNode" and isinstance(content, dict):
            return {str(k): self.value(v) for k, v in content.items()}
        if (loader in ("ObjectNode", "TreeNode") and isinstance(content, dict)
                and content.get("__loader__") == "DictNode" and isinstance(content.get("content"), dict)):
            return Obj(f"{node.get('__module__')}.{node.get('__class__')}", content["content"], self)
        raise SchemaError(f"cannot read a {loader} of {node.get('__module__')}.{node.get('__class__')}")

    def array(self, name: Any) -> np.ndarray:
        if not isinstance(name, str) or name not in self.infos:
            raise SchemaError(f"missing array member {name!r}")
        if name not in self.arrays:
            raw = _member(self.zf, self.infos[name], self.limit)
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
            if arr.dtype.hasobject:
                raise SchemaError("object arrays are not read")
            self.arrays[name] = arr
        return self.arrays[name]
