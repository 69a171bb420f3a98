"""Progress and cancel callbacks shared by every long-running trainer function.

``progress(fraction, message)``: fraction of the work done in [0, 1] and a short message.
``cancel()``: True when the user asked to stop; the work then raises
:class:`trainer.util.errors.Cancelled`.
"""
from __future__ import annotations

from collections.abc import Callable

from trainer.util.errors import Cancelled

Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None, message: str = "Cancelled by the user.") -> None:
    """Raise :class:`Cancelled` with ``message`` when ``cancel()`` is True (never when ``cancel`` is None)."""
    if cancel is not None and cancel():
        raise Cancelled(message)


def stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """Map a sub-task's 0..1 progress onto [lo, hi] of the caller's progress."""
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * min(max(f, 0.0), 1.0), msg)
