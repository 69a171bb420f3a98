"""Rows of a case's ``events`` table (case format 2) and their replay.

An event is metadata a person entered (``metadata``: one field's new value), the sign-off
(``signoff``: who signed, when in their local time, and the count and head hash of each chain they
signed) or an addendum written after it (``addendum``). See :mod:`trainer.cases.signoff` for the API
that writes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One row of ``events``."""

    id: int
    at: str                    # UTC, ISO 8601
    local_at: str              # the writer's local time with its UTC offset, ISO 8601
    kind: str                  # "metadata" | "signoff" | "addendum"
    field: str | None          # the metadata field set (None for the other kinds)
    value: str                 # the field's new value; the conclusion signed; the addendum's text
    author: str
    detail: str                # JSON; a sign-off: {"signed": {table: [count, head]}, "numbers": {...}}

    def details(self) -> dict[str, Any]:
        try:
            out = json.loads(self.detail or "{}")
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}

    def signed(self) -> dict[str, tuple[int, str]] | None:
        """A sign-off's chains: table -> (rows signed, hash of the last of them); None if malformed."""
        raw = self.details().get("signed")
        if not isinstance(raw, dict) or not raw:
            return None
        out = {}
        for table, v in raw.items():
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and not isinstance(v[0], bool)
                    and v[0] >= 0 and isinstance(v[1], str)):
                return None
            out[str(table)] = (v[0], v[1])
        return out

    def numbers(self) -> dict[str, Any]:
        """A sign-off's case numbers as the signer saw them (:func:`trainer.cases.summary.case_numbers`)."""
        raw = self.details().get("numbers")
        return raw if isinstance(raw, dict) else {}


@dataclass
class CaseRecord:
    """The replay of ``events``: the metadata in effect, the sign-off, everything after it."""

    events: list[Event] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    signoff: Event | None = None
    _checked: int = 0

    def apply(self, e: Event) -> None:
        self.events.append(e)
        if e.kind == "metadata" and e.field:
            self.metadata[e.field] = e.value
        elif e.kind == "signoff" and self.signoff is None:
            self.signoff = e

    def unchecked(self) -> list[Event]:
        """Sign-offs applied since the last call (whose chains the store has yet to check)."""
        new = [e for e in self.events[self._checked:] if e.kind == "signoff"]
        self._checked = len(self.events)
        return new

    def metadata_before(self, event_id: int) -> dict[str, str]:
        """The metadata in effect just before event ``event_id`` (at the sign-off: what was signed)."""
        out: dict[str, str] = {}
        for e in self.events:
            if e.id >= event_id:
                break
            if e.kind == "metadata" and e.field:
                out[e.field] = e.value
        return out

    def after_signoff(self) -> list[Event]:
        if self.signoff is None:
            return []
        return [e for e in self.events if e.id > self.signoff.id]
