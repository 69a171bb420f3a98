"""The one worker mechanism: thread tasks and child-process tasks report progress, results,
errors, cancellation, and a crashing child never takes the window down."""
from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from allgui.workers import ProcessTask, ThreadTask
from trainer.util.errors import Cancelled, DataError


def count_to(n, progress, cancel, emit):
    for i in range(n):
        if cancel():
            raise Cancelled()
        emit(i)
        progress((i + 1) / n, f"step {i + 1}")
        time.sleep(0.005)
    return n * 10


def bad_data(progress, cancel, emit):
    raise DataError("The data folder has one class only.")


def crash(progress, cancel, emit):
    progress(0.5, "about to crash")
    os._exit(3)


def sleep_forever(progress, cancel, emit):
    progress(0.1, "sleeping")
    time.sleep(600)


def test_thread_task_progress_partial_result(qtbot):
    task = ThreadTask(count_to, 5)
    got, prog = [], []
    task.partial.connect(got.append)
    task.progress.connect(lambda f, m: prog.append(f))
    with qtbot.waitSignal(task.finished, timeout=10_000) as blocker:
        task.start()
    assert blocker.args == [50] and got == [0, 1, 2, 3, 4] and prog[-1] == 1.0
    assert not task.running


def test_thread_task_error_and_cancel(qtbot):
    task = ThreadTask(bad_data)
    with qtbot.waitSignal(task.failed, timeout=10_000) as blocker:
        task.start()
    assert blocker.args == ["The data folder has one class only."]
    task = ThreadTask(count_to, 10_000)
    with qtbot.waitSignal(task.cancelled, timeout=10_000):
        task.start()
        task.cancel()


@pytest.mark.parametrize("fn, args, outcome", [(count_to, (3,), "finished"), (bad_data, (), "failed")])
def test_clean_up_after_a_thread_task_runs_on_its_thread_once_the_outcome_is_sent(qtbot, fn, args, outcome):
    import threading

    ran: list[tuple[str, bool]] = []
    sent = threading.Event()
    task = ThreadTask(fn, *args)
    task._relay.message.connect(lambda kind, payload: kind == outcome and sent.set(),
                                Qt.DirectConnection)  # noted in the pool thread as the outcome is sent
    task.after = lambda: ran.append((threading.current_thread().name, sent.is_set()))
    with qtbot.waitSignal(getattr(task, outcome), timeout=10_000):
        task.start()
    qtbot.waitUntil(lambda: bool(ran), timeout=10_000)
    (thread, outcome_sent), = ran
    assert thread != threading.current_thread().name and outcome_sent


def test_process_task_crash_is_reported_not_fatal(qtbot):
    task = ProcessTask(crash)
    with qtbot.waitSignal(task.failed, timeout=60_000) as blocker:
        task.start()
    assert "exit code 3" in blocker.args[0] and "unchanged" in blocker.args[0]


def test_process_task_error_message_and_cancel_is_immediate(qtbot):
    task = ProcessTask(bad_data)
    with qtbot.waitSignal(task.failed, timeout=60_000) as blocker:
        task.start()
    assert blocker.args == ["The data folder has one class only."]
    task = ProcessTask(sleep_forever)
    with qtbot.waitSignal(task.progress, timeout=60_000):
        task.start()
    t0 = time.perf_counter()
    with qtbot.waitSignal(task.cancelled, timeout=5_000):
        task.cancel()
    assert time.perf_counter() - t0 < 2.5 and not task._proc.is_alive()


def wait_for(event, progress, cancel, emit):
    event.wait(30)
    return "late"


def test_a_disconnected_task_runs_out_unheard(qtbot):
    import threading

    release = threading.Event()
    heard = []
    task = ThreadTask(wait_for, release)
    task.finished.connect(heard.append)
    task.done.connect(lambda: heard.append("done"))
    task.start()
    task.disconnect_all()
    task.disconnect_all()  # twice, or with nothing connected: no error
    release.set()
    qtbot.waitUntil(lambda: not task.running, timeout=10_000)
    qtbot.wait(50)
    assert heard == []


def test_signals_blocked_restores_each_widgets_previous_state(qtbot):
    from PySide6.QtWidgets import QSlider

    from allgui.qtutil import signals_blocked

    a, b = QSlider(), QSlider()
    b.blockSignals(True)
    moved = []
    a.valueChanged.connect(moved.append)
    with signals_blocked(a, b):
        a.setValue(5)
        assert a.signalsBlocked() and b.signalsBlocked()
    assert moved == [] and not a.signalsBlocked() and b.signalsBlocked()
    a.setValue(6)
    assert moved == [6]


class _SlowPredictor:
    """Stands in for a Predictor: answers with its own name once released."""

    def __init__(self, name, release=None):
        self.name, self.release = name, release

    def predict(self, image, path=None):
        if self.release is not None:
            self.release.wait(30)
        return self.name


def test_analysis_of_a_superseded_model_never_lands(qtbot, tmp_path):
    import threading

    import cv2
    import numpy as np

    from allgui.state import AppState
    from allgui.window.analysis import AnalysisController

    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.full((20, 20, 3), 200, np.uint8))
    state = AppState()
    state.set_images([path])
    ctl = AnalysisController(state)
    release = threading.Event()
    ctl.set_predictor(_SlowPredictor("old", release), "old.allmodel")
    old = ctl._task
    assert old is not None and old.running
    ctl.set_predictor(_SlowPredictor("new"), "new.allmodel")  # supersedes the running analysis
    release.set()
    qtbot.waitUntil(lambda: state.predictions.get(path) == "new", timeout=20_000)
    qtbot.waitUntil(lambda: not old.running, timeout=20_000)
    qtbot.wait(50)
    assert state.predictions[path] == "new" and ctl.model_path == "new.allmodel"
    ctl.shutdown()


def test_an_image_made_current_is_being_analysed_before_the_views_redraw_for_it(qtbot, tmp_path):
    import threading

    import cv2
    import numpy as np

    from allgui.state import AppState, Topic
    from allgui.window.analysis import AnalysisController

    paths = [str(tmp_path / f"{n}.png") for n in "ab"]
    for p in paths:
        cv2.imwrite(p, np.full((20, 20, 3), 200, np.uint8))
    state = AppState()
    ctl = AnalysisController(state)
    release = threading.Event()
    ctl.set_predictor(_SlowPredictor("m", release), "m.allmodel")
    seen = []
    # a view, subscribed after the controller (as the window's views are)
    state.subscribe(Topic.CURRENT, lambda: seen.append((state.current, ctl._task_path, ctl._task.running)))
    state.add_images(paths[1:])
    assert seen == [(paths[1], paths[1], True)]
    release.set()
    qtbot.waitUntil(lambda: state.predictions.get(paths[1]) == "m", timeout=20_000)
    ctl.shutdown()
