"""The analysis controller.

The predictor, the queue of images to analyse, the image cache and the errors met on the way, kept out of
the window.

After Orange3's ``ConcurrentMixin``: one task at a time is started, cancelled or shut down here,
and its outcome reaches the window as signals (the done and error callbacks). A task that a newer
one supersedes (another model was loaded, the window closes) is cancelled *and disconnected*, so a
late result can never land in the state: nothing counts generations.

Predictions run one image at a time on the inference thread, the current image first; results are
cached in the :class:`~allgui.state.AppState`, so moving the threshold, changing the selection or
coming back to an image never recomputes features.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QThreadPool, Signal

from allgui.imaging import thumbnail
from allgui.model.session import ModelSession
from allgui.state import AppState, Topic
from allgui.workers import Task, ThreadTask
from trainer.io.imageio import read_image
from trainer.util.memory import release_freed_memory

#: decoded images kept for display (the most recently used first out)
IMAGE_CACHE = 24


def predict_one(predictor, path: str, progress, cancel, emit) -> tuple[str, np.ndarray, Any, np.ndarray, float]:
    """Inference-thread work: read, hand the picture to the window (``emit``), predict, make a thumbnail.

    Returns
    -------
    tuple
        ``(path, image, prediction, thumbnail, seconds)``.
    """
    t0 = time.perf_counter()
    image = read_image(path)
    emit(image)  # shown while the networks run; the window need not decode it a second time
    pred = predictor.predict(image, path=path)
    return path, image, pred, thumbnail(image), time.perf_counter() - t0


def read_one(path: str, progress, cancel, emit) -> np.ndarray:
    """Display-read work: the decoded picture of ``path`` (RGB uint8), off the GUI thread."""
    return read_image(path)


def load_predictor(path: str, progress, cancel, emit, warm: bool = True):
    """Model-loading work: the bundle's predictor, off the GUI thread.

    The bundle's first model is rebuilt with the file and each other one when an image of its kind first
    arrives, so that an open image's result does not wait for models it does not need. ``warm`` (no image
    is waiting): rebuild them all now and run one forward pass, so that the first image opened later gets
    a warm network; with images open, the first one's own pass does the same one-time set-up sooner.
    """
    # torch and the models load here, on a worker thread, not when the window starts
    from trainer.inference.predictor import Predictor

    predictor = Predictor.from_bundle(path, lazy=True)
    if warm:
        for key in predictor.keys:
            predictor.models[key]
        predictor.warm_up()
    return predictor


def load_session(path: str, progress, cancel, emit, warm: bool = True) -> ModelSession:
    """Model-loading work: the bundle's predictor in its session (identity, bands), off the GUI thread."""
    return ModelSession.open(load_predictor(path, progress, cancel, emit, warm=warm), path)


