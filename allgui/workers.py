"""One background-work mechanism for the app.

A :class:`Task` with progress, partial results, cancel, error and finished signals, run either on a thread
pool (inference, model loading) or in a child process (retraining: Cancel terminates it at once and a crash
cannot take the window down).

The work is a plain function ``fn(*args, progress=..., cancel=..., emit=...)``:
  progress(fraction 0..1, message)   report progress
  cancel() -> bool                   True once the user asked to stop (raise trainer.util.errors.Cancelled)
  emit(obj)                          hand a partial result to the window (signal ``partial``)
Its return value arrives with ``finished``; an exception arrives as ``failed(message)``
(the message of an AllguiError as it is, anything else with its type), Cancelled as ``cancelled``.
For process tasks ``fn`` must be importable (a module-level function) and its arguments picklable.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
import threading
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, QTimer, Signal, Slot

from allgui import pyside_fix
from trainer.util.errors import AllguiError, Cancelled

pyside_fix.apply()   # PySide6's emit() leaks a reference to True (see allgui.pyside_fix)


def error_message(exc: BaseException) -> str:
    """A message fit for a user: AllguiError text as it is, otherwise type and text."""
    if isinstance(exc, AllguiError):
        return str(exc)
    text = str(exc) or exc.__class__.__name__
    return f"Unexpected error ({exc.__class__.__name__}): {text}"


class Task(QObject):
    """Background work with Qt signals, always delivered in the GUI thread."""

    progress = Signal(float, str)
    log = Signal(str)
    partial = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    done = Signal()            # after any of finished / failed / cancelled

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "", **kwargs: Any) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.name = name or getattr(fn, "__name__", "task")
        self.running = False
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def disconnect_all(self) -> None:
        """Disconnect every receiver: a superseded task runs out unheard, its result dropped."""
        for signal in (self.progress, self.log, self.partial, self.finished, self.failed, self.cancelled,
                       self.done):
            with warnings.catch_warnings():  # PySide6 warns when a signal had no receiver
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass

    def start(self) -> Task:
        raise NotImplementedError

    def _finish(self, kind: str, payload: Any = None) -> None:
        if not self.running:
            return
        self.running = False
        if kind == "finished":
            self.finished.emit(payload)
        elif kind == "failed":
            self.failed.emit(str(payload))
        else:
            self.cancelled.emit()
        self.done.emit()


# ---- thread pool -----------------------------------------------------------------------------
class _Relay(QObject):
    """Carries messages from a pool thread to the GUI thread (queued connection)."""

    message = Signal(str, object)


class _Runnable(QRunnable):
    def __init__(self, task: ThreadTask) -> None:
        super().__init__()
        self.task = task
        self.setAutoDelete(True)

    def run(self) -> None:
        t = self.task
        relay = t._relay

        def send(kind: str, payload: Any) -> None:
            try:
                relay.message.emit(kind, payload)
            except RuntimeError:      # the window (and the task's relay) is gone: nobody listens
                pass

        try:
            result = t.fn(*t.args, progress=lambda f, m="": send("progress", (float(f), str(m))),
                          cancel=t.is_cancelled, emit=lambda obj: send("partial", obj), **t.kwargs)
            send("cancelled", None) if t.is_cancelled() else send("finished", result)
        except Cancelled:
            send("cancelled", None)
        except BaseException as exc:  # everything must reach the window as a message
            send("failed", (error_message(exc), traceback.format_exc()))
        if t.after is not None:
            try:
                t.after()
            except Exception:  # clean-up only: the outcome is on its way already
                logging.getLogger(__name__).exception("clean-up after %s failed", t.name)


class ThreadTask(Task):
    """Runs ``fn`` on a QThreadPool (default: the app's inference pool, one thread).

    ``after``: called on the pool thread once the outcome has been sent, whatever it was: clean-up that
    need not delay the result (the pool's next task waits for it).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, pool: QThreadPool | None = None,
                 priority: int = 0, after: Callable[[], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(fn, *args, **kwargs)
        self.pool = pool or inference_pool()
        self.priority = priority
        self.after = after
        self._relay = _Relay()
        self._relay.message.connect(self._on_message, Qt.QueuedConnection)

    def start(self) -> ThreadTask:
        self.running = True
        _LIVE.add(self)
        self.pool.start(_Runnable(self), self.priority)
        return self

    @Slot(str, object)
    def _on_message(self, kind: str, payload: Any) -> None:
        if kind == "progress":
            self.progress.emit(*payload)
        elif kind == "partial":
            self.partial.emit(payload)
        else:
            if kind == "failed":
                self.log.emit(payload[1])
                self._finish("failed", payload[0])
            else:
                self._finish(kind, payload)
            QTimer.singleShot(RELEASE_AFTER_MS, lambda: _LIVE.discard(self))


#: Started thread tasks, held here until a while after their last message: whoever started one may
#: drop it at any time (a superseded analysis, a window that closed), and the last reference must
#: not go with the pool thread's runnable, or the task would be destroyed in that thread while the
#: GUI thread delivers its messages (a crash). Released in the GUI thread, RELEASE_AFTER_MS after
#: the task's final message, when its runnable has long returned.
_LIVE: set[ThreadTask] = set()
RELEASE_AFTER_MS = 2000


_POOL: QThreadPool | None = None


def inference_pool() -> QThreadPool:
    """The app's inference pool: one thread, so the model is used by one task at a time."""
    global _POOL
    if _POOL is None:
        _POOL = QThreadPool()
        _POOL.setMaxThreadCount(1)
    return _POOL


# ---- child process ---------------------------------------------------------------------------
def _child_main(fn: Callable[..., Any], args: tuple, kwargs: dict, q: mp.Queue) -> None:
    """Entry point of the child process: runs ``fn`` and reports through ``q``."""

    class _QueueHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                q.put(("log", self.format(record)))
            except Exception:
                pass

    handler = _QueueHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    last = {"message": None}

    def progress(fraction: float, message: str = "") -> None:
        q.put(("progress", (float(fraction), str(message))))
        if message and message != last["message"]:
            last["message"] = message
            q.put(("log", message))

    try:
        result = fn(*args, progress=progress, cancel=lambda: False, emit=lambda obj: q.put(("partial", obj)),
                    **kwargs)
        q.put(("finished", result))
    except Cancelled:
        q.put(("cancelled", None))
    except BaseException as exc:
        q.put(("failed", (error_message(exc), traceback.format_exc())))
    q.close()
    q.join_thread()


class ProcessTask(Task):
    """Runs ``fn`` in a spawned child process; messages are polled by a QTimer.

    ``cancel()`` terminates the child at once. If the child dies without reporting
    (crash, killed), ``failed`` says so with its exit code.
    """

    poll_ms = 50

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(fn, *args, **kwargs)
        self._ctx = mp.get_context("spawn")
        self._queue: Any = None
        self._proc: Any = None
        self._timer = QTimer(self)
        self._timer.setInterval(self.poll_ms)
        self._timer.timeout.connect(self._poll)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> ProcessTask:
        """Start the child from a helper thread, so spawning never stalls the event loop."""
        self._queue = self._ctx.Queue()
        self._proc = self._ctx.Process(target=_child_main, args=(self.fn, self.args, self.kwargs, self._queue),
                                       daemon=True, name=f"allgui-{self.name}")
        self.running = True
        self._started = threading.Event()
        self._start_error: BaseException | None = None

        def launch() -> None:
            try:
                self._proc.start()
            except BaseException as exc:
                self._start_error = exc
            self._started.set()

        threading.Thread(target=launch, name=f"start-{self.name}", daemon=True).start()
        self._timer.start()
        return self

    def cancel(self) -> None:
        super().cancel()
        if self._proc is not None and hasattr(self, "_started"):
            self._started.wait(10.0)            # a child being spawned is terminated once it exists
        if self._proc is not None and self._proc.pid is not None and self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(2.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(2.0)
        self._stop("cancelled")

    def _stop(self, kind: str, payload: Any = None) -> None:
        self._timer.stop()
        if self._queue is not None:
            self._queue.cancel_join_thread()
            self._queue.close()
            self._queue = None
        if self._proc is not None and self._proc.pid is not None and not self._proc.is_alive():
            self._proc.join(0.1)
        self._finish(kind, payload)

    @Slot()
    def _poll(self) -> None:
        if self._queue is None or not self._started.is_set():
            return
        if self._start_error is not None:
            self._stop("failed", f"Could not start the training process: {error_message(self._start_error)}")
            return
        for _ in range(200):                 # bounded so one tick never stalls the loop
            try:
                kind, payload = self._queue.get_nowait()
            except (queue_mod.Empty, EOFError, OSError):
                break
            if kind == "progress":
                self.progress.emit(*payload)
            elif kind == "log":
                self.log.emit(payload)
            elif kind == "partial":
                self.partial.emit(payload)
            elif kind == "failed":
                self.log.emit(payload[1])
                self._stop("failed", payload[0])
                return
            else:
                self._stop(kind, payload)
                return
        if self._proc is not None and not self._proc.is_alive():
            # Drain anything that arrived between the last read and the exit.
            try:
                kind, payload = self._queue.get(timeout=0.2)
            except (queue_mod.Empty, EOFError, OSError):
                code = self._proc.exitcode
                self._stop("failed", f"The training process stopped unexpectedly (exit code {code}). "
                                     "The current model is unchanged.")
                return
            self._handle_late(kind, payload)

    def _handle_late(self, kind: str, payload: Any) -> None:
        if kind == "failed":
            self.log.emit(payload[1])
            self._stop("failed", payload[0])
        elif kind in ("finished", "cancelled"):
            self._stop(kind, payload)
        elif kind == "log":
            self.log.emit(payload)
        elif kind == "progress":
            self.progress.emit(*payload)
