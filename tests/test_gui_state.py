"""The app's Qt-free state: decisions follow the threshold, rows, navigation, observers."""
from __future__ import annotations

import numpy as np

from allgui.state import AppState
from trainer.inference.results import CellPrediction, ClassifierVote, ImagePrediction


def _pred(path, probs, kind="field"):
    def cell(i, p):
        votes = [ClassifierVote("svm", p, int(p >= 0.5), 0.6), ClassifierVote("knn", 1 - p, int(p < 0.5), 0.4)]
        return CellPrediction(index=i, bbox=(10 * i, 0, 8, 8), contour=np.zeros((0, 2), np.int32),
                              votes=votes, vote_share=0.6 * (p >= 0.5), raw_probability=p, probability=p)
    cells = [cell(i, p) for i, p in enumerate(probs)] if kind == "field" else []
    whole = cell(-1, max(probs))
    mask = np.zeros((32, 64), bool)
    mask[2:6, 2:6] = True  # a nucleus was found (an image without one is not assessable)
    return ImagePrediction(path=path, shape=(32, 64), kind=kind, nucleus_mask=mask, whole=whole, cells=cells)


def test_state_is_qt_free():
    import allgui.state as st
    src = open(st.__file__).read()
    assert "PySide6" not in src and "pyqtgraph" not in src


def test_threshold_redecides_rows_and_notifies():
    s = AppState(threshold=0.5, band=0.05)
    seen = []
    s.subscribe("threshold", lambda: seen.append(s.threshold))
    s.set_images(["a.png", "b.png", "c.png"])
    s.set_prediction("a.png", _pred("a.png", [0.2, 0.9, 0.52]))
    s.set_prediction("b.png", _pred("b.png", [0.3], kind="single_cell"))
    s.set_error("c.png", "Cannot read image 'c.png': the file is empty (0 bytes).")
    a, b, c = s.rows()
    assert (a.cells, a.n_all, a.n_uncertain, a.decision, a.flagged) == (3, 1, 1, "ALL blast", True)
    assert (b.cells, b.decision, b.flagged) == (1, "normal", False)
    assert (c.decision, c.flagged) == ("error", True) and "empty" in c.error
    s.set_threshold(0.95)
    assert seen == [0.95]
    a, b, _ = s.rows()
    assert (a.n_all, a.n_uncertain, a.decision) == (0, 1, "uncertain, review")
    s.set_threshold(0.1)
    a, b, _ = s.rows()
    assert (a.n_all, b.decision) == (3, "ALL blast")
    s.set_threshold(0.1)                       # no change, no event
    assert seen == [0.95, 0.1]


def test_navigation_selection_and_pending():
    s = AppState()
    events = []
    for topic in ("current", "selection", "model"):
        s.subscribe(topic, lambda t=topic: events.append(t))
    s.set_images(["a", "b", "c"])
    assert s.current == "a" and s.pending() == ["a", "b", "c"]
    s.step(-1)
    assert s.current == "c" and s.pending()[0] == "c"
    s.set_prediction("c", _pred("c", [0.2, 0.8]))
    s.select_cell(1)
    assert s.selected.probability == 0.8
    s.step(1)
    assert s.current == "a" and s.selected_cell == -1
    s.clear_predictions("new model")
    assert s.predictions == {} and s.model_name == "new model"
    assert events.count("selection") == 1 and events[-1] == "model"


def test_topics_are_declared_and_a_mistyped_one_fails_at_once():
    import pytest

    from allgui.state import Topic

    s = AppState()
    seen = []
    s.subscribe(Topic.THRESHOLD, lambda: seen.append("enum"))
    s.subscribe("threshold", lambda: seen.append("name"))  # the same topic by its name
    s.set_threshold(0.7)
    assert seen == ["enum", "name"]
    with pytest.raises(ValueError, match="unknown state topic 'treshold'"):
        s.subscribe("treshold", lambda: None)
    with pytest.raises(ValueError, match="unknown state topic"):
        s.emit("predictions", "a.png")