class AnalysisController(QObject):
    """Runs the analyses the window asks for and reports their outcomes.

    Parameters
    ----------
    state : AppState
        Where results and errors go; its ``"current"`` topic puts the current image first.
    parent : QObject, optional
        Qt parent (the window).

    Signals
    -------
    modelChanged(session)
        A model was switched to (its :class:`~allgui.model.session.ModelSession`); its analysis starts
        right after.
    modelFailed(path, message)
        Loading ``path`` failed; the current model stays.
    imageReady(path)
        The analysis just read ``path``: its picture is in the cache (:meth:`cached`), before its result.
    thumbnailReady(path, thumbnail)
        A thumbnail of ``path`` (RGB uint8), just before its prediction enters the state.
    analysed(path)
        A prediction for ``path`` is in the state.
    imageFailed(path, message, step)
        ``path``, which the user opened by itself, could not be read (``step`` "open") or analysed
        (``step`` "analyse"): say so at once. Errors of a batch are collected instead and come
        together with ``batchFailed``.
    batchFailed(messages)
        The queue ran empty and these images of a batch could not be analysed.
    progress(done, total)
        Analysis progress of the open images (``total`` 0: nothing to show).
    """

    modelChanged = Signal(object)
    modelFailed = Signal(str, str)
    imageReady = Signal(str)
    thumbnailReady = Signal(str, object)
    analysed = Signal(str)
    imageFailed = Signal(str, str, str)
    batchFailed = Signal(list)
    progress = Signal(int, int)

    def __init__(self, state: AppState, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.session: ModelSession | None = None  # the model in use
        self.loading = False                  # a model load is in flight
        self.last_seconds: float | None = None
        self._task: ThreadTask | None = None  # the analysis in flight
        self._task_path: str | None = None    # ... and the image it analyses
        self._display: ThreadTask | None = None  # a picture read for display while the analysis is busy
        self._load: ThreadTask | None = None  # the model load in flight
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._explicit: set[str] = set()      # opened one by one: an error is shown at once
        self._batch_errors: list[str] = []
        self._shut = False
        # subscribed before the views: an image made current is being read before they redraw for it
        state.subscribe(Topic.CURRENT, self.start)

    # ---- model -----------------------------------------------------------------------------
    @property
    def predictor(self):
        """The predictor in use (None before a model is loaded)."""
        return self.session.predictor if self.session is not None else None

    @property
    def model_path(self) -> str | None:
        """The loaded bundle's path (None for a predictor set without one)."""
        return self.session.path if self.session is not None else None

    def load_model(self, path: str) -> ThreadTask:
        """Load a bundle in the background; a load started before it is superseded."""
        self._supersede(self._load)
        self.loading = True
        # with images open, the new model analyses them at once (set_session): no warm-up pass first
        task = ThreadTask(load_session, str(path), warm=not self.state.paths,
                          pool=QThreadPool.globalInstance(), name="load-model")
        task.finished.connect(self.set_session)
        task.failed.connect(lambda msg, p=str(path): self._load_failed(p, msg))
        self._load = task
        return task.start()

    def _load_failed(self, path: str, message: str) -> None:
        self.loading = False
        self._load = None
        self.modelFailed.emit(path, message)

    def set_predictor(self, predictor, path: str | None = None) -> None:
        """Switch to ``predictor`` loaded from ``path`` (its session is made here, on the calling thread)."""
        self.set_session(ModelSession.open(predictor, path))

    def set_session(self, session: ModelSession) -> None:
        """Switch to the model of ``session``: the analysis and any load in flight are superseded."""
        self._supersede(self._load)
        self._supersede(self._task)
        self._load = self._task = None
        self.loading = False
        self.session = session
        self.modelChanged.emit(session)
        self.start()

    # ---- queue -----------------------------------------------------------------------------
    def open(self, paths: list[str], explicit: bool = False) -> None:
        """Note images just opened (``explicit``: one by one, so their errors are shown at once)."""
        if explicit:
            self._explicit.update(paths)
        else:
            self._batch_errors = []

    def start(self) -> None:
        """Start the next pending prediction (current image first), unless one is running."""
        if self.predictor is None or self._shut or (self._task is not None and self._task.running):
            return
        todo = self.state.pending()
        n = len(self.state.paths)
        if not todo:
            self.progress.emit(n, 0)
            if self._batch_errors:
                errors, self._batch_errors = self._batch_errors, []
                self.batchFailed.emit(errors)
            return
        self.progress.emit(n - len(todo), n if n > 1 else 0)
        path = todo[0]
        # the memory of the image's buffers goes back to the system once its result is on its way
        task = ThreadTask(predict_one, self.predictor, path, name="predict", after=release_freed_memory)
        task.partial.connect(lambda image, p=path: self._on_read(p, image))
        task.finished.connect(self._on_done)
        task.failed.connect(lambda msg, p=path: self._on_error(p, msg))
        task.done.connect(self.start)
        self._task, self._task_path = task, path
        task.start()

    def cancel(self) -> None:
        """Stop the analysis in flight; its result is dropped."""
        self._supersede(self._task)
        self._task = None

    def shutdown(self) -> None:
        """Stop everything and start nothing more (the window is closing)."""
        self._shut = True
        self.cancel()
        self._supersede(self._load)
        self._supersede(self._display)
        self._load = self._display = None

    @staticmethod
    def _supersede(task: Task | None) -> None:
        if task is not None:
            task.cancel()
            task.disconnect_all()

    def _on_done(self, result) -> None:
        path, image, pred, thumb, secs = result
        self.last_seconds = secs
        self._cache(path, image)
        self.thumbnailReady.emit(path, thumb)
        self.state.set_prediction(path, pred)
        self.analysed.emit(path)

    def _on_read(self, path: str, image: np.ndarray) -> None:
        self._cache(path, image)
        self.imageReady.emit(path)

    def _on_error(self, path: str, message: str) -> None:
        already_shown = path in self.state.errors      # the display read failed first
        self.state.set_error(path, message)
        if path in self._explicit:
            self._explicit.discard(path)
            # no picture arrived: the file could not be read at all
            self.imageFailed.emit(path, message, "analyse" if path in self._images else "open")
        elif not already_shown:
            self._batch_errors.append(message)

    # ---- images ----------------------------------------------------------------------------
    def request_image(self, path: str) -> np.ndarray | None:
        """The picture of ``path`` for display if it is cached; else None, and it is read off the GUI thread.

        The analysis reads it when it is about to analyse ``path`` anyway; otherwise a display read on
        the shared pool does (also after a failed analysis: the picture may still be readable).
        ``imageReady(path)`` follows; an unreadable file is reported once, as :attr:`imageFailed` "open"
        for an image opened by itself.
        """
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        if self._reading(path) or (self._display is not None and self._display.running
                                  and self._display.args == (path,)):
            return None
        self._supersede(self._display)  # only the picture asked for last is still wanted
        task = ThreadTask(read_one, path, pool=QThreadPool.globalInstance(), name="read-image")
        task.finished.connect(lambda image, p=path: self._on_read(p, image))
        task.failed.connect(lambda msg, p=path: self._display_failed(p, msg))
        self._display = task
        task.start()
        return None

    def _display_failed(self, path: str, message: str) -> None:
        if path in self.state.errors:  # report each unreadable file once
            return
        self.state.set_error(path, message)
        if path in self._explicit:
            self._explicit.discard(path)
            self.imageFailed.emit(path, message, "open")

    def _reading(self, path: str) -> bool:
        """True while the analysis in flight is about to read ``path``: its picture comes with ``imageReady``."""
        return (self._task is not None and self._task.running and self._task_path == path
                and path not in self._images)

    def cached(self, path: str) -> np.ndarray | None:
        """The cached image of ``path``, or None; never reads."""
        return self._images.get(path)

    def _cache(self, path: str, image: np.ndarray) -> None:
        self._images[path] = image
        self._images.move_to_end(path)
        while len(self._images) > IMAGE_CACHE:
            self._images.popitem(last=False)

