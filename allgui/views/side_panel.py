"""Side panel: the decision, the probabilities, the votes and the threshold.

The image's decision in words (the headline, also while a cell of a field is selected), whether the image
is like the model's training images, the calibrated probability with the threshold beside it (greyed
and "not meaningful" outside training), the selected cell's own result, raw probability, per-classifier
votes (bar chart), the decision-threshold slider with the model's uncertain band and what it rests on,
validation sensitivity / specificity and a small ROC plot.

Moving the slider only sets ``state.threshold``; every view re-decides from cached probabilities.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from allgui.imaging import DECISION_COLOURS, counts_text
from allgui.qtutil import signals_blocked
from allgui.state import MAX_BAND, AppState, Topic
from allgui.views.heatmap import HeatmapBox
from allgui.views.result_text import cell_text, domain_text, morphology_text, probability_text, rgb
from allgui.views.threshold_slider import ThresholdSlider
from trainer.inference.card_text import calibration_source
from trainer.inference.results import (
    DECISION_ALL,
    DECISION_NORMAL,
    DECISION_NOT_ASSESSABLE,
    DECISION_OUTSIDE,
    MODEL_NAMES,
)

SLIDER_STEPS = 1000
RESEARCH_NOTE = "Research use only \u2014 not for clinical diagnosis."
RARE_KIND_SHARE = 0.10  # warn when fewer of the training images were of the shown image's kind
class VotesChart(pg.PlotWidget):
    """Bars: each classifier's P(ALL); colour = its vote; tick label carries its ensemble weight."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(170)
        self.setMaximumHeight(200)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.setYRange(0, 1, padding=0.02)
        self.getPlotItem().setMenuEnabled(False)
        self.getAxis("left").setLabel("P(ALL)")
        self.getAxis("bottom").setHeight(40)
        self.addItem(pg.InfiniteLine(0.5, angle=0, pen=pg.mkPen((120, 120, 120), style=Qt.DashLine)))
        self.bars: pg.BarGraphItem | None = None
        self.names: list[str] = []

    def set_votes(self, votes, greyed: bool = False) -> None:
        """Bars of ``votes``; ``greyed``: all in grey (outside training, where the votes mean nothing)."""
        if self.bars is not None:
            self.removeItem(self.bars)
            self.bars = None
        self.names = [v.name for v in votes]
        if not votes:
            self.getAxis("bottom").setTicks([[]])
            return
        x = np.arange(len(votes))
        brushes = [pg.mkBrush(*(DECISION_COLOURS[DECISION_OUTSIDE] if greyed else DECISION_COLOURS[DECISION_ALL]
                                if v.vote else DECISION_COLOURS[DECISION_NORMAL])) for v in votes]
        # bar width shows the weight relative to an equal share
        n = len(votes)
        widths = [max(0.15, min(0.9, 0.6 * v.weight * n)) for v in votes]
        self.bars = pg.BarGraphItem(x=x, height=[v.probability for v in votes], width=widths, brushes=brushes)
        self.addItem(self.bars)
        self.getAxis("bottom").setTicks([[(i, f"{v.name}\nw {v.weight:.2f}") for i, v in enumerate(votes)]])
        self.setXRange(-0.6, len(votes) - 0.4, padding=0)


