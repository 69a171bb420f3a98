"""The window against hostile input: clear messages, no freeze, safe CSV export, no class without a nucleus."""
from __future__ import annotations

import csv
import io
import json
import os
import time
import zipfile

import cv2
import numpy as np
import pytest

pytest.importorskip("pytestqt")

from tests.test_gui import images, window  # noqa: F401 - pytest fixtures
from tests.test_hostile_input import png_claiming
from trainer.inference.results import DECISION_NOT_ASSESSABLE


def test_huge_png_gives_a_message_at_once(qtbot, window, tmp_path, boxes):
    f = tmp_path / "bomb.png"
    f.write_bytes(png_claiming(30000, 30000))
    t = time.perf_counter()
    window.files.open_files([str(f)])
    qtbot.waitUntil(lambda: bool(boxes), timeout=10_000)
    assert time.perf_counter() - t < 10
    assert "too large" in boxes[0][2] and "Unexpected" not in boxes[0][2]
    assert str(f) in window.state.errors


def test_manifest_of_the_wrong_type_gives_the_bundle_message(qtbot, window, tiny_bundle, tmp_path, boxes):
    bad = tmp_path / "typed.allmodel"
    with zipfile.ZipFile(tiny_bundle) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "manifest.json":
                m = json.loads(data)
                m["members"] = list(m["members"])
                data = json.dumps(m).encode()
            dst.writestr(info, data)
    before = window.analysis.predictor
    window.models.load_model(str(bad))
    qtbot.waitUntil(lambda: bool(boxes) and boxes[-1][0] == "critical", timeout=20_000)
    text = boxes[-1][2]
    assert "manifest is damaged" in text and "Unexpected error" not in text
    assert window.analysis.predictor is before


def test_blank_image_is_not_assessable_in_the_window(qtbot, window, tmp_path):
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((64, 64, 3), 255, np.uint8))
    window.files.open_files([str(white)])
    qtbot.waitUntil(lambda: str(white) in window.state.predictions, timeout=60_000)
    window.state.set_current(str(white))
    row = window.state.row(str(white))
    assert row.decision == DECISION_NOT_ASSESSABLE and row.probability is None and row.flagged
    assert window.side.decision.text() == DECISION_NOT_ASSESSABLE
    assert "not assessable" in window.statusBar().currentMessage()
    out = tmp_path / "t.csv"
    window.table.batch.export_csv(out)
    (r,) = list(csv.DictReader(open(out)))
    assert r["decision"] == DECISION_NOT_ASSESSABLE and r["probability"] == ""


def test_export_csv_neutralises_formulas_and_escapes_odd_names(tmp_path):
    from allgui.state import AppState
    from allgui.views.batch_table import BatchModel
    st = AppState()
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"))
    paths = [str(tmp_path / "=HYPERLINK(1).png"), str(tmp_path / "@x.png"), odd]
    st.set_images(paths)
    for p in paths:
        st.set_error(p, "Cannot read image: -bad")
    out = tmp_path / "export.csv"
    assert BatchModel(st).export_csv(out) == 3
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [r["file"] for r in rows] == ["'=HYPERLINK(1).png", "'@x.png", "caf\\xe9.png"]
    assert all(not r["error"].startswith(("=", "+", "-", "@")) for r in rows)


def test_a_model_that_fails_to_load_leaves_the_window_saying_so(qtbot, tiny_bundle, tmp_path, boxes):
    # a bundle whose manifest no longer describes its model: refused, and no part of the window pretends
    # that the open image is being analysed
    from conftest import rewrite_bundle
    from PySide6.QtCore import QSettings

    from allgui.window.main_window import MainWindow
    bad = rewrite_bundle(tiny_bundle, tmp_path / "altered.allmodel",
                         change=lambda m: m["models"]["single_cell"].update(threshold=0.01))
    img = tmp_path / "cell.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 90, np.uint8))
    win = MainWindow(model=str(bad), settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat),
                     models_dir=tmp_path / "models")
    qtbot.addWidget(win)
    win.show()
    win.files.open_files([str(img)])
    qtbot.waitUntil(lambda: bool(boxes) and boxes[-1][0] == "critical", timeout=60_000)
    assert "has been altered" in boxes[-1][2] and win.analysis.predictor is None
    qtbot.waitUntil(lambda: win.reviews.bar.model.text() == "model: no model loaded", timeout=10_000)
    assert win.side.where.text() == "No model loaded."  # the side panel agrees
