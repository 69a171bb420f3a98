"""The window and images unlike the model's training: "outside training" wherever a decision appears, each
model's own fitted band and what it rests on, the review queue, and a field cell's score shown as what it is."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt

from allgui.imaging import OUTSIDE
from allgui.model.session import band_summary
from allgui.state import AppState
from allgui.views.batch_table import DOMAIN_COLUMN, BatchTable
from allgui.views.result_text import GREY, NO_DOMAIN_CHECK
from allgui.window.main_window import MainWindow, status_text
from trainer.inference.bundle import load_bundle
from trainer.inference.predictor import Predictor
from trainer.inference.results import (
    DECISION_ALL,
    DECISION_NORMAL,
    DECISION_OUTSIDE,
    DECISION_UNCERTAIN,
    CellPrediction,
    ImagePrediction,
)
from trainer.io.synthetic import make_cell_image, make_smear_field


def _png(path: Path, rgb: np.ndarray) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def _stained(crop: np.ndarray) -> np.ndarray:
    """The crop with its purple stain turned green (as another lab's staining might look)."""
    hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 60) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@pytest.fixture(scope="module")
def exact_predictor(tiny_domain_bundle):
    """The tiny model rebuilt with scikit-learn: its numpy read-out does not run the domain check."""
    return Predictor.from_bundle(tiny_domain_bundle)


@pytest.fixture
def images(tmp_path):
    """Crops like the training crops, a stain-shifted crop, a tiny cell and a smear field (crop-only model)."""
    d = tmp_path / "imgs"
    d.mkdir()
    out = {f"own{i}": _png(d / f"own{i}.png", make_cell_image(64, bool(i % 2), np.random.default_rng(i))[0])
           for i in range(3)}
    crop, _ = make_cell_image(64, True, np.random.default_rng(5))
    tiny = np.zeros((64, 64, 3), np.uint8)
    tiny[24:40, 24:40] = cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA)
    out["stained"] = _png(d / "stained.png", _stained(crop))
    out["tiny"] = _png(d / "tiny.png", tiny)
    out["field"] = _png(d / "field.png", make_smear_field(224, 3, np.random.default_rng(6))[0])
    return out


def _window(qtbot, tmp_path, predictor, path) -> MainWindow:
    win = MainWindow(model="", settings=QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat),
                     models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.modelLoaded, timeout=10_000):
        win.models.set_predictor(predictor, str(path))
    return win


def _open(qtbot, win, paths):
    win.files.open_files(paths)
    qtbot.waitUntil(lambda: all(p in win.state.predictions or p in win.state.errors for p in paths),
                    timeout=120_000)


def _row(win, path):
    b = win.table.batch
    i = next(i for i in range(b.rowCount()) if b.row_at(i).path == path)
    return b.row_at(i), [b.index(i, c).data() for c in range(b.columnCount())]


