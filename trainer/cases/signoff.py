"""Case metadata, the sign-off and addenda: what makes a case report one a pathologist can sign.

The rules of :class:`~trainer.cases.store.CaseStore`'s ``set_metadata``, ``sign`` and ``add_addendum``
(Qt-free; the app's dialogs and ``allgui-train sign`` call them): the functions here check what is
entered and build the rows from the case's record; the store writes them. Every call is one
transaction appending rows to the case's ``events`` chain; nothing is overwritten, so the report and the
audit trail can show every value ever entered, by whom and when::

    store.set_metadata({"specimen_id": "S24-0012", "stain": "May-Gruenwald-Giemsa",
                        "magnification": "100x oil"}, author="Dr A")
    store.metadata          # {"specimen_id": "S24-0012", ...}: the values in effect
    store.sign("Dr A", conclusion="Blasts present (34 % of reviewed cells); consistent with ALL.",
               metadata={"specimen_type": "peripheral blood"})   # entered and signed in one transaction
    store.status            # "final" ("preliminary" before the sign-off)
    store.signoff           # the sign-off Event: .author, .local_at (signer's local time and offset), .at (UTC)
    store.add_addendum("Flow cytometry confirms B-ALL.", author="Dr A")
    store.events()          # every metadata / sign-off / addendum Event, oldest first

Fields (:data:`~trainer.cases.schema.METADATA_FIELDS`, key -> (label, longest value)):
``specimen_id`` (patient or specimen id), ``specimen_type``, ``stain``, ``magnification``,
``clinical_note`` and ``conclusion`` (the reviewer's conclusion in words).

Rules: a sign-off needs the signer's name, a specimen id and a conclusion (given to ``sign`` or set
before), and a case is signed once. It records the count and head hash of every chain it signs, so the
signed content is fixed: the report then shows the case as signed and status *final*. Whatever is
recorded after it (reviews, undo, metadata, model results) is kept and shown in the report as an
addendum, never as a silent edit; ``add_addendum`` adds a free-text one (only after the sign-off).
A case file of format 1 is upgraded to format 2 by the first of these writes.
"""
from __future__ import annotations

from typing import Any

from trainer.cases.events import CaseRecord
from trainer.cases.schema import MAX_ADDENDUM, METADATA_FIELDS, dumps
from trainer.util.errors import CaseError

#: the longest name of a signer or author
MAX_NAME = 200


def checked_name(who: str, what: str) -> str:
    """``who`` stripped; :class:`CaseError` when empty or too long (``what`` names the action)."""
    who = (who or "").strip()
    if not who:
        raise CaseError(f"{what} needs the name of the person.")
    if len(who) > MAX_NAME:
        raise CaseError(f"{what}: the name is longer than {MAX_NAME} characters.")
    return who


def checked_metadata(values: dict[str, str]) -> dict[str, str]:
    """Metadata values checked (known fields, length) and stripped; raises :class:`CaseError`."""
    clean: dict[str, str] = {}
    for key, value in values.items():
        if key not in METADATA_FIELDS:
            raise CaseError(f"Unknown case metadata '{key}'; use one of {', '.join(METADATA_FIELDS)}.")
        label, longest = METADATA_FIELDS[key]
        text = "" if value is None else str(value).strip()
        if len(text) > longest:
            raise CaseError(f"{label} is longer than {longest} characters.")
        clean[key] = text
    return clean


Row = tuple[str, dict[str, Any]]  # (table, values), as the store writes them


def metadata_rows(record: CaseRecord, clean: dict[str, str], author: str, at: str, local: str) -> list[Row]:
    """Event rows for the values of ``clean`` (:func:`checked_metadata`) that differ from those in effect."""
    return [("events", event_row("metadata", k, v, author, at, local)) for k, v in clean.items()
            if record.metadata.get(k, "") != v]


def signoff_rows(record: CaseRecord, clean: dict[str, str], signer: str, at: str, local: str,
                 signed: dict[str, list], numbers: dict[str, Any]) -> list[Row]:
    """The rows of a sign-off: ``clean``'s metadata, then the sign-off event. Raises :class:`CaseError`.

    ``signed``: table -> [rows, head hash] of each chain the sign-off fixes; ``numbers``: the case's figures
    (:func:`trainer.cases.summary.case_numbers`). Refused when the case is signed already, or when no
    specimen id or conclusion is given or in effect.
    """
    done = record.signoff
    if done is not None:
        raise CaseError(f"The case was already signed by {done.author} ({done.local_at}); "
                        "record further findings as an addendum.")
    meta = {**record.metadata, **clean}
    if not meta.get("specimen_id"):
        raise CaseError("Enter the patient or specimen id before signing the case.")
    if not meta.get("conclusion"):
        raise CaseError("A sign-off needs the reviewer's conclusion in words.")
    rows = metadata_rows(record, clean, signer, at, local)
    rows.append(("events", event_row("signoff", None, meta["conclusion"], signer, at, local,
                                     {"signed": signed, "numbers": numbers})))
    return rows


def checked_addendum(text: str) -> str:
    """An addendum's text stripped; :class:`CaseError` when empty or too long."""
    text = (text or "").strip()
    if not text:
        raise CaseError("An addendum needs its text.")
    if len(text) > MAX_ADDENDUM:
        raise CaseError(f"An addendum is limited to {MAX_ADDENDUM} characters.")
    return text


def addendum_rows(record: CaseRecord, text: str, author: str, at: str, local: str) -> list[Row]:
    """The row of an addendum; refused before the sign-off (the case is then changed directly)."""
    if record.signoff is None:
        raise CaseError("The case is not signed yet: change it directly; addenda follow a sign-off.")
    return [("events", event_row("addendum", None, text, author, at, local))]


def event_row(kind: str, field: str | None, value: str, author: str, at: str, local: str,
              detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``events`` row's values."""
    return {"at": at, "local_at": local, "kind": kind, "field": field, "value": value, "author": author,
            "detail": dumps(detail or {})}
