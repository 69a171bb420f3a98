"""The bar above the image: overlay on/off, outline or fill, fill opacity and Fit."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QPushButton, QSlider, QWidget

from allgui.qtutil import signals_blocked
from allgui.state import OVERLAY_MODES, AppState, Topic


class OverlayBar(QWidget):
    """Overlay controls bound to ``state``: they set it and mirror it (``fitRequested``: Fit pressed)."""

    fitRequested = Signal()

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = st = state
        self.overlay_box = QCheckBox("Overlay (O)")
        self.overlay_box.setChecked(st.overlay_visible)
        self.overlay_box.toggled.connect(lambda on: st.set_overlay(visible=on))
        self.mode_box = QComboBox()
        self.mode_box.addItems(list(OVERLAY_MODES))
        self.mode_box.currentTextChanged.connect(lambda m: st.set_overlay(mode=m))
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(st.overlay_opacity * 100))
        self.opacity.setMinimumWidth(70)
        self.opacity.setMaximumWidth(140)
        self.opacity.setToolTip("Opacity of the nucleus fill (Style: fill)")
        self.opacity.valueChanged.connect(lambda x: st.set_overlay(opacity=x / 100))
        fit = QPushButton("Fit (F)")
        fit.clicked.connect(self.fitRequested)
        bar = QHBoxLayout(self)
        bar.setContentsMargins(0, 0, 0, 0)
        for w in (self.overlay_box, QLabel("Style"), self.mode_box, QLabel("Opacity"), self.opacity, fit):
            bar.addWidget(w)
        bar.addStretch(1)
        st.subscribe(Topic.OVERLAY, self._on_overlay)

    def _on_overlay(self) -> None:
        st = self.state
        if self.overlay_box.isChecked() != st.overlay_visible:
            with signals_blocked(self.overlay_box):
                self.overlay_box.setChecked(st.overlay_visible)
        if self.mode_box.currentText() != st.overlay_mode:
            with signals_blocked(self.mode_box):
                self.mode_box.setCurrentText(st.overlay_mode)
        if self.opacity.value() != round(st.overlay_opacity * 100):
            with signals_blocked(self.opacity):
                self.opacity.setValue(round(st.overlay_opacity * 100))
