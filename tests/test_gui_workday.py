"""A pathologist's working day in the app (pytest-qt, offscreen): the case stays whole when images are
added, retraining ends in a comparison that warns, and the small things that get in the way."""
from __future__ import annotations

import multiprocessing
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
    # the case's images join without taking the view: the slide's own first image stays current
    assert win2.state.current == str(sorted(folder.glob("*.png"))[0]) and win2.state.current != extra


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
    # what the training process hands back when it ends: the new model and the real comparison, made as
    # there in a process of its own (its networks and threads never mix with the window's)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        comparison = pool.apply(comparison_job, (str(crop_and_field_model), str(worse_model), [case]))
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
    port = dlg.scroll.viewport()                          # ...and the warnings come into view by themselves
    qtbot.waitUntil(lambda: 0 <= view.warnings.mapTo(port, QPoint(0, 0)).y() < port.height() - 40, timeout=5_000)

    switched = []
    dlg.accepted_model.connect(switched.append)
    boxes.answer = QMessageBox.No
    dlg.use_btn.click()                                   # switching is a choice, asked again over the warnings
    assert switched == [] and "no model for smear fields" in boxes[-1][2]
    boxes.answer = QMessageBox.Yes
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):   # the window switches, as asked
        dlg.use_btn.click()
    assert switched == [str(worse_model)] and win.analysis.model_path == str(worse_model)

    qtbot.keyClick(dlg, Qt.Key_Escape)                    # Esc closes
    assert not dlg.isVisible()
    dlg = win.models.show_retrain()                       # a second run, cancelled: Close still closes
    dlg.data.setText(str(tiny_cnmc))
    dlg.start_btn.click()
    with qtbot.waitSignal(dlg.task.cancelled, timeout=30_000):
        dlg.cancel_btn.click()
    dlg.close_btn.click()
    assert not dlg.isVisible()


def test_the_window_fits_a_1366_by_768_screen(qtbot, model, settings, tmp_path, boxes):
    from PySide6.QtCore import QPoint, QRect
    from PySide6.QtWidgets import QStyle

    from allgui.window.main_window import MainWindow
    from trainer.config import TrainConfig

    d = tmp_path / "C-NMC fold"
    d.mkdir()
    rng = np.random.default_rng(5)
    for name in ("UID_H10_1_1_hem.png", "UID_H10_12_3_hem.png", "UID_H14_2_9_hem.png", "UID_7_3_1_all.png"):
        _png(d / name, make_cell_image(64, name.endswith("all.png"), rng)[0])
    win = MainWindow(model=str(model), settings=settings, models_dir=tmp_path / "models",
                     retrain_defaults=TrainConfig(image_size=32, weights="none", device="cpu", num_workers=0))
    qtbot.addWidget(win)
    win.resize(1366, 768 - 70)                            # a 1366 x 768 screen less its panel and title bar
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.show()
    win.files.open_folder(str(d))
    _analysed(qtbot, win)
    qtbot.wait(50)                                        # the panels take their first sizes

    table = win.table
    assert table.textElideMode() == Qt.ElideRight         # "UID_H10_1_1…", "UID_H10_12_3…": rows told apart
    assert table.horizontalScrollBar().maximum() == 0     # Flagged and Model without scrolling
    hh = table.horizontalHeader()
    margin = 2 * win.style().pixelMetric(QStyle.PM_HeaderMargin)
    for col in (c for c in range(2, hh.count()) if not table.isColumnHidden(c)):
        text = table.model().headerData(col, Qt.Horizontal)
        assert hh.sectionSize(col) >= hh.fontMetrics().horizontalAdvance(text) + margin, text   # not clipped
    assert table.columnWidth(1) >= hh.fontMetrics().horizontalAdvance("UID_H10_12_")
    # the threshold and its sensitivity / specificity are on screen without scrolling the panel
    view = win.side.parentWidget()
    label = win.side.sens_spec
    assert label.text() != "\u2014" and label.mapTo(view, QPoint(0, label.height())).y() <= view.height()
    # the analysis progress has its own place: the status text is elided beside it, never covered
    win.statusBar().clearMessage()                        # no passing message over it
    win._on_progress(1, 4)
    win.status_label.setText("1/4  UID_H10_1_1_hem.png \u2014 " + "a long status line " * 12)
    status, bar = win.status_label, win.status_progress
    qtbot.waitUntil(lambda: status.isVisible() and bar.isVisible(), timeout=5_000)
    qtbot.wait(50)
    assert not QRect(status.mapTo(win, QPoint(0, 0)), status.size()).intersects(
        QRect(bar.mapTo(win, QPoint(0, 0)), bar.size()))
    assert status.shown_text().endswith("\u2026") and status.toolTip().endswith("a long status line ")


