"""The case file (review database), the case report and reviewed images as training data: Qt-free,
on generated images and the tiny model."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.cases import CaseStore, file_sha256
from trainer.cases.records import card_summary, prediction_record, review_record
from trainer.io.synthetic import make_cell_image, make_smear_field
from trainer.util.errors import CaseError


def _png(path: Path, rgb: np.ndarray) -> str:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


def _record(i: int, path: str = "", cell: int = -1, model_decision: str = "ALL blast") -> dict:
    return {"image_sha256": f"{i:064x}", "path": path or f"/images/img{i}.png", "cell": cell,
            "model_sha256": "m" * 64, "model_name": "crop model", "model_key": "single_cell",
            "threshold": 0.5, "band": 0.05, "probability": 0.9, "raw_probability": 0.8, "vote_share": 1.0,
            "votes": [["svm", 0.9, 1, 0.5], ["knn", 0.8, 1, 0.5]], "model_decision": model_decision}


@pytest.fixture
def case(tmp_path):
    return tmp_path / "case.sqlite"


def test_reviews_undo_redo_and_reopen(case):
    with CaseStore.create(case, name="patient 7") as s:
        a = s.add_review(_record(1), "ALL blast", "Dr A", confirmed=True)
        b = s.add_review(_record(2), "normal", "Dr A", comment="lymphocyte, mature")
        c = s.add_review(_record(1), "unclassifiable", "Dr A", comment="smudge cell")
        assert not a.override and b.override and c.override
        assert s.undo("Dr A").id == c.id                     # image 1 back to Dr A's first decision
        assert s.current_reviews()[(f"{1:064x}", -1)].reviewer_decision == "ALL blast"
        assert s.redo("Dr A").id == c.id
        assert s.undo("Dr A").id == c.id
        d = s.add_review(_record(3), "normal", "Dr B")      # a new decision drops the redo
        assert s.redo() is None
        state = {k: r.reviewer_decision for k, r in s.current_reviews().items()}
        undo_next = s.state.applied[-1].id
    assert undo_next == d.id
    with CaseStore.open(case) as s:                           # reopened: the same state, the full trail
        assert {k: r.reviewer_decision for k, r in s.current_reviews().items()} == state
        assert [r.action for r in s.actions()] == ["review", "review", "review", "undo", "redo", "undo", "review"]
        assert s.state.applied[-1].id == d.id and s.name == "patient 7"
        assert s.current_reviews()[(f"{2:064x}", -1)].comment == "lymphocyte, mature"
        assert s.undo().id == d.id and s.undo().id == b.id    # undo keeps working after a reopen


def test_the_trail_is_append_only(case):
    with CaseStore.create(case) as s:
        s.add_review(_record(1), "normal", "Dr A")
    con = sqlite3.connect(case)
    for sql in ("UPDATE reviews SET reviewer_decision = 'ALL blast'", "DELETE FROM reviews"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()
    with CaseStore.open(case) as s:
        assert len(s.actions()) == 1


def _behind_trigger(case, trigger, sql):
    """Run ``sql`` on ``case`` with its append-only ``trigger`` dropped, then put the trigger back (an
    edit made outside allgui that leaves the structure as it was)."""
    from trainer.cases.schema import SCHEMA, statements

    con = sqlite3.connect(case)
    con.execute(f"DROP TRIGGER {trigger}")
    con.execute(sql)
    con.execute(next(s for s in statements(SCHEMA) if trigger in s))
    con.commit()
    con.close()


def _tamper_row(case):
    _behind_trigger(case, "reviews_append_only_u", "UPDATE reviews SET reviewer_decision = 'ALL blast' WHERE id = 1")


def _drop_last_row(case):
    _behind_trigger(case, "reviews_append_only_d", "DELETE FROM reviews WHERE id = (SELECT max(id) FROM reviews)")


def _blob(case):
    _behind_trigger(case, "reviews_append_only_u", "UPDATE reviews SET comment = X'00ff' WHERE id = 1")


def _renumber(case):      # ids are not in the hashes; undo / redo and sign-offs name rows by them
    _behind_trigger(case, "reviews_append_only_u", "UPDATE reviews SET id = 7 WHERE id = 2")


def _drop_trigger(case):
    con = sqlite3.connect(case)
    con.execute("DROP TRIGGER reviews_append_only_u")
    con.commit()
    con.close()


def _add_column(case):
    con = sqlite3.connect(case)
    con.execute("ALTER TABLE reviews ADD COLUMN note TEXT")
    con.commit()
    con.close()


def _rename(case):
    con = sqlite3.connect(case)
    con.execute("UPDATE meta SET value = 'Someone else patient' WHERE key = 'name'")
    con.commit()
    con.close()


def _newer(case):
    from trainer.cases.schema import SCHEMA_VERSION

    con = sqlite3.connect(case)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()


@pytest.mark.parametrize("tamper, message", [
    (_tamper_row, "entry 1 of 'reviews' was altered outside allgui"),
    (_drop_last_row, "removed or added outside allgui"),
    (_drop_trigger, "structure of this case file was changed outside allgui"),
    (_add_column, "structure of this case file was changed outside allgui"),
    (_newer, "written by a newer version of allgui"),
    (_rename, "case description .* was altered outside allgui"),
    (_blob, "entry 1 of 'reviews' was altered outside allgui"),
    (_renumber, "entry 7 of 'reviews' was altered outside allgui"),
])
def test_tampered_or_newer_case_files_are_refused(case, tamper, message):
    with CaseStore.create(case) as s:
        s.add_review(_record(1), "normal", "Dr A")
        s.add_review(_record(2), "normal", "Dr A")
    tamper(case)
    with pytest.raises(CaseError, match=message):
        CaseStore.open(case)
    with pytest.raises(CaseError, match=message):
        CaseStore.open(case, readonly=True)


def test_foreign_files_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(CaseError, match="not an allgui case file"):
        CaseStore.open(other)
    (tmp_path / "notes.sqlite").write_text("hello")
    with pytest.raises(CaseError, match="not an SQLite database"):
        CaseStore.open(tmp_path / "notes.sqlite")
    with pytest.raises(CaseError, match="not found"):
        CaseStore.open(tmp_path / "missing.sqlite")
    with CaseStore.create(tmp_path / "c.sqlite"):
        pass
    with pytest.raises(CaseError, match="already exists"):
        CaseStore.create(tmp_path / "c.sqlite")
    with pytest.raises(CaseError, match="Unknown review decision"):
        with CaseStore.open(tmp_path / "c.sqlite") as s:
            s.add_review(_record(1), "maybe", "Dr A")


WRITER = textwrap.dedent("""
    import sys
    from trainer.cases import CaseStore
    rec = dict(path="/images/x.png", cell=-1, model_sha256="m" * 64, model_name="crop model",
               model_key="single_cell", threshold=0.5, band=0.05, probability=0.9, raw_probability=0.8,
               vote_share=1.0, votes=[], model_decision="ALL blast")
    store = CaseStore.open(sys.argv[1])
    i = 0
    while True:
        i += 1
        r = store.add_review(dict(rec, image_sha256=f"{i:064x}"), "normal" if i % 2 else "ALL blast", "Dr K",
                             comment="x" * (i % 50))
        if i % 7 == 0:
            store.undo("Dr K")
        print(r.id, flush=True)        # reported only once committed
