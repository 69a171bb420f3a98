"""Case files in the app: File > New case, Open case and Export case report (the case controller)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QThreadPool, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMessageBox, QStatusBar, QWidget

from allgui.review.review_model import ReviewModel
from allgui.state import AppState
from allgui.workers import ThreadTask
from trainer.cases import DEFAULT_CASE_NAME
from trainer.util.errors import CaseError

CASE_FILTER = "allgui case (*.sqlite);;All files (*)"


def _write_report(case: str, output: str, per_page: int, thresholds: dict, band: float, model_sha256: str,
                  progress, cancel, emit) -> dict:
    # matplotlib's PDF writer costs half a second: loaded when a report is written, not at start-up
    from trainer.cases.report import write_case_report

    return write_case_report(case, output, per_page=per_page, thresholds=thresholds, band=band,
                             model_sha256=model_sha256, progress=progress, cancel=cancel)


class CaseController(QObject):
    """New / open a case file, export its report.

    Parameters
    ----------
    parent : QWidget
        The window: parent of the dialogs and of the actions.
    review : ReviewModel
        Holds the open case file.
    state : AppState
        The open images, thresholds and band (written into the report).
    settings : QSettings
        The folders the dialogs start in.
    status_bar : QStatusBar
        Where short confirmations go.
    open_files : callable
        Opens image files (those of an opened case that are not open yet).

    Signals
    -------
    reportWritten(path)
        A case report was written to ``path``.
    """

    reportWritten = Signal(str)

    def __init__(self, parent: QWidget, review: ReviewModel, state: AppState, settings: QSettings,
                 status_bar: QStatusBar, open_files: Callable[[list[str]], None]) -> None:
        super().__init__(parent)
        self.dialog_parent = parent
        self.review, self.state, self.settings = review, state, settings
        self.status_bar = status_bar
        self.open_files = open_files
        self.report_task: ThreadTask | None = None
        #: File menu entries (the window places them)
        self.act_new_case = QAction("&New case\u2026", parent)
        self.act_open_case = QAction("Open &case\u2026", parent)
        self.act_export_report = QAction("Export case &report (PDF)\u2026", parent)
        self.act_new_case.triggered.connect(lambda: self.new_case_dialog())
        self.act_open_case.triggered.connect(lambda: self.open_case_dialog())
        self.act_export_report.triggered.connect(lambda: self.export_report_dialog())

    @property
    def actions(self) -> tuple[QAction, QAction, QAction]:
        """New case, Open case, Export case report."""
        return self.act_new_case, self.act_open_case, self.act_export_report

    def _start_dir(self) -> str:
        default = self.review.default_case_path()
        return str(default.parent) if default is not None else str(self.settings.value("dirs/case", str(Path.home())))

    def new_case_dialog(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(self.dialog_parent, "New case file",
                                              str(Path(self._start_dir()) / DEFAULT_CASE_NAME), CASE_FILTER)
        if not path:
            return False
        try:
            self.review.new_case(path)
        except CaseError as exc:
            QMessageBox.warning(self.dialog_parent, "New case", str(exc))
            return False
        self.settings.setValue("dirs/case", str(Path(path).parent))
        return True

    def open_case_dialog(self) -> bool:
        path, _ = QFileDialog.getOpenFileName(self.dialog_parent, "Open case file", self._start_dir(), CASE_FILTER)
        return bool(path) and self.open_case(path)

    def open_case(self, path: str) -> bool:
        """Open a case file and the images it holds that are not open yet (refused files: a message)."""
        try:
            store = self.review.open_case(path)
        except CaseError as exc:
            QMessageBox.warning(self.dialog_parent, "Open case", str(exc))
            return False
        self.settings.setValue("dirs/case", str(Path(path).parent))
        found, missing = [], 0
        for p, rel in store.image_paths().values():
            where = store.resolve(p, rel)
            if where is None:
                missing += 1
            elif str(where) not in self.state.paths:
                found.append(str(where))
        if found:
            self.open_files(found)
        msg = f"Case {Path(path).name} opened"
        if missing:
            msg += f"; {missing} of its images were not found"
        self.status_bar.showMessage(msg, 8000)
        return True

    def export_report_dialog(self) -> ThreadTask | None:
        if self.review.store is None:
            QMessageBox.information(self.dialog_parent, "Case report", "No case is open: review an image, or open "
                                    "a case (File \u2192 Open case\u2026), first.")
            return None
        start = Path(self.settings.value("dirs/report_pdf", str(self.review.store.path.parent), str))
        path, _ = QFileDialog.getSaveFileName(self.dialog_parent, "Export case report",
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
        task.progress.connect(lambda f, m: self.status_bar.showMessage(m, 3000))
        task.finished.connect(lambda counts, p=str(path): self._report_done(p, counts))
        task.failed.connect(lambda msg: QMessageBox.critical(self.dialog_parent, "Case report", msg))
        self.report_task = task
        return task.start()

    def _report_done(self, path: str, counts: dict) -> None:
        self.status_bar.showMessage(f"Case report written to {path} ({counts['pages']} pages)", 8000)
        self.reportWritten.emit(path)
