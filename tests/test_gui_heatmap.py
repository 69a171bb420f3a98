"""The heatmap in the app: switched on, it is computed off the GUI thread, shown over the image
under the nucleus outline, kept per image and cell, and captioned."""
from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

import allgui.views.heatmap as heatmap_module
from allgui.window.main_window import MainWindow
from trainer.inference.explain import CAPTION
from trainer.io.synthetic import make_cell_image, make_smear_field


def _png(path, rgb) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture
def no_boxes(monkeypatch):
    calls = []
    for kind in ("warning", "critical", "information", "question"):
        monkeypatch.setattr(QMessageBox, kind, staticmethod(lambda *a, k=kind, **kw: calls.append((k, a))))
    return calls


@pytest.fixture
def calls(monkeypatch):
    """Records the thread of every explanation computed."""
    seen = []
    real = heatmap_module.explain_one

    def spy(*args, **kwargs):
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmap_module, "explain_one", spy)
    return seen


def _window(qtbot, tmp_path, model_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    win = MainWindow(model=str(model_path), settings=settings, models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.show()
    return win


def _open(qtbot, win, path):
    win.files.open_files([path])
    qtbot.waitUntil(lambda: path in win.state.predictions, timeout=60_000)


def test_toggling_the_heatmap_computes_it_off_the_gui_thread_and_shows_it(qtbot, tiny_bundle, tmp_path, calls,
                                                                          no_boxes):
    model = tmp_path / "m.allmodel"
    shutil.copyfile(tiny_bundle, model)
    win = _window(qtbot, tmp_path, model)
    img, _ = make_cell_image(64, True, 3)
    path = _png(tmp_path / "blast.png", img)
    _open(qtbot, win, path)
    view, box = win.image_view, win.side.heatmap
    assert not view.heat_item.isVisible() and not calls
    assert box.caption.text() == CAPTION == "Heatmap: where the network looked, not why it is right."
    box.show_box.setChecked(True)                      # the user's toggle
    assert win.act_heatmap.isChecked()
    qtbot.waitUntil(lambda: view.heat_item.isVisible(), timeout=60_000)
    assert len(calls) == 1 and calls[0] is not threading.main_thread()
    rgba = view.heat_item.image
    ex = win.state.explanation
    assert rgba.shape == (64, 64, 4) and rgba[..., 3].max() <= round(255 * win.state.heatmap_opacity)
    # opaque where the network looked most, see-through where it did not
    hm = ex.heatmaps["densenet121"]
    if hm.max() > 0:  # (at the tiny model's 48 px input DenseNet-121's map is one cell: constant)
        assert rgba[..., 3].max() == round(255 * win.state.heatmap_opacity)
    assert np.abs(rgba[..., 3] - 255 * win.state.heatmap_opacity * hm).max() <= 1  # alpha follows the heat
    # under the nucleus outlines, which stay visible
    assert view.heat_item.zValue() < min(it.zValue() for it in view.cell_items)
    assert all(it.isVisible() for it in view.cell_items)
    assert "DenseNet-121" in box.status.text() and "probe P(ALL)" in box.status.text()
    # the other network, the opacity, off and on again: nothing is recomputed
    box.backbone.setCurrentIndex(box.backbone.findData("resnet34"))
    assert win.state.heatmap_backbone == "resnet34" and "ResNet-34" in box.status.text()
    box.opacity.setValue(80)
    assert win.state.heatmap_opacity == 0.8
    if ex.heatmaps["resnet34"].max() > 0:
        assert view.heat_item.image[..., 3].max() == round(255 * 0.8)
    win.act_heatmap.trigger()
    assert not view.heat_item.isVisible() and not box.show_box.isChecked()
    win.act_heatmap.trigger()
    assert view.heat_item.isVisible()
    # another image is explained when it is shown, and coming back costs nothing
    other = _png(tmp_path / "normal.png", make_cell_image(64, False, 4)[0])
    _open(qtbot, win, other)
    qtbot.waitUntil(lambda: (other, -1) in win.state.explanations, timeout=60_000)
    win.state.set_current(path)
    assert view.heat_item.isVisible() and len(calls) == 2
    assert not no_boxes


def test_a_selected_field_cell_gets_its_own_heatmap_at_its_place(qtbot, tiny_bundle, tmp_path, calls):
    model = tmp_path / "m.allmodel"
    shutil.copyfile(tiny_bundle, model)
    win = _window(qtbot, tmp_path, model)
    field, _ = make_smear_field(160, 3, np.random.default_rng(3), malignant=True)
    path = _png(tmp_path / "field.png", field)
    _open(qtbot, win, path)
    pred = win.state.prediction
    assert len(pred.cells) >= 2
    win.state.set_heatmap(visible=True)
    first = win.state.heatmap_target
    qtbot.waitUntil(lambda: first in win.state.explanations, timeout=60_000)
    k = next(c.index for c in pred.cells if (path, c.index) != first)
    win.state.select_cell(k)
    qtbot.waitUntil(lambda: (path, k) in win.state.explanations and win.image_view.heat_item.isVisible(),
                    timeout=60_000)
    x, y, w, h = pred.cells[k].bbox
    r = win.image_view.heat_item.mapRectToParent(win.image_view.heat_item.boundingRect())
    assert (round(r.x()), round(r.y()), round(r.width()), round(r.height())) == (x, y, w, h)
    assert f"cell {k + 1}" in win.side.heatmap.status.text()
    assert all(t is not threading.main_thread() for t in calls)


def test_a_model_without_probes_says_so_instead_of_a_heatmap(qtbot, tiny_bundle, tmp_path, no_boxes):
    from trainer.inference.bundle import load_bundle, save_bundle

    b = load_bundle(tiny_bundle)
    b.arrays = {k: v for k, v in b.arrays.items() if "/explain/" not in k}
    save_bundle(tmp_path / "old.allmodel", b)
    win = _window(qtbot, tmp_path, tmp_path / "old.allmodel")
    path = _png(tmp_path / "blast.png", make_cell_image(64, True, 3)[0])
    _open(qtbot, win, path)
    win.state.set_heatmap(visible=True)
    qtbot.waitUntil(lambda: (path, -1) in win.state.explanation_errors, timeout=60_000)
    text = win.side.heatmap.status.text()
    assert "no explanation probes" in text and "retrain" in text
    assert not win.image_view.heat_item.isVisible() and not no_boxes
