"""Batch table of the opened images: thumbnail, file, cells, probability, decision, review, flagged, domain.

Sortable and filterable; selecting a row makes that image current. Its default order is the review
queue (what most needs a person first: outside training, then uncertain, then by closeness to the
threshold; :func:`allgui.state.review_priority`), kept in a hidden column; a click on a header sorts by
that column and :meth:`BatchTable.review_order` restores the queue. Rows are computed from the state at
the current thresholds, so moving the slider only repaints (and re-sorts the queue).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QItemSelectionModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from allgui.imaging import DECISION_COLOURS
from allgui.state import AppState, Row, Topic
from allgui.views.result_text import checks_text
from trainer.inference.results import DECISION_OUTSIDE
from trainer.util.atomic import atomic_write
from trainer.util.csvsafe import safe_row
from trainer.vision.crop_flags import QUALITY_TEXT

COLUMNS = ("", "File", "Cells", "P(ALL)", "Decision", "Review", "Flagged", "Model", "Domain", "Queue")
REVIEW_COLUMN = 5
DOMAIN_COLUMN = 8
QUEUE_COLUMN = 9   # hidden: the review queue's order (Row.queue)
FLAGGED_COLUMN = 6  # "yes" (needs a look), "crop" (a quality flag: the crop itself needs a look) or "no"
SORT_ROLE = Qt.UserRole + 1
_DISPLAY, _SORT, _DECORATION = int(Qt.DisplayRole.value), int(SORT_ROLE), int(Qt.DecorationRole.value)
_FOREGROUND, _TOOLTIP, _ALIGN = int(Qt.ForegroundRole.value), int(Qt.ToolTipRole.value), int(Qt.TextAlignmentRole.value)
_ROLES = {_DISPLAY, _SORT, _DECORATION, _FOREGROUND, _TOOLTIP, _ALIGN}
_RIGHT = int((Qt.AlignRight | Qt.AlignVCenter).value)
_GREYED = QBrush(QColor(150, 150, 150))
CSV_FIELDS = ("file", "path", "kind", "cells", "n_all_blast", "n_uncertain", "probability", "raw_probability",
              "vote_share", "decision", "novelty", "in_domain", "domain_checks", "n_outside", "quality_flags",
              "flagged", "threshold", "band", "model", "error", "review")


def domain_cell(r: Row) -> tuple[str, float, str]:
    """The Domain column of a row: text, sort key (novelty; -1 without one), tooltip."""
    if r.novelty is None:
        if r.probability is None:
            return "", -1.0, ""
        return "\u2014", -1.0, "This model cannot tell images unlike its training (saved before the check); retrain it"
    cells = f", {r.n_outside} cells out" if r.n_outside and r.kind == "field" else ""
    if r.domain_checks:
        return (f"out {r.novelty:.2f}", r.novelty,
                f"Outside training (novelty {r.novelty:.2f}, above 1): {checks_text(r.domain_checks)}{cells}")
    return (f"in {r.novelty:.2f}{cells}", r.novelty,
            f"Like the training images (novelty {r.novelty:.2f}; above 1 is outside){cells}")


def to_qimage(image: np.ndarray) -> QImage:
    """QImage (copy) of an (H, W, 3) uint8 RGB array."""
    img = np.ascontiguousarray(image[..., :3], np.uint8)
    h, w = img.shape[:2]
    return QImage(img.data, w, h, 3 * w, QImage.Format_RGB888).copy()


_ROOT = QModelIndex()  # the invisible root: a table has no parent rows

class BatchModel(QAbstractTableModel):
    """Table model over ``state.paths``."""

    def __init__(self, state: AppState, parent=None) -> None:
        super().__init__(parent)
        self.state = state
        self.thumbs: dict[str, QPixmap] = {}
        self._rows: list[Row] = []
        self._view: list[tuple] = []
        self._index: dict[str, int] = {}
        #: path -> (text, sort key, RGB colour or None, tooltip) of the Review column (set by the review view)
        self.review_info: Callable[[str], tuple[str, Any, tuple | None, str]] | None = None
        state.subscribe(Topic.IMAGES, self.reset)
        state.subscribe(Topic.MODEL, self.reset)
        state.subscribe(Topic.PREDICTION, self.update_path)
        state.subscribe(Topic.THRESHOLD, self.update_all)

    def set_thumbnail(self, path: str, image: np.ndarray) -> None:
        self.thumbs[path] = QPixmap.fromImage(to_qimage(image))
        if path in self._index:
            i = self._index[path]
            self.dataChanged.emit(self.index(i, 0), self.index(i, 0))

    def _cells(self, r: Row) -> tuple:
        """Pre-rendered (display, sort key, foreground, review colour, review tooltip) of one row.

        data() only looks them up.
        """
        text, key, rcolour, rtip = self.review_info(r.path) if self.review_info is not None else ("", "", None, "")
        dtext, dkey, dtip = domain_cell(r)
        flag = "crop" if r.quality_flags else "yes" if r.flagged else ("" if r.decision == "pending" else "no")
        display = ("", r.file, "" if r.cells is None else str(r.cells),
                   "" if r.probability is None else f"{r.probability:.3f}", r.decision, text,
                   flag, r.model, dtext, "")
        sort = (0, r.file, r.cells if r.cells is not None else -1,
                r.probability if r.probability is not None else -1.0, r.decision, key, int(r.flagged), r.model,
                dkey, r.queue)
        colour = DECISION_COLOURS.get(r.decision)
        fg = QBrush(QColor(*colour)) if colour else (QBrush(QColor(160, 0, 0)) if r.decision == "error" else None)
        tips = {REVIEW_COLUMN: rtip, DOMAIN_COLUMN: dtip}
        if r.quality_flags:
            tips[FLAGGED_COLUMN] = tips[4] = ("Check the crop: " + "; ".join(QUALITY_TEXT[f] for f in r.quality_flags)
                                              + ". No class without review.")
        return display, sort, fg, QBrush(QColor(*rcolour)) if rcolour else None, tips

    def _set_rows(self, rows: list[Row]) -> None:
        self._rows = rows
        self._view = [self._cells(r) for r in rows]

    def reset(self) -> None:
        self.beginResetModel()
        self._set_rows(self.state.rows())
        self._index = {r.path: i for i, r in enumerate(self._rows)}
        self.endResetModel()

    def update_path(self, path: str) -> None:
        i = self._index.get(path)
        if i is None:
            return
        self._rows[i] = self.state.row(path)
        self._view[i] = self._cells(self._rows[i])
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(COLUMNS) - 1))

    def update_all(self) -> None:
        if not self._rows:
            return
        self._set_rows(self.state.rows())
        self.dataChanged.emit(self.index(0, 2), self.index(len(self._rows) - 1, len(COLUMNS) - 1))

    def row_at(self, i: int) -> Row:
        return self._rows[i]

    # ---- Qt model API -------------------------------------------------------------------------
    def rowCount(self, parent=_ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent=_ROOT) -> int:
        return len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.DisplayRole):
        if orientation == Qt.Horizontal and role == _DISPLAY:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.DisplayRole):
        role = int(role)
        if role not in _ROLES:
            return None
        i, col = index.row(), index.column()
        display, sort, fg, rfg, tips = self._view[i]
        if role == _DISPLAY:
            return display[col]
        if role == _SORT:
            return sort[col]
        if role == _DECORATION:
            return self.thumbs.get(self._rows[i].path) if col == 0 else None
        if role == _FOREGROUND:
            if col == REVIEW_COLUMN:
                return rfg
            if col == 3 and self._rows[i].decision == DECISION_OUTSIDE:
                return _GREYED                  # the probability means nothing outside training
            return fg if (col in (4, DOMAIN_COLUMN) or self._rows[i].decision == "error") else None
        if role == _TOOLTIP:
            if col == 3 and self._rows[i].decision == DECISION_OUTSIDE:
                return "Not meaningful outside training: the model gives this image no class"
            return tips.get(col) or self._rows[i].error or self._rows[i].path
        if role == _ALIGN:
            return _RIGHT if col in (2, 3) else None
        return None

    # ---- export -------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> int:
        """Write every row (at the current threshold) to ``path``; returns the number of rows."""
        st = self.state
        rows = st.rows()
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(CSV_FIELDS)
        for r in rows:  # names a spreadsheet would run as formulas are neutralised; odd bytes escaped
            w.writerow(safe_row([r.file, r.path, r.kind, _v(r.cells), _v(r.n_all), _v(r.n_uncertain),
                        _f(r.probability), _f(r.raw_probability), _f(r.vote_share), r.decision, _f(r.novelty),
                        {None: "", True: "yes", False: "no"}[None if r.novelty is None else not r.domain_checks],
                        " ".join(r.domain_checks), _v(r.n_outside if r.probability is not None else None),
                        "; ".join(r.quality_flags),
                        int(r.flagged), _f(r.threshold), _f(r.band), r.model, r.error,
                        self.review_info(r.path)[0] if self.review_info is not None else ""]))
        atomic_write(path, lambda fh: fh.write(buf.getvalue().encode("utf-8")))  # never a half-written CSV
        return len(rows)


def _v(x) -> str:
    return "" if x is None else str(x)


def _f(x) -> str:
    return "" if x is None else f"{x:.4f}"


class _FilterProxy(QSortFilterProxyModel):
    """Sorts on SORT_ROLE; shows the rows whose path ``accept`` takes (all without one)."""

    accept: Callable[[str], bool] | None = None

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:
        return self.accept is None or self.accept(self.sourceModel().row_at(row).path)


class BatchTable(QTableView):
    """Sortable, filterable view of :class:`BatchModel`; selecting a row makes its image current."""

    def __init__(self, state: AppState, parent=None) -> None:
        super().__init__(parent)
        self.state = state
        self.batch = BatchModel(state, self)
        self.proxy = _FilterProxy(self)
        self.proxy.setSourceModel(self.batch)
        self.proxy.setSortRole(SORT_ROLE)
        self.setModel(self.proxy)
        self.setSortingEnabled(True)
        self.setColumnHidden(QUEUE_COLUMN, True)
        self.review_order()
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setDefaultSectionSize(52)
        self.verticalHeader().setVisible(False)
        self._size_columns()
        self.setWordWrap(True)
        # names of one slide differ at the start (subject, cell number), not at the end: keep the start
        self.setTextElideMode(Qt.ElideRight)
        self.setIconSize(self.iconSize().expandedTo(self.iconSize().__class__(48, 48)))
        self.setAlternatingRowColors(True)
        self.selectionModel().currentRowChanged.connect(self._on_row)
        state.subscribe(Topic.CURRENT, self._select_current)

    _syncing = False

    #: widest text a column is sized for besides its header ("" = header only); wider cells wrap or elide
    COLUMN_TEXT = ("", "", "99", "0.000", "uncertain,", "confirmed", "yes", "model", "out 2.44", "")

    def _size_columns(self) -> None:
        """Every column as wide as its header (never clipped) and its usual text; the file name takes the rest.

        So the table needs no horizontal scrolling in its panel on a 1366-pixel screen; a name too long
        for its column shows its start, the full path in its tooltip.
        """
        hh = self.horizontalHeader()
        hh.setMinimumSectionSize(24)
        hh.setStretchLastSection(False)
        fm, hfm = self.fontMetrics(), hh.fontMetrics()
        pad = 2 * self.style().pixelMetric(self.style().PixelMetric.PM_HeaderMargin) + 6
        for col, text in enumerate(self.COLUMN_TEXT):
            if col == 1:
                hh.setSectionResizeMode(col, QHeaderView.Stretch)
                continue
            width = 54 if col == 0 else max(hfm.horizontalAdvance(COLUMNS[col]) + pad, fm.horizontalAdvance(text) + 8)
            hh.setSectionResizeMode(col, QHeaderView.Interactive)
            self.setColumnWidth(col, width)

    def review_order(self) -> None:
        """Sort in the review queue's order: what most needs a person first (the default)."""
        self.sortByColumn(QUEUE_COLUMN, Qt.AscendingOrder)

    @property
    def in_review_order(self) -> bool:
        return self.horizontalHeader().sortIndicatorSection() == QUEUE_COLUMN

    def set_filter(self, accept: Callable[[str], bool] | None) -> None:
        """Show only the rows whose path ``accept`` takes (None: every row)."""
        if hasattr(self.proxy, "beginFilterChange"):     # Qt >= 6.9
            self.proxy.beginFilterChange()
            self.proxy.accept = accept
            self.proxy.endFilterChange()
        else:
            self.proxy.accept = accept
            self.proxy.invalidateFilter()

    def visible_paths(self) -> list[str]:
        """Paths of the rows shown, in the table's (sorted, filtered) order."""
        return [self.batch.row_at(self.proxy.mapToSource(self.proxy.index(r, 0)).row()).path
                for r in range(self.proxy.rowCount())]

    def _on_row(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid() and not self._syncing:
            src = self.proxy.mapToSource(current)
            self.state.set_current(self.batch.row_at(src.row()).path)

    def _select_current(self) -> None:
        path = self.state.current
        i = self.batch._index.get(path) if path else None
        if i is None:
            return
        idx = self.proxy.mapFromSource(self.batch.index(i, 1))
        if idx.isValid() and self.currentIndex().row() != idx.row():
            self._syncing = True
            try:
                self.selectionModel().setCurrentIndex(
                    idx, QItemSelectionModel.ClearAndSelect | QItemSelectionModel.Rows)
            finally:
                self._syncing = False
            self.scrollTo(idx)