""")


def test_a_killed_writer_loses_at_most_the_last_action(case, tmp_path):
    with CaseStore.create(case):
        pass
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(case)], stdout=subprocess.PIPE, text=True, env=env)
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)                      # in the middle of the next actions
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    with CaseStore.open(case) as s:                           # opens, verifies, and holds every action
        ids = {r.id for r in s.actions()}
        assert set(committed) <= ids
        assert len(ids) >= len(committed)                     # the action being written may or may not be in
        n = len(s.actions())
        s.add_review(_record(999), "normal", "Dr K")          # and the case goes on
        assert len(s.actions()) == n + 1


CONCURRENT = textwrap.dedent("""
    import sys
    from trainer.cases import CaseStore
    from trainer.util.errors import CaseError
    case, tag, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rec = dict(path="/images/x.png", cell=-1, model_sha256="m" * 64, model_name="crop model",
               model_key="single_cell", threshold=0.5, band=0.05, probability=0.9, raw_probability=0.8,
               vote_share=1.0, votes=[], model_decision="ALL blast")
    for i in range(n):
        try:
            with CaseStore.open(case) as store:     # opened (and verified) anew for every action
                store.add_review(dict(rec, image_sha256=f"{tag:08x}{i:056x}"), "normal", f"Dr {tag}")
        except CaseError as exc:
            print("REFUSED", exc, flush=True)
            sys.exit(3)
