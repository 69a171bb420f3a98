"""Limits on untrusted input: images, model bundles and labels files.

Every file the trainer or the app opens on a user's behalf may be hostile or broken (a PNG whose
header claims 30000 x 30000 pixels, a zip member that inflates to gigabytes, a FIFO or a link to
``/dev/zero`` named like an image). These limits are checked *before* the expensive step (reading,
decoding, inflating), so a bad file costs a clear error message, not the machine's memory.
The README lists them under "Limits on input".
"""
from __future__ import annotations

import errno
import os
import stat

#: Largest image file read, in bytes (a 450 x 450 C-NMC crop is ~0.6 MB, a 24 MP TIFF ~72 MB).
MAX_IMAGE_FILE_BYTES = 256 << 20
#: Largest image decoded, in pixels (width x height from the file header, checked before decoding).
#: 50 megapixels is a large microscope camera frame; decoded it takes 150 MB as RGB.
MAX_IMAGE_PIXELS = 50_000_000
#: Largest model bundle file, in bytes.
MAX_BUNDLE_BYTES = 2 << 30
#: Largest single member of a model bundle once inflated, in bytes.
MAX_BUNDLE_MEMBER_BYTES = 1 << 30
#: Largest manifest.json of a model bundle, in bytes (a real one is a few tens of kilobytes).
MAX_MANIFEST_BYTES = 16 << 20
#: Largest inflated/compressed size ratio of a bundle member above :data:`RATIO_FLOOR_BYTES`
#: (deflate can reach ~1000:1 on constant data; allgui's own members stay far below 50:1).
MAX_COMPRESSION_RATIO = 100
#: Members smaller than this are not held to :data:`MAX_COMPRESSION_RATIO`.
RATIO_FLOOR_BYTES = 1 << 20


class NotARegularFile(OSError):
    """The path is a FIFO, device, socket or folder: only regular files are read."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular_file(path: str | os.PathLike | bytes, max_bytes: int) -> bytes:
    """The bytes of ``path`` when it is a regular file (links are followed) of at most ``max_bytes``.

    The file is opened without blocking (a FIFO would otherwise hang the open) and checked on the
    open descriptor, so a file swapped for a device between check and read is still refused; at
    most ``max_bytes + 1`` bytes are ever read.

    Raises
    ------
        NotARegularFile: a FIFO, device, socket or folder.
        ValueError: the file is larger than ``max_bytes`` (the message says so in words).
        OSError: the file cannot be opened or read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise NotARegularFile(errno.EISDIR, "it is a folder, not a file") from None
    try:
        _check_stat(os.fstat(fd), max_bytes)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # the file grew while it was read
                raise ValueError(f"the file is too large (more than {format_bytes(max_bytes)})")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular_file(path: str | os.PathLike, max_bytes: int) -> int:
    """Size of ``path`` when it is a regular file of at most ``max_bytes``.

    Raises like :func:`read_regular_file` otherwise (nothing is read, FIFOs are not opened).
    """
    return _check_stat(os.stat(path), max_bytes)


def _check_stat(st: os.stat_result, max_bytes: int) -> int:
    """``st.st_size`` when ``st`` is a regular file of at most ``max_bytes``.

    Raises NotARegularFile or ValueError otherwise.
    """
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(errno.EINVAL, f"it is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"the file is too large ({format_bytes(st.st_size)}; "
                         f"at most {format_bytes(max_bytes)} are read)")
    return st.st_size


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
