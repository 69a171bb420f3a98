"""The case file's format: its tables, constants, row hashes and the values SQLite keeps.

See :mod:`trainer.cases.store` for what the tables hold and how they are checked.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
from typing import Any

#: the file name a case gets beside the images of a folder when the user does not choose one
DEFAULT_CASE_NAME = "allgui-case.sqlite"
#: ``PRAGMA application_id`` of an allgui case file ("ALGC")
APPLICATION_ID = 0x414C4743
#: the case format this version writes and the newest it reads (``PRAGMA user_version``); format 1 (no
#: ``events`` table, ``meta`` unprotected) is still read and is upgraded when metadata or a sign-off is written
SCHEMA_VERSION = 2
FORMAT = "allgui-case"

#: the reviewer's decisions
REVIEW_ALL = "ALL blast"
REVIEW_NORMAL = "normal"
REVIEW_UNCLASSIFIABLE = "unclassifiable"
REVIEW_DECISIONS = (REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE)
#: training label of a reviewer decision (unclassifiable has none)
REVIEW_LABELS = {REVIEW_ALL: 1, REVIEW_NORMAL: 0}
ACTIONS = ("review", "undo", "redo")
#: kinds of ``events`` rows: a metadata value set, the sign-off, an addendum written after it
EVENT_KINDS = ("metadata", "signoff", "addendum")

#: case metadata a person enters: key -> (label in the report, longest value in characters)
METADATA_FIELDS = {
    "specimen_id": ("Patient or specimen id", 200),
    "specimen_type": ("Specimen type", 200),
    "stain": ("Stain", 200),
    "magnification": ("Magnification", 100),
    "clinical_note": ("Clinical note", 4000),
    "conclusion": ("Reviewer's conclusion", 4000),
}
#: the longest addendum text in characters
MAX_ADDENDUM = 8000

SQLITE_MAGIC = b"SQLite format 3\x00"

MODEL_COLUMNS = ("at", "sha256", "name", "card")
PREDICTION_COLUMNS = ("at", "image_sha256", "path", "rel_path", "model_sha256", "model_key", "model_name",
                       "kind", "unit", "width", "height", "threshold", "band", "probability",
                       "raw_probability", "vote_share", "decision", "votes", "regions", "cells")
REVIEW_COLUMNS = ("at", "action", "target", "image_sha256", "path", "rel_path", "cell", "cell_bbox",
                   "model_sha256", "model_name", "model_key", "threshold", "band", "probability",
                   "raw_probability", "vote_share", "votes", "model_decision", "reviewer_decision",
                   "confirmed", "comment", "reviewer")
EVENT_COLUMNS = ("at", "local_at", "kind", "field", "value", "author", "detail")
COLUMNS = {"models": MODEL_COLUMNS, "predictions": PREDICTION_COLUMNS, "reviews": REVIEW_COLUMNS,
           "events": EVENT_COLUMNS}
#: ``meta`` keys of a case's description, protected by ``meta:sha256`` from format 2 on
IDENTITY_KEYS = ("format", "case_id", "name", "created_at", "created_by")
#: further description keys of a case file upgraded from format 1
UPGRADE_KEYS = ("upgraded_from", "upgraded_at")
META_HASH = "meta:sha256"

SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    card TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    rel_path TEXT,
    model_sha256 TEXT NOT NULL,
    model_key TEXT NOT NULL,
    model_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    threshold REAL NOT NULL,
    band REAL NOT NULL,
    probability REAL,
    raw_probability REAL,
    vote_share REAL,
    decision TEXT NOT NULL,
    votes TEXT NOT NULL,
    regions TEXT NOT NULL,
    cells TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX predictions_image ON predictions (image_sha256);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('review', 'undo', 'redo')),
    target INTEGER,
    image_sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    rel_path TEXT,
    cell INTEGER NOT NULL,
    cell_bbox TEXT,
    model_sha256 TEXT,
    model_name TEXT,
    model_key TEXT,
    threshold REAL,
    band REAL,
    probability REAL,
    raw_probability REAL,
    vote_share REAL,
    votes TEXT,
    model_decision TEXT,
    reviewer_decision TEXT CHECK (reviewer_decision IS NULL
                                  OR reviewer_decision IN ('ALL blast', 'normal', 'unclassifiable')),
    confirmed INTEGER NOT NULL,
    comment TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX reviews_image ON reviews (image_sha256, cell);
CREATE TRIGGER models_append_only_u BEFORE UPDATE ON models
    BEGIN SELECT RAISE(ABORT, 'allgui case: models are append-only'); END;
CREATE TRIGGER models_append_only_d BEFORE DELETE ON models
    BEGIN SELECT RAISE(ABORT, 'allgui case: models are append-only'); END;
CREATE TRIGGER predictions_append_only_u BEFORE UPDATE ON predictions
    BEGIN SELECT RAISE(ABORT, 'allgui case: predictions are append-only'); END;
CREATE TRIGGER predictions_append_only_d BEFORE DELETE ON predictions
    BEGIN SELECT RAISE(ABORT, 'allgui case: predictions are append-only'); END;
CREATE TRIGGER reviews_append_only_u BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'allgui case: reviews are append-only'); END;
CREATE TRIGGER reviews_append_only_d BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'allgui case: reviews are append-only'); END;
"""
#: what format 2 adds to format 1 (and what an upgrade creates)
EVENTS_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    local_at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('metadata', 'signoff', 'addendum')),
    field TEXT,
    value TEXT NOT NULL,
    author TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'allgui case: events are append-only'); END;
CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'allgui case: events are append-only'); END;
"""
SCHEMA = SCHEMA_V1 + EVENTS_SCHEMA



def now() -> str:
    """The current time, UTC, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def local_now() -> str:
    """The current local time with its UTC offset, ISO 8601 to the second (``2025-03-01T14:05:09+01:00``)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def tables(version: int) -> tuple[str, ...]:
    """The chained tables of case format ``version``."""
    return tuple(t for t in COLUMNS if t != "events" or version >= 2)


def schema_script(version: int) -> str:
    return SCHEMA if version >= 2 else SCHEMA_V1


def meta_digest(meta: dict[str, str]) -> str:
    """SHA-256 over a case's description: every ``meta`` entry but the chain heads, counts and itself.

    Kept as ``meta:sha256`` (format 2): an edit of the case name, creation or id outside allgui, or an
    entry added or removed, no longer matches it.
    """
    items = sorted((k, v) for k, v in meta.items() if k != META_HASH and not k.startswith(("head:", "count:")))
    return hashlib.sha256(dumps(["allgui-case-meta", items]).encode("ascii")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (model bundles, images)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False, sort_keys=True)


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII): what row hashes are computed over."""
    return _CANONICAL.encode(obj)


def row_hash(table: str, prev: str, values: dict[str, Any]) -> str:
    """SHA-256 chaining a row of ``table`` to the previous row's hash ``prev``."""
    return hash_row(table, prev, [values.get(c) for c in COLUMNS[table]])


def hash_row(table: str, prev: str, row: list[Any]) -> str:
    """:func:`row_hash` of a row given as its values in the order of ``COLUMNS[table]``."""
    payload = _CANONICAL.encode([table, prev, row])
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def plain(v: Any) -> Any:
    """A value as SQLite stores and returns it (bool -> int, numpy scalars -> Python).

    Text that is not valid Unicode (a file name's undecodable bytes) gets backslash escapes: SQLite
    stores UTF-8 only.
    """
    if v is None:
        return v
    if isinstance(v, str):
        return v if v.isascii() else _utf8(v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if hasattr(v, "item"):           # numpy scalar
        return plain(v.item())
    raise TypeError(f"cannot store {type(v).__name__} in a case file")


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def expected_schema(version: int = SCHEMA_VERSION) -> set[tuple]:
    """The ``sqlite_master`` rows of a file of case format ``version`` (what an intact case has)."""
    con = sqlite3.connect(":memory:")
    try:
        for stmt in statements(schema_script(version)):
            con.execute(stmt)
        return schema_of(con)
    finally:
        con.close()


def schema_of(con: sqlite3.Connection) -> set[tuple]:
    """The ``sqlite_master`` rows of an open database."""
    return {tuple(r) for r in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}


def genesis(case_id: str, table: str) -> str:
    """The hash a table's chain starts from: it ties every row to its case."""
    return hashlib.sha256(f"allgui-case:{case_id}:{table}".encode()).hexdigest()


def statements(script: str) -> list[str]:
    """The statements of :data:`SCHEMA` (triggers hold ';' inside BEGIN ... END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.upper().endswith("END;")):
            out.append(text)
            buf = []
    return out
