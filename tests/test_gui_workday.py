"""A pathologist's working day in the app (pytest-qt, offscreen): the case stays whole when images are
added, retraining ends in a comparison that warns, and the small things that get in the way."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from test_review_gui import _key, _open, _png, _texts, _window, folder, model, settings, window  # noqa: F401

from trainer.cases import DEFAULT_CASE_NAME, CaseStore
from trainer.io.synthetic import make_cell_image


def _analysed(qtbot, win) -> None:
    rv = win.review
    qtbot.waitUntil(lambda: not win.state.pending() and not rv.missing_hashes(), timeout=60_000)


def test_a_file_from_another_folder_joins_the_open_case(qtbot, window, folder, tmp_path, model, settings):
    win, rv, bar = window, window.review, window.reviews.bar
    order = _open(qtbot, win, folder)
    for p in order[:3]:
        win.state.set_current(p)
        _key(qtbot, win, Qt.Key_U)
    case = folder / DEFAULT_CASE_NAME
    assert "3 of 6 reviewed" in bar.progress.text()
    other = tmp_path / "another slide"
    other.mkdir()
    img, _ = make_cell_image(64, True, np.random.default_rng(3))
    extra = _png(other / "late.png", img)

    win.files.open_files([extra])                        # File > Open images... of one more file
    _analysed(qtbot, win)
    assert rv.case_path == case                          # the case stays open...
    assert "3 of 7 reviewed" in bar.progress.text()      # ...with its reviews in the count
    assert all(_texts(win)[Path(p).name] == "override: unclassifiable" for p in order[:3])  # the table
    assert bar.undo_btn.isEnabled() and bar.case.text().startswith("Case: ")
    assert win.state.current == extra
    _key(qtbot, win, Qt.Key_N)                           # the next decision goes into the same case file
    assert rv.review_for(extra).reviewer_decision == "normal"
    assert not (other / DEFAULT_CASE_NAME).exists() and not (tmp_path / DEFAULT_CASE_NAME).exists()
    with CaseStore.open(case, readonly=True) as store:
        assert len(store.current_reviews()) == 4
    win.close()

    # the next day: the slide's folder opens its case, and the case brings its image from the other folder
    win2 = _window(qtbot, model, settings, tmp_path)
    win2.files.open_folder(str(folder))
    qtbot.waitUntil(lambda: extra in win2.state.paths, timeout=30_000)
    _analysed(qtbot, win2)
    assert win2.review.case_path == case and "4 of 7 reviewed" in win2.reviews.bar.progress.text()
    assert win2.state.current == order[0]                # the case's images join without taking the view


def test_a_folder_opened_while_a_case_holds_reviews_asks(qtbot, window, folder, tmp_path, monkeypatch):
    win, rv = window, window.review
    order = _open(qtbot, win, folder)
    win.state.set_current(order[0])
    _key(qtbot, win, Qt.Key_N)
    second = tmp_path / "second slide"
    second.mkdir()
    for i in range(2):
        img, _ = make_cell_image(64, False, np.random.default_rng(10 + i))
        _png(second / f"s{i}.png", img)
    asked = []
    answer = {"value": "cancel"}
    monkeypatch.setattr(win.files, "ask_add_to_case",
                        lambda case, where, n: (asked.append((case, Path(where).name, n)), answer["value"])[1])

    assert not win.files.open_folder(str(second))        # cancelled: nothing changes
    assert asked == [(rv.store.name, "second slide", 2)] and len(win.state.paths) == 6
    answer["value"] = "add"
    assert win.files.open_folder(str(second))
    _analysed(qtbot, win)
    assert len(win.state.paths) == 8 and rv.case_path == folder / DEFAULT_CASE_NAME
    assert "1 of 8 reviewed" in win.reviews.bar.progress.text()
    answer["value"] = "own"
    assert win.files.open_folder(str(second))
    _analysed(qtbot, win)
    assert len(win.state.paths) == 2 and rv.store is None   # the second slide on its own, no case yet
    assert "No case file yet" in win.reviews.bar.case.text() and str(second) in win.reviews.bar.case.toolTip()


@pytest.fixture
def crop_and_field_model(tiny_bundle, tmp_path):
    """The tiny model as one model for every image kind: it has a model that judges smear fields."""
    from conftest import as_single_model

    from trainer.inference.bundle import load_bundle, save_bundle
    return save_bundle(tmp_path / "current-any.allmodel", as_single_model(load_bundle(tiny_bundle)))


@pytest.fixture
def worse_model(tiny_bundle, tmp_path):
    """The tiny crop model, its card saying what a poor retraining reports: test AUC 0.656, sensitivity 0."""
    from conftest import rewrite_bundle

    def worse(manifest):
        ens = manifest["card"]["models"]["single_cell"]["metrics"]["test"]["ensemble_calibrated"]
        ens.update(auc=0.656, auc_ci=None, sensitivity=0.0)
    return rewrite_bundle(tiny_bundle, tmp_path / "new.allmodel", change=worse)


def test_retraining_ends_in_a_comparison_that_warns(qtbot, folder, tmp_path, settings, crop_and_field_model,
                                                    worse_model, boxes, tiny_cnmc, monkeypatch):
    from PySide6.QtCore import QPoint, QRect

    from allgui.model.comparison import comparison_job
    from allgui.model.retrain import RetrainDialog

    win = _window(qtbot, crop_and_field_model, settings, tmp_path)
    order = _open(qtbot, win, folder)
    for p in order:
        win.state.set_current(p)
        _key(qtbot, win, Qt.Key_A if p.endswith(("cell0.png", "cell2.png", "cell4.png", "field.png")) else Qt.Key_N)
    case = str(folder / DEFAULT_CASE_NAME)
    monkeypatch.setattr(RetrainDialog, "available_geometry", lambda self: QRect(0, 0, 1366, 768 - 40))
    dlg = win.models.show_retrain()
    # what the training process hands back when it ends: the new model and the real comparison
    comparison = comparison_job(str(crop_and_field_model), str(worse_model), [case])
    dlg._on_finished({"bundle_path": str(worse_model), "evaluation": {}, "comparison": comparison, "seconds": 3})

    view = dlg.comparison_view
    warnings = view.warnings.text()
    assert "no model for smear fields" in warnings                     # a kind the current model has
    assert "worse on single-cell crops, held-out test split" in warnings and "AUC 0.656 vs" in warnings
    assert "sensitivity 0.0% vs" in warnings and "#b00000" in view.warnings.styleSheet()
    tables = view.tables.text()
    assert "reviewed case images" in tables and "5 (3 ALL / 2 normal)" in tables   # the five crops, both models
    assert "Held-out test: each model on its own" not in view.notes.text()        # the same split here
    # the dialog fits a 1366 x 768 screen: it scrolls, and Close / Use stay on screen
    assert dlg.height() + 40 <= 768 - 40 and dlg.width() <= 1366
    for button in (dlg.close_btn, dlg.use_btn):
        bottom = button.mapTo(dlg, QPoint(0, button.height())).y()
        assert button.isVisible() and bottom <= dlg.height()
    qtbot.waitUntil(lambda: dlg.scroll.verticalScrollBar().maximum() > 0, timeout=5_000)   # the rest scrolls

    switched = []
    dlg.accepted_model.connect(switched.append)
    boxes.answer = QMessageBox.No
    dlg.use_btn.click()                                   # switching is a choice, asked again over the warnings
    assert switched == [] and "no model for smear fields" in boxes[-1][2]
    boxes.answer = QMessageBox.Yes
    dlg.use_btn.click()
    assert switched == [str(worse_model)]

    qtbot.keyClick(dlg, Qt.Key_Escape)                    # Esc closes
    assert not dlg.isVisible()
    dlg = win.models.show_retrain()                       # a second run, cancelled: Close still closes
    dlg.data.setText(str(tiny_cnmc))
    dlg.start_btn.click()
    with qtbot.waitSignal(dlg.task.cancelled, timeout=30_000):
        dlg.cancel_btn.click()
    dlg.close_btn.click()
    assert not dlg.isVisible()
