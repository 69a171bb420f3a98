"""The decision-threshold slider: steps a pathologist can read, and keys that stay with it."""
from __future__ import annotations

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QSlider, QWidget

#: keys the slider keeps while it has the focus (without Ctrl, whose arrows step through the images)
SLIDER_KEYS = (Qt.Key_Left, Qt.Key_Right, Qt.Key_Up, Qt.Key_Down, Qt.Key_PageUp, Qt.Key_PageDown,
               Qt.Key_Home, Qt.Key_End)


class ThresholdSlider(QSlider):
    """A horizontal slider over 0..1 in ``steps`` positions.

    Arrow keys move it 0.01, with Shift 0.001; Page Up / Page Down 0.05. While it has the focus these
    keys are its own: Page Down moves the threshold, not the table to the next image.
    """

    def __init__(self, steps: int = 1000, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Horizontal, parent)
        self.steps = steps
        self.setRange(0, steps)
        self.setSingleStep(max(1, steps // 100))
        self.setPageStep(max(1, steps // 20))
        self.setObjectName("thresholdSlider")
        self.setToolTip("Calibrated probability above which a cell is called ALL blast.\n"
                        "\u2190 / \u2192: 0.01; Shift+\u2190 / \u2192: 0.001; Page Up / Down: 0.05")

    def event(self, event) -> bool:  # Qt's name
        # a window shortcut (Page Down: next image) would take the key before the slider saw it
        if (event.type() == QEvent.ShortcutOverride and event.key() in SLIDER_KEYS
                and not event.modifiers() & ~(Qt.ShiftModifier | Qt.KeypadModifier)):
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event) -> None:  # Qt's name
        fine = {Qt.Key_Left: -1, Qt.Key_Down: -1, Qt.Key_Right: 1, Qt.Key_Up: 1}.get(event.key())
        if fine is not None and event.modifiers() & Qt.ShiftModifier:
            self.setValue(self.value() + fine)
            event.accept()
            return
        super().keyPressEvent(event)
