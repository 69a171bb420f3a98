"""The review bar under the image and the look of reviews (colours, the batch table's Review column).

A thin view: it shows what :class:`allgui.review.review_model.ReviewModel` holds and emits what the user asks for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from allgui.imaging import DECISION_COLOURS
from allgui.review.review_model import FILTERS, ImageReview, ReviewModel
from trainer.cases import REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE
from trainer.inference.results import DECISION_OUTSIDE, DECISION_UNCERTAIN

OVERRIDE_RGB = (115, 25, 140)
REVIEW_RGB = {REVIEW_ALL: DECISION_COLOURS["ALL blast"], REVIEW_NORMAL: DECISION_COLOURS["normal"],
              REVIEW_UNCLASSIFIABLE: (110, 110, 110)}


def _rgb(c: tuple) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def table_cell(s: ImageReview) -> tuple[str, Any, tuple | None, str]:
    """The batch table's Review column for one image: text, sort key, colour, tooltip."""
    r = s.review
    colour = None
    tip = ""
    if r is not None:
        colour = OVERRIDE_RGB if r.override else REVIEW_RGB.get(r.reviewer_decision)
        tip = (f"{r.reviewer_decision} by {r.reviewer}, {r.at[:16].replace('T', ' ')} UTC; model: "
               f"{r.model_decision}" + (f"\n\u201c{r.comment}\u201d" if r.comment else ""))
    key = (2 if s.override else 1 if s.reviewed else 0, s.text())
    return s.text(), key, colour, tip


