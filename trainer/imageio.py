"""Reading images from disk as RGB uint8 arrays, and content hashes for caches.

Every image the trainer and the app see goes through :func:`read_image`, so that BMP, PNG,
JPEG and TIFF files, 8 or 16 bit, grey, RGB or RGBA, all become the same thing:
an array of shape (H, W, 3), dtype uint8, channels in R, G, B order.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from trainer.errors import ImageReadError

#: File name endings (lower case) that are treated as images.
IMAGE_SUFFIXES: tuple[str, ...] = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_HASH_CHUNK = 1 << 20


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (H, W, 3).

    16-bit images are scaled from the full 0..65535 range to 0..255 (value / 257, rounded);
    float images are taken as 0..1 (or clipped to 0..255 when larger values occur). Grey
    images are repeated into three channels. An alpha channel is composited over black
    (transparent pixels become black, like the background of a C-NMC crop). Only the first
    page of a multi-page TIFF is read.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or in a pixel
            format that cannot be converted. The message names the file and the reason.
    """
    p = Path(path)
    name = p.name or str(p)
    if not p.exists():
        raise ImageReadError(f"Cannot read image '{name}': file not found ({p}).")
    if p.is_dir():
        raise ImageReadError(f"Cannot read image '{name}': it is a folder, not a file.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"Cannot read image '{name}': {exc.strerror or exc}.") from exc
    if not data:
        raise ImageReadError(f"Cannot read image '{name}': the file is empty (0 bytes).")
    return _decode(data, name, p.suffix.lower())


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (any format :func:`read_image` reads) to RGB uint8 (H, W, 3)."""
    if not data:
        raise ImageReadError(f"Cannot read image '{name}': no data (0 bytes).")
    return _decode(bytes(data), name, Path(name).suffix.lower())


def _decode(data: bytes, name: str, suffix: str) -> np.ndarray:
    if suffix in _JPEG_SUFFIXES or data[:2] == b"\xff\xd8":
        # A JPEG must end with an EOI marker (possibly followed by a little padding).
        if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9", max(0, len(data) - 65536)) == -1:
            raise ImageReadError(
                f"Cannot read image '{name}': the JPEG file is truncated (no end-of-image marker).")
    buf = np.frombuffer(data, dtype=np.uint8)
    old_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    finally:
        cv2.utils.logging.setLogLevel(old_level)
    if img is None or img.size == 0:
        raise ImageReadError(
            f"Cannot read image '{name}': not a readable image (corrupted, truncated or an "
            f"unsupported format; supported: {', '.join(IMAGE_SUFFIXES)}).")
    try:
        return _bgr_to_rgb_uint8(img)
    except ValueError as exc:
        raise ImageReadError(f"Cannot read image '{name}': {exc}") from exc


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Scale an integer, boolean or float array to uint8 with the rules of :func:`read_image`."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        finite = a[np.isfinite(a)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
        out = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0 / scale, neginf=0.0)
        return np.clip(np.rint(out * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.max > 255 and info.min >= 0:  # uint32/uint64: full-range scaling
            return np.rint(a.astype(np.float64) * (255.0 / info.max)).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {a.dtype}.")


def as_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Convert an in-memory image already in RGB(A) or grey order to (H, W, 3) uint8 RGB.

    Accepts (H, W), (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB and (H, W, 4) RGBA,
    any dtype :func:`to_uint8` handles. Raises ImageReadError for other shapes.
    """
    try:
        return _to_rgb(np.asarray(img), bgr=False)
    except ValueError as exc:
        raise ImageReadError(f"Cannot use image: {exc}") from exc


def _bgr_to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    return _to_rgb(img, bgr=True)


def _to_rgb(img: np.ndarray, bgr: bool) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        g = to_uint8(img)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
    if img.ndim != 3 or img.shape[2] not in (2, 3, 4) or min(img.shape[:2]) < 1:
        raise ValueError(f"unsupported image shape {tuple(img.shape)}.")
    alpha = None
    if img.shape[2] == 2:  # grey + alpha
        colour = np.repeat(img[:, :, :1], 3, axis=2)
        alpha = img[:, :, 1]
    elif img.shape[2] == 4:
        colour, alpha = img[:, :, :3], img[:, :, 3]
    else:
        colour = img
    rgb = to_uint8(colour)
    if bgr and img.shape[2] in (3, 4):
        rgb = rgb[:, :, ::-1]
    if alpha is not None:
        a = to_uint8(alpha)
        if a.min() < 255:
            rgb = (rgb.astype(np.uint16) * a[:, :, None].astype(np.uint16) + 127) // 255
            rgb = rgb.astype(np.uint8)
    return np.ascontiguousarray(rgb)


def content_hash(source: str | os.PathLike | np.ndarray | bytes) -> str:
    """SHA-256 hex digest identifying image content, for feature caches.

    A path hashes the file's bytes (so renaming or moving a file keeps its hash); an array
    hashes its dtype, shape and C-order bytes; bytes are hashed as they are.
    """
    h = hashlib.sha256()
    if isinstance(source, np.ndarray):
        a = np.ascontiguousarray(source)
        h.update(f"ndarray:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()
    if isinstance(source, (bytes, bytearray, memoryview)):
        h.update(bytes(source))
        return h.hexdigest()
    p = Path(source)
    try:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise ImageReadError(f"Cannot read image '{p.name}': {exc.strerror or exc}.") from exc
    return h.hexdigest()
