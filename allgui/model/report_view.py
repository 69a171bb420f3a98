"""Viewer for an evaluation report written by ``allgui-train evaluate`` (report.md + figures)."""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from trainer.util.errors import AllguiError


def find_report(path: str | Path) -> Path:
    """The ``report.md`` at ``path`` (a report folder or the file itself). Raises AllguiError."""
    p = Path(path)
    md = p / "report.md" if p.is_dir() else p
    if md.name != "report.md" or not md.is_file():
        raise AllguiError(f"No evaluation report (report.md) found at {p}. Choose the folder that "
                          "'allgui-train evaluate --out' wrote.")
    return md


class ReportDialog(QDialog):
    """Shows the report's tables and figures exactly as written, the same numbers as its JSON."""

    def __init__(self, path: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        md = find_report(path)
        self.setWindowTitle(f"Evaluation report \u2014 {md.parent.name}")
        self.resize(1000, 800)
        lay = QVBoxLayout(self)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(False)
        self.browser.setSearchPaths([str(md.parent)])  # figures are linked relative to the report
        self.browser.document().setBaseUrl(QUrl.fromLocalFile(str(md.parent) + "/"))
        self.browser.setMarkdown(md.read_text(encoding="utf-8"))
        lay.addWidget(self.browser)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
