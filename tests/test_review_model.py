"""The review model, free of Qt: decisions, undo, filters, the case file beside the images, and a
killed process in the middle of a review."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from allgui.review.review_model import ReviewModel, ReviewRefused
from allgui.state import AppState
from trainer.cases import DEFAULT_CASE_NAME, CaseStore, file_sha256
from trainer.inference.results import CellPrediction, ClassifierVote, ImagePrediction
from trainer.util.errors import CaseError


def fake_prediction(path: str, p: float, cells: tuple[float, ...] = ()) -> ImagePrediction:
    """A prediction as the predictor makes it: a crop, or a field decided by its cells."""
    def cell(i, q):
        return CellPrediction(index=i, bbox=(10 * i, 0, 8, 8), contour=np.array([[1, 1], [8, 1], [8, 8]], np.int32),
                              votes=[ClassifierVote("svm", q, int(q >= 0.5), 1.0)], vote_share=float(q >= 0.5),
                              raw_probability=q, probability=q)
    mask = np.zeros((32, 64), bool)
    mask[2:6, 2:6] = True
    kind = "field" if cells else "single_cell"
    return ImagePrediction(path=path, shape=(32, 64), kind=kind, nucleus_mask=mask, whole=cell(-1, p),
                           cells=[cell(i, q) for i, q in enumerate(cells)], model="single_cell")


def setup(folder: Path, probs=(0.9, 0.1, 0.52, 0.8)) -> tuple[AppState, ReviewModel, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(probs):
        f = folder / f"img{i}.png"
        f.write_bytes(f"image {i}".encode())     # the review model only hashes the bytes
        paths.append(str(f))
    state = AppState(threshold=0.5, band=0.05)
    state.set_images(paths)
    for f, p in zip(paths, probs):
        state.set_prediction(f, fake_prediction(f, p))
    review = ReviewModel(state)
    review.reviewer = "Dr Q"
    review.set_model("b" * 64, "crop model", {"name": "tiny"})
    return state, review, paths


def test_review_model_is_qt_free():
    import allgui.review.review_model as rv
    src = open(rv.__file__).read()
    assert "PySide6" not in src and "pyqtgraph" not in src


def test_decisions_undo_filter_and_reopen(tmp_path):
    state, review, paths = setup(tmp_path / "slide")
    seen = []
    review.subscribe("review", seen.append)
    assert review.store is None                                  # nothing written before a decision
    r0 = review.confirm()                                        # img0: model ALL blast, confirmed
    case = tmp_path / "slide" / DEFAULT_CASE_NAME
    assert case.is_file() and review.case_path == case
    assert r0.reviewer_decision == "ALL blast" and r0.confirmed and not r0.override
    assert seen[-1] == paths[0]
    state.set_current(paths[1])
    r1 = review.decide("ALL blast", comment="blast-like chromatin")   # img1: model normal -> override
    assert r1.override
    state.set_current(paths[2])                                  # img2: p 0.52, inside the band
    with pytest.raises(ReviewRefused, match="uncertain"):
        review.confirm()
    review.decide("unclassifiable")
    assert review.status(paths[1]).text() == "override: ALL blast"
    assert review.status(paths[0]).text() == "confirmed ALL blast"
    assert review.status(paths[2]).text() == "unclassifiable"
    assert review.counts() == {"images": 4, "reviewed": 3, "overrides": 1, "unclassifiable": 1}
    # filters
    review.set_filter("unreviewed")
    assert [p for p in paths if review.visible(p)] == [paths[3]]
    review.set_filter("overrides")
    assert [p for p in paths if review.visible(p)] == [paths[1]]
    review.set_filter("attention")                              # flagged or not reviewed
    assert [p for p in paths if review.visible(p)] == [paths[0], paths[2], paths[3]]
    review.set_filter("flagged")
    assert [p for p in paths if review.visible(p)] == [paths[0], paths[2], paths[3]]
    # undo: the latest action first, whichever image it was on
    assert review.undo().image_sha256 == review.hashes[paths[2]]
    assert review.path_of(review.store.state.redoable[-1]) == paths[2]
    assert not review.status(paths[2]).reviewed
    assert review.redo() is not None and review.status(paths[2]).reviewed
    assert review.undo() is not None
    state_before = {p: review.status(p).text() for p in paths}
    review.close_case()
    # reopened later (another session): the same state, found by content, not by name
    state2, review2, _ = setup(tmp_path / "slide")
    assert review2.follow_images() == case
    review2.set_hashes({p: file_sha256(p) for p in paths})   # as the app hashes in the background
    assert {p: review2.status(p).text() for p in paths} == state_before
    assert review2.can_redo and review2.redo().reviewer_decision == "unclassifiable"
    # the model's results were kept with the case, for the report
    assert len(review2.store.latest_predictions()) == 4


def test_cell_decisions_and_errors(tmp_path):
    state, review, paths = setup(tmp_path / "f", probs=(0.9,))
    field = fake_prediction(paths[0], 0.9, cells=(0.9, 0.2, 0.7))
    state.set_prediction(paths[0], field)
    state.select_cell(1)
    r = review.decide("ALL blast")                               # the selected cell, not the field
    assert r.cell == 1 and r.override and r.cell_bbox == "[10,0,8,8]"
    assert review.status(paths[0]).text() == "1 cell (1 overr.)" and not review.status(paths[0]).reviewed
    state.select_cell(-1)
    assert review.confirm().cell == -1
    # an image that could not be analysed can still be marked
    bad = str(tmp_path / "f" / "bad.png")
    Path(bad).write_bytes(b"x")
    state.add_images([bad])
    state.set_error(bad, "Cannot read image")
    assert review.decide("unclassifiable").model_decision == "error"
    review.reviewer = ""
    with pytest.raises(ReviewRefused, match="reviewer's name"):
        review.decide("normal")


def test_a_refused_case_beside_the_images_is_not_replaced(tmp_path):
    state, review, paths = setup(tmp_path / "s")
    case = tmp_path / "s" / DEFAULT_CASE_NAME
    case.write_text("something else")
    with pytest.raises(CaseError, match="not an allgui case file"):
        review.follow_images()
    with pytest.raises(CaseError):
        review.decide("normal")
    assert case.read_text() == "something else"
    review.new_case(tmp_path / "elsewhere.sqlite")               # the user chooses another file
    assert review.decide("normal").reviewer == "Dr Q"


def test_case_follows_the_open_folder_unless_chosen(tmp_path):
    state, review, paths = setup(tmp_path / "a")
    review.decide("normal")
    assert review.case_path == tmp_path / "a" / DEFAULT_CASE_NAME
    state2_paths = []
    (tmp_path / "b").mkdir()
    for i in range(2):
        f = tmp_path / "b" / f"x{i}.png"
        f.write_bytes(b"other %d" % i)
        state2_paths.append(str(f))
    state.set_images(state2_paths)
    assert review.follow_images() is None and review.store is None   # folder b has no case yet
    state.set_images(paths)
    assert review.follow_images() == tmp_path / "a" / DEFAULT_CASE_NAME
    review.new_case(tmp_path / "chosen.sqlite")
    state.set_images(state2_paths)
    assert review.follow_images() is None and review.case_path == tmp_path / "chosen.sqlite"
    review.case_redirects[(tmp_path / "b").resolve()] = tmp_path / "kept" / "b.sqlite"
    assert review.default_case_path() == tmp_path / "kept" / "b.sqlite"


KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_review_model import setup
    state, review, paths = setup(Path(sys.argv[1]))
    i = 0
    while True:
        i += 1
        state.set_current(paths[i % len(paths)])
        if i % 5 == 0:
            r = review.undo()
        else:
            r = review.decide(("ALL blast", "normal", "unclassifiable")[i % 3], comment=f"action {i}")
        print(review.store.actions()[-1].id, flush=True)     # once committed
""")


def test_a_killed_app_loses_at_most_the_action_in_flight(tmp_path):
    script = tmp_path / "review_loop.py"
    script.write_text(KILLED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "slide"), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True, env=env)
    committed = []
    try:
        for line in proc.stdout:
            committed.append(int(line))
            if len(committed) >= 30:
                os.kill(proc.pid, signal.SIGKILL)                # while it is recording the next ones
                break
    finally:
        proc.kill()
        proc.wait(30)
    assert len(committed) == 30
    with CaseStore.open(tmp_path / "slide" / DEFAULT_CASE_NAME) as store:
        ids = [r.id for r in store.actions()]
        assert set(committed) <= set(ids)                       # every action reported as done is there
        assert ids == sorted(ids) and store.state.current        # complete rows only: verified and replayed