def test_an_image_outside_training_says_so_in_every_view(qtbot, tmp_path, exact_predictor, tiny_domain_bundle, images):
    win = _window(qtbot, tmp_path, exact_predictor, tiny_domain_bundle)
    paths = list(images.values())
    _open(qtbot, win, paths)
    st = win.state
    far = [images[k] for k in ("stained", "tiny", "field")]
    assert all(st.predictions[p].in_domain is False for p in far)
    inside = [p for p in paths if st.predictions[p].in_domain is True]
    assert inside                              # some crops like the training crops are judged as usual

    # side panel: the word, the checks that fired in words, the probability greyed and "not meaningful"
    st.set_current(images["stained"])
    side = win.side
    assert side.decision.text() == DECISION_OUTSIDE
    assert "stain or colour unlike the training images" in side.domain.text()
    assert GREY in side.calibrated.text() and "not meaningful outside training" in side.calibrated.text()
    assert f"threshold {st.threshold:.3f}" in side.calibrated.text()
    assert "outside training" in status_text(st)
    assert {b.color().getRgb()[:3] for b in side.chart.bars.opts["brushes"]} == {(128, 128, 128)}  # votes greyed
    # the outline: dotted grey, and its tooltip says why
    item, = win.image_view.cell_items
    assert item.pen().style() == Qt.DotLine and item.pen().color().getRgb()[:3] == OUTSIDE
    assert "outside training" in item.toolTip() and "not meaningful" in item.toolTip()
    # nothing to confirm where the model gives no class
    assert not win.reviews.bar.confirm_btn.isEnabled()
    # a crop like the training crops: its decision and P(ALL) with the threshold beside it
    st.set_current(inside[0])
    assert side.decision.text() in (DECISION_ALL, DECISION_NORMAL, DECISION_UNCERTAIN)
    assert "like its training images" in side.domain.text()
    assert f"threshold {st.threshold:.3f}" in side.calibrated.text() and GREY not in side.calibrated.text()
    assert win.image_view.cell_items[0].pen().style() != Qt.DotLine

    # the batch table: decision, domain with the novelty, flagged
    row, shown = _row(win, images["stained"])
    assert shown[4] == DECISION_OUTSIDE and shown[6] == "yes"
    b = win.table.batch
    p_all = b.index(next(i for i in range(b.rowCount()) if b.row_at(i).path == images["stained"]), 3)
    assert p_all.data(Qt.ForegroundRole).color().getRgb()[:3] == (150, 150, 150)   # greyed
    assert "Not meaningful outside training" in p_all.data(Qt.ToolTipRole)
    assert shown[DOMAIN_COLUMN] == f"out {row.novelty:.2f}" and row.novelty > 1
    row, shown = _row(win, images["field"])            # every white cell of the field: outside training
    assert shown[4] == DECISION_OUTSIDE and row.n_outside == len(st.predictions[images["field"]].cells)
    assert _row(win, inside[0])[1][DOMAIN_COLUMN].startswith("in ")

    # the filter "Outside training" shows them, and only them
    bar = win.reviews.bar
    bar.filter.setCurrentIndex(bar.filter.findData("outside"))
    assert sorted(win.table.visible_paths()) == sorted(p for p in paths if p not in inside)
    bar.filter.setCurrentIndex(bar.filter.findData("all"))

    # the review queue: outside training first; Next (J) walks down it
    order = win.table.visible_paths()
    assert set(order[:len(paths) - len(inside)]) == set(paths) - set(inside)
    st.set_current(order[0])
    win.activateWindow()
    win.image_view.setFocus()
    qtbot.keyClick(win.image_view, Qt.Key_J)
    assert st.current == order[1]


def _pred(p: float, kind: str = "single_cell", novelty: float | None = 0.5, checks=(), model="single_cell"):
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    whole = CellPrediction(index=-1, bbox=(0, 0, 32, 32), contour=np.zeros((0, 2), np.int32), probability=p,
                           raw_probability=p, novelty=novelty, domain_checks=list(checks))
    return ImagePrediction(path=None, shape=(32, 32), kind=kind, nucleus_mask=mask, whole=whole, model=model)


def test_each_image_is_decided_with_the_band_of_its_own_model():
    st = AppState()
    st.set_models({"single_cell": 0.5, "field": 0.6}, bands={"single_cell": 0.1, "field": 0.02})
    st.set_images(["crop.png", "field.png"])
    st.set_prediction("crop.png", _pred(0.56))
    st.set_prediction("field.png", _pred(0.64, kind="field", model="field"))
    crop, field = st.rows()
    assert (crop.decision, crop.band) == (DECISION_UNCERTAIN, 0.1)   # inside the crop model's ±0.1
    assert (field.decision, field.band) == (DECISION_ALL, 0.02)      # outside the field model's ±0.02
    st.set_current("field.png")                      # the band control shows the current image's model
    st.set_band(0.05)
    assert st.bands == {"single_cell": 0.1, "field": 0.05} and st.rows()[1].decision == DECISION_UNCERTAIN


def test_the_review_queue_orders_the_table_and_a_column_sort_can_be_undone(qtbot):
    st = AppState()
    st.set_models({"single_cell": 0.5}, bands={"single_cell": 0.1})
    preds = {"far.png": _pred(0.95), "near.png": _pred(0.68), "uncertain-edge.png": _pred(0.59),
             "uncertain-mid.png": _pred(0.52), "outside.png": _pred(0.99, novelty=3.0, checks=["stain"]),
             "outside-less.png": _pred(0.10, novelty=1.4, checks=["scale"])}
    table = BatchTable(st)
    qtbot.addWidget(table)
    st.set_images([*preds, "pending.png"])
    for path, pred in preds.items():
        st.set_prediction(path, pred)
    queue = ["outside.png", "outside-less.png", "uncertain-mid.png", "uncertain-edge.png", "near.png", "far.png",
             "pending.png"]
    assert [Path(p).name for p in table.visible_paths()] == queue
    table.sortByColumn(1, Qt.AscendingOrder)        # by file name
    assert table.visible_paths() == sorted(table.visible_paths())
    table.review_order()
    assert table.visible_paths() == queue
    st.set_threshold(0.9)                           # the queue follows the threshold: 0.95 is now the closest
    assert table.visible_paths()[2] == "far.png"


