"""Review mode, the Qt side: the review bar (Confirm / ALL blast / Normal / Unclassifiable, comment,
previous / next, undo / redo, table filter), the Review column of the batch table, keyboard
shortcuts, the case file menu entries and the case report export.

All state lives in :class:`allgui.review.ReviewModel` (Qt-free, persisted in the case file on every
action); these views only show it and forward the user's actions. Keys: A = ALL blast, N = normal,
U = unclassifiable, C = confirm the model, J / K = next / previous image in the table's order,
Ctrl+Z / Ctrl+Shift+Z = undo / redo a review. A decision on the whole image moves on to the next
image (unless switched off); with a cell of a field selected, the decision is that cell's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, QStandardPaths, Qt, QThreadPool, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMainWindow,
    QMenu, QMessageBox, QPushButton, QVBoxLayout, QWidget,
)

from allgui.imaging import DECISION_COLOURS
from allgui.review import FILTERS, ImageReview, ReviewModel, ReviewRefused
from allgui.state import Topic
from allgui.workers import ThreadTask
from trainer.cases.records import card_summary
from trainer.cases.store import (
    DEFAULT_CASE_NAME, REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE, Review, file_sha256,
)
from trainer.util.errors import AllguiError, CaseError

OVERRIDE_RGB = (115, 25, 140)
REVIEW_RGB = {REVIEW_ALL: DECISION_COLOURS["ALL blast"], REVIEW_NORMAL: DECISION_COLOURS["normal"],
              REVIEW_UNCLASSIFIABLE: (110, 110, 110)}
CASE_FILTER = "allgui case (*.sqlite);;All files (*)"


def _rgb(c: tuple) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _hash_files(paths: list[str], progress, cancel, emit) -> int:
    """Worker: content hashes of image files, handed over in batches of 16 as ``{path: sha256}``."""
    batch: dict[str, str] = {}
    for i, p in enumerate(paths):
        if cancel():
            break
        try:
            batch[p] = file_sha256(p)
        except OSError:
            continue
        if len(batch) >= 16:
            emit(batch)
            batch = {}
    if batch:
        emit(batch)
    return len(paths)


def _model_identity(path: str | None, card: dict) -> str:
    """SHA-256 of the model bundle file, or of its card when there is no file."""
    if path and Path(path).is_file():
        return file_sha256(path)
    return hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()


def _write_report(case: str, output: str, per_page: int, thresholds: dict, band: float, model_sha256: str,
                  progress, cancel, emit) -> dict:
    from trainer.cases.report import write_case_report
    return write_case_report(case, output, per_page=per_page, thresholds=thresholds, band=band,
                             model_sha256=model_sha256, progress=progress, cancel=cancel)


class ReviewBar(QWidget):
    """The review controls under the image. Emits what the user asked for; shows what it is told."""

    decided = Signal(str)
    confirmRequested = Signal()
    stepRequested = Signal(int)
    undoRequested = Signal()
    redoRequested = Signal()
    filterChanged = Signal(str)
    commentSubmitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewBar")
        v = QVBoxLayout(self)
        v.setContentsMargins(6, 4, 6, 4)
        v.setSpacing(4)
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
        v.addLayout(top)

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
        v.addLayout(row)
        for w in (self.prev_btn, self.next_btn, self.confirm_btn, self.undo_btn, self.redo_btn, *self.buttons.values()):
            w.setFocusPolicy(Qt.NoFocus)    # keys stay with the window's shortcuts

    def set_filter(self, key: str) -> None:
        i = self.filter.findData(key)
        if i >= 0 and i != self.filter.currentIndex():
            self.filter.blockSignals(True)
            self.filter.setCurrentIndex(i)
            self.filter.blockSignals(False)


class ReviewController(QObject):
    """Puts review mode into a main window: the review bar (a panel under the image), the Review menu
    and shortcuts, File > New / Open case and Export case report, the table's Review column and
    filter. ``window`` provides ``state``, ``table``, ``settings``, ``analysis`` (its
    ``modelChanged(predictor, path)``), ``add_panel``, ``menus`` and ``open_files``."""

    reportWritten = Signal(str)

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.state = window.state
        self.table = window.table
        self.settings: QSettings = window.settings
        self.review = ReviewModel(self.state)
        self.review.reviewer = str(self.settings.value("review/reviewer", "", str) or "")
        from allgui.resources import samples_dir
        if samples_dir().is_dir():   # the bundled samples: keep their case in the user's data folder
            base = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".allgui")
            self.review.case_redirects[samples_dir().resolve()] = Path(base) / "cases" / f"samples-{DEFAULT_CASE_NAME}"
        self._hash_task: ThreadTask | None = None
        self._model_task: ThreadTask | None = None
        self.report_task: ThreadTask | None = None
        self._refused: set[str] = set()      # case files already reported as refused
        self._comment_for: tuple | None = None   # (path, cell, review id) the comment field shows

        self.bar = ReviewBar()
        self.dock = window.add_panel("Review", self.bar, Qt.BottomDockWidgetArea, "reviewDock")
        self.bar.advance.setChecked(self.settings.value("review/advance", True, bool))
        self.bar.advance.toggled.connect(lambda on: self.settings.setValue("review/advance", on))
        self.bar.decided.connect(self.decide)
        self.bar.confirmRequested.connect(self.confirm)
        self.bar.stepRequested.connect(self.step)
        self.bar.undoRequested.connect(self.undo)
        self.bar.redoRequested.connect(self.redo)
        self.bar.filterChanged.connect(self.review.set_filter)
        self.bar.commentSubmitted.connect(self.save_comment)
        QShortcut(QKeySequence(Qt.Key_Escape), self.bar.comment, context=Qt.WidgetShortcut,
                  activated=lambda: self.window.setFocus())   # Esc: back to the shortcuts
        self._build_menus()

        self.table.batch.review_info = self._review_info
        self.table.batch.update_all()
        for topic, cb in ((Topic.CURRENT, self.refresh), (Topic.SELECTION, self.refresh),
                          (Topic.THRESHOLD, self.refresh), (Topic.PREDICTION, self._on_prediction),
                          (Topic.IMAGES, self._on_images)):
            self.state.subscribe(topic, cb)
        self.review.subscribe("review", self._on_review)
        self.review.subscribe("case", self.refresh)
        self.review.subscribe("filter", self._on_filter)
        window.analysis.modelChanged.connect(self._on_model)
        if window.predictor is not None:
            self._on_model(window.predictor, window.model_path or "")
        self.refresh()

    def close(self) -> None:
        """The window closes: stop background work and close the case file."""
        for task in (self._hash_task, self._model_task):
            if task is not None and task.running:
                task.cancel()
        self.review.close_case()

    # ---- menus --------------------------------------------------------------------------------
    def _act(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        a = QAction(text, self.window)
        if shortcut is not None:
            seqs = shortcut if isinstance(shortcut, list) else [shortcut]
            a.setShortcuts([QKeySequence(s) for s in seqs])
            a.setShortcutContext(Qt.WindowShortcut)
        a.triggered.connect(lambda _=False: slot())
        menu.addAction(a)
        self.window.addAction(a)      # shortcuts work wherever the focus is in the window
        return a

    def _build_menus(self) -> None:
        w = self.window
        m = QMenu("Re&view", w)
        help_menu = w.menus.get("help")
        if help_menu is not None:
            w.menuBar().insertMenu(help_menu.menuAction(), m)
        else:
            w.menuBar().addMenu(m)
        w.menus["review"] = self.menu = m
        self.act_confirm = self._act(m, "&Confirm the model's decision", self.confirm, "C")
        self.act_all = self._act(m, "&ALL blast", lambda: self.decide(REVIEW_ALL), "A")
        self.act_normal = self._act(m, "&Normal", lambda: self.decide(REVIEW_NORMAL), "N")
        self.act_unclassifiable = self._act(m, "&Unclassifiable", lambda: self.decide(REVIEW_UNCLASSIFIABLE), "U")
        m.addSeparator()
        self.act_undo = self._act(m, "U&ndo review", self.undo, QKeySequence.Undo)
        self.act_redo = self._act(m, "&Redo review", self.redo, ["Ctrl+Shift+Z", "Ctrl+Y"])
        m.addSeparator()
        self.act_next = self._act(m, "Ne&xt image in the table", lambda: self.step(1), "J")
        self.act_prev = self._act(m, "&Previous image in the table", lambda: self.step(-1), "K")
        m.addSeparator()
        self._act(m, "Reviewer &name\u2026", self.ask_reviewer)
        file_menu = w.menus.get("file")
        if file_menu is not None:
            seps = [a for a in file_menu.actions() if a.isSeparator()]
            before = seps[-1] if seps else None   # above Quit
            self.act_new_case = QAction("&New case\u2026", self.window)
            self.act_open_case = QAction("Open &case\u2026", self.window)
            self.act_export_report = QAction("Export case &report (PDF)\u2026", self.window)
            self.act_new_case.triggered.connect(lambda: self.new_case_dialog())
            self.act_open_case.triggered.connect(lambda: self.open_case_dialog())
            self.act_export_report.triggered.connect(lambda: self.export_report_dialog())
            for a in (self.act_new_case, self.act_open_case, self.act_export_report):
                file_menu.insertAction(before, a) if before is not None else file_menu.addAction(a)
            sep = QAction(self.window)
            sep.setSeparator(True)
            file_menu.insertAction(before, sep) if before is not None else file_menu.addAction(sep)

    # ---- model and images ---------------------------------------------------------------------
    def _on_model(self, predictor, path: str) -> None:
        card = dict(getattr(predictor, "model_card", {}) or {})
        name = str(card.get("name") or (Path(path).stem if path else "model"))
        self.review.model_sha256 = ""          # until the new model is identified
        task = ThreadTask(lambda progress, cancel, emit: _model_identity(path, card),
                          pool=QThreadPool.globalInstance(), name="model-hash")
        task.finished.connect(lambda sha, n=name, c=card: self._model_identified(sha, n, c))
        self._model_task = task
        task.start()

    def _model_identified(self, sha: str, name: str, card: dict) -> None:
        self._guard(lambda: self.review.set_model(sha, name, card_summary(card)))
        self.refresh()

    def _on_images(self) -> None:
        try:
            opened = self.review.follow_images()
        except CaseError as exc:
            where = str(self.review.default_case_path())
            if where not in self._refused:
                self._refused.add(where)
                QMessageBox.warning(self.window, "Case file refused",
                                    f"{exc}\n\nReviews of these images are not recorded until you open or create "
                                    "another case (File \u2192 New case\u2026).")
            opened = None
        if opened is not None:
            self.window.statusBar().showMessage(f"Case {opened.name} opened: earlier reviews restored", 6000)
        self._hash_missing()
        self.refresh()

    def _hash_missing(self) -> None:
        todo = self.review.missing_hashes()
        if not todo:
            return
        if self._hash_task is not None and self._hash_task.running:
            self._hash_task.cancel()
        task = ThreadTask(_hash_files, todo, pool=QThreadPool.globalInstance(), name="hash-images")
        task.partial.connect(lambda batch: self._guard(lambda: self.review.set_hashes(batch)))
        self._hash_task = task
        task.start()

    def _on_prediction(self, path: str) -> None:
        if path == self.state.current:
            self.refresh()

    # ---- actions --------------------------------------------------------------------------------
    def _guard(self, fn) -> Any:
        """Run a review action; a refusal goes to the status bar, a case file error to a message box."""
        try:
            return fn()
        except ReviewRefused as exc:
            self.window.statusBar().showMessage(str(exc), 8000)
        except AllguiError as exc:
            QMessageBox.warning(self.window, "Review not recorded", str(exc))
        return None

    def ask_reviewer(self) -> bool:
        name, ok = QInputDialog.getText(self.window, "Reviewer",
                                        "Your name, recorded with every review you make:",
                                        QLineEdit.Normal, self.review.reviewer)
        if ok and name.strip():
            self.review.reviewer = name.strip()
            self.settings.setValue("review/reviewer", self.review.reviewer)
            self.refresh()
            return True
        return False

    def _ready(self) -> bool:
        """A reviewer name, and a case file that can be written (asking where, when needed)."""
        if not self.review.reviewer and not self.ask_reviewer():
            self.window.statusBar().showMessage("No review recorded: a reviewer's name is needed.", 8000)
            return False
        if self.review.store is None:
            try:
                self.review.ensure_case()
            except ReviewRefused as exc:
                self.window.statusBar().showMessage(str(exc), 8000)
                return False
            except CaseError as exc:
                QMessageBox.warning(self.window, "Case file", f"{exc}\n\nChoose where to keep this case.")
                return self.new_case_dialog()
        return True

    def _next_path(self, delta: int) -> str | None:
        order = self.table.visible_paths()
        cur = self.state.current
        if not order:
            return None
        if cur in order:
            return order[(order.index(cur) + delta) % len(order)]
        paths = self.state.paths
        i = paths.index(cur) if cur in paths else -1
        after = [p for p in (paths[i + 1:] + paths[:i + 1] if delta > 0 else paths[:i][::-1] + paths[i:][::-1])
                 if p in order]
        return after[0] if after else order[0]

    def step(self, delta: int) -> None:
        nxt = self._next_path(delta)
        if nxt is not None:
            self.state.set_current(nxt)

    def decide(self, decision: str, confirmed: bool = False) -> Review | None:
        if self.state.current is None or not self._ready():
            return None
        _, cell = self.review.target()
        advance = self.bar.advance.isChecked() and cell < 0
        nxt = self._next_path(1) if advance else None
        comment = self.bar.comment.text()
        r = self._guard(lambda: self.review.confirm(comment) if confirmed else self.review.decide(decision, comment))
        if r is not None:
            what = f"cell {cell + 1}" if cell >= 0 else Path(r.path).name
            self.window.statusBar().showMessage(
                f"{what}: {r.reviewer_decision}" + (" (override)" if r.override else "") + " recorded", 4000)
            if nxt is not None and nxt != self.state.current:
                self.state.set_current(nxt)
        return r

    def confirm(self) -> Review | None:
        return self.decide("", confirmed=True)

    def save_comment(self) -> None:
        """Enter in the comment field: the decision in effect again, with the new comment."""
        r = self.review.review_for(self.state.current, self.review.target()[1]) if self.state.current else None
        if r is None:
            self.window.statusBar().showMessage("Choose a decision (C, A, N or U); the comment is saved with it.", 6000)
            return
        if self._ready():
            self._guard(lambda: self.review.decide(r.reviewer_decision, self.bar.comment.text(),
                                                   confirmed=bool(r.confirmed)))
        self.window.setFocus()

    def _follow(self, r: Review | None, verb: str) -> None:
        if r is None:
            self.window.statusBar().showMessage(f"Nothing to {verb.lower()}.", 4000)
            return
        path = self.review.path_of(r)
        if path is not None:
            self.state.set_current(path)
            if r.cell >= 0:
                self.state.select_cell(r.cell)
        self.window.statusBar().showMessage(f"{verb}: {Path(r.path).name}"
                                            + (f" cell {r.cell + 1}" if r.cell >= 0 else "")
                                            + f" ({r.reviewer_decision})", 5000)

    def undo(self) -> None:
        self._follow(self._guard(self.review.undo), "Undone")

    def redo(self) -> None:
        self._follow(self._guard(self.review.redo), "Redone")

    # ---- case files -----------------------------------------------------------------------------
    def _start_dir(self) -> str:
        default = self.review.default_case_path()
        return str(default.parent) if default is not None else str(self.settings.value("dirs/case", str(Path.home())))

    def new_case_dialog(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self.window, "New case file",
                                              str(Path(self._start_dir()) / DEFAULT_CASE_NAME), CASE_FILTER)
        if not path:
            return False
        try:
            self.review.new_case(path)
        except CaseError as exc:
            QMessageBox.warning(self.window, "New case", str(exc))
            return False
        self.settings.setValue("dirs/case", str(Path(path).parent))
        return True

    def open_case_dialog(self) -> bool:
        path, _ = QFileDialog.getOpenFileName(self.window, "Open case file", self._start_dir(), CASE_FILTER)
        return bool(path) and self.open_case(path)

    def open_case(self, path: str) -> bool:
        """Open a case file and the images it holds that are not open yet (refused files: a message)."""
        try:
            store = self.review.open_case(path)
        except CaseError as exc:
            QMessageBox.warning(self.window, "Open case", str(exc))
            return False
        self.settings.setValue("dirs/case", str(Path(path).parent))
        found, missing = [], 0
        for sha, (p, rel) in store.image_paths().items():
            where = store.resolve(p, rel)
            if where is None:
                missing += 1
            elif str(where) not in self.state.paths:
                found.append(str(where))
        if found:
            self.window.open_files(found)
        msg = f"Case {Path(path).name} opened"
        if missing:
            msg += f"; {missing} of its images were not found"
        self.window.statusBar().showMessage(msg, 8000)
        return True

    def export_report_dialog(self) -> ThreadTask | None:
        if self.review.store is None:
            QMessageBox.information(self.window, "Case report", "No case is open: review an image, or open a case "
                                    "(File \u2192 Open case\u2026), first.")
            return None
        start = Path(self.settings.value("dirs/report_pdf", str(self.review.store.path.parent), str))
        path, _ = QFileDialog.getSaveFileName(self.window, "Export case report",
                                              str(start / f"{self.review.store.name}-report.pdf"), "PDF (*.pdf)")
        if not path:
            return None
        self.settings.setValue("dirs/report_pdf", str(Path(path).parent))
        return self.export_report(path)

    def export_report(self, path: str, per_page: int = 6) -> ThreadTask | None:
        """Write the case report in the background (the window stays responsive)."""
        if self.review.store is None:
            return None
        st = self.state
        task = ThreadTask(_write_report, str(self.review.store.path), str(path), per_page, dict(st.thresholds),
                          st.band, self.review.model_sha256, pool=QThreadPool.globalInstance(), name="case-report")
        task.progress.connect(lambda f, m: self.window.statusBar().showMessage(m, 3000))
        task.finished.connect(lambda counts, p=str(path): self._report_done(p, counts))
        task.failed.connect(lambda msg: QMessageBox.critical(self.window, "Case report", msg))
        self.report_task = task
        return task.start()

    def _report_done(self, path: str, counts: dict) -> None:
        self.window.statusBar().showMessage(f"Case report written to {path} ({counts['pages']} pages)", 8000)
        self.reportWritten.emit(path)

    # ---- views ----------------------------------------------------------------------------------
    def _review_info(self, path: str) -> tuple[str, Any, tuple | None, str]:
        s: ImageReview = self.review.status(path)
        r = s.review
        colour = None
        tip = ""
        if r is not None:
            colour = OVERRIDE_RGB if r.override else REVIEW_RGB.get(r.reviewer_decision)
            tip = (f"{r.reviewer_decision} by {r.reviewer}, {r.at[:16].replace('T', ' ')} UTC; model: "
                   f"{r.model_decision}" + (f"\n\u201c{r.comment}\u201d" if r.comment else ""))
        key = (2 if s.override else 1 if s.reviewed else 0, s.text())
        return s.text(), key, colour, tip

    def _on_review(self, path: str | None) -> None:
        if path is None:
            self.table.batch.update_all()
        else:
            self.table.batch.update_path(path)
        self.refresh()

    def _on_filter(self) -> None:
        self.bar.set_filter(self.review.filter)
        self.table.set_filter(None if self.review.filter == "all" else self.review.visible)

    def refresh(self, *_: Any) -> None:
        """Show the current image's (or cell's) model result and review, the progress and the case."""
        bar, st, rv = self.bar, self.state, self.review
        store = rv.store
        if store is not None:
            bar.case.setText(f"Case: {store.name} ({store.path.name})")
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
        enabled = path is not None and (path in st.predictions or path in st.errors)
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
            bar.model.setText("model: analysing\u2026" if path not in st.errors else "model: could not analyse")
        else:
            colour = DECISION_COLOURS.get(model, (0, 0, 0))
            bar.model.setText(f"model: <b style='color:{_rgb(colour)}'>{model}</b>")
        bar.confirm_btn.setEnabled(enabled and model is not None and model != "uncertain, review")
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
