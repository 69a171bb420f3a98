"""Hostile model bundles: zip bombs, padded manifests and wrongly typed manifest fields are refused
with a clear BundleError before much memory is spent."""
import hashlib
import json
import re
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from trainer.inference import bundle
from trainer.inference.bundle import archive, load_bundle, read_manifest
from trainer.util.errors import BundleError
from trainer.util.limits import MAX_COMPRESSION_RATIO, RATIO_FLOOR_BYTES


def _manifest(members: dict[str, bytes], **extra) -> dict:
    m = {"format": bundle.FORMAT, "format_version": bundle.FORMAT_VERSION, "created": "2024-01-01",
         "config": {}, "card": {}, "versions": {},
         "members": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in members.items()}}
    m.update(extra)
    return m


def _zip(path, manifest, members: dict[str, bytes], manifest_text=None, compress=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("manifest.json", manifest_text if manifest_text is not None else json.dumps(manifest))
        for n, d in members.items():
            zf.writestr(n, d)
    return path


def test_compressed_member_that_would_inflate_hugely_is_refused_before_inflating(tmp_path):
    bomb = b"\x00" * (64 << 20)  # 64 MiB of zeros deflate to ~64 KiB
    f = _zip(tmp_path / "bomb.allmodel", _manifest({"model.skops": bomb, "arrays.safetensors": b""}),
             {"model.skops": bomb, "arrays.safetensors": b""})
    del bomb
    assert f.stat().st_size < 1 << 20
    import safetensors.numpy  # noqa: F401 - imports are not the bundle's cost
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(BundleError, match="zip bomb"):
            load_bundle(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20 and time.perf_counter() - t < 5


def test_member_declared_larger_than_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_BUNDLE_MEMBER_BYTES", 1000)
    data = bytes(range(256)) * 8
    f = _zip(tmp_path / "big.allmodel", _manifest({"model.skops": data}), {"model.skops": data},
             compress=zipfile.ZIP_STORED)
    with pytest.raises(BundleError, match="would inflate"):
        load_bundle(f)


def test_padded_manifest_is_refused(tmp_path, monkeypatch):
    text = json.dumps(_manifest({})) + " " * (32 << 20)  # 32 MiB of padding deflates to ~32 KiB
    f = _zip(tmp_path / "padded.allmodel", None, {}, manifest_text=text)
    t = time.perf_counter()
    with pytest.raises(BundleError):
        read_manifest(f)
    assert time.perf_counter() - t < 2
    # stored without compression (no ratio to catch), the size cap still refuses it
    monkeypatch.setattr(archive, "MAX_MANIFEST_BYTES", 4096)
    f2 = _zip(tmp_path / "padded2.allmodel", None, {}, manifest_text=json.dumps(_manifest({})) + " " * 5000,
              compress=zipfile.ZIP_STORED)
    with pytest.raises(BundleError, match="manifest.json would inflate"):
        read_manifest(f2)


@pytest.mark.parametrize("change, words", [
    ({"members": ["model.skops"]}, "members"),
    ({"members": {"model.skops": {"sha256": 5, "bytes": 3}}}, "checksum"),
    ({"members": {"model.skops": {"sha256": "0" * 64, "bytes": "3"}}}, "size"),
    ({"config": {"image_size": "big"}}, "image_size"),
    ({"config": {"classifiers": "svm"}}, "classifiers"),
    ({"config": {"pca": 1}}, "pca"),
    ({"config": []}, "config"),
    ({"card": {"trained_on": ["x"]}}, "trained_on"),
    ({"card": {"trained_on": {"image_kinds": {"field": "most"}}}}, "image_kinds"),
    ({"card": "hello"}, "card"),
    ({"versions": {"torch": 2}}, "versions"),
    ({"format_version": "1"}, "version"),
])
def test_manifest_fields_of_the_wrong_type_are_refused(tmp_path, change, words):
    m = _manifest({})
    m.update(change)
    f = _zip(tmp_path / "typed.allmodel", m, {})
    with pytest.raises(BundleError, match=words):
        load_bundle(f)


@pytest.mark.timeout(20)
def test_fifo_named_like_a_bundle_is_refused_without_hanging(tmp_path):
    import os
    fifo = tmp_path / "hang.allmodel"
    os.mkfifo(fifo)
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(fifo)


def test_the_real_bundle_passes_the_checks(tiny_bundle):
    m = read_manifest(tiny_bundle)
    with zipfile.ZipFile(tiny_bundle) as zf:
        for info in zf.infolist():  # allgui's own members stay far below the ratio cap
            assert info.file_size <= MAX_COMPRESSION_RATIO * max(info.compress_size, 1) \
                or info.file_size <= RATIO_FLOOR_BYTES
    assert set(m["members"]) >= {"model-single_cell.skops", "arrays.safetensors"}


@pytest.mark.parametrize("config, words", [
    ({"image_size": 100000}, "image_size is 100000; allowed: 32 to 1024"),
    ({"image_size": -5}, "image_size is -5; allowed: 32 to 1024"),
    ({"gamma": 7.5}, "gamma is 7.5; allowed: 0.8 to 1.2"),
    ({"batch_size": 0}, "batch_size is 0; allowed: 1 to"),
    ({"seed": -1}, "seed is -1; allowed: 0 to"),
    ({"pca_variance": float("nan")}, "pca_variance is nan; allowed: 0.01 to 1.0"),
    ({"fractions": [0.7, 0.5, -0.2]}, "fractions is -0.2; allowed: 0.0 to 1.0"),
    ({"backbones": ["vgg16"]}, "backbones is vgg16; allowed: one of densenet121, resnet34"),
    ({"precision": "fp8"}, "precision is fp8; allowed: one of auto, fp32, bf16"),
    ({"finetuning": {"epochs": 0}}, "finetuning.epochs is 0; allowed: 1 to"),
    ({"finetune_lr": 50.0}, "finetuning.lr is 50.0; allowed: 0.0 to 1.0"),
])
def test_config_values_out_of_their_range_are_refused_at_load_by_name(tmp_path, config, words):
    f = _zip(tmp_path / "ranged.allmodel", _manifest({}, config=config), {})
    for load in (read_manifest, load_bundle):
        with pytest.raises(BundleError, match="refused: its config's setting " + re.escape(words)):
            load(f)


#: what an attacker would put in a skops member: a function to call and a method caller, each a node
#: skops builds only when its type is trusted
def _system(cmd):
    return {"__class__": "system", "__module__": "posix", "__loader__": "FunctionNode"}


def _methodcaller(cmd):
    text = lambda v: {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                      "content": json.dumps(v), "is_json": True}
    return {"__class__": "methodcaller", "__module__": "operator", "__loader__": "OperatorFuncNode",
            "attrs": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                      "content": [text("system"), text(cmd)]}}


def _system_type(cmd):
    return {"__class__": "system", "__module__": "posix", "__loader__": "TypeNode"}


@pytest.mark.parametrize("readout", [False, True], ids=["plain", "manifest-says-readout"])
@pytest.mark.parametrize("node, name", [(_system, "posix.system"), (_methodcaller, "operator.methodcaller"),
                                        (_system_type, "posix.system")],
                         ids=["function", "methodcaller", "type"])
def test_a_member_whose_schema_calls_code_is_refused_whatever_the_manifest_says(tiny_bundle, tmp_path, node, name,
                                                                               readout):
    from conftest import rewrite_bundle, rewrite_schema

    from trainer.inference.predictor import Predictor

    member = "model-single_cell.skops"
    sentinel = tmp_path / "ran"

    def plant(schema):  # in place of the model's seed, and deep inside its ensemble
        schema["content"]["content"]["seed"] = node(f"touch {sentinel}")
        schema["content"]["content"]["ensemble_"]["content"]["content"]["seed"] = node(f"touch {sentinel}")

    def flag(manifest):
        if readout:  # what versions with a numpy read-out wrote: it must not open another way in
            manifest["models"]["single_cell"]["readout"] = 1

    with zipfile.ZipFile(tiny_bundle) as zf:
        hostile = rewrite_schema(zf.read(member), plant)
    path = rewrite_bundle(tiny_bundle, tmp_path / "hostile.allmodel", replace={member: hostile}, change=flag)
    for load in (lambda: load_bundle(path), lambda: load_bundle(path, lazy=True),
                 lambda: Predictor.from_bundle(path, lazy=True), lambda: Predictor.from_bundle(path)):
        with pytest.raises(BundleError, match=f"object types allgui does not load: .*{re.escape(name)}"):
            load()
    assert not sentinel.exists()


def test_an_old_bundle_that_says_readout_loads_and_predicts_as_any_other(tiny_bundle, tiny_predictor, tmp_path):
    from conftest import rewrite_bundle

    from trainer.classical.model import AllModel
    from trainer.inference.predictor import Predictor
    from trainer.io.synthetic import make_cell_image

    def flag(manifest):
        manifest["models"]["single_cell"]["readout"] = 1

    path = rewrite_bundle(tiny_bundle, tmp_path / "readout.allmodel", change=flag)
    img = make_cell_image(64, malignant=True, rng=np.random.default_rng(5))[0]
    flagged = Predictor.from_bundle(path, lazy=True)
    assert isinstance(flagged.models["single_cell"], AllModel)  # scikit-learn's model, whatever the flag says
    got, want = flagged.predict(img), tiny_predictor.predict(img)
    assert got.whole.probability == want.whole.probability
    assert [(v.name, v.probability, v.vote) for v in got.whole.votes] == [
        (v.name, v.probability, v.vote) for v in want.whole.votes]
