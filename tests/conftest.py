"""Shared fixtures: tiny generated data sets and one real tiny model trained on them.

Everything here is generated; no test needs the real data folders or any downloaded weights.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# seeded networks are drawn, never read from or written to the user's network cache; the tests of
# that cache (test_initcache.py) point it at their own folder
os.environ["ALLGUI_NETWORK_CACHE"] = "off"

import pytest

TINY_SIZE = 48  # network input side for tests, pixels


def rewrite_bundle(src, dst, replace: dict | None = None, drop=(), change=None):
    """A copy of bundle ``src`` written to ``dst`` (returned), as a hand-edited file would be.

    Members in ``replace`` (name -> bytes) are replaced or added and those in ``drop`` removed, their
    manifest sizes and SHA-256 kept consistent; then ``change(manifest)`` edits the manifest itself.
    """
    import hashlib
    import json
    import zipfile

    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    for name in drop:
        members.pop(name, None)
        manifest["members"].pop(name, None)
    for name, data in (replace or {}).items():
        members[name] = data
        manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if change is not None:
        change(manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        for n, d in members.items():
            z.writestr(n, d)
    return dst


def rewrite_schema(skops_bytes: bytes, edit) -> bytes:
    """A skops payload whose ``schema.json`` is ``edit(schema)`` (a dict changed in place or returned)."""
    import io
    import json
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(skops_bytes)) as zin, zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "schema.json":
                schema = json.loads(data)
                schema = edit(schema) or schema
                data = json.dumps(schema).encode()
            zout.writestr(info.filename, data)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_cnmc(tmp_path_factory):
    """A C-NMC-style folder (all/ + hem/, UID_ names): 12 images per class, 6 subjects each."""
    from trainer.io.synthetic import write_dataset
    return write_dataset(tmp_path_factory.mktemp("cnmc") / "data", layout="cnmc", n_per_class=12,
                         size=64, seed=0, n_subjects=6)


@pytest.fixture(scope="session")
def tiny_config(tiny_cnmc, tmp_path_factory):
    from trainer.config import TrainConfig
    out = tmp_path_factory.mktemp("model")
    return TrainConfig(data=str(tiny_cnmc), image_size=TINY_SIZE, num_workers=0, batch_size=16,
                       output=str(out / "tiny.allmodel"), cache_dir=str(out / "cache"), cv_repeats=1, cv_folds=3)


@pytest.fixture(scope="session")
def tiny_training(tiny_config):
    """The result of a real training run on the tiny C-NMC-style data (random-init backbones)."""
    import torch

    from trainer.training.pipeline import train
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return train(tiny_config)


@pytest.fixture(scope="session")
def tiny_domain_bundle(tiny_training):
    """Path of the tiny model bundle as trained, with its domain check and fitted band (do not modify it)."""
    return tiny_training.bundle_path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_domain_bundle, tmp_path_factory):
    """Path of the tiny model bundle without its domain check and fitted band, as bundles saved before them.

    The check's thresholds rest on the tiny model's 16 training images, so which other generated image it
    calls unlike them is chance; tests of everything else use this bundle (the ±0.05 band, no check), the
    tests of the check ``tiny_domain_bundle``. Do not modify it; copy it first.
    """
    from trainer.inference.bundle import load_bundle, save_bundle
    bundle = load_bundle(tiny_domain_bundle)
    for model in bundle.model.models.values():
        for attr in ("domain_", "band_", "band_report_"):
            model.__dict__.pop(attr, None)
    for section in bundle.card.get("models", {}).values():
        for key in ("uncertain_band", "domain_check"):
            section.get("method", {}).pop(key, None)
    return save_bundle(tmp_path_factory.mktemp("plain") / "tiny.allmodel", bundle)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_bundle):
    """A Predictor on the tiny bundle (no domain check), loaded once per test session."""
    from trainer.inference.predictor import Predictor
    return Predictor.from_bundle(tiny_bundle)


@pytest.fixture(scope="session")
def tiny_domain_predictor(tiny_domain_bundle):
    """A Predictor on the tiny bundle with its domain check and fitted band, loaded once per test session."""
    from trainer.inference.predictor import Predictor
    return Predictor.from_bundle(tiny_domain_bundle)


def as_single_model(bundle):
    """``bundle`` turned into a bundle of one model for every image kind (key ``"any"``), as bundles
    were before per-kind models."""
    (key, model), = bundle.model.models.items()
    bundle.model.models = {"any": model}
    bundle.arrays = {k.replace(f"{key}/", "any/", 1): v for k, v in bundle.arrays.items()}
    return bundle


@pytest.fixture
def boxes(monkeypatch):
    """Records QMessageBox calls instead of showing them; ``question`` answers ``boxes.answer``."""
    # Qt only for the tests that ask for this fixture
    from PySide6.QtWidgets import QMessageBox

    class Boxes(list):
        answer = QMessageBox.No

    calls = Boxes()

    def fake(kind):
        def f(parent, title, text, *a, **k):
            calls.append((kind, title, text))
            return calls.answer if kind == "question" else QMessageBox.Ok
        return staticmethod(f)

    for kind in ("warning", "critical", "information", "question"):
        monkeypatch.setattr(QMessageBox, kind, fake(kind))
    return calls


@pytest.fixture(autouse=True)
def _background_work_ends_with_its_test(request):
    """After a GUI test, its windows' background tasks finish before the next test starts.

    Closed windows do not stop their pool tasks (a model loading, images being hashed); left running,
    they took the two threads of Qt's global pool from the next test's model load. Waited for with the
    event loop running (their last messages are delivered), for at most 30 s; never a failure here.
    """
    if "qtbot" not in request.fixturenames:
        yield
        return
    qtbot = request.getfixturevalue("qtbot")
    yield
    from PySide6.QtCore import QThreadPool

    from allgui import workers

    pools = [QThreadPool.globalInstance(), workers.inference_pool()]
    try:
        qtbot.waitUntil(lambda: all(p.activeThreadCount() == 0 for p in pools), timeout=30_000)
    except Exception:  # a test that leaves a long task running is judged by its own assertions, not here
        pass
