"""Hostile and broken input: every bad file costs a clear message, never the machine's memory or time."""
import os
import struct
import time
import zlib

import numpy as np
import pytest

from trainer.io.imageio import read_image
from trainer.util.errors import ImageReadError


def png_claiming(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def test_png_declaring_30000_by_30000_pixels_is_refused_before_decoding(tmp_path):
    f = tmp_path / "bomb.png"
    f.write_bytes(png_claiming(30000, 30000))
    t = time.perf_counter()
    with pytest.raises(ImageReadError, match="too large.*30000x30000"):
        read_image(f)
    assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("fmt", [".bmp", ".jpg", ".tif", ".png"])
def test_header_sizes_of_real_files_are_read_without_decoding(tmp_path, fmt):
    import cv2

    from trainer.io.imageio import image_header_size
    img = np.zeros((37, 53, 3), np.uint8)
    ok, buf = cv2.imencode(fmt, img)
    assert ok
    assert image_header_size(buf.tobytes()) == (53, 37)


@pytest.mark.timeout(20)
def test_fifo_named_like_an_image_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "hang.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="pipe"):
        read_image(fifo)
    from trainer.io.imageio import content_hash
    with pytest.raises(ImageReadError):
        content_hash(fifo)


@pytest.mark.timeout(20)
def test_link_to_dev_zero_is_refused(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(ImageReadError, match="device"):
        read_image(link)


def test_files_over_the_size_cap_are_not_read(tmp_path, monkeypatch):
    from trainer.io import imageio
    monkeypatch.setattr(imageio, "MAX_IMAGE_FILE_BYTES", 1000)
    f = tmp_path / "big.png"
    f.write_bytes(png_claiming(10, 10) + b"\x00" * 5000)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(f)
