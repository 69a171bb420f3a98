"""Small Qt helpers the views share."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget


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


class ElidedLabel(QLabel):
    """One line of plain text that ends in "\u2026" where it is too long for its place (all of it in the tooltip).

    It takes the width its layout gives it and never asks for more, so a long text can neither push
    its neighbours away nor run under them.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setMinimumWidth(40)
        self.setText(text)

    def setText(self, text: str) -> None:  # Qt's name
        super().setText(text)
        self.setToolTip(text)

    def shown_text(self) -> str:
        """The text as it is drawn now (elided to the label's width)."""
        return self.fontMetrics().elidedText(self.text(), Qt.ElideRight, self.contentsRect().width())

    def paintEvent(self, event) -> None:  # Qt's name
        painter = QPainter(self)
        painter.drawText(self.contentsRect(), int(Qt.AlignLeft | Qt.AlignVCenter), self.shown_text())