def test_keys_go_where_the_pathologist_expects(qtbot, model, folder, tmp_path):
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication, QLineEdit

    settings = QSettings(str(tmp_path / "fresh.ini"), QSettings.IniFormat)   # no reviewer's name yet
    win = _window(qtbot, model, settings, tmp_path)
    order = _open(qtbot, win, folder)
    win.state.set_current(order[0])

    slider = win.side.slider
    slider.setFocus()
    start = win.state.threshold
    qtbot.keyClick(slider, Qt.Key_Right)
    assert win.state.threshold == pytest.approx(start + 0.01)
    qtbot.keyClick(slider, Qt.Key_Right, Qt.ShiftModifier)        # fine steps with Shift
    assert win.state.threshold == pytest.approx(start + 0.011)
    qtbot.keyClick(slider, Qt.Key_PageDown)                       # the slider's page, not the next image
    assert win.state.threshold == pytest.approx(start + 0.011 - 0.05) and win.state.current == order[0]
    assert "Shift" in slider.toolTip()

    win.image_view.setFocus()
    order = win.table.visible_paths()      # the queue at the new threshold: Next follows it
    assert order[0] == win.state.current or win.state.set_current(order[0]) is None

    def type_name():
        dialog = QApplication.activeModalWidget()
        dialog.findChild(QLineEdit).setText("Dr Late")
        qtbot.keyClick(dialog.findChild(QLineEdit), Qt.Key_Return)
    QTimer.singleShot(200, type_name)
    qtbot.keyClick(win.image_view, Qt.Key_N)                      # asks the name, then records the decision
    assert win.review.review_for(order[0]).reviewer == "Dr Late"
    # the key right after the dialog, before the window system has made the window active again, is not lost
    assert QApplication.activeWindow() is not win
    qtbot.keyClick(win.focusWidget() or win, Qt.Key_A)
    assert win.review.review_for(order[1]).reviewer_decision == "ALL blast"


def test_an_unreadable_file_cannot_be_reviewed_and_other_files_are_counted(qtbot, window, folder, boxes):
    win = window
    (folder / "broken.png").write_bytes(b"not a picture at all")
    (folder / "notes.txt").write_text("smear 12, stained today")
    (folder / "labels.csv").write_text("file,label\n")
    assert win.files.open_folder(str(folder))
    assert "2 files that are not images skipped (labels.csv, notes.txt)" in win.statusBar().currentMessage()
    qtbot.waitUntil(lambda: not win.state.pending(), timeout=60_000)
    assert "2 files that are not images skipped" in win.findChild(type(win._docks[0]), "imagesDock").windowTitle()
    broken = str(folder / "broken.png")
    win.state.set_current(broken)
    qtbot.wait(200)                                               # the display read fails too
    bar = win.reviews.bar
    assert broken in win.state.errors
    assert not any(b.isEnabled() for b in (bar.confirm_btn, *bar.buttons.values()))
    _key(qtbot, win, Qt.Key_N)
    assert win.review.review_for(broken) is None and "could not be read" in win.statusBar().currentMessage()


def test_a_case_is_described_and_signed_in_the_app(qtbot, window, folder, tmp_path, boxes):
    from pypdf import PdfReader

    win = window
    order = _open(qtbot, win, folder)
    crops = [p for p in order if "cell" in Path(p).name]
    for p, key in zip(crops[:3], (Qt.Key_A, Qt.Key_N, Qt.Key_A)):
        win.state.set_current(p)
        _key(qtbot, win, key)
    assert win.cases.act_signoff in win.menus["file"].actions()
    dlg = win.cases.show_signoff()
    assert "Preliminary" in dlg.status.text() and "2 of 3 classified cells = 66.7 %" in dlg.figures.text()
    assert dlg.signer.text() == "Dr Test" and not dlg.addendum.isVisible()
    dlg.fields["conclusion"].setPlainText("Blasts present (2 of 3 reviewed cells); consistent with B-ALL.")
    boxes.answer = QMessageBox.Yes
    dlg.sign_btn.click()
    assert win.review.store.status == "preliminary" and "specimen id" in boxes[-1][2]   # refused without one
    asked = [text for kind, _, text in boxes if kind == "question"][-1]   # the signer is told what was not reviewed
    assert f"{len(order) - 3} of {len(order)} images were not reviewed" in asked, asked
    for key, value in (("specimen_id", "S25-0042"), ("specimen_type", "peripheral blood"),
                       ("stain", "May-Gruenwald-Giemsa"), ("magnification", "100x oil")):
        dlg.fields[key].setText(value)
    dlg.sign_btn.click()

    store = win.review.store
    assert store.status == "final" and store.signoff.author == "Dr Test"
    assert store.signoff.local_at[-6] in "+-" and store.metadata["stain"] == "May-Gruenwald-Giemsa"
    assert "Final" in dlg.status.text() and "signed by Dr Test" in dlg.status.text()
    assert not dlg.sign_btn.isVisible() and dlg.addendum.isVisible()
    assert "final, signed" in win.reviews.bar.case.text()
    dlg.addendum.setPlainText("Flow cytometry requested.")
    dlg.addendum_btn.click()                              # after the sign-off: an addendum, never an edit
    assert store.events()[-1].kind == "addendum" and "1 addendum since" in dlg.status.text()

    out = tmp_path / "report.pdf"
    with qtbot.waitSignal(win.cases.reportWritten, timeout=60_000):
        win.cases.export_report(str(out))
    first = PdfReader(str(out)).pages[0].extract_text()
    assert "Final" in first and "Dr Test" in first and "S25-0042" in first
