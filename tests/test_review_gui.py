"""Review mode in the app, driven by keyboard and buttons as a pathologist would (pytest-qt,
offscreen), with the tiny model on a folder of generated images."""
from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt

from allgui.window.main_window import MainWindow
from trainer.cases import DEFAULT_CASE_NAME, CaseStore
from trainer.config import TrainConfig
from trainer.io.synthetic import make_cell_image, make_smear_field


def _png(path: Path, rgb: np.ndarray) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """A slide folder: five single-cell crops and one smear field with three white cells."""
    rng = np.random.default_rng(21)
    d = tmp_path / "slide 12"
    d.mkdir()
    for i in range(5):
        img, _ = make_cell_image(64, i in (0, 2, 4), rng)
        _png(d / f"cell{i}.png", img)
    field, _ = make_smear_field(160, 3, rng, malignant=True)
    _png(d / "field.png", field)
    return d


def _window(qtbot, model, settings, tmp_path):
    defaults = TrainConfig(image_size=32, weights="none", device="cpu", batch_size=24, num_workers=0,
                           backbones=("resnet34",), cv_repeats=1, cv_folds=3)
    win = MainWindow(model=str(model), settings=settings, retrain_defaults=defaults, models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.show()
    return win


@pytest.fixture
def settings(tmp_path):
    s = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    s.setValue("review/reviewer", "Dr Test")
    return s


@pytest.fixture
def model(tiny_bundle, tmp_path):
    m = tmp_path / "current.allmodel"
    shutil.copyfile(tiny_bundle, m)
    return m


@pytest.fixture
def window(qtbot, model, settings, tmp_path, boxes):
    return _window(qtbot, model, settings, tmp_path)


def _open(qtbot, win, folder) -> list[str]:
    """Open the folder and wait until every image is analysed and identified; the table order."""
    assert win.files.open_folder(str(folder))
    rv = win.review
    qtbot.waitUntil(lambda: not win.state.pending() and not rv.missing_hashes() and bool(rv.model_sha256),
                    timeout=60_000)
    win.state.set_band(0.0)      # no 'uncertain' results: every image can be confirmed
    win.activateWindow()
    win.image_view.setFocus()
    return win.table.visible_paths()


def _texts(win) -> dict[str, str]:
    b = win.table.batch
    return {Path(b.row_at(i).path).name: b.index(i, 5).data() for i in range(b.rowCount())}


def _key(qtbot, win, key, modifier=Qt.NoModifier):
    qtbot.keyClick(win.image_view, key, modifier)


def test_review_by_keyboard_with_undo_filter_and_reopen(qtbot, window, folder, settings, model, tmp_path):
    win = window
    ctl = win.reviews
    rv = ctl.review
    order = _open(qtbot, win, folder)
    crops = [p for p in order if "cell" in Path(p).name]
    win.state.set_current(crops[0])
    assert not (folder / DEFAULT_CASE_NAME).exists()       # nothing is written before a decision
    model_says = {p: rv.model_decision(p, -1) for p in crops}

    _key(qtbot, win, Qt.Key_C)                             # confirm; the next image comes up
    assert (folder / DEFAULT_CASE_NAME).is_file()
    assert rv.review_for(crops[0]).confirmed and not rv.review_for(crops[0]).override
    assert win.state.current == order[order.index(crops[0]) + 1]
    for p, key, decision in ((crops[1], Qt.Key_N, "normal"), (crops[2], Qt.Key_A, "ALL blast"),
                             (crops[3], Qt.Key_U, "unclassifiable")):
        win.state.set_current(p)
        _key(qtbot, win, key)
        r = rv.review_for(p)
        assert r.reviewer_decision == decision and r.reviewer == "Dr Test"
        assert r.override == (decision != {"ALL blast": "ALL blast", "normal": "normal"}.get(model_says[p]))
    texts = _texts(win)
    assert texts[Path(crops[0]).name] == f"confirmed {model_says[crops[0]]}"
    assert texts[Path(crops[3]).name] == "override: unclassifiable"
    assert texts[Path(crops[4]).name] == ""
    assert "4 of 6 reviewed" in ctl.bar.progress.text()

    # a comment typed in the bar goes with the next decision; buttons work like the keys
    win.state.set_current(crops[4])
    qtbot.keyClicks(ctl.bar.comment, "nucleus folded")
    ctl.bar.buttons["normal"].click()
    assert rv.review_for(crops[4]).comment == "nucleus folded"

    # undo (Ctrl+Z) takes back the latest decision and shows its image; redo brings it back
    win.state.set_current(crops[0])
    _key(qtbot, win, Qt.Key_Z, Qt.ControlModifier)
    assert rv.review_for(crops[4]) is None and win.state.current == crops[4]
    _key(qtbot, win, Qt.Key_Z, Qt.ControlModifier)
    assert rv.review_for(crops[3]) is None
    _key(qtbot, win, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert rv.review_for(crops[3]).reviewer_decision == "unclassifiable"

    # the filter: only images not reviewed; J / K walk through them
    ctl.bar.filter.setCurrentIndex(ctl.bar.filter.findData("unreviewed"))
    shown = win.table.visible_paths()
    assert sorted(shown) == sorted([crops[4], next(p for p in order if "field" in p)])
    win.state.set_current(shown[0])
    _key(qtbot, win, Qt.Key_J)
    assert win.state.current == shown[1]
    _key(qtbot, win, Qt.Key_K)
    assert win.state.current == shown[0]
    ctl.bar.filter.setCurrentIndex(ctl.bar.filter.findData("overrides"))
    assert all(rv.status(p).override for p in win.table.visible_paths())
    csv_out = tmp_path / "table.csv"                        # the CSV export carries the reviews
    win.table.batch.export_csv(csv_out)
    assert "override: unclassifiable" in csv_out.read_text() and csv_out.read_text().split("\n")[0].endswith("review")

    state = {p: rv.status(p).text() for p in order}
    trail = len(rv.store.actions())
    win.close()
    # reopened later: the same state, the trail intact
    win2 = _window(qtbot, model, settings, tmp_path)
    _open(qtbot, win2, folder)
    rv2 = win2.review
    assert rv2.case_path == folder / DEFAULT_CASE_NAME
    assert {p: rv2.status(p).text() for p in order} == state
    assert len(rv2.store.actions()) == trail and "4 of 6 reviewed" in win2.reviews.bar.progress.text()
    win2.state.set_current(crops[0])
    _key(qtbot, win2, Qt.Key_Z, Qt.ControlModifier)        # undo carries on across sessions
    assert rv2.review_for(crops[3]) is None


def test_a_cell_of_a_field_is_reviewed_on_its_own(qtbot, window, folder):
    win = window
    rv = win.review
    _open(qtbot, win, folder)
    field = str(folder / "field.png")
    win.state.set_current(field)
    win.state.select_cell(1)
    assert "cell 2 of 3" in win.reviews.bar.target.text()
    _key(qtbot, win, Qt.Key_A)
    assert win.state.current == field                      # a cell decision does not move on
    r = rv.review_for(field, 1)
    assert r.cell == 1 and r.reviewer_decision == "ALL blast"
    assert rv.review_for(field) is None and "1 cell" in _texts(win)["field.png"]


def test_confirm_is_refused_where_the_model_is_uncertain(qtbot, window, folder):
    win = window
    rv = win.review
    order = _open(qtbot, win, folder)
    p = order[0]
    win.state.set_current(p)
    pred = win.state.predictions[p]
    win.state.set_band(0.05)
    win.state.set_threshold(pred.probability, pred.model)  # right at the threshold: uncertain
    assert not win.reviews.bar.confirm_btn.isEnabled()
    _key(qtbot, win, Qt.Key_C)
    assert rv.review_for(p) is None and "uncertain" in win.statusBar().currentMessage()
    _key(qtbot, win, Qt.Key_N)                             # a decision of the reviewer's own is fine
    assert rv.review_for(p).reviewer_decision == "normal" and not rv.review_for(p).override


def test_a_case_file_from_a_newer_version_is_refused(qtbot, window, folder, boxes):
    with CaseStore.create(folder / DEFAULT_CASE_NAME):
        pass
    con = sqlite3.connect(folder / DEFAULT_CASE_NAME)
    con.execute("PRAGMA user_version = 7")
    con.commit()
    con.close()
    win = window
    assert win.files.open_folder(str(folder))
    qtbot.waitUntil(lambda: bool(boxes), timeout=10_000)
    assert boxes[0][1] == "Case file refused" and "newer version of allgui" in boxes[0][2]
    assert win.review.store is None


def test_the_reviewer_is_asked_once_and_remembered(qtbot, model, tmp_path, folder, boxes, monkeypatch):
    from PySide6.QtWidgets import QInputDialog
    settings = QSettings(str(tmp_path / "fresh.ini"), QSettings.IniFormat)
    asked = []
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: (asked.append(1), ("Dr New", True))[1]))
    win = _window(qtbot, model, settings, tmp_path)
    order = _open(qtbot, win, folder)
    win.state.set_current(order[0])
    _key(qtbot, win, Qt.Key_N)
    _key(qtbot, win, Qt.Key_N)
    assert asked == [1] and settings.value("review/reviewer") == "Dr New"
    assert win.review.review_for(order[0]).reviewer == "Dr New"


