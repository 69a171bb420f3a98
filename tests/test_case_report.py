"""The case report a pathologist can sign: status, specimen, case-level summary, images not reviewed,
sign-off and addenda, every page footed; text from the case drawn literally; big cases with a clear
limit. Qt-free, on generated images and the tiny model."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.cases import CaseStore, file_sha256
from trainer.cases.records import card_summary, prediction_record, review_record
from trainer.io.synthetic import make_cell_image, make_smear_field

META = {"specimen_id": "S24-0012", "specimen_type": "peripheral blood", "stain": "May-Gruenwald-Giemsa",
        "magnification": "100x oil", "clinical_note": "Fatigue, WBC 38 G/l."}


def _pdf_pages(path) -> list[str]:
    from pypdf import PdfReader
    return [p.extract_text() for p in PdfReader(str(path)).pages]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.fixture
def smear(tmp_path, tiny_predictor, tiny_bundle):
    """8 generated crops and a smear field with their predictions in a case; crops 0-3 reviewed (0 and 2
    blasts, 1 normal, 3 unclassifiable) and one cell of the field (a blast); crops 4-7 not reviewed."""
    rng = np.random.default_rng(3)
    d = tmp_path / "slide"
    d.mkdir()
    paths = []
    for i in range(8):
        img, _ = make_cell_image(64, i % 2 == 0, rng)
        paths.append(str(d / f"cell{i}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    field, _ = make_smear_field(160, 3, rng, malignant=True)
    paths.append(str(d / "field.png"))
    cv2.imwrite(paths[-1], cv2.cvtColor(field, cv2.COLOR_RGB2BGR))
    msha = file_sha256(tiny_bundle)
    store = CaseStore.create(d / "allgui-case.sqlite", name="slide 12")
    store.record_model(msha, "tiny", card_summary(tiny_predictor.model_card))
    decisions = {0: "ALL blast", 1: "normal", 2: "ALL blast", 3: "unclassifiable"}
    for i, p in enumerate(paths):
        pred = tiny_predictor.predict(p)
        sha, t = file_sha256(p), tiny_predictor.thresholds[pred.model]
        store.record_prediction(prediction_record(pred, sha, p, msha, t, 0.05))
        if i in decisions:
            store.add_review(review_record(pred, sha, p, -1, msha, t, 0.05), decisions[i], "Dr Test")
        if pred.kind == "field" and pred.cells:
            store.add_review(review_record(pred, sha, p, 0, msha, t, 0.05), "ALL blast", "Dr Test")
    yield store, paths
    store.close()


def _footers_ok(pages: list[str], specimen: str, status: str) -> None:
    n = len(pages)
    for k, text in enumerate(pages, 1):
        flat = _flat(text)
        assert f"Specimen {specimen}" in flat and status in flat and f"page {k} of {n}" in flat, (k, flat[-300:])


def test_a_preliminary_report_says_so_and_lists_the_images_not_reviewed(smear, tmp_path):
    from trainer.cases.report import write_case_report
    store, paths = smear
    store.set_metadata(META, author="Dr Test")
    counts = write_case_report(store, tmp_path / "r.pdf", per_page=4)
    assert counts["status"] == "Preliminary \u2014 not signed"
    pages = _pdf_pages(tmp_path / "r.pdf")
    first = _flat(pages[0])
    assert "Preliminary \u2014 not signed" in first
    assert "Images not reviewed (5)" in first                     # 4 crops and the field (one cell reviewed)
    for i in (4, 5, 6, 7):
        assert f"cell{i}.png" in first
    assert "field.png (1 cell reviewed)" in first
    for key in ("S24-0012", "peripheral blood", "May-Gruenwald-Giemsa", "100x oil", "Fatigue, WBC 38 G/l."):
        assert key in first
    # 4 crops reviewed + 1 cell of the field: 3 blasts of 4 classified cells, 1 unclassifiable
    assert "Cells reviewed: 5; blasts counted: 3 of 4 classified cells = 75.0 % (1 unclassifiable" in first
    assert "Reviewer's conclusion not entered yet" in first
    _footers_ok(pages, "S24-0012", "Preliminary \u2014 not signed")


def test_a_signed_report_is_final_and_later_changes_are_addenda(smear, tmp_path):
    from trainer.cases.report import write_case_report
    store, paths = smear
    store.set_metadata(META, author="Dr Test")
    so = store.sign("Dr Test", conclusion="Blasts 75 % of reviewed cells; consistent with ALL.")
    write_case_report(store, tmp_path / "signed.pdf", per_page=4)
    pages = _pdf_pages(tmp_path / "signed.pdf")
    first = _flat(pages[0])
    local = dt.datetime.fromisoformat(so.local_at)
    off = local.strftime("%z")
    assert f"Final Signed by Dr Test on {local:%Y-%m-%d %H:%M} (UTC{off[:3]}:{off[3:]})" in first
    assert "Reviewer's conclusion Blasts 75 % of reviewed cells; consistent with ALL." in first
    assert "Addenda" not in first
    _footers_ok(pages, "S24-0012", "Final")

    # after the sign-off: a changed review, a metadata change and a written addendum
    sha = file_sha256(paths[1])
    store.add_review({"image_sha256": sha, "path": paths[1], "cell": -1, "model_sha256": "m" * 64},
                     "ALL blast", "Dr Second", comment="second look")
    store.set_metadata({"stain": "Wright"}, author="Dr Second")
    store.add_addendum("Flow cytometry: CD19+ CD10+ blasts.", author="Dr Test")
    counts = write_case_report(store, tmp_path / "addenda.pdf", per_page=4)
    pages = _pdf_pages(tmp_path / "addenda.pdf")
    first, body = _flat(pages[0]), _flat(" ".join(pages[1:]))
    assert "3 addenda since, listed below" in first and "Addenda: 3 changes recorded after the sign-off" in first
    assert "cell1.png: reviewed as ALL blast; comment: second look" in first
    assert "Stain changed to 'Wright' (was 'May-Gruenwald-Giemsa')" in first
    assert "Flow cytometry: CD19+ CD10+ blasts." in first
    assert "May-Gruenwald-Giemsa" in first.split("Addenda")[0]     # the specimen block is as signed
    assert "blasts counted: 3 of 4 classified cells" in first        # so is the case summary
    assert "after the sign-off: now ALL blast (Dr Second" in body    # the image entry points at the change
    assert counts["status"] == "Final, with addenda"
    _footers_ok(pages, "S24-0012", "Final, with addenda")


HOSTILE = "Dr \x1bX\x07\r\ufeff$\\undefinedcmd$ \u202etxt\x00 \U000e0001"


def test_text_from_a_case_is_drawn_literally_whatever_it_holds(tmp_path):
    from trainer.cases.report import write_case_report
    case = tmp_path / "c.sqlite"
    with CaseStore.create(case, name="case $x^2$ \x1b[31m") as s:
        s.set_metadata({"specimen_id": "S-\ufeff1$\\alpha$", "clinical_note": "note\r\nwith\tcontrols\x85 " * 150},
                       author=HOSTILE)
        for i in range(3):
            s.add_review({"image_sha256": f"{i:064x}", "path": f"/gone/\x1b{i}$\\frac$.png", "cell": -1},
                         "normal", HOSTILE, comment=HOSTILE * 50)
        s.sign(HOSTILE, conclusion=HOSTILE)
        s.add_addendum(HOSTILE, author=HOSTILE)
    write_case_report(case, tmp_path / "r.pdf")
    text = _flat(" ".join(_pdf_pages(tmp_path / "r.pdf")))
    assert "$\\undefinedcmd$" in text and "$x^2$" in text and "S-\\ufeff1$\\alpha$" in text
    assert "\\x1b" in text and "\\x07" in text and "\\u202e" in text and "\\x00" in text
    assert "\x1b" not in text and "\ufeff" not in text


@pytest.mark.parametrize("reviewer", ["$\\undefinedcmd$", "Dr \ufeffBOM", "Dr \x1b[31mESC\x07\r"])
def test_a_reviewer_named_like_mathtext_or_with_control_characters_is_reported(tmp_path, reviewer):
    from trainer.cases.report import write_case_report
    case = tmp_path / "c.sqlite"
    with CaseStore.create(case) as s:
        s.add_review({"image_sha256": "a" * 64, "path": "/gone/a.png", "cell": -1}, "normal", reviewer,
                     comment=f"seen by {reviewer}")
    write_case_report(case, tmp_path / "r.pdf")
    text = _flat(" ".join(_pdf_pages(tmp_path / "r.pdf")))
    assert "$\\undefinedcmd$" in text if "$" in reviewer else ("\\ufeff" in text or "\\x1b" in text)


def test_a_big_case_gets_image_pages_up_to_a_stated_limit(tmp_path):
    from trainer.cases.report import write_case_report
    case = tmp_path / "big.sqlite"
    n = 2000
    with CaseStore.create(case) as s:
        s.record_predictions([{"image_sha256": f"{i:064x}", "path": f"/gone/img{i:05d}.png", "model_sha256": "m" * 64,
                               "model_key": "single_cell", "model_name": "crop model", "kind": "single_cell",
                               "unit": "image", "width": 64, "height": 64, "threshold": 0.5, "band": 0.05,
                               "probability": (i % 10) / 10, "raw_probability": 0.5, "vote_share": 0.5,
                               "decision": "normal", "votes": [], "regions": [], "cells": []} for i in range(n)])
        s.add_review({"image_sha256": f"{1999:064x}", "path": "/gone/img01999.png", "cell": -1}, "normal", "Dr A")
    counts = write_case_report(case, tmp_path / "r.pdf", per_page=6, max_images=12)
    pages = _pdf_pages(tmp_path / "r.pdf")
    assert counts["images"] == n and counts["shown"] == 12 and counts["not_reviewed"] == n - 1
    text = _flat(" ".join(pages))
    assert "The image pages show 12 of the 2000 images (the reviewed ones first)" in text
    assert "\u2026 and 1699 more not listed here (this report lists at most 300" in text
    assert "img01999.png" in _flat(" ".join(pages[-2:]))               # the reviewed one is among those shown
    assert len(pages) == counts["pages"] and f"page {len(pages)} of {len(pages)}" in _flat(pages[-1])


@pytest.mark.parametrize("per_page", [0, 13, 100000])
def test_images_per_page_out_of_range_is_one_clear_message(tmp_path, per_page):
    from trainer.cases.report import write_case_report
    from trainer.util.errors import CaseError
    with CaseStore.create(tmp_path / "c.sqlite"):
        pass
    with pytest.raises(CaseError, match="between 1 and 12"):
        write_case_report(tmp_path / "c.sqlite", tmp_path / "r.pdf", per_page=per_page)
    assert not Path(tmp_path / "r.pdf").exists()