class RocPlot(pg.PlotWidget):
    """Validation ROC curve with the operating point of the current threshold."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(160)
        self.setMaximumHeight(200)
        self.setMouseEnabled(False, False)
        self.hideButtons()
        self.getPlotItem().setMenuEnabled(False)
        self.setXRange(0, 1, padding=0.02)
        self.setYRange(0, 1, padding=0.02)
        self.getAxis("bottom").setLabel("1 - specificity")
        self.getAxis("left").setLabel("sensitivity")
        self.plot([0, 1], [0, 1], pen=pg.mkPen((180, 180, 180), style=Qt.DashLine))
        self.curve = self.plot([], [], pen=pg.mkPen((40, 40, 40), width=2))
        self.point = pg.ScatterPlotItem(size=11, brush=pg.mkBrush(215, 25, 28), pen=pg.mkPen("k"))
        self.addItem(self.point)

    def set_curve(self, fpr, tpr) -> None:
        self.curve.setData(np.asarray(fpr, float), np.asarray(tpr, float))

    def set_point(self, sensitivity: float | None, specificity: float | None) -> None:
        if sensitivity is None or specificity is None:
            self.point.setData([], [])
        else:
            self.point.setData([1.0 - specificity], [sensitivity])


class SidePanel(QWidget):
    """The right-hand panel; observes the state."""

    thresholdReset = Signal()

    def __init__(self, state: AppState, parent=None) -> None:
        super().__init__(parent)
        self.state = state
        self.predictor = None  # the loaded model (trainer.inference.predictor.Predictor or alike), or None
        self.session = None    # its ModelSession (what its bands rest on), or None
        self._roc_key: str | None = None
        self.setMinimumWidth(360)
        lay = QVBoxLayout(self)
        lay.addWidget(self._research_note())
        self.caution = QLabel()
        self.caution.setObjectName("kindCaution")
        self.caution.setStyleSheet("background:#fde2e1; color:#8a1c12; border:1px solid #e0a09a; padding:4px;")
        self.caution.setWordWrap(True)
        self.caution.hide()
        lay.addWidget(self.caution)
        self.training_kinds: dict = {}
        lay.addWidget(self._result_box())
        lay.addWidget(self._threshold_box())   # right under the decision it sets: on screen at 1366 x 768
        self.heatmap = HeatmapBox(state)  # where the networks looked, with its caption
        lay.addWidget(self.heatmap)
        lay.addWidget(self._votes_box())
        lay.addStretch(1)

        self.slider.valueChanged.connect(lambda v: state.set_threshold(v / SLIDER_STEPS))
        for topic, cb in ((Topic.CURRENT, self.refresh), (Topic.PREDICTION, self._on_prediction),
                          (Topic.SELECTION, self.refresh), (Topic.THRESHOLD, self.on_threshold),
                          (Topic.MODEL, self.refresh)):
            state.subscribe(topic, cb)
        self.on_threshold()

    def _research_note(self) -> QWidget:
        """The research-use-only note at the top."""
        note = QLabel(RESEARCH_NOTE)
        note.setObjectName("researchNote")
        note.setStyleSheet("background:#fff3cd; color:#7a5b00; border:1px solid #e0c060; padding:4px;"
                           "font-weight:bold;")
        note.setAlignment(Qt.AlignCenter)
        note.setWordWrap(True)
        return note

    def _result_box(self) -> QWidget:
        """Decision, probabilities, cells and nucleus of the image or cell shown."""
        res = QGroupBox("Result")
        form = QFormLayout(res)
        self.where = QLabel("\u2014")
        self.where.setWordWrap(True)
        self.decision = QLabel("\u2014")
        f = QFont()
        f.setPointSize(f.pointSize() + 5)
        f.setBold(True)
        self.decision.setFont(f)
        self.domain = QLabel("\u2014")
        self.domain.setObjectName("trainingDomain")
        self.domain.setToolTip("Whether this image is like the images the model was trained on (its domain "
                               "check); outside them the model gives no class")
        self.calibrated = QLabel("\u2014")
        self.calibrated.setObjectName("calibratedProbability")
        self.cell_score = QLabel("\u2014")
        self.cell_score.setObjectName("cellScore")
        self.raw = QLabel("\u2014")
        self.vote_share = QLabel("\u2014")
        self.counts = QLabel("\u2014")
        self.morph = QLabel("\u2014")
        self.model = QLabel("\u2014")
        self.model.setObjectName("decidingModel")
        self.model.setToolTip("The calibrated model that judged this image: the crop model for single-cell "
                              "crops, the field model for smear fields")
        for w in (self.raw, self.vote_share, self.counts, self.morph, self.domain, self.cell_score):
            w.setWordWrap(True)
        form.addRow("Showing", self.where)
        form.addRow("Decision", self.decision)
        form.addRow("Training domain", self.domain)
        form.addRow("Decided by", self.model)
        form.addRow("Calibrated P(ALL)", self.calibrated)
        form.addRow("Selected cell", self.cell_score)
        self.result_form = form
        form.setRowVisible(self.cell_score, False)
        form.addRow("Raw ensemble P", self.raw)
        form.addRow("Weighted vote", self.vote_share)
        form.addRow("Cells", self.counts)
        form.addRow("Nucleus", self.morph)
        return res

    def _votes_box(self) -> QWidget:
        """Each classifier's P(ALL), coloured by its vote."""
        votes = QGroupBox("Classifier votes (bar width ~ ensemble weight)")
        vl = QVBoxLayout(votes)
        self.chart = VotesChart()
        vl.addWidget(self.chart)
        return votes

    def _threshold_box(self) -> QWidget:
        """The threshold slider, sensitivity / specificity, the uncertain band, the legend, ROC."""
        thr = QGroupBox("Decision threshold")
        self.threshold_box = thr
        tl = QVBoxLayout(thr)
        row = QHBoxLayout()
        self.slider = ThresholdSlider(SLIDER_STEPS)
        self.value = QLabel("0.500")
        self.value.setMinimumWidth(44)
        self.reset = QPushButton("Model default")
        self.reset.clicked.connect(self.thresholdReset.emit)
        row.addWidget(self.slider, 1)
        row.addWidget(self.value)
        row.addWidget(self.reset)
        tl.addLayout(row)
        # what the threshold means comes right under it; the band and its explanation after
        self.sens_spec = QLabel("\u2014")
        self.sens_spec.setWordWrap(True)
        tl.addWidget(self.sens_spec)
        brow = QHBoxLayout()
        brow.addWidget(QLabel("Uncertain band \u00b1"))
        self.band = QDoubleSpinBox()
        self.band.setRange(0.0, MAX_BAND)     # a band fitted where the target was not reached may be wide
        self.band.setSingleStep(0.01)
        self.band.setDecimals(3)         # fitted bands are not round numbers
        self.band.setValue(self.state.band)
        self.band.valueChanged.connect(self.state.set_band)
        brow.addWidget(self.band)
        brow.addStretch(1)
        tl.addLayout(brow)
        self.band_text = QLabel("\u2014")
        self.band_text.setObjectName("bandText")
        self.band_text.setWordWrap(True)
        tl.addWidget(self.band_text)
        legend = QLabel("Outlines: <span style='color:#08458f'>\u25a0</span><span style='color:#5aa0d7'>\u25a0</span>"
                        " normal \u00b7 <span style='color:#f09600'>\u25a0</span> uncertain, review (dashed) \u00b7 "
                        "<span style='color:#f05028'>\u25a0</span><span style='color:#a50026'>\u25a0</span> ALL blast"
                        "; darker = further from the threshold \u00b7 <span style='color:#969696'>\u25a0</span> "
                        "outside training (dotted grey): no class")
        legend.setWordWrap(True)
        tl.addWidget(legend)
        self.roc = RocPlot()
        tl.addWidget(self.roc)
        return thr

    # ---- model info ---------------------------------------------------------------------------
    def set_model(self, predictor, session=None) -> None:
        """Show ``predictor``'s validation ROC and operating points (None: no model).

        Uses ``predictor.validation_roc_for(key)``, ``operating_point(t, key)`` and
        ``test_operating_point(t, key)`` of the active model key (the current image's model), and
        ``session.band_text(key, band)`` (a :class:`~allgui.model.session.ModelSession`) for what its
        uncertain band rests on.
        """
        self.predictor = predictor
        self.session = session
        self._roc_key = None
        self.on_threshold()

    def _show_roc(self, key: str) -> None:
        if key == self._roc_key:
            return
        self._roc_key = key
        roc = self.predictor.validation_roc_for(key) if self.predictor is not None else None
        if roc:
            self.roc.set_curve(roc.get("fpr", []), roc.get("tpr", []))
        else:
            self.roc.set_curve([], [])

    def set_training_kinds(self, kinds: dict | None) -> None:
        """Shares of single-cell crops / smear fields in the model's training data (model card)."""
        self.training_kinds = dict(kinds or {})
        self.refresh()

    def _update_caution(self, kind: str | None, notes: list[str] | tuple = ()) -> None:
        """Show the image's own notes and a warning when the model hardly saw this kind of image."""
        lines = [f"Caution: {n}" for n in notes]
        share = self.training_kinds.get(kind) if kind else None
        if share is not None and share < RARE_KIND_SHARE:
            what = "single-cell crops" if kind == "single_cell" else "smear fields"
            lines.append(f"Caution: only {share:.0%} of this model's training images were {what}. "
                         f"Its output on {what} is not validated; see the model card.")
        self.caution.setText("\n".join(lines))
        self.caution.setVisible(bool(lines))

    # ---- observers ----------------------------------------------------------------------------
    def _on_prediction(self, path: str) -> None:
        if path == self.state.current:
            self.refresh()

    def on_threshold(self) -> None:
        st = self.state
        pos = int(round(st.threshold * SLIDER_STEPS))
        if self.slider.value() != pos:
            with signals_blocked(self.slider):
                self.slider.setValue(pos)
        if abs(self.band.value() - st.band) > 1e-9:
            with signals_blocked(self.band):
                self.band.setValue(st.band)
        self.value.setText(f"{st.threshold:.3f}")
        key = st.active_model
        name = MODEL_NAMES.get(key, key)
        several = len(st.thresholds) > 1
        self.threshold_box.setTitle(f"Decision threshold \u2014 {name}" if several else "Decision threshold")
        self.reset.setToolTip(f"Back to the {name}'s own threshold {st.default_threshold:.3f} "
                              f"and its own uncertain band \u00b1{st.default_band:.3f}")
        self.band_text.setText(self.session.band_text(key, st.band) if self.session is not None
                               else f"Uncertain band \u00b1{st.band:.3f}")
        if self.predictor is not None:
            self._show_roc(key)
            sens, spec = self.predictor.operating_point(st.threshold, key)
            section = (getattr(self.predictor, "model_card", {}).get("models") or {}).get(key) or {}
            text = (f"At {st.threshold:.3f}, {calibration_source(section)} (it set the threshold): sensitivity "
                    f"{sens:.1%}, specificity {spec:.1%}")
            held_out = self.predictor.test_operating_point(st.threshold, key)
            if held_out is not None:
                text += f"; test split (one split): sensitivity {held_out[0]:.1%}, specificity {held_out[1]:.1%}"
            self.sens_spec.setText(text)
            self.roc.set_point(sens, spec)
        else:
            self.sens_spec.setText("No model loaded.")
            self.roc.set_curve([], [])
            self._roc_key = None
            self.roc.set_point(None, None)
        self.refresh_decision()

    def refresh(self) -> None:
        st = self.state
        pred = st.prediction
        cell = st.selected
        if st.current is None:
            self._blank("No image open.")
            return
        if st.current in st.errors:
            self._blank("Could not analyse this image.")
            self.where.setText(st.errors[st.current])
            return
        if pred is None or cell is None:
            self._blank("Analysing\u2026" if st.model_name else "No model loaded.")
            return
        self._update_caution(pred.kind, pred.notes)
        self.model.setText(pred.model_name)
        if pred.model in self.state.thresholds and pred.model != self._roc_key:
            self.on_threshold()  # another model's threshold, ROC and operating points
        if pred.kind == "field" and cell.index >= 0:
            self.where.setText(f"cell {cell.index + 1} of {len(pred.cells)} (click the image background "
                               "for the whole field)")
        elif pred.field_by_cells:
            self.where.setText(f"whole field, {len(pred.cells)} white cells; most suspicious cell shown "
                               "(click a cell to select it)")
        elif pred.kind == "field":
            self.where.setText(f"whole field ({len(pred.cells)} white cells found; this model judges whole "
                               "fields, click a cell to see its own result)")
        else:
            self.where.setText("single-cell crop")
        shown = pred.deciding if cell.index < 0 else cell
        self.raw.setText(f"{shown.raw_probability:.3f}")
        self.vote_share.setText(f"{shown.vote_share:.0%} of the weight votes ALL")
        if shown.area_px:
            self.morph.setText(morphology_text(shown))
        else:
            self.morph.setText("\u2014")
        self.chart.set_votes(shown.votes, greyed=shown.in_domain is False)
        self.refresh_decision()

    def _blank(self, text: str) -> None:
        self.caution.hide()
        self.where.setText(text)
        for w in (self.raw, self.vote_share, self.morph, self.counts, self.calibrated, self.model, self.domain):
            w.setText("\u2014")
        self.result_form.setRowVisible(self.cell_score, False)
        self.decision.setText("\u2014")
        self.decision.setStyleSheet("")
        self.chart.set_votes([])

    def refresh_decision(self) -> None:
        """Decision, calibrated probability, the selected cell and counts at the current threshold (cheap).

        The headline is always the image's decision; a selected cell of a field gets its own line.
        """
        st = self.state
        pred = st.prediction
        cell = st.selected
        if pred is None or cell is None:
            return
        self.domain.setText(domain_text(pred))
        self.result_form.setRowVisible(self.cell_score, False)
        if not pred.assessable:
            self._headline(DECISION_NOT_ASSESSABLE)
            self.calibrated.setText("\u2014")
            self.counts.setText("No nucleus or white cell was found: the image gets no class "
                                "(check focus, staining and that it shows blood cells)")
            return
        threshold, band = st.threshold_for(pred), st.band_for(pred)
        decision = st.decision(pred)
        self._headline(decision)
        self.calibrated.setText(probability_text(pred.probability, threshold, band, decision == DECISION_OUTSIDE))
        if pred.kind == "field" and cell.index >= 0:
            self.cell_score.setText(cell_text(pred, cell, threshold, band))
            self.result_form.setRowVisible(self.cell_score, True)
        if pred.kind == "field" and not pred.field_by_cells:
            self.counts.setText(f"{len(pred.cells)} white cells found, outlined for review; this model "
                                "judges the whole field")
            if cell.index >= 0:
                self.counts.setText("This cell's own result, from a model trained on whole fields: "
                                    "for review only, not validated")
            return
        counts = pred.count(threshold, band)
        self.counts.setText(f"{sum(counts.values())} analysed: {counts_text(counts)}")

    def _headline(self, decision: str) -> None:
        """The big decision word, in its colour."""
        self.decision.setText(decision)
        self.decision.setStyleSheet(f"color: {rgb(DECISION_COLOURS[decision])};")
