"""Reading images from disk as RGB uint8 arrays, and content hashes for caches.

Every image the trainer and the app see goes through :func:`read_image`, so that BMP, PNG,
JPEG and TIFF files, 8 or 16 bit, grey, RGB or RGBA, all become the same thing:
an array of shape (H, W, 3), dtype uint8, channels in R, G, B order.
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from trainer.util.errors import ImageReadError
from trainer.util.limits import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, NotARegularFile, read_regular_file

_OPENCV_THREADS: list[int] = []


def _opencv_pool_off() -> None:
    """Before a fork: stop OpenCV's worker threads, to start them again after it in the parent.

    A child forked while they wait (a DataLoader worker, after any parallel cv2 call here) inherits
    their condition variable with waiters that do not exist there, and its first
    ``cv2.setNumThreads`` waits for them forever.
    """
    try:
        _OPENCV_THREADS.append(cv2.getNumThreads())
        cv2.setNumThreads(1)
    except Exception:  # a cv2 build without threads: nothing to stop
        _OPENCV_THREADS.clear()


def _opencv_pool_on() -> None:
    if _OPENCV_THREADS:
        cv2.setNumThreads(_OPENCV_THREADS.pop())


os.register_at_fork(before=_opencv_pool_off, after_in_parent=_opencv_pool_on,
                    after_in_child=_OPENCV_THREADS.clear)

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

    Raises
    ------
        ImageReadError: the file is missing, empty, truncated, not an image, or in a pixel
            format that cannot be converted. The message names the file and the reason.
    """
    p = Path(path)
    name = p.name or str(p)
    if not os.path.lexists(p):
        raise ImageReadError(f"Cannot read image '{name}': file not found ({p}).")
    if not p.exists():
        raise ImageReadError(f"Cannot read image '{name}': it is a link to a file that does not exist.")
    if p.is_dir():
        raise ImageReadError(f"Cannot read image '{name}': it is a folder, not a file.")
    try:  # regular files only (no FIFO, no /dev/zero), at most MAX_IMAGE_FILE_BYTES
        data = read_regular_file(p, MAX_IMAGE_FILE_BYTES)
    except ValueError as exc:
        raise ImageReadError(f"Cannot read image '{name}': {exc}.") from None
    except OSError as exc:
        raise ImageReadError(f"Cannot read image '{name}': {exc.strerror or exc}.") from None
    if not data:
        raise ImageReadError(f"Cannot read image '{name}': the file is empty (0 bytes).")
    return _decode(data, name, p.suffix.lower())


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (any format :func:`read_image` reads) to RGB uint8 (H, W, 3)."""
    if not data:
        raise ImageReadError(f"Cannot read image '{name}': no data (0 bytes).")
    return _decode(bytes(data), name, Path(name).suffix.lower())


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared in the header of PNG, JPEG, BMP or TIFF bytes, read without decoding.

    None when the bytes are none of these formats.

    Raises
    ------
        ValueError: the header of a recognised format is truncated or malformed.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            if data[12:16] != b"IHDR":
                raise ValueError("the PNG header is damaged")
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM":
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:  # OS/2 core header
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:
        raise ValueError("the image header is truncated") from None
    return None


def _tiff_size(data: bytes) -> tuple[int, int]:
    e = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        (ifd,) = struct.unpack(e + "Q", data[8:16])
        (n,) = struct.unpack(e + "Q", data[ifd:ifd + 8])
        start, size, count_fmt = ifd + 8, 20, "Q"
    else:
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (n,) = struct.unpack(e + "H", data[ifd:ifd + 2])
        start, size, count_fmt = ifd + 2, 12, "I"
    dims = {}
    for i in range(min(n, 4096)):
        off = start + i * size
        tag, typ = struct.unpack(e + "HH", data[off:off + 4])
        if tag in (256, 257):
            value_at = off + 4 + struct.calcsize(count_fmt)
            fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
            if fmt is None:
                raise ValueError("the TIFF header is damaged")
            (dims[tag],) = struct.unpack(e + fmt, data[value_at:value_at + struct.calcsize(fmt)])
    if 256 not in dims or 257 not in dims:
        raise ValueError("the TIFF header has no image size")
    return dims[256], dims[257]


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("the JPEG header is damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker in (0xD9, 0xDA):
            break
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        i += 2 + length
    raise ValueError("the JPEG file has no frame header (truncated or not a JPEG)")


def _check_header(data: bytes, name: str) -> None:
    """Refuse, before decoding, an image whose header declares more than MAX_IMAGE_PIXELS pixels."""
    try:
        size = image_header_size(data)
    except ValueError as exc:
        raise ImageReadError(f"Cannot read image '{name}': {exc}.") from None
    if size is None:
        raise ImageReadError(
            f"Cannot read image '{name}': not a readable image (not a BMP, PNG, JPEG or TIFF file; "
            f"supported: {', '.join(IMAGE_SUFFIXES)}).")
    w, h = size
    if w < 1 or h < 1:
        raise ImageReadError(f"Cannot read image '{name}': its header declares {w}x{h} pixels.")
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            f"Cannot read image '{name}': it is too large to analyse ({w}x{h} = {w * h / 1e6:.0f} "
            f"megapixels; at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are read).")


def _decode(data: bytes, name: str, suffix: str) -> np.ndarray:
    _check_header(data, name)
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
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device would never end
                raise NotARegularFile(0, "not a regular file")
            for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
                h.update(chunk)
    except OSError as exc:
        raise ImageReadError(f"Cannot read image '{p.name}': {exc.strerror or exc}.") from exc
    return h.hexdigest()


def pixel_hash(source: str | os.PathLike | np.ndarray) -> str:
    """SHA-256 of an image's decoded pixels (:func:`read_image`, then :func:`content_hash` of the array).

    Unlike the file's bytes, it is the same for an image saved as BMP and re-saved as PNG; duplicates and
    fine-tuning provenance are checked with it.
    """
    return content_hash(np.ascontiguousarray(source) if isinstance(source, np.ndarray) else read_image(source))
