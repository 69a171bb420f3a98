"""Type checks for a model bundle's manifest.json.

A hand-edited or hostile manifest is refused with :class:`trainer.util.errors.BundleError` instead of
failing later with an AttributeError.

Types are checked here (and the shape of the member table), and every config value against the choices
and range its field allows (:func:`trainer.config.problem`, which the command line applies too); the
bundle loader checks the format name, version and every member's size and SHA-256.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from trainer.config import LEGACY_FINETUNE_KEYS, FinetuneConfig, TrainConfig, problem
from trainer.util.errors import BundleError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NUMBER = (int, float)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool)


def _value_ok(annotation: str, v: Any) -> bool:
    """Whether ``v`` (as read from JSON) fits a TrainConfig field annotated ``annotation``."""
    ann = annotation.replace(" ", "")
    if v is None:
        return ann.endswith("|None") or ann.startswith("None|")
    base = ann.removesuffix("|None")
    if base == "bool":
        return isinstance(v, bool)
    if base == "int":
        return _is_int(v)
    if base == "float":
        return _is_number(v)
    if base == "str":
        return isinstance(v, str)
    if base.startswith(("tuple[str", "list[str")):
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
    if base.startswith(("tuple[float", "list[float")):
        return isinstance(v, (list, tuple)) and all(_is_number(x) for x in v)
    if base.startswith("dict"):
        return isinstance(v, dict)
    return True  # a type this check does not know: left to the loader


def _check_fields(cls: type, values: dict, name: str, where: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            continue  # fields of newer versions are tolerated
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _value_ok(ann, value):
            raise BundleError(f"{name}: the manifest is damaged (config field '{where}{key}' has a value of "
                              f"type {type(value).__name__}; expected {ann}).")
        wrong = problem(where + key, value)
        if wrong:
            raise BundleError(f"{name} is refused: its config's {wrong}.")


def check_config(config: Any, name: str) -> None:
    """Raise BundleError unless ``config`` is a table of well-typed TrainConfig fields.

    Its nested ``finetuning`` and the flat ``finetune_*`` keys of older bundles are checked too.
    """
    if not isinstance(config, dict):
        raise BundleError(f"{name}: the manifest is damaged (config is {type(config).__name__}, not a table).")
    _check_fields(TrainConfig, config, name)
    nested = config.get("finetuning", {})
    if not isinstance(nested, dict):
        raise BundleError(f"{name}: the manifest is damaged (config field 'finetuning' is not a table).")
    _check_fields(FinetuneConfig, nested, name, "finetuning.")
    legacy = {LEGACY_FINETUNE_KEYS[k]: v for k, v in config.items() if k in LEGACY_FINETUNE_KEYS}
    _check_fields(FinetuneConfig, legacy, name, "finetuning.")


def _need(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise BundleError(f"{name}: the manifest is damaged ({what}).")


def check_manifest(manifest: Any, name: str) -> dict[str, Any]:
    """Return ``manifest`` when every field allgui reads has the expected type; else raise BundleError.

    ``name`` is the bundle's file name, used in the message.
    """
    _need(isinstance(manifest, dict), name, "it is not a JSON object")
    _need(isinstance(manifest.get("format"), str), name, "format is not text")
    _need(_is_int(manifest.get("format_version")), name, "format_version is not a whole number")
    _need(manifest.get("created") is None or isinstance(manifest.get("created"), str), name,
          "created is not text")
    members = manifest.get("members")
    _need(isinstance(members, dict), name, "members is not a table of files")
    for member, meta in members.items():
        _need(isinstance(meta, dict), name, f"the entry for {member!r} is not a table")
        _need(isinstance(meta.get("sha256"), str) and bool(_SHA256.match(meta["sha256"])), name,
              f"the checksum of {member!r} is not a SHA-256 hex digest")
        _need(_is_int(meta.get("bytes")) and meta["bytes"] >= 0, name,
              f"the size of {member!r} is not a whole number of bytes")
    table = manifest.get("models")
    if table is not None:
        _need(isinstance(table, dict) and bool(table), name, "models is not a table of models")
        for key, entry in table.items():
            _need(isinstance(entry, dict), name, f"the entry of model {key!r} is not a table")
            _need(isinstance(entry.get("member"), str) and entry["member"] in members, name,
                  f"model {key!r} names no member of the file")
            _need(_is_number(entry.get("threshold")), name, f"the threshold of model {key!r} is not a number")
            _need(isinstance(entry.get("blocks"), list) and all(isinstance(b, str) for b in entry["blocks"]),
                  name, f"the feature blocks of model {key!r} are not a list of names")
    check_config(manifest.get("config", {}), name)
    versions = manifest.get("versions", {})
    _need(isinstance(versions, dict) and all(isinstance(v, str) for v in versions.values()), name,
          "versions is not a table of text")
    card = manifest.get("card", {})
    _need(isinstance(card, dict), name, "the model card is not a table")
    for key in ("metrics", "trained_on", "split"):
        _need(card.get(key) is None or isinstance(card.get(key), dict), name, f"card field '{key}' is not a table")
    _need(card.get("limitations") is None or isinstance(card.get("limitations"), list), name,
          "card field 'limitations' is not a list")
    _need(card.get("name") is None or isinstance(card.get("name"), str), name, "card field 'name' is not text")
    metrics = card.get("metrics") or {}
    for key, value in metrics.items():
        _need(value is None or isinstance(value, dict), name, f"card metrics '{key}' is not a table")
    trained = card.get("trained_on") or {}
    for key in ("class_counts", "image_kinds"):
        value = trained.get(key)
        _need(value is None or (isinstance(value, dict) and all(_is_number(v) for v in value.values())),
              name, f"card field trained_on.{key} is not a table of numbers")
    return manifest
