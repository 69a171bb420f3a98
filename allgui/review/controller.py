"""Review mode in the window: the review bar, Review menu and shortcuts, case files, table column and filter.

The review bar (:mod:`allgui.review.bar`: Confirm / ALL blast / Normal / Unclassifiable, comment,
previous / next, undo / redo, table filter) sits in a panel under the image; the case file entries
of the File menu and the case report export come from :mod:`allgui.review.cases`.

All state lives in :class:`allgui.review.review_model.ReviewModel` (Qt-free, persisted in the case file on every
action); these views only show it and forward the user's actions. Keys: A = ALL blast, N = normal,
U = unclassifiable, C = confirm the model, J / K = next / previous image in the table's order,
Ctrl+Z / Ctrl+Shift+Z = undo / redo a review. A decision on the whole image moves on to the next
image (unless switched off); with a cell of a field selected, the decision is that cell's. The table's
order is the review queue unless the user sorts it by a column; Review > Review order restores it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, QStandardPaths, Qt, QThreadPool
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import QInputDialog, QLineEdit, QMenu, QMessageBox, QStatusBar, QWidget

from allgui.resources import samples_dir
from allgui.review.bar import ReviewBar, table_cell
from allgui.review.cases import CaseController
from allgui.review.review_model import ReviewModel, ReviewRefused
from allgui.state import AppState, Topic
from allgui.workers import ThreadTask
from trainer.cases import DEFAULT_CASE_NAME, REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE, Review, file_sha256
from trainer.cases.records import card_summary
from trainer.util.errors import AllguiError, CaseError


def _hash_files(paths: list[str], progress, cancel, emit) -> int:
    """Worker: content hashes of image files, handed over in batches of 16 as ``{path: sha256}``."""
    batch: dict[str, str] = {}
    for p in paths:
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


class ReviewController(QObject):
    """Review mode: the review bar, the Review menu and its shortcuts, the table's Review column and filter.

    Parameters
    ----------
    parent : QWidget
        The window: parent of the dialogs and of the actions, whose shortcuts work wherever its focus is.
    review : ReviewModel
        The reviews and the case file they are kept in.
    state : AppState
        The open images and their results.
    settings : QSettings
        The reviewer's name and whether a decision moves on to the next image.
    table : BatchTable
        Gets the Review column (``batch.review_info``) and the filter; its order is the order of J / K.
    status_bar : QStatusBar
        Where refusals and confirmations go.
    cases : CaseController
        Asks where to keep a case when the default place cannot be written.
    readable : callable, optional
        ``readable(path)``: whether the picture of an image could be read; one that could not is shown to
        nobody, so it cannot be reviewed (default: every image).

    The window places :attr:`bar` (a panel) and :attr:`menu`, and calls :meth:`set_session` when the model
    changes (reviews record its identity).
    """

    def __init__(self, parent: QWidget, review: ReviewModel, state: AppState, settings: QSettings, table,
                 status_bar: QStatusBar, cases: CaseController,
                 readable: Callable[[str], bool] = lambda path: True) -> None:
        super().__init__(parent)
        self.window = parent
        self.readable = readable
        self.review, self.state, self.settings, self.table = review, state, settings, table
        self.status_bar = status_bar
        self.cases = cases
        self.review.reviewer = str(self.settings.value("review/reviewer", "", str) or "")
        if samples_dir().is_dir():   # the bundled samples: keep their case in the user's data folder
            base = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".allgui")
            self.review.case_redirects[samples_dir().resolve()] = Path(base) / "cases" / f"samples-{DEFAULT_CASE_NAME}"
        self._hash_task: ThreadTask | None = None
        self._refused: set[str] = set()      # case files already reported as refused

        self.bar = ReviewBar()
        self.bar.advance.setChecked(self.settings.value("review/advance", True, bool))
        self.bar.advance.toggled.connect(lambda on: self.settings.setValue("review/advance", on))
        self.bar.decided.connect(self.decide)
        self.bar.confirmRequested.connect(self.confirm)
        self.bar.stepRequested.connect(self.step)
        self.bar.undoRequested.connect(self.undo)
        self.bar.redoRequested.connect(self.redo)
        self.bar.filterChanged.connect(self.review.set_filter)
        self.bar.reviewOrderRequested.connect(self.review_order)
        self.bar.commentSubmitted.connect(self.save_comment)
        QShortcut(QKeySequence(Qt.Key_Escape), self.bar.comment, context=Qt.WidgetShortcut,
                  activated=lambda: self.window.setFocus())   # Esc: back to the shortcuts
        self.menu = self._build_menu()

        self.table.batch.review_info = self._review_info
        self.table.batch.update_all()
        for topic, cb in ((Topic.CURRENT, self.refresh), (Topic.SELECTION, self.refresh),
                          (Topic.THRESHOLD, self.refresh), (Topic.PREDICTION, self._on_prediction),
                          (Topic.IMAGES, self._on_images)):
            self.state.subscribe(topic, cb)
        self.review.subscribe("review", self._on_review)
        self.review.subscribe("case", self.refresh)
        self.review.subscribe("filter", self._on_filter)
        self.refresh()

    def close(self) -> None:
        """The window closes: stop background work and close the case file."""
        if self._hash_task is not None and self._hash_task.running:
            self._hash_task.cancel()
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

    def _build_menu(self) -> QMenu:
        m = QMenu("Re&view", self.window)
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
        self.act_order = self._act(m, "Review &order: what most needs a person first", self.review_order)
        m.addSeparator()
        self._act(m, "Reviewer &name\u2026", self.ask_reviewer)
        return m

    # ---- model and images ---------------------------------------------------------------------
    def set_session(self, session) -> None:
        """The model changed: reviews from now on record its identity (``session``: a ModelSession)."""
        self._guard(lambda: self.review.set_model(session.sha256, session.name, card_summary(session.card)))
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
        if opened is not None:   # the whole case: its images from other folders come too
            self.status_bar.showMessage(f"Case {opened.name} opened: earlier reviews restored"
                                        + self.cases.open_case_images(make_current=False), 8000)
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
            self.status_bar.showMessage(str(exc), 8000)
        except AllguiError as exc:
            QMessageBox.warning(self.window, "Review not recorded", str(exc))
        return None

    def ask_reviewer(self) -> bool:
        name, ok = QInputDialog.getText(self.window, "Reviewer",
                                        "Your name, recorded with every review you make:",
                                        QLineEdit.Normal, self.review.reviewer)
        self.window.activateWindow()   # back to the images (keys meanwhile: MainWindow.keyPressEvent)
        if ok and name.strip():
            self.review.reviewer = name.strip()
            self.settings.setValue("review/reviewer", self.review.reviewer)
            self.refresh()
            return True
        return False

    def _ready(self) -> bool:
        """A reviewer name, and a case file that can be written (asking where, when needed)."""
        if not self.review.reviewer and not self.ask_reviewer():
            self.status_bar.showMessage("No review recorded: a reviewer's name is needed.", 8000)
            return False
        if self.review.store is None:
            try:
                self.review.ensure_case()
            except ReviewRefused as exc:
                self.status_bar.showMessage(str(exc), 8000)
                return False
            except CaseError as exc:
                QMessageBox.warning(self.window, "Case file", f"{exc}\n\nChoose where to keep this case.")
                return self.cases.new_case_dialog()
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

    def review_order(self) -> None:
        """Sort the table (and so Next / Previous) in the review queue's order."""
        self.table.review_order()
        self.status_bar.showMessage("Review order: outside training first, then uncertain, then the closest to "
                                    "the threshold", 5000)

    def step(self, delta: int) -> None:
        nxt = self._next_path(delta)
        if nxt is not None:
            self.state.set_current(nxt)

    def decide(self, decision: str, confirmed: bool = False) -> Review | None:
        path = self.state.current
        if path is None:
            return None
        if path in self.state.errors and not self.readable(path):
            self.status_bar.showMessage(f"{Path(path).name} could not be read: there is nothing to review.", 8000)
            return None
        if not self._ready():
            return None
        _, cell = self.review.target()
        advance = self.bar.advance.isChecked() and cell < 0
        nxt = self._next_path(1) if advance else None
        comment = self.bar.comment.text()
        r = self._guard(lambda: self.review.confirm(comment) if confirmed else self.review.decide(decision, comment))
        if r is not None:
            what = f"cell {cell + 1}" if cell >= 0 else Path(r.path).name
            self.status_bar.showMessage(
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
            self.status_bar.showMessage("Choose a decision (C, A, N or U); the comment is saved with it.", 6000)
            return
        if self._ready():
            self._guard(lambda: self.review.decide(r.reviewer_decision, self.bar.comment.text(),
                                                   confirmed=bool(r.confirmed)))
        self.window.setFocus()

    def _follow(self, r: Review | None, verb: str) -> None:
        if r is None:
            self.status_bar.showMessage(f"Nothing to {verb.lower()}.", 4000)
            return
        path = self.review.path_of(r)
        if path is not None:
            self.state.set_current(path)
            if r.cell >= 0:
                self.state.select_cell(r.cell)
        self.status_bar.showMessage(f"{verb}: {Path(r.path).name}"
                                            + (f" cell {r.cell + 1}" if r.cell >= 0 else "")
                                            + f" ({r.reviewer_decision})", 5000)

    def undo(self) -> None:
        self._follow(self._guard(self.review.undo), "Undone")

    def redo(self) -> None:
        self._follow(self._guard(self.review.redo), "Redone")

    # ---- views ----------------------------------------------------------------------------------
    def _review_info(self, path: str) -> tuple[str, Any, tuple | None, str]:
        return table_cell(self.review.status(path))

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
        path = self.state.current
        self.bar.show_review(self.review, readable=path is None or self.readable(path))
