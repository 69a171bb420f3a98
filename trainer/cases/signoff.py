"""Case metadata, the sign-off and addenda: what makes a case report one a pathologist can sign.

Methods of :class:`~trainer.cases.store.CaseStore` (Qt-free; the app's dialogs and
``allgui-train sign`` call them). Every call is one transaction appending rows to the case's
``events`` chain; nothing is overwritten, so the report and the audit trail can show every value
ever entered, by whom and when::

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

Rules: a sign-off needs the signer's name, a specimen id and a conclusion (given to :meth:`sign` or set
before), and a case is signed once. It records the count and head hash of every chain it signs, so the
signed content is fixed: the report then shows the case as signed and status *final*. Whatever is
recorded after it (reviews, undo, metadata, model results) is kept and shown in the report as an
addendum, never as a silent edit; :meth:`add_addendum` adds a free-text one (only after the sign-off).
A case file of format 1 is upgraded to format 2 by the first of these writes.
"""
from __future__ import annotations

from typing import Any

from trainer.cases.chain import SIGNED_TABLES
from trainer.cases.events import Event
from trainer.cases.schema import MAX_ADDENDUM, METADATA_FIELDS, dumps, local_now, now
from trainer.cases.summary import case_numbers
from trainer.util.errors import CaseError

#: the longest name of a signer or author
MAX_NAME = 200


def _name(who: str, what: str) -> str:
    who = (who or "").strip()
    if not who:
        raise CaseError(f"{what} needs the name of the person.")
    if len(who) > MAX_NAME:
        raise CaseError(f"{what}: the name is longer than {MAX_NAME} characters.")
    return who


def _clean(values: dict[str, str]) -> dict[str, str]:
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


class SignOffMixin:
    """Metadata, sign-off and addenda of a :class:`~trainer.cases.store.CaseStore` (see the module)."""

    @property
    def metadata(self) -> dict[str, str]:
        """The metadata values in effect (field -> value; fields never set are absent)."""
        return dict(self._record.metadata)

    @property
    def signoff(self) -> Event | None:
        """The sign-off, None while the case is preliminary."""
        return self._record.signoff

    @property
    def status(self) -> str:
        """``"final"`` once signed, else ``"preliminary"``."""
        return "final" if self._record.signoff is not None else "preliminary"

    def events(self) -> list[Event]:
        """Every metadata, sign-off and addendum event, oldest first."""
        return list(self._record.events)

    def metadata_before(self, event_id: int) -> dict[str, str]:
        """The metadata in effect just before event ``event_id`` (the sign-off's: what was signed)."""
        return self._record.metadata_before(event_id)

    def set_metadata(self, values: dict[str, str], author: str) -> list[Event]:
        """Set metadata fields (one event per changed value, all in one transaction).

        Unknown fields and over-long values are refused with :class:`CaseError`; unchanged values
        are not written again. After the sign-off a change is recorded and shown as an addendum.
        Returns the events written.
        """
        author = _name(author, "Case metadata")
        clean = _clean(values)

        def build():
            return self._metadata_rows(clean, author, now(), local_now())
        return self._append_events(build)

    def sign(self, signer: str, conclusion: str | None = None, metadata: dict[str, str] | None = None) -> Event:
        """Sign the case off: it becomes *final*. Returns the sign-off event.

        ``metadata`` (as for :meth:`set_metadata`) and ``conclusion`` (the reviewer's conclusion in
        words) are entered first, in the same transaction, by the signer. Refused, with nothing
        written, without a specimen id or a conclusion (given or entered before), and when the case is
        already signed (add an addendum instead).
        """
        signer = _name(signer, "A sign-off")
        clean = _clean(dict(metadata or {}, **({} if conclusion is None else {"conclusion": conclusion})))

        def build():
            done = self._record.signoff
            if done is not None:
                raise CaseError(f"The case was already signed by {done.author} ({done.local_at}); "
                                "record further findings as an addendum.")
            meta = {**self._record.metadata, **clean}
            if not meta.get("specimen_id"):
                raise CaseError("Enter the patient or specimen id before signing the case.")
            if not meta.get("conclusion"):
                raise CaseError("A sign-off needs the reviewer's conclusion in words.")
            at, local = now(), local_now()
            rows = self._metadata_rows(clean, signer, at, local)
            signed = {t: [self._chain[t][0], self._chain[t][1]] for t in SIGNED_TABLES}
            numbers = case_numbers(self._state.current, self.latest_predictions())
            rows.append(("events", self._event("signoff", None, meta["conclusion"], signer, at, local,
                                               {"signed": signed, "numbers": numbers})))
            return rows
        self._append_events(build)
        return self._record.signoff

    def add_addendum(self, text: str, author: str) -> Event:
        """Add a free-text addendum to a signed case (refused before the sign-off: edit the case instead)."""
        author = _name(author, "An addendum")
        text = (text or "").strip()
        if not text:
            raise CaseError("An addendum needs its text.")
        if len(text) > MAX_ADDENDUM:
            raise CaseError(f"An addendum is limited to {MAX_ADDENDUM} characters.")

        def build():
            if self._record.signoff is None:
                raise CaseError("The case is not signed yet: change it directly; addenda follow a sign-off.")
            return [("events", self._event("addendum", None, text, author, now(), local_now()))]
        self._append_events(build)
        return self._record.events[-1]

    # ---- helpers --------------------------------------------------------------------------------
    def _metadata_rows(self, clean: dict[str, str], author: str, at: str, local: str) -> list:
        """Event rows for the values of ``clean`` that differ from those in effect."""
        return [("events", self._event("metadata", k, v, author, at, local)) for k, v in clean.items()
                if self._record.metadata.get(k, "") != v]

    @staticmethod
    def _event(kind: str, field: str | None, value: str, author: str, at: str, local: str,
               detail: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"at": at, "local_at": local, "kind": kind, "field": field, "value": value, "author": author,
                "detail": dumps(detail or {})}

    def _append_events(self, build) -> list[Event]:
        """Write ``build()``'s event rows, upgrading a format-1 file first; returns the new events."""
        def with_upgrade():
            rows = build()
            if rows:
                self._upgrade()
            return rows
        ids = set(self._write(with_upgrade))
        return [e for e in self._record.events if e.id in ids]