def test_export_case_report_writes_the_pdf_in_the_background(qtbot, window, folder, tmp_path):
    from pypdf import PdfReader
    win = window
    ctl = win.cases
    order = _open(qtbot, win, folder)
    for p in order[:3]:
        win.state.set_current(p)
        _key(qtbot, win, Qt.Key_U)
    out = tmp_path / "report.pdf"
    with qtbot.waitSignal(ctl.reportWritten, timeout=60_000):
        ctl.export_report(str(out), per_page=4)
    reader = PdfReader(str(out))
    assert len(reader.pages) == 1 + math.ceil(len(order) / 4)
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert "Research use only" in text and "Dr Test" in text and "override" in text.lower()


def test_model_card_shows_the_reviewed_corrections():
    from allgui.model.card import card_html
    card = {"name": "m", "trained_on": {"n_images": 30, "class_counts": {"normal": 14, "ALL": 16},
                                        "reviewed": {"n_images": 6, "by_label": {"normal": 2, "ALL": 4},
                                                     "n_train": 6, "n_validation": 0, "n_test": 0,
                                                     "cases": [{"name": "slide 7"}]}}}
    text = card_html(card)
    assert "Reviewed corrections:</b> 6 images reviewed in 1 case (normal 2, ALL 4)" in text
    assert "train/validation/test 6/0/0" in text


def test_retrain_dialog_adds_reviewed_cases(qtbot, window, folder, tmp_path, boxes):
    win = window
    order = _open(qtbot, win, folder)
    win.state.set_current(order[0])
    _key(qtbot, win, Qt.Key_N)
    dlg = win.models.show_retrain()
    dlg.cases.open_btn.click()                              # 'Add the open case'
    assert dlg.cases.paths() == [str(folder / DEFAULT_CASE_NAME)]
    assert dlg.config().cases == (str(folder / DEFAULT_CASE_NAME),)
    bad = tmp_path / "other.sqlite"
    bad.write_text("not a case")
    dlg.cases.add(bad)
    dlg.data.setText(str(folder))
    dlg.start_btn.click()                                   # refused before any work
    assert dlg.task is None and "not an allgui case file" in boxes[-1][2]
