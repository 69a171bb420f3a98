"""The desktop app, driven as a user would (pytest-qt, offscreen), with a real tiny model."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, QSettings, Qt, QTimer
from PySide6.QtWidgets import QMessageBox

from allgui.window.main_window import MainWindow
from trainer.config import TrainConfig
from trainer.inference.results import DECISION_ALL, DECISION_NORMAL, DECISION_UNCERTAIN
from trainer.io.synthetic import make_cell_image, make_smear_field

DECISIONS = {DECISION_ALL, DECISION_NORMAL, DECISION_UNCERTAIN}


def _png(path: Path, rgb: np.ndarray) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path):
    """Two single-cell crops (one malignant-looking) and one smear field with 3 white cells."""
    rng = np.random.default_rng(3)
    d = tmp_path / "imgs"
    d.mkdir()
    blast, _ = make_cell_image(64, True, rng)
    normal, _ = make_cell_image(64, False, rng)
    field, _ = make_smear_field(160, 3, rng, malignant=True)
    return {"blast": _png(d / "blast.png", blast), "normal": _png(d / "normal.png", normal),
            "field": _png(d / "field.png", field), "dir": str(d)}


@pytest.fixture
def window(qtbot, tiny_bundle, tmp_path, boxes, tiny_config):
    model = tmp_path / "current.allmodel"
    shutil.copyfile(tiny_bundle, model)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    defaults = TrainConfig(image_size=32, weights="none", device="cpu", batch_size=24, num_workers=0,
                           backbones=("resnet34",), cv_repeats=1, cv_folds=3)
    win = MainWindow(model=str(model), settings=settings, retrain_defaults=defaults,
                     models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.show()
    yield win
    if win.models.retrain_dialog is not None and win.models.retrain_dialog.running():
        win.models.retrain_dialog.cancel()


def _open_and_wait(qtbot, win, paths):
    win.files.open_files(paths)
    qtbot.waitUntil(lambda: all(p in win.state.predictions or p in win.state.errors for p in paths),
                    timeout=60_000)


def test_open_image_shows_overlay_and_votes(qtbot, window, images, boxes):
    win = window
    _open_and_wait(qtbot, win, [images["blast"]])
    pred = win.state.prediction
    assert pred is not None and pred.kind == "single_cell"
    # the nucleus outline is on the image, coloured, and toggles with the overlay switch
    assert len(win.image_view.cell_items) >= 1
    assert all(it.isVisible() for it in win.image_view.cell_items)
    win.act_overlay.trigger()
    assert not any(it.isVisible() for it in win.image_view.cell_items)
    win.act_overlay.trigger()
    assert all(it.isVisible() for it in win.image_view.cell_items)
    # fill mode paints the nucleus at the chosen opacity
    win.state.set_overlay(mode="fill", opacity=0.5)
    fill = win.image_view.fill_item.image
    assert fill is not None and fill.shape[:2] == pred.shape and fill[..., 3].max() == round(255 * 0.5)
    # five classifiers' votes with weights summing to one, and the decision in words
    assert win.side.chart.names == win.analysis.predictor.classifier_names
    assert abs(sum(v.weight for v in pred.whole.votes) - 1) < 1e-6
    assert win.side.decision.text() in DECISIONS
    assert win.side.decision.text() == win.state.decide(pred.probability)
    assert float(win.side.calibrated.text().split(">")[1].split("<")[0]) == pytest.approx(pred.probability, abs=1e-3)
    # the batch table row agrees
    row = win.table.batch.row_at(0)
    assert row.file == "blast.png" and row.probability == pytest.approx(pred.probability)
    assert not boxes


def test_caution_when_the_model_hardly_saw_this_kind_of_image(qtbot, window, images):
    win = window
    # the tiny model was trained on single-cell crops only, and its card says so
    assert win.analysis.predictor.model_card["trained_on"]["image_kinds"]["single_cell"] == 1.0
    _open_and_wait(qtbot, win, [images["blast"]])
    # (this bundle predates the domain check, and says so; no caution about the kind of image)
    assert "training images were" not in win.side.caution.text()
    _open_and_wait(qtbot, win, [images["field"]])
    assert win.state.prediction.kind == "field"
    assert not win.side.caution.isHidden()
    assert "0% of this model's training images were smear fields" in win.side.caution.text()
    blank = _png(Path(images["dir"]) / "blank.png", np.full((80, 80, 3), 255, np.uint8))
    _open_and_wait(qtbot, win, [blank])
    assert "No white cell was found" in win.side.caution.text()


def test_field_judged_whole_shows_cells_for_review_only(qtbot, window, images, tiny_bundle):
    from conftest import as_single_model

    from allgui.imaging import NEUTRAL
    from trainer.inference.bundle import load_bundle
    from trainer.inference.predictor import Predictor
    # one model for every kind of image (as before per-kind models), trained on fields
    b = as_single_model(load_bundle(tiny_bundle))
    b.card["trained_on"]["image_kinds"] = {"single_cell": 0.0, "field": 1.0, "n_checked": 24}
    assert "domain_" not in b.model.models["any"].__dict__   # without a domain check: the field gets a class
    win = window
    win.models.set_predictor(Predictor(b), str(tiny_bundle))
    _open_and_wait(qtbot, win, [images["field"]])
    pred = win.state.prediction
    assert pred.kind == "field" and len(pred.cells) == 3 and not pred.field_by_cells
    # the whole field decides; cells are outlined in a neutral colour without scores
    assert win.side.decision.text() == win.state.decide(pred.whole.probability)
    assert all(it.pen().color().getRgb()[:3] == NEUTRAL for it in win.image_view.cell_items)
    assert [lab.textItem.toPlainText() for lab in win.image_view.labels] == ["#1", "#2", "#3"]
    assert "judges the whole field" in win.side.counts.text()
    # the field's own decision frames the image in its colour, and follows the threshold
    from allgui.imaging import probability_colour
    frame = win.image_view.field_frame
    assert frame.isVisible() and frame.rect().width() == pred.shape[1]
    win.state.set_threshold(1.0)
    assert frame.pen().color().getRgb()[:3] == probability_colour(pred.probability, 1.0, win.state.band)
    # a selected cell shows its own score, small and marked as not validated; the field's decision stays
    win.state.select_cell(1)
    assert "not validated" in win.side.counts.text()
    assert win.side.decision.text() == win.state.decide(pred.whole.probability)
    assert f"cell score {pred.cells[1].probability:.3f}, not validated" in win.side.cell_score.text()


def test_field_cells_are_outlined_and_clickable(qtbot, window, images):
    win = window
    _open_and_wait(qtbot, win, [images["field"]])
    pred = win.state.prediction
    assert pred.kind == "field" and len(pred.cells) >= 2
    assert len(win.image_view.cell_items) == len(pred.cells)
    target = pred.cells[1]
    cx, cy = (np.asarray(target.contour, float).mean(axis=0) if len(target.contour)
              else (target.bbox[0] + target.bbox[2] / 2, target.bbox[1] + target.bbox[3] / 2))
    assert win.image_view.cell_at(cx, cy) == target.index
    # a real mouse click on that cell selects it and the side panel shows that cell
    win.image_view.fit()
    qtbot.wait(50)
    scene_pt = win.image_view.viewbox.mapViewToScene(QPointF(cx, cy))
    view_pt = win.image_view.mapFromScene(scene_pt)
    qtbot.mouseClick(win.image_view.viewport(), Qt.LeftButton, pos=view_pt)
    qtbot.waitUntil(lambda: win.state.selected_cell == target.index, timeout=2000)
    assert f"cell {target.index + 1} of {len(pred.cells)}" in win.side.where.text()
    assert win.image_view.selection_box.isVisible()
    assert win.image_view.selection_box.rect().contains(QPointF(cx, cy))
    assert win.side.raw.text() == f"{target.raw_probability:.3f}"


def test_slider_redecides_without_computing_features(qtbot, window, images, monkeypatch):
    win = window
    paths = [images["blast"], images["normal"], images["field"]]
    _open_and_wait(qtbot, win, paths)
    calls = []
    monkeypatch.setattr(win.analysis.predictor.extractor, "extract", lambda *a, **k: calls.append("extract"))
    import trainer.inference.predictor as tp
    monkeypatch.setattr(tp.segmentation, "segment_nuclei", lambda *a, **k: calls.append("segment"))

    probs = [win.state.predictions[p].probability for p in paths]
    win.state.set_current(images["field"])
    win.state.set_band(0.05)       # the tiny model's own band may be 0, and its probabilities 0 or 1
    lo = max(0.0, min(probs) - 0.2)
    win.side.slider.setValue(int(lo * 1000))          # the user drags the slider to the left
    assert win.state.threshold == pytest.approx(lo, abs=1e-3)
    low = [win.table.batch.row_at(i).decision for i in range(3)]
    pens_low = [it.pen().color() for it in win.image_view.cell_items]
    win.side.slider.setValue(1000)
    high = [win.table.batch.row_at(i).decision for i in range(3)]
    # every image is ALL blast (or uncertain) at a low threshold and normal / uncertain at 1.0
    assert all(d in (DECISION_ALL, DECISION_UNCERTAIN) for d in low) and DECISION_ALL in low
    assert all(d in (DECISION_NORMAL, DECISION_UNCERTAIN) for d in high)
    assert win.side.decision.text() == win.state.decide(win.state.prediction.probability)
    # outline colours follow: red shades for ALL blast at the low threshold, blue for normal at 1.0
    field = win.state.prediction
    for cell, item_low, item_high in zip(field.cells, pens_low, win.image_view.cell_items):
        if cell.probability > lo + win.state.band:
            assert item_low.red() > item_low.blue()
        if cell.probability < 1.0 - win.state.band:
            assert item_high.pen().color().blue() > item_high.pen().color().red()
    sens, spec = win.analysis.predictor.operating_point(1.0)
    # named for the data that set the threshold: the cross-fit pool, not "validation"
    assert f"cross-fit pool (it set the threshold): sensitivity {sens:.1%}" in win.side.sens_spec.text()
    held_out = win.analysis.predictor.test_operating_point(1.0)
    assert held_out is not None  # the tiny model has a test split with both classes
    assert f"test split (one split): sensitivity {held_out[0]:.1%}, specificity {held_out[1]:.1%}" \
        in win.side.sens_spec.text()
    assert calls == []                                 # nothing was recomputed
    win.side.reset.click()
    assert win.state.threshold == pytest.approx(win.analysis.predictor.threshold)


def test_threshold_and_opacity_persist_per_model(qtbot, window, tiny_bundle, tmp_path, boxes):
    win = window
    win.state.set_threshold(0.3)
    win.state.set_overlay(opacity=0.7)
    settings = win.settings
    win.close()
    win2 = MainWindow(model=win.analysis.model_path, settings=settings, models_dir=tmp_path / "models")
    qtbot.addWidget(win2)
    with qtbot.waitSignal(win2.modelLoaded, timeout=60_000):
        pass
    assert win2.state.threshold == pytest.approx(0.3)
    assert win2.state.overlay_opacity == pytest.approx(0.7)


@pytest.fixture
def reads_on_gui_thread(monkeypatch):
    """For each image the app reads from now on, whether the GUI thread read it."""
    import threading

    from allgui.window import analysis
    real, on_gui_thread = analysis.read_image, []

    def read(p):
        on_gui_thread.append(threading.current_thread() is threading.main_thread())
        return real(p)

    monkeypatch.setattr(analysis, "read_image", read)
    return on_gui_thread


def test_an_opened_image_is_read_once_off_the_gui_thread_and_shown_before_its_result(qtbot, window, images,
                                                                                    reads_on_gui_thread):
    win = window
    shown_early = []
    win.analysis.imageReady.connect(
        lambda p: shown_early.append(win.image_view.image is not None and p not in win.state.predictions))
    _open_and_wait(qtbot, win, [images["blast"]])
    assert reads_on_gui_thread == [False]    # one read, on the inference thread
    assert shown_early == [True]             # the picture was up before the result
    assert win.image_view.image.shape == (64, 64, 3) and win.state.prediction is not None


def test_no_picture_is_read_on_the_gui_thread_even_while_the_analysis_is_busy(qtbot, window, tmp_path,
                                                                             reads_on_gui_thread):
    rng = np.random.default_rng(8)
    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(6):
        _png(folder / f"c{i}.png", make_cell_image(64 + 8 * i, bool(i % 2), rng)[0])
    win = window
    win.files.open_folder(str(folder))
    last = win.state.paths[-1]
    win.state.set_current(last)            # jump ahead of the analysis, which is busy with the first image
    qtbot.waitUntil(lambda: win.image_view.image is not None, timeout=30_000)
    assert win.image_view.image.shape[:2] == (64 + 8 * 5,) * 2
    qtbot.waitUntil(lambda: not win.state.pending(), timeout=60_000)
    assert reads_on_gui_thread and not any(reads_on_gui_thread)


def test_a_model_loaded_with_images_open_analyses_them_without_a_warm_up_pass_first(
        qtbot, window, images, tiny_bundle, tmp_path, monkeypatch):
    from trainer.inference.predictor import Predictor
    warmed, real = [], Predictor.warm_up

    def warm_up(self):
        warmed.append(self)
        real(self)

    monkeypatch.setattr(Predictor, "warm_up", warm_up)
    win = window
    _open_and_wait(qtbot, win, [images["blast"]])
    other = tmp_path / "other.allmodel"
    shutil.copyfile(tiny_bundle, other)
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        win.models.load_model(str(other))
    qtbot.waitUntil(lambda: images["blast"] in win.state.predictions, timeout=60_000)
    # the open image was analysed again by the new model, whose first pass did the set-up itself
    assert win.analysis.model_path == str(other) and win.state.prediction is not None and warmed == []
    # with no image open, the network is warmed up for the first image to come
    settings = QSettings(str(tmp_path / "settings2.ini"), QSettings.IniFormat)
    fresh = MainWindow(model=str(other), settings=settings, models_dir=tmp_path / "models2")
    qtbot.addWidget(fresh)
    with qtbot.waitSignal(fresh.modelLoaded, timeout=60_000):
        fresh.show()
    assert len(warmed) == 1 and warmed[0] is fresh.analysis.predictor


def test_bad_image_gives_a_message_not_a_crash(qtbot, window, images, tmp_path, boxes):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really an image" * 10)
    win = window
    win.files.open_files([str(bad)])
    qtbot.waitUntil(lambda: bool(boxes), timeout=10_000)
    kind, _title, text = boxes[0]
    assert kind == "warning" and "broken.png" in text
    assert str(bad) in win.state.errors and win.table.batch.row_at(0).decision == "error"
    # the window still works afterwards, and the user was told once
    _open_and_wait(qtbot, win, [images["normal"]])
    assert win.state.prediction is not None
    qtbot.wait(200)
    assert len(boxes) == 1


def test_empty_folder_and_wrong_model_file_give_messages(qtbot, window, tmp_path, boxes):
    win = window
    empty = tmp_path / "empty"
    empty.mkdir()
    assert win.files.open_folder(str(empty)) is False
    assert boxes[-1][0] == "warning" and "No images found" in boxes[-1][2]
    before = win.analysis.predictor
    wrong = tmp_path / "notes.allmodel"
    wrong.write_text("this is not a model bundle")
    win.models.load_model(str(wrong))
    qtbot.waitUntil(lambda: boxes[-1][0] == "critical", timeout=20_000)
    assert "stays loaded" in boxes[-1][2]
    assert win.analysis.predictor is before


def test_export_csv_and_overlays(qtbot, window, images, tmp_path):
    win = window
    assert win.files.open_folder(images["dir"])
    qtbot.waitUntil(lambda: not win.state.pending(), timeout=60_000)
    out = tmp_path / "table.csv"
    assert win.table.batch.export_csv(out) == 3
    lines = out.read_text().splitlines()
    assert lines[0].startswith("file,path,kind,cells") and len(lines) == 4
    # sorting by probability orders the rows
    win.table.sortByColumn(3, Qt.DescendingOrder)
    shown = [float(win.table.proxy.index(r, 3).data()) for r in range(3)]
    assert shown == sorted(shown, reverse=True)
    # selecting a row shows that image
    win.table.selectRow(2)
    src = win.table.proxy.mapToSource(win.table.proxy.index(2, 1))
    assert win.state.current == win.table.batch.row_at(src.row()).path
    odir = tmp_path / "overlays"
    odir.mkdir()
    task = win.files.save_overlays(str(odir))
    with qtbot.waitSignal(task.done, timeout=30_000):
        pass
    saved = sorted(p.name for p in odir.iterdir())
    assert saved == ["blast_overlay.png", "field_overlay.png", "normal_overlay.png"]
    # the overlay differs from the original image (outlines drawn)
    orig = cv2.imread(images["field"])
    over = cv2.imread(str(odir / "field_overlay.png"))
    assert over.shape == orig.shape and (over != orig).any(axis=2).sum() > 50


def test_retrain_from_menu_keeps_window_responsive_and_switches(qtbot, window, tiny_cnmc, boxes, images):
    win = window
    old = win.analysis.model_path
    old_hash = _sha(old)
    _open_and_wait(qtbot, win, [images["blast"]])
    win.act_retrain.trigger()
    dlg = win.models.retrain_dialog
    assert dlg is not None and dlg.isVisible()
    dlg.data.setText(str(tiny_cnmc))
    boxes.answer = QMessageBox.Yes

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    dlg.start_btn.click()
    assert dlg.running() and not dlg.start_btn.isEnabled()
    with qtbot.waitSignal(dlg.task.finished, timeout=120_000):
        pass
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 50 and gaps.max() < 0.5, f"event loop stalled {gaps.max():.3f} s"
    assert dlg.progress.value() == 1000 and dlg.use_btn.isEnabled()
    ev = dlg.evaluation_view
    assert list(ev.splits) == ["test"] and "AUC" in ev.summary.text()
    new = dlg.result["bundle_path"]
    assert dlg.comparison_view is not None and "held-out test split" in dlg.comparison_view.tables.text()
    assert win.analysis.model_path == old                # nothing switches until the user chooses it
    with qtbot.waitSignal(win.modelLoaded, timeout=60_000):
        dlg.use_btn.click()
    assert win.analysis.model_path == new and new != old
    assert _sha(old) == old_hash                       # the old model file is untouched
    qtbot.waitUntil(lambda: win.state.prediction is not None, timeout=60_000)


def test_cancel_retrain_keeps_old_model_and_file(qtbot, window, tiny_cnmc, boxes):
    win = window
    old_pred, old_path = win.analysis.predictor, win.analysis.model_path
    old_hash = _sha(old_path)
    dlg = win.models.show_retrain()
    dlg.data.setText(str(tiny_cnmc))
    dlg.start_btn.click()
    task = dlg.task
    qtbot.waitUntil(lambda: dlg.progress.value() > 0 or not task.running, timeout=60_000)
    t0 = time.perf_counter()
    with qtbot.waitSignal(task.cancelled, timeout=5_000):
        dlg.cancel_btn.click()
    assert time.perf_counter() - t0 < 3.0
    assert not task._proc.is_alive()
    assert "cancelled" in dlg.stage.text().lower()
    assert win.analysis.predictor is old_pred and win.analysis.model_path == old_path
    assert _sha(old_path) == old_hash
    assert not dlg.output.exists()                   # no half-written new model left behind
    assert dlg.start_btn.isEnabled()


def test_drop_recent_shortcuts_and_model_card(qtbot, window, images):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    from allgui.model.card import card_html

    win = window
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(images["normal"]), QUrl.fromLocalFile(images["blast"])])
    win.dropEvent(QDropEvent(QPointF(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))
    assert win.state.paths == [images["normal"], images["blast"]] and win.state.current == images["normal"]
    recent = [a.text() for a in win.files.recent_menu.actions()]
    assert recent[:2] == [images["blast"], images["normal"]]
    win.act_next.trigger()
    assert win.state.current == images["blast"]
    win.act_prev.trigger()
    assert win.state.current == images["normal"]
    assert win.act_overlay.shortcut().toString() == "O" and win.act_open.shortcut().toString() == "Ctrl+O"
    card = win.analysis.predictor.model_card
    text = card_html(card, win.analysis.model_path)
    n_test = card["metrics"]["test"]["ensemble"]["n"]
    # each model's labelled headline: cross-validation first, then the test split as one split
    assert "Crop model" in text and text.index("Cross-validation (") < text.index("Test split, one split (")
    assert f"{n_test} images): AUC" in text and "Research use only" in text
    assert f"{card['trained_on']['n_images']} images" in text


def test_evaluation_report_opens_with_its_numbers(qtbot, window, tmp_path, boxes):
    d = tmp_path / "report"
    d.mkdir()
    fig = np.zeros((20, 30, 3), np.uint8)
    fig[:, :, 0] = 200
    _png(d / "roc_subject.png", fig)
    (d / "report.md").write_text("# ALL blast detection: evaluation report\n\n| Model | AUC |\n|---|---|\n"
                                 "| Ensemble | 0.966 (0.938-0.987) |\n\n![roc](roc_subject.png)\n")
    dlg = window.models.show_report(str(d))
    qtbot.addWidget(dlg)
    text = dlg.browser.toPlainText()
    assert "evaluation report" in text and "0.966 (0.938-0.987)" in text
    # the figure resolves relative to the report folder
    img = dlg.browser.document().resource(3, "roc_subject.png")  # QTextDocument.ImageResource
    assert img is not None and not img.isNull()
    assert window.models.show_report(str(tmp_path)) is None
    assert boxes and boxes[-1][0] == "warning" and "report.md" in boxes[-1][2]


def test_model_card_headline_shows_sources_and_limitations():
    from allgui.model.card import card_html
    m = {"n": 8, "accuracy": 0.5, "auc": 0.9375, "auc_ci": [0.75, 1.0], "sensitivity": 0.0,
         "specificity": 1.0, "brier": 0.365}
    card = {"name": "m", "metrics": {"test": {"ensemble_calibrated": dict(m, n=208, accuracy=0.933)},
                                     "test_by_source": {"cnmc": m}},
            "limitations": ["Not validated on single-cell crops."]}
    text = card_html(card)
    assert "test (n = 208)" in text and "93.3%" in text
    assert "test, cnmc only (n = 8)" in text and "0.938 (0.75\u20131.00)" in text
    assert "<li>Not validated on single-cell crops.</li>" in text


def test_overlay_names_do_not_collide():
    from allgui.window.files import _overlay_name
    used: set[str] = set()
    names = [_overlay_name(p, used) for p in ("a/1.png", "b/1.png", "c/2.png", "d/1.png")]
    assert names == ["1_overlay.png", "1_2_overlay.png", "2_overlay.png", "1_3_overlay.png"]


def test_the_nucleus_line_says_no_cytoplasm_instead_of_an_nc_of_one(qtbot, window, tmp_path):
    from trainer.inference.results import NO_CYTOPLASM
    from trainer.io.synthetic import cut_out, make_stained_cell

    img, nucleus, cell = make_stained_cell(rng=2)
    with_cytoplasm = _png(tmp_path / "with.png", cut_out(img, cell)[0])
    without = _png(tmp_path / "without.png", cut_out(img, nucleus)[0])
    _open_and_wait(qtbot, window, [with_cytoplasm, without])
    shown = {}
    for path in (with_cytoplasm, without):
        window.state.set_current(path)
        qtbot.waitUntil(lambda p=path: window.state.prediction is window.state.predictions[p], timeout=10_000)
        shown[path] = window.side.morph.text()
    nc = window.state.predictions[with_cytoplasm].whole.nc_ratio
    assert f"N:C {nc:.2f}" in shown[with_cytoplasm] and NO_CYTOPLASM not in shown[with_cytoplasm]
    assert NO_CYTOPLASM in shown[without] and "N:C 1.00" not in shown[without]
