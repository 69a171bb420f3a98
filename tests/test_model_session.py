"""The loaded model's session: one identity (the bundle file's SHA-256) for saved thresholds and reviews,
thresholds saved by earlier versions still found, and the model's own uncertainty band."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings

from allgui.model.session import ModelSession
from allgui.window.main_window import MainWindow
from trainer.inference.bundle import load_bundle
from trainer.inference.predictor import Predictor


def _settings(tmp_path: Path, name: str = "settings.ini") -> QSettings:
    return QSettings(str(tmp_path / name), QSettings.IniFormat)


def _window(qtbot, model, settings, tmp_path) -> MainWindow:
    win = MainWindow(model=str(model), settings=settings, models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.show()
    return win


def test_thresholds_follow_the_model_file_not_its_name(qtbot, tiny_bundle, tmp_path):
    first = tmp_path / "current.allmodel"
    shutil.copyfile(tiny_bundle, first)
    settings = _settings(tmp_path)
    win = _window(qtbot, first, settings, tmp_path)
    win.state.set_threshold(0.3)
    win.close()
    renamed = tmp_path / "renamed copy.allmodel"   # the same model under another name
    shutil.copyfile(tiny_bundle, renamed)
    win2 = _window(qtbot, renamed, settings, tmp_path)
    assert win2.state.threshold == pytest.approx(0.3)
    # reviews name the model by the same hash
    assert win2.review.model_sha256 == hashlib.sha256(renamed.read_bytes()).hexdigest()
    assert win2.analysis.session.sha256 == win2.review.model_sha256


def test_thresholds_saved_by_an_earlier_version_are_still_found(tiny_predictor, tiny_bundle, tmp_path):
    path = tmp_path / "current.allmodel"
    shutil.copyfile(tiny_bundle, path)
    session = ModelSession.open(tiny_predictor, str(path))
    key = session.keys[0]
    card = tiny_predictor.model_card
    old = hashlib.sha1(f"{card['name']}|{card.get('created', '')}|{path.name}".encode()).hexdigest()[:16]
    settings = _settings(tmp_path)
    settings.setValue(f"threshold/{old}/{key}", 0.27)
    assert session.saved_thresholds(settings) == {key: pytest.approx(0.27)}
    session.save_thresholds(settings, {key: 0.61})   # from now on under the file's hash, which wins
    assert session.saved_thresholds(settings) == {key: pytest.approx(0.61)}
    assert settings.value(f"threshold/{session.sha256}/{key}") is not None


def test_the_band_is_the_models_own_unless_the_user_set_one(qtbot, tiny_domain_bundle, tmp_path):
    bundle = load_bundle(tiny_domain_bundle)
    key = next(iter(bundle.model.models))
    bundle.model.models[key].band_ = 0.12        # a model that fitted its own uncertainty band
    model = tmp_path / "current.allmodel"
    shutil.copyfile(tiny_domain_bundle, model)
    settings = _settings(tmp_path)
    win = _window(qtbot, model, settings, tmp_path)
    own = win.analysis.predictor.model_card["models"][key]["method"]["uncertain_band"]["band"]
    assert win.analysis.session.band() == pytest.approx(own)      # the band the card says it fitted
    win.models.set_predictor(Predictor(bundle), str(model))
    assert win.analysis.session.band(key) == pytest.approx(0.12) and win.state.band == pytest.approx(0.12)
    assert win.side.band.value() == pytest.approx(0.12)
    # a band the user chose is kept for this model
    win.state.set_band(0.2)
    win.close()
    win2 = _window(qtbot, model, settings, tmp_path)
    assert win2.state.band == pytest.approx(0.2)