def test_the_band_says_what_it_rests_on(qtbot, tmp_path, exact_predictor, tiny_domain_bundle):
    win = _window(qtbot, tmp_path, exact_predictor, tiny_domain_bundle)
    key = win.analysis.session.keys[0]
    report = exact_predictor.model_card["models"][key]["method"]["uncertain_band"]
    groups = report["risk_coverage"]["n_groups"]
    text = win.side.band_text.text()
    assert f"Uncertain band \u00b1{report['band']:.3f} (the crop model's own): " in text
    assert f"{report['n_rows']} images of the cross-fit pool" in text
    assert f"{groups['0']} normal and {groups['1']} ALL subjects" in text
    # a band that reached its target: what it decides, its two sides and Youden's threshold, in words
    reached = dict(report, reached=True, coverage=0.78, accuracy_decided=0.96, band=0.2, below=0.3, above=0.1,
                   youden_threshold=0.6)
    words = band_summary("crop model", reached, 0.2)
    assert ("Uncertain band \u00b10.200 (the crop model's own): decides 78% of images of held-out subjects, "
            "right in 96% of them (target 95%;") in words
    assert "uncertain from 0.300 to 0.700" in words and "Youden's J threshold: 0.600" in words
    assert win.state.band == pytest.approx(report["band"]) == win.analysis.session.band(key)
    win.state.set_band(report["band"] + 0.1)        # the user's own band: its accuracy is not known
    assert "that band's accuracy is not known" in win.side.band_text.text()
    win.side.reset.click()
    assert win.state.band == pytest.approx(report["band"])
    # a band that did not reach its target says so plainly
    missed = dict(report, reached=False, coverage=0.0, accuracy_decided=None, band=0.4)
    assert "no band reached the target of 95%" in band_summary("crop model", missed, 0.4)
    assert "decides none of them" in band_summary("crop model", missed, 0.4)


def test_a_model_saved_before_the_check_says_it_cannot_tell(qtbot, tmp_path, tiny_bundle, images):
    old = tiny_bundle     # the tiny model as saved before the check and the fitted band
    win = _window(qtbot, tmp_path, Predictor.from_bundle(old), old)
    assert "a fixed band" in win.side.band_text.text() and "retrain it" in win.side.band_text.text()
    _open(qtbot, win, [images["stained"]])
    assert win.side.domain.text().endswith(f"{NO_DOMAIN_CHECK}</span>")
    assert win.side.decision.text() != DECISION_OUTSIDE
    assert _row(win, images["stained"])[1][DOMAIN_COLUMN] == "\u2014"


def test_a_field_cell_score_is_small_grey_and_the_field_decision_stays_the_headline(qtbot, tmp_path, tiny_domain_bundle,
                                                                                    images):
    from conftest import as_single_model
    b = as_single_model(load_bundle(tiny_domain_bundle))     # one model for every kind, trained on fields
    b.card["trained_on"]["image_kinds"] = {"single_cell": 0.0, "field": 1.0, "n_checked": 24}
    win = _window(qtbot, tmp_path, Predictor(b), tiny_domain_bundle)
    _open(qtbot, win, [images["field"]])
    st, side = win.state, win.side
    pred = st.prediction
    assert pred.kind == "field" and not pred.field_by_cells and len(pred.cells) >= 2
    headline = side.decision.text()
    font = side.decision.font().pointSize()
    assert headline == st.decision(pred) and side.result_form.isRowVisible(side.cell_score) is False
    st.select_cell(1)
    assert side.decision.text() == headline and side.decision.font().pointSize() == font
    assert side.result_form.isRowVisible(side.cell_score)
    assert side.cell_score.text() == (f"<small style='color:{GREY}'>cell score {pred.cells[1].probability:.3f}, "
                                      "not validated</small>")
    assert "cell score" in win.reviews.bar.model.text() and "<b" not in win.reviews.bar.model.text()  # review bar
