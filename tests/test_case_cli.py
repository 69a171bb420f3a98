"""Batch pre-classification into a case and its sign-off from the command line:
``predict DIR --case``, ``report``, ``sign``; the app's review model opens the case as its own."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.cases import CaseStore, file_sha256
from trainer.cli.main import main
from trainer.io.synthetic import make_cell_image, make_smear_field


def _pages(path) -> list[str]:
    from pypdf import PdfReader
    return [re.sub(r"\s+", " ", p.extract_text()) for p in PdfReader(str(path)).pages]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(8)
    d = tmp_path / "overnight"
    d.mkdir()
    for i in range(4):
        img, _ = make_cell_image(64, i % 2 == 0, rng)
        cv2.imwrite(str(d / f"cell{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    field, _ = make_smear_field(160, 3, rng, malignant=True)
    cv2.imwrite(str(d / "field.png"), cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    return d


def test_predict_into_a_case_then_a_report_that_can_be_signed(folder, tmp_path, tiny_bundle, tiny_predictor, capsys):
    case = folder / "allgui-case.sqlite"
    assert main(["predict", str(folder), "-m", str(tiny_bundle), "-o", str(tmp_path / "p.csv"), "--case", str(case),
                 "-q"]) == 0
    assert "5 result(s) recorded in the case file" in capsys.readouterr().err
    with CaseStore.open(case, readonly=True) as s:
        preds = s.latest_predictions()
        assert [m["sha256"] for m in s.models()] == [file_sha256(tiny_bundle)]
        assert sorted(Path(p.path).name for p in preds.values()) == ["cell0.png", "cell1.png", "cell2.png",
                                                                      "cell3.png", "field.png"]
        for p in preds.values():
            assert p.image_sha256 == file_sha256(p.path) and s.resolve(p.path, p.rel_path) == Path(p.path)
            assert p.threshold == pytest.approx(tiny_predictor.thresholds[p.model_key])
        assert s.status == "preliminary" and s.actions() == []

    assert main(["report", str(case), "-o", str(tmp_path / "pre.pdf"), "-q"]) == 0
    first = _pages(tmp_path / "pre.pdf")[0]
    assert "Preliminary \u2014 not signed" in first and "Images not reviewed (5)" in first
    assert all(f"cell{i}.png" in first for i in range(4)) and "field.png" in first

    # refused with nothing written: no specimen id yet
    assert main(["sign", str(case), "--name", "Dr A", "--conclusion", "No blasts seen."]) == 2
    assert "specimen id" in capsys.readouterr().err
    with CaseStore.open(case, readonly=True) as s:
        assert s.events() == []
    assert main(["sign", str(case), "--name", "Dr A", "--specimen-id", "S24-0099", "--stain", "MGG",
                 "--conclusion", "No blasts seen."]) == 0
    assert "signed by Dr A" in capsys.readouterr().out
    with CaseStore.open(case, readonly=True) as s:
        local = dt.datetime.fromisoformat(s.signoff.local_at)
    assert main(["report", str(case), "-o", str(tmp_path / "final.pdf"), "-q"]) == 0
    pages = _pages(tmp_path / "final.pdf")
    off = local.strftime("%z")
    assert f"Final Signed by Dr A on {local:%Y-%m-%d %H:%M} (UTC{off[:3]}:{off[3:]})" in pages[0]
    assert all("Specimen S24-0099" in p and f"page {k} of {len(pages)}" in p for k, p in enumerate(pages, 1))

    assert main(["sign", str(case), "--name", "Dr B", "--conclusion", "again"]) == 2
    assert "already signed by Dr A" in capsys.readouterr().err
    assert main(["sign", str(case), "--name", "Dr B", "--addendum", "Marrow recommended."]) == 0
    # analysed again after the sign-off (another run): recorded, and reported as an addendum
    assert main(["predict", str(folder / "cell0.png"), "-m", str(tiny_bundle), "-o", str(tmp_path / "q.csv"),
                 "--case", str(case), "-q"]) == 0
    assert main(["report", str(case), "-o", str(tmp_path / "addenda.pdf"), "-q"]) == 0
    first = _pages(tmp_path / "addenda.pdf")[0]
    assert "Addenda: 2 changes recorded after the sign-off" in first and "Marrow recommended." in first
    assert "1 model result(s) recorded after the sign-off, not part of the signed report: cell0.png" in first


def test_the_app_opens_a_batch_case_for_review_without_recording_it_again(folder, tmp_path, tiny_bundle,
                                                                          tiny_predictor):
    from allgui.review.review_model import ReviewModel
    from allgui.state import AppState
    case = folder / "allgui-case.sqlite"
    assert main(["predict", str(folder), "-m", str(tiny_bundle), "-o", str(tmp_path / "p.csv"), "--case", str(case),
                 "-q"]) == 0
    with CaseStore.open(case, readonly=True) as s:
        paths = sorted(str(s.resolve(p, rel)) for p, rel in s.image_paths().values())
    state = AppState()
    state.set_images(paths)
    for p in paths:                                   # the app analyses the case's images with the same model
        state.set_prediction(p, tiny_predictor.predict(p))
    review = ReviewModel(state)
    review.reviewer = "Dr A"
    assert review.follow_images() == case             # the folder's case file is opened with its images
    review.set_model(file_sha256(tiny_bundle), "tiny", {})
    with CaseStore.open(case, readonly=True) as s:
        assert len(s.predictions()) == len(paths)     # nothing recorded twice


def test_a_case_that_cannot_be_used_stops_predict_before_any_work(folder, tmp_path, tiny_bundle, capsys):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("not a case")
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), "-m", str(tiny_bundle), "-o", str(out), "--case", str(bad), "-q"]) == 2
    assert "not an allgui case file" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(folder), "-m", str(tiny_bundle), "-o", str(out), "--case",
                 str(tmp_path / "case.txt"), "-q"]) == 2
    assert ".sqlite extension" in capsys.readouterr().err and not (tmp_path / "case.txt").exists()