class ReviewBar(QWidget):
    """The review controls under the image. Emits what the user asked for; shows what it is told."""

    decided = Signal(str)
    confirmRequested = Signal()
    stepRequested = Signal(int)
    undoRequested = Signal()
    redoRequested = Signal()
    filterChanged = Signal(str)
    commentSubmitted = Signal()
    reviewOrderRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewBar")
        self._comment_for: tuple | None = None   # (path, cell, review id) whose comment the field shows
        v = QVBoxLayout(self)
        v.setContentsMargins(6, 4, 6, 4)
        v.setSpacing(4)
        v.addLayout(self._status_row())
        v.addLayout(self._decision_row())
        for w in (self.prev_btn, self.next_btn, self.confirm_btn, self.undo_btn, self.redo_btn, self.order_btn,
                  *self.buttons.values()):
            w.setFocusPolicy(Qt.NoFocus)    # keys stay with the window's shortcuts

    def _status_row(self) -> QHBoxLayout:
        """What is under review, the model, its status, the review progress and the case."""
        top = QHBoxLayout()
        self.target = QLabel("\u2014")
        self.target.setObjectName("reviewTarget")
        self.model = QLabel("")
        self.status = QLabel("")
        self.status.setObjectName("reviewStatus")
        self.progress = QLabel("")
        self.case = QLabel("")
        self.case.setObjectName("caseLabel")
        self.case.setStyleSheet("color:#555;")
        for w in (self.target, self.model, self.status):
            top.addWidget(w)
            top.addSpacing(10)
        top.addStretch(1)
        top.addWidget(self.progress)
        top.addSpacing(10)
        top.addWidget(self.case)
        return top

    def _decision_row(self) -> QHBoxLayout:
        """The decision buttons, the comment, undo / redo, stepping and the table filter."""
        row = QHBoxLayout()
        self.prev_btn = QPushButton("\u25c0 Previous (K)")
        self.prev_btn.clicked.connect(lambda: self.stepRequested.emit(-1))
        self.confirm_btn = QPushButton("Confirm (C)")
        self.confirm_btn.setToolTip("Agree with the model's decision")
        self.confirm_btn.clicked.connect(self.confirmRequested.emit)
        self.buttons: dict[str, QPushButton] = {}
        for decision, label in ((REVIEW_ALL, "ALL blast (A)"), (REVIEW_NORMAL, "Normal (N)"),
                                (REVIEW_UNCLASSIFIABLE, "Unclassifiable (U)")):
            b = QPushButton(label)
            b.setStyleSheet(f"color:{_rgb(REVIEW_RGB[decision])}; font-weight:bold;")
            b.clicked.connect(lambda _=False, d=decision: self.decided.emit(d))
            self.buttons[decision] = b
        self.comment = QLineEdit()
        self.comment.setObjectName("reviewComment")
        self.comment.setPlaceholderText("comment (optional; Enter saves it with the decision)")
        self.comment.setClearButtonEnabled(True)
        self.comment.returnPressed.connect(self.commentSubmitted.emit)
        self.undo_btn = QPushButton("Undo")
        self.undo_btn.setToolTip("Undo the last review (Ctrl+Z)")
        self.undo_btn.clicked.connect(self.undoRequested.emit)
        self.redo_btn = QPushButton("Redo")
        self.redo_btn.setToolTip("Redo (Ctrl+Shift+Z)")
        self.redo_btn.clicked.connect(self.redoRequested.emit)
        self.next_btn = QPushButton("Next (J) \u25b6")
        self.next_btn.clicked.connect(lambda: self.stepRequested.emit(1))
        self.advance = QCheckBox("Next image after a decision")
        self.advance.setChecked(True)
        self.filter = QComboBox()
        self.filter.setObjectName("reviewFilter")
        for key, label in FILTERS.items():
            self.filter.addItem(label, key)
        self.filter.setToolTip("Images shown in the table (and visited by Next / Previous)")
        self.filter.currentIndexChanged.connect(lambda i: self.filterChanged.emit(self.filter.itemData(i)))
        self.order_btn = QPushButton("Review order")
        self.order_btn.setObjectName("reviewOrder")
        self.order_btn.setToolTip("Sort the table as the review queue: outside training first, then uncertain, "
                                  "then the closest to the threshold (a click on a column header sorts by it)")
        self.order_btn.clicked.connect(self.reviewOrderRequested.emit)
        row.addWidget(self.prev_btn)
        row.addWidget(self.confirm_btn)
        for b in self.buttons.values():
            row.addWidget(b)
        row.addWidget(self.comment, 1)
        row.addWidget(self.undo_btn)
        row.addWidget(self.redo_btn)
        row.addWidget(self.next_btn)
        row.addWidget(self.advance)
        row.addWidget(QLabel("Show"))
        row.addWidget(self.filter)
        row.addWidget(self.order_btn)
        return row

    def set_filter(self, key: str) -> None:
        i = self.filter.findData(key)
        if i >= 0 and i != self.filter.currentIndex():
            self.filter.blockSignals(True)
            self.filter.setCurrentIndex(i)
            self.filter.blockSignals(False)


    def show_review(self, rv: ReviewModel, readable: bool = True) -> None:
        """Show the current image's (or cell's) model result and review, the progress and the case.

        ``readable``: whether the current image's picture could be read (the decisions need it).
        """
        bar, st = self, rv.state
        store = rv.store
        if store is not None:
            bar.case.setText(f"Case: {store.name} ({store.path.name})"
                             + (" \u2014 final, signed" if store.signoff is not None else ""))
            bar.case.setToolTip(str(store.path))
        else:
            default = rv.default_case_path()
            bar.case.setText("No case file yet" + (f": the first decision creates {default.name}" if default else ""))
            bar.case.setToolTip(str(default or ""))
        c = rv.counts()
        bar.progress.setText(f"{c['reviewed']} of {c['images']} reviewed" +
                             (f", {c['overrides']} overridden" if c["overrides"] else ""))
        bar.undo_btn.setEnabled(rv.can_undo)
        bar.redo_btn.setEnabled(rv.can_redo)
        path = st.current
        enabled = path is not None and (path in st.predictions or (path in st.errors and readable))
        for w in (bar.confirm_btn, *bar.buttons.values()):
            w.setEnabled(enabled)
        if path is None:
            self._comment_for = None
            bar.target.setText("No image open")
            bar.model.setText("")
            bar.status.setText("")
            return
        _, cell = rv.target()
        pred = st.predictions.get(path)
        where = f"cell {cell + 1} of {len(pred.cells)}" if cell >= 0 and pred else "whole image"
        bar.target.setText(f"<b>{Path(path).name}</b> \u2014 {where}")
        model = rv.model_decision()
        if model is None:
            if path in st.errors:
                bar.model.setText("model: could not analyse" if readable else "the file could not be read")
            else:  # as the side panel says: nothing is analysed without a model
                bar.model.setText("model: analysing\u2026" if st.model_name else "model: no model loaded")
        elif cell >= 0 and pred is not None and pred.kind == "field" and not pred.field_by_cells:
            # a model that judges whole fields scored this cell: a score, not a decision
            bar.model.setText(f"model: <small style='color:#8c8c8c'>cell score {pred.cells[cell].probability:.3f}, "
                              "not validated</small>")
        else:
            colour = DECISION_COLOURS.get(model, (0, 0, 0))
            bar.model.setText(f"model: <b style='color:{_rgb(colour)}'>{model}</b>")
        # nothing to confirm where the model gives no class for lack of certainty or of like training images
        bar.confirm_btn.setEnabled(enabled and model is not None and model not in (DECISION_UNCERTAIN,
                                                                                    DECISION_OUTSIDE))
        r = rv.review_for(path, cell)
        if r is None:
            bar.status.setText("<span style='color:#777'>not reviewed</span>")
        else:
            if r.override:
                text = f"<b style='color:{_rgb(OVERRIDE_RGB)}'>override: {r.reviewer_decision}</b>"
            else:
                text = f"<b style='color:{_rgb(REVIEW_RGB[r.reviewer_decision])}'>{r.reviewer_decision}</b>"
            bar.status.setText(f"your decision: {text} <span style='color:#777'>({r.reviewer}, "
                               f"{r.at[11:16]} UTC)</span>")
        shown = (path, cell, r.id if r is not None else None)
        if shown != self._comment_for:      # another image, cell or review: its comment (typing is kept)
            self._comment_for = shown
            bar.comment.setText(r.comment if r is not None else "")
