"""Quality flags of single-cell crops: two cells in one crop, touching cells and a cell cut by the edge get
no class without review, in the prediction, the CSV and the window."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from trainer.inference.results import DECISION_UNCERTAIN
from trainer.io.synthetic import make_cell_image
from trainer.vision.crop_flags import QUALITY_EDGE, QUALITY_SEVERAL, QUALITY_TOUCHING
from trainer.vision.crop_quality import crop_quality_flags


def _cell(seed: int, malignant: bool = True) -> np.ndarray:
    return make_cell_image(64, malignant, np.random.default_rng(seed))[0]


def _paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> np.ndarray:
    h, w = img.shape[:2]
    canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], img)
    return canvas


def two_cells(seed: int) -> np.ndarray:
    """Two cells apart on one black crop (160 x 96)."""
    canvas = np.zeros((96, 160, 3), np.uint8)
    return _paste(_paste(canvas, _cell(seed), 8, 16), _cell(seed + 100, False), 88, 16)


def touching_cells(seed: int) -> np.ndarray:
    """Two cells overlapping a little, as two touching cells cut out together (128 x 96)."""
    canvas = np.zeros((96, 128, 3), np.uint8)
    return _paste(_paste(canvas, _cell(seed), 10, 16), _cell(seed + 100, False), 52, 16)


def cut_cell(seed: int) -> np.ndarray:
    """A cell whose left edge lies beyond the crop's edge (96 x 96; the rest of the border black, so that it
    is still taken for a single-cell crop)."""
    out = np.zeros((96, 96, 3), np.uint8)
    out[16:80, :52] = _cell(seed)[:, 12:]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_each_failure_is_flagged_and_a_clean_crop_is_not(seed):
    assert crop_quality_flags(make_cell_image(96, seed % 2 == 0, np.random.default_rng(seed))[0]) == []
    assert QUALITY_SEVERAL in crop_quality_flags(two_cells(seed))
    assert crop_quality_flags(touching_cells(seed)) == [QUALITY_TOUCHING]
    assert crop_quality_flags(cut_cell(seed)) == [QUALITY_EDGE]


def test_an_oval_cell_and_a_speck_of_debris_are_not_flagged():
    canvas = np.zeros((96, 128, 3), np.uint8)
    cv2.ellipse(canvas, (64, 48), (44, 26), 15, 0, 360, (150, 120, 190), -1)   # one long cell
    cv2.circle(canvas, (10, 10), 3, (150, 120, 190), -1)                       # a speck
    assert crop_quality_flags(canvas) == []


def test_a_flagged_crop_gets_no_class_in_the_prediction_and_the_csv(tiny_bundle, tiny_predictor, tmp_path):
    from trainer.cli.main import main
    paths = []
    for name, img in (("two.png", two_cells(1)), ("touching.png", touching_cells(2)), ("cut.png", cut_cell(3)),
                      ("clean.png", make_cell_image(96, True, np.random.default_rng(4))[0])):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(tmp_path / name)
    for p in paths[:3]:
        r = tiny_predictor.predict(str(p))
        assert r.kind == "single_cell" and r.whole.quality_flags
        # whatever the probability and wherever the threshold: review, never a class
        assert {r.decision(t, 0.0) for t in (0.0, 0.5, 1.0)} == {DECISION_UNCERTAIN}
        assert any(n.startswith("Check this crop:") and "no class without review" in n for n in r.notes)
    clean = tiny_predictor.predict(str(paths[3]))
    assert clean.whole.quality_flags == [] and not any(n.startswith("Check this crop") for n in clean.notes)
    out = tmp_path / "p.csv"
    main(["predict", *map(str, paths), "-m", str(tiny_bundle), "-o", str(out), "-q"])
    with open(out, newline="") as fh:
        rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(fh)}
    assert rows["two.png"]["quality_flags"].startswith(QUALITY_SEVERAL)
    assert rows["touching.png"]["quality_flags"] == QUALITY_TOUCHING
    assert rows["cut.png"]["quality_flags"] == QUALITY_EDGE and rows["cut.png"]["decision"] == DECISION_UNCERTAIN
    assert rows["clean.png"]["quality_flags"] == ""


def test_the_window_flags_the_crop_in_the_table_and_the_side_panel(qtbot, tiny_bundle, tmp_path, boxes):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings, Qt
    from test_review_gui import _window

    from allgui.views.batch_table import FLAGGED_COLUMN
    d = tmp_path / "slide"
    d.mkdir()
    for name, img in (("a_two.png", two_cells(5)), ("b_clean.png", make_cell_image(96, False,
                                                                                    np.random.default_rng(6))[0])):
        cv2.imwrite(str(d / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    model = tmp_path / "current.allmodel"
    model.write_bytes(tiny_bundle.read_bytes())
    win = _window(qtbot, model, QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat), tmp_path)
    assert win.files.open_folder(str(d))
    qtbot.waitUntil(lambda: not win.state.pending(), timeout=60_000)
    batch = win.table.batch
    rows = {batch.row_at(i).file: i for i in range(batch.rowCount())}
    two, clean = rows["a_two.png"], rows["b_clean.png"]
    assert batch.index(two, FLAGGED_COLUMN).data() == "crop"
    assert "more than one cell" in batch.index(two, FLAGGED_COLUMN).data(Qt.ToolTipRole)
    assert batch.index(two, 4).data() == DECISION_UNCERTAIN
    assert batch.index(clean, FLAGGED_COLUMN).data() != "crop"
    win.state.set_current(str(d / "a_two.png"))
    qtbot.waitUntil(lambda: win.side.decision.text() == DECISION_UNCERTAIN, timeout=10_000)
    assert "Check this crop: the crop holds more than one cell" in win.side.caution.text()
    win.close()


@pytest.mark.parametrize("colour,shape", [((60, 60, 200), (450, 450)), ((80, 30, 120), (90, 120)),
                                          ((128, 0, 128), (64, 64))])
def test_a_flat_colour_gets_no_class_even_from_a_model_without_the_domain_check(tiny_predictor, tmp_path, colour,
                                                                                shape):
    from trainer.inference.results import DECISION_NOT_ASSESSABLE
    img = np.zeros((*shape, 3), np.uint8)
    img[:] = colour
    rng = np.random.default_rng(0)
    noisy = np.clip(img.astype(int) + rng.integers(-2, 3, img.shape), 0, 255).astype(np.uint8)  # JPEG-like noise
    for i, im in enumerate((img, noisy)):
        path = tmp_path / f"flat{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        r = tiny_predictor.predict(str(path))
        assert not tiny_predictor.has_domain_check(r.model)
        assert r.decision(0.5, 0.05) == DECISION_NOT_ASSESSABLE and not r.cells
