"""Small Qt helpers the views share."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PySide6.QtCore import QObject


@contextlib.contextmanager
def signals_blocked(*objects: QObject) -> Iterator[None]:
    """Block the signals of ``objects`` inside the ``with`` block.

    Each one's previous blocking state comes back afterwards, so a view can mirror the state into its
    widgets without echoing it back.
    """
    before = [obj.blockSignals(True) for obj in objects]
    try:
        yield
    finally:
        for obj, was in zip(objects, before):
            obj.blockSignals(was)
