"""Stages: named, weighted, nestable progress that never goes backwards."""
from __future__ import annotations

import pytest

from trainer.util.progress import Stages


class Recorder:
    """A progress callback that keeps what it was told."""

    def __init__(self):
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, message: str) -> None:
        self.calls.append((fraction, message))

    @property
    def fractions(self) -> list[float]:
        return [f for f, _ in self.calls]


def test_weights_give_each_stage_its_share():
    rec = Recorder()
    stages = Stages(rec, [("features", 6), ("cross-validation", 3), ("calibration", 1)])
    assert stages.share("features") == pytest.approx((0.0, 0.6))
    assert stages.share("cross-validation") == pytest.approx((0.6, 0.9))
    assert stages.share("calibration") == pytest.approx((0.9, 1.0))
    features = stages.start("features")
    features(0.5, "half the features")
    features(1.0, "features done")
    cv = stages.start("cross-validation")
    cv(0.5, "fold 1 of 2")
    stages.start("calibration")(0.5, "calibrating")
    assert rec.fractions == pytest.approx([0.3, 0.6, 0.75, 0.95])


def test_reports_never_go_backwards():
    rec = Recorder()
    stages = Stages(rec, [("a", 1), ("b", 1)])
    a = stages.start("a")
    a(0.8, "a far")
    a(0.2, "a again from the start")     # a sub-task whose own bar restarts
    b = stages.start("b")
    a(1.0, "a late report")              # a stage reporting after the next one began
    b(-1.0, "below zero")
    b(float("nan"), "not a number")
    b(2.0, "over one")
    assert rec.fractions == pytest.approx([0.4, 0.4, 0.5, 0.5, 0.5, 1.0])
    assert all(x <= y for x, y in zip(rec.fractions, rec.fractions[1:]))


def test_messages_reach_the_callback_unchanged():
    rec = Recorder()
    stages = Stages(rec, [("read", 1), ("fit", 3)])
    stages.start("read", "Reading the data")
    stages.say("120 images")
    stages.start("fit")(0.0, "Fitting")
    stages.done("Saved")
    assert rec.calls == [(0.0, "Reading the data"), (0.0, "120 images"), (0.25, "Fitting"), (1.0, "Saved")]


def test_start_without_message_moves_the_floor_silently():
    rec = Recorder()
    stages = Stages(rec, [("read", 1), ("fit", 1)])
    stages.start("read")
    stages.start("fit")
    assert rec.calls == []
    stages.say("fitting")
    assert rec.calls == [(0.5, "fitting")]


def test_nested_stages_map_onto_the_parent_stage():
    rec = Recorder()
    outer = Stages(rec, [("data", 1), ("models", 3)])
    outer.start("data")(1.0, "data read")
    inner = Stages(outer.start("models"), [("single_cell", 2), ("field", 1)])
    inner.start("single_cell")(0.5, "crops half done")
    inner.start("field")(1.0, "fields done")
    inner.done("models done")
    outer.done("all done")
    # models cover [0.25, 1]; single_cell the first two thirds of that, field the last third
    assert rec.fractions == pytest.approx([0.25, 0.25 + 0.75 * (2 / 3) * 0.5, 1.0, 1.0, 1.0])
    assert [m for _, m in rec.calls][-2:] == ["models done", "all done"]


def test_skipped_stage_is_jumped_over():
    rec = Recorder()
    stages = Stages(rec, [("data", 1), ("fine-tuning", 8), ("fit", 1)])
    stages.start("data")(1.0, "read")
    stages.start("fit")(0.0, "fitting")
    assert rec.fractions == pytest.approx([0.1, 0.9])


def test_zero_weight_stage_reports_at_its_position():
    rec = Recorder()
    stages = Stages(rec, [("a", 1), ("note", 0), ("b", 1)])
    stages.start("note")(0.7, "a message only")
    assert stages.share("note") == (0.5, 0.5)
    assert rec.calls == [(0.5, "a message only")]


def test_none_progress_works_and_reports_nothing():
    stages = Stages(None, [("a", 1), ("b", 2)])
    sub = stages.start("a", "starting")
    sub(0.5, "half")
    nested = Stages(stages.start("b"), [("x", 1)])
    nested.start("x")(1.0, "x done")
    nested.done()
    stages.done()
    assert stages.fraction == 1.0 and nested.fraction == 1.0


def test_stages_start_in_order_and_once():
    stages = Stages(None, [("a", 1), ("b", 1)])
    stages.start("b")
    with pytest.raises(ValueError, match="cannot start after 'b'"):
        stages.start("a")
    with pytest.raises(ValueError, match="cannot start after 'b'"):
        stages.start("b")
    with pytest.raises(ValueError, match="Unknown stage 'c'"):
        stages.start("c")
    done = Stages(None, [("a", 1)])
    done.done()
    with pytest.raises(ValueError, match="done"):
        done.start("a")


@pytest.mark.parametrize("spec, match", [
    ([("a", 1), ("a", 2)], "repeat"),
    ([("a", -1), ("b", 2)], "non-negative"),
    ([("a", 0), ("b", 0)], "not all zero"),
    ([("a", float("nan"))], "non-negative"),
])
def test_bad_stage_lists_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        Stages(None, spec)


def test_no_stages_only_report_done():
    rec = Recorder()
    stages = Stages(rec, [])
    with pytest.raises(ValueError, match="Unknown stage"):
        stages.start("a")
    stages.done("nothing to do")
    assert rec.calls == [(1.0, "nothing to do")]


def test_current_names_the_stage_started_last():
    stages = Stages(None, [("a", 1), ("b", 1)])
    assert stages.current is None
    stages.start("a")
    assert stages.current == "a"
