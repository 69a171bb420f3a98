"""Progress and cancel callbacks shared by every long-running trainer function.

``progress(fraction, message)``: fraction of the work done in [0, 1] and a short message.
``cancel()``: True when the user asked to stop; the work then raises
:class:`trainer.util.errors.Cancelled`.

A function made of steps names them in a :class:`Stages`, with weights (their expected
relative durations), instead of working out fractions by hand::

    stages = Stages(progress, [("features", 6), ("cross-validation", 3), ("calibration", 1)])
    feats = extract(paths, progress=stages.start("features"))
    scores = cross_validate(feats, progress=stages.start("cross-validation"))
    ...
    stages.done("Model fitted")
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from trainer.util.errors import Cancelled

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None, message: str = "Cancelled by the user.") -> None:
    """Raise :class:`Cancelled` with ``message`` when ``cancel()`` is True (never when ``cancel`` is None)."""
    if cancel is not None and cancel():
        raise Cancelled(message)


def _unit(fraction: float) -> float:
    """``fraction`` clamped to [0, 1]; NaN counts as 0 (no progress), an infinity as the nearer end."""
    return min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else (1.0 if fraction > 0 else 0.0)


class Stages:
    """One task's progress as named stages in order, each taking the share of the bar its weight gives.

    ``Stages(progress, [("features", 6), ("cross-validation", 3), ("calibration", 1)])`` gives the
    features [0, 0.6] of ``progress``, the cross-validation [0.6, 0.9] and the calibration [0.9, 1].
    :meth:`start` returns a stage's own :data:`Progress`, whose 0..1 covers the stage's share; it can
    be handed on to the sub-task, or to another ``Stages`` (nesting). What reaches ``progress`` never
    goes backwards: a report below the highest fraction reported so far is raised to it.

    Weights are relative (any non-negative numbers, not all zero); a stage that is skipped is left out
    of the list, or simply never started (the bar then jumps over it); with no stages at all only
    :meth:`done` reports. Stages start in the listed order. With ``progress=None`` nothing is reported
    and every call still works.
    """

    def __init__(self, progress: Progress | None, stages: Sequence[tuple[str, float]]):
        names = [str(name) for name, _ in stages]
        weights = [float(w) for _, w in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names repeat: {names}.")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or (weights and sum(weights) <= 0):
            raise ValueError(f"Stage weights must be non-negative numbers, not all zero: {weights}.")
        total, below = sum(weights), 0.0
        self._bounds: dict[str, tuple[float, float]] = {}
        for name, w in zip(names, weights):
            self._bounds[name] = (below / total, min((below + w) / total, 1.0))
            below += w
        self._names = names
        self._progress = progress
        self._current = -1          # index of the stage started last
        self._finished = False
        self.fraction = 0.0         # the highest fraction reported (or reached by a start) so far

    @property
    def current(self) -> str | None:
        """Name of the stage started last (None before the first)."""
        return self._names[self._current] if self._current >= 0 else None

    def share(self, name: str) -> tuple[float, float]:
        """The [lo, hi] of ``progress`` that stage ``name`` covers."""
        if name not in self._bounds:
            raise ValueError(f"Unknown stage {name!r}; the stages are {self._names}.")
        return self._bounds[name]

    def start(self, name: str, message: str | None = None) -> Progress:
        """Begin stage ``name`` (after the one started last) and return its 0..1 progress.

        The bar moves to the stage's start, reported with ``message`` when one is given.
        """
        lo, hi = self.share(name)
        index = self._names.index(name)
        if self._finished:
            raise ValueError(f"Stage {name!r} cannot start: the stages are done.")
        if index <= self._current:
            raise ValueError(f"Stage {name!r} cannot start after {self.current!r}; "
                             f"the order is {self._names}.")
        self._current = index
        self.fraction = max(self.fraction, lo)
        if message is not None:
            self.say(message)

        def stage_progress(fraction: float, msg: str) -> None:
            self._report(lo + (hi - lo) * _unit(fraction), msg)

        return stage_progress

    def say(self, message: str) -> None:
        """Report ``message`` where the bar is now."""
        self._report(self.fraction, message)

    def done(self, message: str = "Done") -> None:
        """The whole task is finished: report 1.0 with ``message``."""
        self._finished = True
        self._report(1.0, message)

    def _report(self, fraction: float, message: str) -> None:
        self.fraction = max(self.fraction, fraction)
        if self._progress is not None:
            self._progress(self.fraction, message)
