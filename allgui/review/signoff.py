"""The case's details and its sign-off: File > Case details and sign-off.

The specimen (patient or specimen id, specimen type, stain, magnification, clinical note), the case's
figures (images and cells reviewed, blasts counted and their proportion) and the reviewer's conclusion in
words; Sign off makes the case *final* with the signer's name and local time (with its UTC offset).
After that, a changed value or a free-text addendum is recorded as an addendum, never as a silent edit.
Every value goes into the case file's hash chain through :mod:`trainer.cases.signoff`, the API that
``allgui-train sign`` uses too.
"""
from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from trainer.cases import METADATA_FIELDS, CaseStore
from trainer.cases.summary import case_numbers, numbers_text, when
from trainer.util.errors import CaseError

#: fields of several lines
LONG_FIELDS = ("clinical_note", "conclusion")
PLACEHOLDERS = {"specimen_id": "e.g. S25-0042", "specimen_type": "e.g. peripheral blood, bone marrow aspirate",
                "stain": "e.g. May-Gruenwald-Giemsa", "magnification": "e.g. 100x oil",
                "clinical_note": "clinical information given with the specimen",
                "conclusion": "e.g. Blasts present (34 % of the reviewed cells); consistent with B-ALL."}


def status_line(store: CaseStore) -> str:
    """Rich text: "Preliminary — not signed", or "Final — signed by … on <local time with offset>"."""
    so = store.signoff
    if so is None:
        return "<b style='color:#9a5b00'>Preliminary \u2014 not signed</b>"
    addenda = sum(1 for e in store.events() if e.id > so.id)
    return (f"<b style='color:#1a6b1a'>Final</b> \u2014 signed by {html.escape(so.author)} on "
            f"{html.escape(when(so.local_at, convert=False))}"
            + (f"; {addenda} addend{'um' if addenda == 1 else 'a'} since" if addenda else ""))


class CaseSignOffDialog(QDialog):
    """The open case's metadata, figures, conclusion and sign-off (then addenda).

    Parameters
    ----------
    store : CaseStore
        The open case (written on this, the GUI, thread, as the reviews are).
    signer : str
        The reviewer's name, offered as the signer.

    Signals
    -------
    changed()
        Something was written to the case (values, the sign-off or an addendum).
    """

    changed = Signal()

    def __init__(self, store: CaseStore, signer: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self.setWindowTitle(f"Case {store.name}: details and sign-off")
        self.setMinimumWidth(560)
        lay = QVBoxLayout(self)
        self.status = QLabel()
        self.status.setObjectName("caseStatus")
        self.status.setWordWrap(True)
        self.figures = QLabel()
        self.figures.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addWidget(self.figures)
        form = QFormLayout()
        self.fields: dict[str, QLineEdit | QPlainTextEdit] = {}
        for key, (label, longest) in METADATA_FIELDS.items():
            w: QLineEdit | QPlainTextEdit
            if key in LONG_FIELDS:
                w = QPlainTextEdit()
                w.setFixedHeight(64)
            else:
                w = QLineEdit()
                w.setMaxLength(longest)
            w.setPlaceholderText(PLACEHOLDERS.get(key, ""))
            self.fields[key] = w
            form.addRow(label, w)
        self.signer = QLineEdit(signer)
        self.signer.setPlaceholderText("your name, recorded with the values and the sign-off")
        form.addRow("Your name", self.signer)
        self.addendum = QPlainTextEdit()
        self.addendum.setFixedHeight(64)
        self.addendum.setPlaceholderText("a finding or correction after the sign-off")
        self.addendum_label = QLabel("Addendum")
        form.addRow(self.addendum_label, self.addendum)
        lay.addLayout(form)
        buttons = QDialogButtonBox()
        self.save_btn = buttons.addButton("Save", QDialogButtonBox.ApplyRole)
        self.sign_btn = buttons.addButton("Sign off\u2026", QDialogButtonBox.AcceptRole)
        self.addendum_btn = buttons.addButton("Add addendum", QDialogButtonBox.ActionRole)
        self.close_btn = buttons.addButton("Close", QDialogButtonBox.RejectRole)
        self.save_btn.clicked.connect(self.save)
        self.sign_btn.clicked.connect(self.sign)
        self.addendum_btn.clicked.connect(self.add_addendum)
        self.close_btn.clicked.connect(self.reject)
        lay.addWidget(buttons)
        self.refresh()

    def values(self) -> dict[str, str]:
        return {k: (w.toPlainText() if isinstance(w, QPlainTextEdit) else w.text()).strip()
                for k, w in self.fields.items()}

    def refresh(self) -> None:
        """Show what the case file holds now."""
        store = self.store
        self.status.setText(status_line(store))
        numbers = case_numbers(store.current_reviews(), store.latest_predictions())
        self.figures.setText(" ".join(numbers_text(numbers)))
        for key, w in self.fields.items():
            value = store.metadata.get(key, "")
            w.setPlainText(value) if isinstance(w, QPlainTextEdit) else w.setText(value)
        signed = store.signoff is not None
        self.sign_btn.setVisible(not signed)
        self.save_btn.setText("Save as addendum" if signed else "Save")
        for w in (self.addendum_label, self.addendum, self.addendum_btn):
            w.setVisible(signed)

    def _write(self, what: str, fn) -> bool:
        """Run a write to the case; a refusal (no name, no specimen id, ...) in a message box."""
        try:
            fn()
        except CaseError as exc:
            QMessageBox.warning(self, what, str(exc))
            return False
        self.refresh()
        self.changed.emit()
        return True

    def save(self) -> bool:
        """Enter the values (after the sign-off they are recorded as addenda)."""
        return self._write("Case details", lambda: self.store.set_metadata(self.values(), author=self.signer.text()))

    def sign(self) -> bool:
        """Sign the case off, once the signer has confirmed it."""
        name = self.signer.text().strip()
        n = case_numbers(self.store.current_reviews(), self.store.latest_predictions())
        todo = n["images"] - n["images_reviewed"]
        unreviewed = (f"\n\n{todo} of {n['images']} images {'was' if todo == 1 else 'were'} not reviewed: the "
                      "report lists them as not reviewed, with the model's result alone." if todo else "")
        ans = QMessageBox.question(
            self, "Sign the case off?",
            f"Sign case {self.store.name} as {name or '(no name)'}?{unreviewed}\n\nThe report then reads "
            "\u201cFinal\u201d with your name and local time; anything recorded afterwards is shown as an addendum.",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        if ans != QMessageBox.Yes:
            return False
        return self._write("Sign-off", lambda: self.store.sign(name, metadata=self.values()))

    def add_addendum(self) -> bool:
        """Record the addendum text (a signed case only)."""
        ok = self._write("Addendum", lambda: self.store.add_addendum(self.addendum.toPlainText(),
                                                                     author=self.signer.text()))
        if ok:
            self.addendum.clear()
        return ok
