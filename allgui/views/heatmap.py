"""Heatmaps in the app: where each network looked for the ALL class, computed on demand.

A heatmap is Grad-CAM of a probe fitted on the network's features (see
:mod:`trainer.inference.explain`); it is computed off the GUI thread and kept per image and cell.

- :class:`HeatmapController` watches the state; while the heatmap is switched on it explains the
  region the user is looking at (:attr:`~allgui.state.AppState.heatmap_target`) on the inference
  thread, one at a time, and puts the result in the state. Both backbones are explained together, so
  switching between them recomputes nothing; nor does coming back to an image or cell.
- :class:`HeatmapBox` is the side-panel group: the switch, the backbone, the opacity, what is shown,
  and the caption that a heatmap shows where the network looked, not why it is right.

The image view draws the map (:meth:`allgui.views.image_view.ImageView.refresh_heatmap`).
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QGroupBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from allgui.qtutil import signals_blocked
from allgui.state import HEATMAP_BACKBONES, AppState, Topic
from allgui.workers import ThreadTask
from trainer.inference.explain import BACKBONE_LABELS, CAPTION, explain

#: longest side of a kept heatmap, pixels (a smear field's maps would be full-size; they are smooth)
MAX_SIDE = 768


def explain_one(predictor, image, prediction, cell: int, progress, cancel, emit):
    """Inference-thread work: the explanation of ``cell`` (-1: the whole image) of ``image``.

    ``image`` is an RGB array, or its path when it is not decoded yet; ``prediction`` is the same
    model's prediction of it.
    """
    return explain(image, predictor, cell=cell, prediction=prediction, max_side=MAX_SIDE)


class HeatmapController(QObject):
    """Explains what is on screen while the heatmap is on (see the module docstring).

    Parameters
    ----------
    state : AppState
        Source of the target and the switch; where explanations and their errors go.
    analysis : allgui.window.analysis.AnalysisController
        Gives the predictor and the decoded images; a model switch there drops the task in flight.
    """

    def __init__(self, state: AppState, analysis, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.analysis = analysis
        self._task: ThreadTask | None = None
        self._target: tuple[str, int] | None = None   # what the task in flight explains
        self._shut = False
        for topic in (Topic.HEATMAP, Topic.CURRENT, Topic.PREDICTION, Topic.SELECTION, Topic.MODEL):
            state.subscribe(topic, self.update)
        analysis.modelChanged.connect(lambda *_: self.cancel())

    @property
    def busy(self) -> bool:
        return self._task is not None and self._task.running

    def update(self, *_: Any) -> None:
        """Start explaining the current target when the heatmap is on and it is not known yet."""
        st = self.state
        predictor = self.analysis.predictor
        target = st.heatmap_target
        if (self._shut or not st.heatmap_visible or predictor is None or target is None or self.busy
                or target in st.explanations or target in st.explanation_errors):
            return
        path, cell = target
        image = self.analysis.cached(path)
        task = ThreadTask(explain_one, predictor, path if image is None else image, st.predictions[path], cell,
                          name="explain", priority=1)
        task.finished.connect(lambda ex, t=target: self._done(t, ex))
        task.failed.connect(lambda msg, t=target: self._failed(t, msg))
        self._task, self._target = task, target
        task.start()
        st.emit(Topic.HEATMAP)  # the views say "computing"

    def _done(self, target: tuple[str, int], explanation) -> None:
        self._task = self._target = None
        self.state.set_explanation(*target, explanation)
        self.update()

    def _failed(self, target: tuple[str, int], message: str) -> None:
        self._task = self._target = None
        self.state.set_explanation_error(*target, message)
        self.update()

    def computing(self) -> tuple[str, int] | None:
        """The (path, cell) being explained now, or None."""
        return self._target if self.busy else None

    def cancel(self) -> None:
        """Drop the explanation in flight (another model was loaded)."""
        if self._task is not None:
            self._task.cancel()
            self._task.disconnect_all()
        self._task = self._target = None

    def shutdown(self) -> None:
        """Start nothing more (the window is closing)."""
        self._shut = True
        self.cancel()


class HeatmapBox(QGroupBox):
    """Side-panel group: "Show heatmap", the backbone, the opacity, what is shown, and the caption."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__("Heatmap", parent)
        self.state = st = state
        self.show_box = QCheckBox("Show heatmap (H)")
        self.show_box.setObjectName("showHeatmap")
        self.show_box.setToolTip("Where each network looked for the ALL class (Grad-CAM), computed on demand")
        self.show_box.setChecked(st.heatmap_visible)
        self.show_box.toggled.connect(lambda on: st.set_heatmap(visible=on))
        self.backbone = QComboBox()
        for b in HEATMAP_BACKBONES:
            self.backbone.addItem(BACKBONE_LABELS.get(b, b), b)
        self.backbone.currentIndexChanged.connect(lambda i: st.set_heatmap(backbone=self.backbone.itemData(i)))
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(st.heatmap_opacity * 100))
        self.opacity.setToolTip("Heatmap opacity")
        self.opacity.valueChanged.connect(lambda v: st.set_heatmap(opacity=v / 100))
        row = QHBoxLayout()
        row.addWidget(self.show_box)
        row.addWidget(self.backbone)
        row2 = QHBoxLayout()
        row2.addWidget(QLabel("Opacity"))
        row2.addWidget(self.opacity, 1)
        self.status = QLabel("")
        self.status.setObjectName("heatmapStatus")
        self.status.setWordWrap(True)
        self.caption = QLabel(CAPTION)
        self.caption.setObjectName("heatmapCaption")
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet("color:#7a0000; font-weight:bold;")
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addLayout(row2)
        lay.addWidget(self.status)
        lay.addWidget(self.caption)
        for topic in (Topic.HEATMAP, Topic.CURRENT, Topic.PREDICTION, Topic.SELECTION, Topic.MODEL):
            st.subscribe(topic, self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        st = self.state
        with signals_blocked(self.show_box, self.backbone, self.opacity):
            self.show_box.setChecked(st.heatmap_visible)
            self.backbone.setCurrentIndex(max(0, self.backbone.findData(st.heatmap_backbone)))
            self.opacity.setValue(round(st.heatmap_opacity * 100))
        self.status.setText(self._status_text())

    def _status_text(self) -> str:
        st = self.state
        if not st.heatmap_visible:
            return "Off. Colours: clear/blue = none, red = most of the ALL evidence in the map."
        target = st.heatmap_target
        if target is None:
            return "No result to explain yet." if st.current else "No image open."
        path, cell = target
        where = "whole image" if cell < 0 else f"cell {cell + 1}"
        if target in st.explanation_errors:
            return f"No heatmap for the {where}: {st.explanation_errors[target]}"
        ex = st.explanations.get(target)
        if ex is None:
            return f"Computing the heatmaps of the {where}\u2026"
        b = st.heatmap_backbone
        name = BACKBONE_LABELS.get(b, b)
        if b not in ex.heatmaps:
            return f"This model has no {name} probe; choose the other network."
        text = (f"{name}, {where}: probe P(ALL) {ex.probability(b):.2f} (the probe's, not the ensemble's). "
                "Clear/blue = none, red = most of the ALL evidence in this map.")
        if ex.peak_logit[b] <= 0:
            text = f"{name}, {where}: no part of it raised the probe's ALL score (the map is empty)."
        elif ex.probability(b) < 0.5:
            text += " The probe calls this region normal: the map shows where what little ALL evidence there is lies."
        return " ".join([text] + list(ex.notes))
