"""Seeded, time-bounded fuzzing: random and mutated image bytes and bundle zips raise only the
product's own errors (AllguiError subclasses), never a traceback of another kind."""
import io
import random
import struct
import time
import zipfile

import cv2
import numpy as np
import pytest

from trainer.io.imageio import decode_image, read_image
from trainer.util.errors import AllguiError

BUDGET_S = 5.0  # per target


def _seeds():
    rng = np.random.default_rng(0)
    img = (rng.random((24, 20, 3)) * 255).astype(np.uint8)
    out = []
    for ext in (".png", ".bmp", ".jpg", ".tif"):
        ok, buf = cv2.imencode(ext, img)
        out.append((ext, buf.tobytes()))
    out.append((".png", cv2.imencode(".png", (img[:, :, 0].astype(np.uint16) * 257))[1].tobytes()))
    return out


def _mutate(data: bytes, r: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(r.randint(1, 8)):
        op = r.random()
        if op < 0.4 and b:
            b[r.randrange(len(b))] = r.randrange(256)
        elif op < 0.55:  # a big number somewhere (sizes, offsets)
            i = r.randrange(max(len(b) - 4, 1))
            b[i:i + 4] = struct.pack(">I", r.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 30000]))
        elif op < 0.7:
            del b[r.randrange(len(b) + 1):]
        elif op < 0.85:
            i = r.randrange(len(b) + 1)
            b[i:i] = bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
        else:
            i = r.randrange(len(b) + 1)
            j = r.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:256]
    return bytes(b)


@pytest.mark.timeout(60)
def test_fuzzed_image_bytes_raise_only_image_read_errors():
    r = random.Random(1234)
    seeds = _seeds()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < BUDGET_S:
        ext, data = r.choice(seeds)
        if r.random() < 0.1:
            data = bytes(r.randrange(256) for _ in range(r.randint(0, 200)))
        else:
            data = _mutate(data, r)
        try:
            img = decode_image(data, "fuzz" + ext)
        except AllguiError:
            pass
        else:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        n += 1
    assert n > 100


def test_fuzzed_image_files_raise_only_image_read_errors(tmp_path):
    r = random.Random(99)
    for i, (ext, data) in enumerate(_seeds() * 6):
        f = tmp_path / f"f{i}{ext}"
        f.write_bytes(_mutate(data, r))
        try:
            read_image(f)
        except AllguiError:
            pass


@pytest.mark.timeout(120)
def test_fuzzed_bundles_raise_only_bundle_errors(tiny_bundle, tmp_path):
    from trainer.inference.bundle import load_bundle, read_manifest
    r = random.Random(7)
    real = open(tiny_bundle, "rb").read()
    with zipfile.ZipFile(tiny_bundle) as zf:
        manifest = zf.read("manifest.json")
    f = tmp_path / "fuzz.allmodel"
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < BUDGET_S:
        choice = r.random()
        if choice < 0.5:  # bytes of the whole zip mutated (headers, directory, data)
            data = _mutate(real, r)
        else:  # a well-formed zip around a mutated manifest
            buf = io.BytesIO()
            with zipfile.ZipFile(tiny_bundle) as src, zipfile.ZipFile(buf, "w") as dst:
                for info in src.infolist():
                    body = _mutate(manifest, r) if info.filename == "manifest.json" else src.read(info)
                    dst.writestr(info, body)
            data = buf.getvalue()
        f.write_bytes(data)
        for load in (read_manifest, load_bundle):
            try:
                load(f)
            except AllguiError:
                pass
        n += 1
    assert n > 3
