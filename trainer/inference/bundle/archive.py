"""Reading a bundle's zip file with every check before anything is trusted or inflated.

A bundle is refused with :class:`BundleError` when it is not a regular file, is over
``MAX_BUNDLE_BYTES``, is no zip, has a member that would inflate past its cap or by more than
``MAX_COMPRESSION_RATIO`` (checked on the declared sizes, before inflating), a member longer than
declared, a manifest of another format or version or with wrongly typed fields, or a member whose size
or SHA-256 differs from the manifest's.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from trainer.inference.bundle.format import FORMAT, MANIFEST, READABLE_VERSIONS
from trainer.inference.manifest_schema import check_manifest
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


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest alone (cheap: no model is reconstructed). Raises BundleError."""
    with open_zip(Path(path)) as zf:
        return checked_manifest(zf, Path(path))


def open_zip(path: Path) -> zipfile.ZipFile:
    """The bundle at ``path`` opened as a zip, once it is known to be a regular file of a bounded size."""
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


def _bounded(info: zipfile.ZipInfo, limit: int, path: Path) -> None:
    """Refuse a member that would inflate too far, before anything is inflated.

    Too far: a declared size over ``limit`` or a compression ratio over MAX_COMPRESSION_RATIO.
    """
    if info.file_size > limit:
        raise BundleError(f"{path.name} is not an allgui model file: {info.filename} would inflate to "
                          f"{format_bytes(info.file_size)} (at most {format_bytes(limit)}).")
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise BundleError(f"{path.name} is not an allgui model file: {info.filename} is compressed "
                          f"{info.file_size // max(info.compress_size, 1)}:1 (a zip bomb?); refused.")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, digest=None) -> bytes:
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


def checked_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """The checked manifest of the open bundle ``zf`` (``path`` names it in messages)."""
    try:
        info = zf.getinfo(MANIFEST)
        _bounded(info, MAX_MANIFEST_BYTES, path)
        found = json.loads(_read(zf, info, path))
    except KeyError:
        raise BundleError(f"{path.name} is not an allgui model file: it has no manifest.") from None
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, RecursionError,
            NotImplementedError) as e:
        raise BundleError(f"{path.name}: the manifest is damaged ({e}).") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise BundleError(f"{path.name} is not an allgui model file.")
    if found.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{path.name} uses model format version {found.get('format_version')}; "
                          f"this allgui reads versions {', '.join(map(str, READABLE_VERSIONS))}.")
    return check_manifest(found, path.name)


def verified(zf: zipfile.ZipFile, manifest: dict, name: str, path: Path) -> bytes:
    """Member ``name``'s bytes, once its size and SHA-256 are those the manifest lists."""
    meta = manifest.get("members", {}).get(name)
    if meta is None:
        raise BundleError(f"{path.name} is incomplete: {name} is not listed in its manifest.")
    digest = hashlib.sha256()
    try:
        info = zf.getinfo(name)
        if info.file_size != meta.get("bytes"):
            raise BundleError(f"{path.name} has been altered: {name} has the wrong size.")
        _bounded(info, MAX_BUNDLE_MEMBER_BYTES, path)
        data = _read(zf, info, path, digest)
    except KeyError:
        raise BundleError(f"{path.name} is incomplete: {name} is missing.") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise BundleError(f"{path.name} is damaged or truncated ({e}).") from None
    if digest.hexdigest() != meta.get("sha256"):
        raise BundleError(f"{path.name} has been altered or damaged: the checksum of {name} does not match.")
    return data
