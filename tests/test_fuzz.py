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


#: types an attacker would name in a skops schema; none is on the bundle loader's allow-list
HOSTILE_TYPES = [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("builtins", "exec"),
                 ("builtins", "getattr"), ("builtins", "open"), ("subprocess", "Popen"), ("operator", "methodcaller"),
                 ("operator", "attrgetter"), ("functools", "partial"), ("numpy", "load"), ("pickle", "loads"),
                 ("sklearn.svm._classes", "NuSVC"), ("trainer.util.atomic", "atomic_write")]
#: the skops loaders that import the type a node names (the others read data: JSON, arrays, containers)
RESOLVING = ["FunctionNode", "TypeNode", "ObjectNode", "MethodNode", "OperatorFuncNode", "PartialNode",
             "ConstructorFromReduceNode", "ReduceNode"]
LOADERS = RESOLVING + ["DictNode", "ListNode", "JsonNode", "NdArrayNode"]


def _nodes(node, found=None, path="") -> list[tuple[str, dict]]:
    """(path, node) of every node (a dict with a ``__loader__``) of a skops schema."""
    found = [] if found is None else found
    if isinstance(node, dict):
        if "__loader__" in node:
            found.append((path, node))
        for k, v in node.items():
            _nodes(v, found, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _nodes(v, found, f"{path}/{i}")
    return found


def _hostile_schema(r: random.Random, sentinel: str):
    """An edit of a skops schema, and what it did: ``edited["node"]``, and ``edited["hostile"]`` when the node
    now names code outside the allow-list under a loader that would import it (else it is damaged)."""
    hostile = r.random() < 0.7
    kind = r.randrange(4)
    edited = {}

    def edit(schema):
        where, node = r.choice(_nodes(schema))
        module, name = r.choice(HOSTILE_TYPES)
        edited.update(node=node, where=where, hostile=False)
        if not hostile:  # damaged, not hostile: a key lost, a loader swapped, junk content
            if kind == 0 and len(node) > 1:
                node.pop(r.choice([k for k in node if k != "__loader__"] or ["__loader__"]))
            elif kind == 1:
                node["__loader__"] = r.choice(LOADERS)
            else:
                node["content"] = r.choice([None, 7, "x", [1, 2], {"a": 1}, {"__loader__": "JsonNode"}])
            return
        if kind == 0:  # another type under the same loader
            node.update({"__module__": module, "__class__": name})
        elif kind == 1:  # another type and loader
            node.update({"__module__": module, "__class__": name, "__loader__": r.choice(LOADERS)})
        else:  # a whole node that would call the type on an attacker's argument
            args = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                    "content": [{"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                                 "content": f'"touch {sentinel}"', "is_json": True}]}
            node.clear()
            node.update({"__module__": module, "__class__": name,
                         "__loader__": "ObjectNode" if kind == 2 else "ConstructorFromReduceNode",
                         "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                                     "content": {"args": args}, "key_types": {"__class__": "list",
                                     "__module__": "builtins", "__loader__": "ListNode", "content": []}},
                         "args": args})
        # a node whose ``__id__`` was seen before is taken from skops' memo, never read: an attacker gives it a new one
        node["__id__"] = 10**15 + r.randrange(10**9)
        edited["hostile"] = node.get("__loader__") in RESOLVING
    return edited, edit


@pytest.mark.timeout(300)
def test_fuzzed_skops_schemas_are_refused_and_run_nothing(tiny_bundle, tmp_path):
    from conftest import rewrite_bundle, rewrite_schema

    from trainer.inference.bundle import load_bundle
    from trainer.util.errors import BundleError

    member = "model-single_cell.skops"
    with zipfile.ZipFile(tiny_bundle) as zf:
        real = zf.read(member)
    sentinel = tmp_path / "ran"
    r = random.Random(11)
    refused = 0
    hostile = 0
    for i in range(40):
        edited, edit = _hostile_schema(r, str(sentinel))
        path = rewrite_bundle(tiny_bundle, tmp_path / f"fuzz{i}.allmodel", replace={member: rewrite_schema(real, edit)},
                              change=lambda m: m["models"]["single_cell"].update(readout=1))
        hostile += edited["hostile"]
        try:
            load_bundle(path)
        except BundleError:
            refused += 1
        else:
            assert not edited["hostile"], f"a schema naming code outside the allow-list was loaded: {edited}"
        assert not sentinel.exists()
    assert hostile >= 15 and refused >= hostile
