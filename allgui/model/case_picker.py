"""The Retrain dialog's choice of case files whose reviewed images join the training data."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from trainer.cases import CaseStore
from trainer.util.errors import CaseError

SEPARATOR = ";"


class CasePicker(QWidget):
    """Case files, separated by ';', with Add\u2026 and 'Add the open case'.

    ``open_case`` returns the case open in the window (or None).
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.open_case: Callable[[], Path | None] = lambda: None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.edit = QLineEdit(text)
        self.edit.setPlaceholderText("none: only the data folder")
        self.edit.setToolTip("Case files (allgui's review databases) whose reviewed images are added to the "
                             "training data with the reviewer's labels; unclassifiable images are left out "
                             "and each case is one group of the subject-level split")
        self.add_btn = QPushButton("Add\u2026")
        self.add_btn.clicked.connect(self._browse)
        self.open_btn = QPushButton("Add the open case")
        self.open_btn.clicked.connect(self._add_open)
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.add_btn)
        lay.addWidget(self.open_btn)

    def paths(self) -> list[str]:
        return [p.strip() for p in self.edit.text().split(SEPARATOR) if p.strip()]

    def add(self, path: str | Path) -> None:
        paths = self.paths()
        if str(path) not in paths:
            self.edit.setText(f" {SEPARATOR} ".join(paths + [str(path)]))

    def _browse(self) -> None:
        start = str(Path(self.paths()[-1]).parent) if self.paths() else ""
        files, _ = QFileDialog.getOpenFileNames(self, "Reviewed cases to add", start,
                                                "allgui case (*.sqlite);;All files (*)")
        for f in files:
            self.add(f)

    def _add_open(self) -> None:
        case = self.open_case()
        if case is not None:
            self.add(case)

    def check(self) -> str:
        """'' when every case file opens, else the first refusal's message."""
        for p in self.paths():
            try:
                CaseStore.open(p, readonly=True).close()
            except CaseError as exc:
                return str(exc)
        return ""