""")


def test_two_processes_appending_at_once_never_see_tampering_and_lose_nothing(case, tmp_path):
    """Two writers, each opening the case and adding a review 150 times, side by side."""
    with CaseStore.create(case):
        pass
    script = tmp_path / "concurrent.py"
    script.write_text(CONCURRENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    n = 150
    procs = [subprocess.Popen([sys.executable, str(script), str(case), str(tag), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for tag in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with CaseStore.open(case) as s:
        keys = {r.image_sha256 for r in s.actions()}
    assert len(keys) == 2 * n and len(s.actions()) == 2 * n


def test_a_writer_takes_in_what_another_wrote_before_its_own_action(case):
    a, b = CaseStore.create(case), CaseStore.open(case)
    try:
        r1 = a.add_review(_record(1), "normal", "Dr A")
        r2 = b.add_review(_record(2), "normal", "Dr B")          # b was opened before r1
        assert set(b.current_reviews()) == {r1.key, r2.key} and b.actions()[0].id == r1.id
        assert b.undo("Dr B").id == r2.id and a.undo("Dr A").id == r1.id   # a's undo follows b's
        assert a.current_reviews() == {} and a.redo("Dr A").id == r1.id
        assert b.refresh() and set(b.current_reviews()) == {r1.key}
        state = {k: r.id for k, r in a.current_reviews().items()}
    finally:
        a.close()
        b.close()
    with CaseStore.open(case) as s:
        assert {k: r.id for k, r in s.current_reviews().items()} == state
        assert [r.action for r in s.actions()] == ["review", "review", "undo", "undo", "redo"]


# ---- report and retraining on real predictions of the tiny model ------------------------------
@pytest.fixture
def reviewed_case(tmp_path, tiny_predictor, tiny_bundle):
    """A folder of 7 generated crops and one smear field with a case file beside them: 5 images
    reviewed (2 overrides, 1 unclassifiable), one cell of the field reviewed."""
    rng = np.random.default_rng(11)
    d = tmp_path / "slide 7"
    d.mkdir()
    paths = []
    for i in range(7):
        img, _ = make_cell_image(64, i % 2 == 0, rng)
        paths.append(_png(d / f"cell{i}.png", img))
    field, _ = make_smear_field(160, 3, rng, malignant=True)
    paths.append(_png(d / "field.png", field))
    msha = file_sha256(tiny_bundle)
    store = CaseStore.create(d / "allgui-case.sqlite", name="slide 7")
    store.record_model(msha, "tiny", card_summary(tiny_predictor.model_card))
    decisions = {0: "ALL blast", 1: "normal", 2: "normal", 3: "unclassifiable", 4: "ALL blast"}
    for i, p in enumerate(paths):
        pred = tiny_predictor.predict(p)
        sha, t = file_sha256(p), tiny_predictor.thresholds[pred.model]
        store.record_prediction(prediction_record(pred, sha, p, msha, t, 0.05))
        if i in decisions:
            store.add_review(review_record(pred, sha, p, -1, msha, t, 0.05), decisions[i], "Dr Test",
                             comment=f"image {i}")
        if pred.kind == "field":
            store.add_review(review_record(pred, sha, p, 1, msha, t, 0.05), "ALL blast", "Dr Test")
    store.close()
    return d / "allgui-case.sqlite", paths, decisions


def _pdf_text(path) -> tuple[int, str]:
    from pypdf import PdfReader
    reader = PdfReader(str(path))
    return len(reader.pages), [p.extract_text() for p in reader.pages]


@pytest.mark.parametrize("per_page", [3, 8])
def test_report_has_a_summary_page_then_one_page_per_n_images(reviewed_case, tmp_path, per_page, capsys):
    from trainer.cli.main import main
    case, paths, decisions = reviewed_case
    out = tmp_path / "case.pdf"
    assert main(["report", str(case), "-o", str(out), "--per-page", str(per_page), "-q"]) == 0
    assert "Case report written" in capsys.readouterr().out
    n_pages, pages = _pdf_text(out)
    assert n_pages == 1 + math.ceil(len(paths) / per_page)
    first = pages[0]
    assert "Research use only" in first and "slide 7" in first and "Dr Test" in first
    assert "Counts" in first and "reviewed" in first
    # each model's headline in the model card's words: cross-validation first, subject counts beside each figure
    flat = " ".join(first.split())
    assert flat.index("Cross-validation (") < flat.index("Test split, one split (") and "ALL subjects" in flat
    body = "\n".join(pages[1:])
    for p in paths:
        assert Path(p).name in body
    assert "not reviewed" in body and "calibrated P(ALL)" in body and "votes:" in body
    assert "comment: image 1" in body and "reviewed cells: #2 ALL blast" in body
    assert all("Research use only" in page for page in pages)


def test_report_says_when_an_image_changed_or_is_gone(reviewed_case, tmp_path):
    from trainer.cases.report import write_case_report
    case, paths, _ = reviewed_case
    os.remove(paths[5])
    img, _ = make_cell_image(64, True, np.random.default_rng(99))
    _png(Path(paths[6]), img)
    counts = write_case_report(case, tmp_path / "r.pdf", per_page=4)
    assert counts["missing"] == 1 and counts["changed"] == 1
    assert counts["reviewed"] == 5 and counts["confirmed"] + counts["overrides"] + counts["resolved"] == 5
    text = "\n".join(_pdf_text(tmp_path / "r.pdf")[1])
    assert "image file not found" in text and "FILE CHANGED" in text


def test_reviewed_images_become_training_samples(reviewed_case):
    from trainer.cases.corrections import case_dataset
    case, paths, decisions = reviewed_case
    img, _ = make_cell_image(64, False, np.random.default_rng(5))
    _png(Path(paths[4]), img)                                  # changed after its review: skipped
    ds, info = case_dataset([case])
    used = {s.path.name: s.label for s in ds.samples}
    assert used == {"cell0.png": 1, "cell1.png": 0, "cell2.png": 0}   # unclassifiable and changed left out
    assert {s.group for s in ds.samples} == {f"case:{info[0]['case_id'][:12]}"}
    assert info[0]["n_reviewed"] == 5 and info[0]["n_unclassifiable"] == 1 and info[0]["n_skipped"] == 1
    assert any("changed since it was reviewed" in why for _, why in ds.skipped)


def test_retraining_with_reviewed_corrections_changes_the_model(reviewed_case, tiny_config, tiny_predictor,
                                                                tmp_path, capsys):
    """The tiny model retrained with the case added (same data, settings and feature cache)."""
    from trainer.cli.main import main
    from trainer.inference.bundle import read_manifest
    from trainer.inference.predictor import Predictor
    case, paths, decisions = reviewed_case
    out = tmp_path / "corrected.allmodel"
    code = main(["train", tiny_config.data, "--add-case", str(case), "--image-size", str(tiny_config.image_size),
                 "--batch-size", str(tiny_config.batch_size), "--workers", "0", "--cv-repeats", "1", "--cv-folds", "3",
                 "--cache-dir",
                 tiny_config.cache_dir, "-q", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    card = read_manifest(out)["card"]
    reviewed = card["trained_on"]["reviewed"]
    assert reviewed["n_images"] == 4                            # 5 reviewed, one unclassifiable
    assert reviewed["by_label"] == {"normal": 2, "ALL": 2}
    assert reviewed["n_train"] + reviewed["n_validation"] + reviewed["n_test"] == 4
    assert reviewed["cases"][0]["name"] == "slide 7"
    assert card["trained_on"]["n_images"] == 24 + 4
    new = Predictor.from_bundle(out)
    before = [tiny_predictor.predict(p).probability for p in paths]
    after = [new.predict(p).probability for p in paths]
    assert not np.allclose(before, after)
    # a case file that cannot be read stops the run before any work
    (tmp_path / "bad.sqlite").write_text("no")
    assert main(["train", tiny_config.data, "--add-case", str(tmp_path / "bad.sqlite"), "-q",
                 "-o", str(tmp_path / "x.allmodel")]) == 2
    assert "not an allgui case file" in capsys.readouterr().err
    assert not (tmp_path / "x.allmodel").exists()


def test_report_subcommand_has_help(capsys):
    from trainer.cli.main import main
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0 and "usage: allgui-train report" in capsys.readouterr().out

