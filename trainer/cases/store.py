"""The case database: one SQLite file per case holding the model's results and every review action.

A case file is an ordinary SQLite database (standard library ``sqlite3``), so it can be read by any
SQLite tool. What allgui writes into it:

``meta``         case id, name, creation time and version; the last hash of each chain below
``models``       each model bundle used (SHA-256 of the file, name, model card headline, limitations)
``predictions``  the model's result for an image: probabilities, votes, decision, cell outlines
``reviews``      every review action, in order: ``review`` (a person's decision, with the model's
                 result it was made on), ``undo`` and ``redo`` (naming the action they undo / redo)

Nothing is ever changed or deleted: the three tables are append-only (triggers abort any UPDATE or
DELETE), and undo is an action of its own. The current review state is the replay of the actions
(:func:`replay`). Each action is one transaction with a synchronous commit (write-ahead log where the
file system allows it), so a crash or a killed process loses at most the action being written.

Integrity: every row carries ``hash`` = SHA-256 over its values and the previous row's hash (a chain
per table that starts from the case id), and ``meta`` keeps the last hash and count of each chain.
A file whose schema, rows or chain heads do not match is refused with :class:`CaseError`, as is a
file of another application or of a newer case format. This finds edits made outside allgui (a
spreadsheet tool, a careless script, a damaged copy); it is not a signature: someone who rewrites
the whole chain on purpose is not stopped by it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

from trainer import __version__
from trainer.cases.reviews import Prediction, Review, ReviewState, replay
from trainer.cases.schema import (
    APPLICATION_ID,
    COLUMNS,
    FORMAT,
    PREDICTION_COLUMNS,
    REVIEW_COLUMNS,
    REVIEW_DECISIONS,
    SCHEMA,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
    dumps,
    expected_schema,
    genesis,
    now,
    plain,
    row_hash,
    schema_of,
    statements,
)
from trainer.util.errors import CaseError

_EXPECTED: set[tuple] | None = None


class CaseStore:
    """An open case file. Use :meth:`create` or :meth:`open`; :meth:`close` when done.

    Writes happen on the thread that opened the store. A store opened with ``readonly=True``
    (reports, retraining) can be used next to a writer in another thread or process.
    """

    def __init__(self, path: Path, con: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self._con = con
        self.readonly = readonly
        meta = dict(con.execute("SELECT key, value FROM meta"))
        self.case_id: str = meta.get("case_id", "")
        self.name: str = meta.get("name", "")
        self.created_at: str = meta.get("created_at", "")
        self.created_by: str = meta.get("created_by", "")
        self._reviews: list[Review] = []
        self._state = ReviewState()
        self._verify(meta)

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, name: str = "") -> CaseStore:
        """Create a new, empty case file at ``path`` (refused where a file exists)."""
        path = Path(path)
        if path.exists():
            raise CaseError(f"{path.name} already exists; open it instead of creating a new case there.")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise CaseError(f"Cannot create the case file {path}: the folder {folder} does not exist.")
        case_id = uuid.uuid4().hex
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".allgui-tmp", dir=folder)
            os.close(fd)
        except OSError as exc:
            raise CaseError(f"Cannot create the case file {path}: {exc.strerror or exc}.") from None
        try:
            con = sqlite3.connect(tmp, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                for stmt in statements(SCHEMA):
                    con.execute(stmt)
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                meta = {"format": FORMAT, "case_id": case_id, "name": name or path.stem,
                        "created_at": now(), "created_by": f"allgui {__version__}"}
                for table in COLUMNS:
                    meta[f"head:{table}"] = genesis(case_id, table)
                    meta[f"count:{table}"] = "0"
                con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
                con.execute("COMMIT")
            finally:
                con.close()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if path.exists():  # created meanwhile by someone else: never replace a case
                raise CaseError(f"{path.name} already exists; open it instead of creating a new case there.")
            os.replace(tmp, path)
        except sqlite3.Error as exc:
            raise CaseError(f"Cannot create the case file {path}: {exc}.") from None
        except OSError as exc:
            raise CaseError(f"Cannot create the case file {path}: {exc.strerror or exc}.") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False) -> CaseStore:
        """Open and verify the case file ``path``. Raises :class:`CaseError` with a clear message."""
        path = Path(path)
        if not path.is_file():
            raise CaseError(f"Case file not found: {path}")
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise CaseError(f"Cannot read the case file {path.name}: {exc.strerror or exc}.") from None
        if head != SQLITE_MAGIC:
            raise CaseError(f"{path.name} is not an allgui case file (not an SQLite database).")
        try:
            if readonly:
                con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                con = sqlite3.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise CaseError(f"Cannot open the case file {path.name}: {exc}.") from None
        try:
            con.execute("PRAGMA busy_timeout = 5000")
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise CaseError(f"{path.name} is an SQLite database but not an allgui case file.")
            if version > SCHEMA_VERSION:
                raise CaseError(f"{path.name} was written by a newer version of allgui (case format {version}; "
                                f"this version reads formats up to {SCHEMA_VERSION}). Open it with a newer "
                                "allgui; it has not been changed.")
            if version < 1:
                raise CaseError(f"{path.name} has no valid case format version ({version}); it is refused.")
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise CaseError(f"{path.name} is damaged (SQLite integrity check: {check}); it is refused.")
            global _EXPECTED
            if _EXPECTED is None:
                _EXPECTED = expected_schema()
            found = schema_of(con)
            if found != _EXPECTED:
                names = sorted({r[1] for r in found ^ _EXPECTED})
                raise CaseError(f"{path.name}: the structure of this case file was changed outside allgui "
                                f"({', '.join(names[:5])}); it is refused so that its audit trail can be "
                                "trusted.")
            if not readonly:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":       # e.g. a network file system: rollback journal
                    con.execute("PRAGMA journal_mode = DELETE")
                con.execute("PRAGMA synchronous = FULL")
            return cls(path, con, readonly)
        except sqlite3.DatabaseError as exc:
            con.close()
            raise CaseError(f"{path.name} is not a readable allgui case file ({exc}).") from None
        except BaseException:
            con.close()
            raise

    def _verify(self, meta: dict[str, str]) -> None:
        """Check every chain against its rows and ``meta``'s heads; load the review actions."""
        if meta.get("format") != FORMAT or not self.case_id:
            raise CaseError(f"{self.path.name}: the case description is missing or altered; it is refused.")
        for table in COLUMNS:
            prev = genesis(self.case_id, table)
            n = 0
            cols = ", ".join(("id",) + COLUMNS[table] + ("prev_hash", "hash"))
            for row in self._con.execute(f"SELECT {cols} FROM {table} ORDER BY id"):
                values = dict(zip(COLUMNS[table], row[1:-2]))
                if row[-2] != prev or row_hash(table, prev, values) != row[-1]:
                    raise CaseError(f"{self.path.name}: entry {row[0]} of '{table}' was altered outside allgui; "
                                    "the case is refused so that its audit trail can be trusted.")
                prev = row[-1]
                n += 1
                if table == "reviews":
                    self._reviews.append(Review(row[0], **values))
            if meta.get(f"head:{table}") != prev or meta.get(f"count:{table}") != str(n):
                raise CaseError(f"{self.path.name}: entries of '{table}' were removed or added outside allgui; "
                                "the case is refused so that its audit trail can be trusted.")
        self._state = replay(self._reviews)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None  # type: ignore[assignment]

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------------
    def _append(self, table: str, values: dict[str, Any]) -> int:
        """Append one row in its own transaction; returns its id."""
        return self._append_many(table, [values])[0]

    def _append_many(self, table: str, rows: list[dict[str, Any]]) -> list[int]:
        """Append rows in one transaction (all or none); returns their ids."""
        if self.readonly:
            raise CaseError(f"{self.path.name} is open read-only.")
        rows = [{c: plain(values.get(c)) for c in COLUMNS[table]} for values in rows]
        cols = COLUMNS[table] + ("prev_hash", "hash")
        insert = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        con = self._con
        ids = []
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                        (f"head:{table}", f"count:{table}")))
                prev = meta[f"head:{table}"]
                for values in rows:
                    h = row_hash(table, prev, values)
                    cur = con.execute(insert, [values[c] for c in COLUMNS[table]] + [prev, h])
                    ids.append(int(cur.lastrowid))
                    prev = h
                con.execute("UPDATE meta SET value = ? WHERE key = ?", (prev, f"head:{table}"))
                con.execute("UPDATE meta SET value = ? WHERE key = ?",
                            (str(int(meta[f"count:{table}"]) + len(rows)), f"count:{table}"))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise CaseError(f"Could not write to the case file {self.path.name}: {exc}. "
                            "The last action was not recorded.") from None
        return ids

    def _rel(self, path: str) -> str | None:
        try:
            return Path(os.path.relpath(Path(path).resolve(), self.path.resolve().parent)).as_posix()
        except ValueError:   # another drive
            return None

    def record_model(self, sha256: str, name: str, card: dict[str, Any] | None = None) -> bool:
        """Note a model bundle (once per SHA-256); True when it was new to this case."""
        if self._con.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha256,)).fetchone():
            return False
        self._append("models", {"at": now(), "sha256": sha256, "name": name, "card": dumps(card or {})})
        return True

    def record_prediction(self, record: dict[str, Any]) -> int:
        """Append the model's result for an image (see :func:`trainer.cases.records.prediction_record`)."""
        return self.record_predictions([record])[0]

    def record_predictions(self, records: list[dict[str, Any]]) -> list[int]:
        """Append the model's results for several images in one transaction."""
        rows = []
        for record in records:
            values = dict(record)
            values.setdefault("at", now())
            values["rel_path"] = self._rel(values["path"])
            for k in ("votes", "regions", "cells"):
                if not isinstance(values.get(k), str):
                    values[k] = dumps(values.get(k) or [])
            rows.append(values)
        return self._append_many("predictions", rows) if rows else []

    def has_prediction(self, image_sha256: str, model_sha256: str) -> bool:
        return self._con.execute("SELECT 1 FROM predictions WHERE image_sha256 = ? AND model_sha256 = ?",
                                 (image_sha256, model_sha256)).fetchone() is not None

    def add_review(self, record: dict[str, Any], reviewer_decision: str, reviewer: str, comment: str = "",
                   confirmed: bool = False) -> Review:
        """Append a reviewer's decision on an image (``record['cell'] == -1``) or one of its cells.

        ``record`` holds the image and the model's result the decision was made on (see
        :func:`trainer.cases.records.review_record`).
        """
        if reviewer_decision not in REVIEW_DECISIONS:
            raise CaseError(f"Unknown review decision '{reviewer_decision}'; "
                            f"use one of {', '.join(REVIEW_DECISIONS)}.")
        if not reviewer.strip():
            raise CaseError("A review needs the reviewer's name.")
        values = dict(record, at=now(), action="review", target=None, reviewer_decision=reviewer_decision,
                      reviewer=reviewer.strip(), comment=comment or "", confirmed=bool(confirmed))
        values["rel_path"] = self._rel(values["path"])
        if isinstance(values.get("votes"), list):
            values["votes"] = dumps(values["votes"])
        if isinstance(values.get("cell_bbox"), (list, tuple)):
            values["cell_bbox"] = dumps([int(v) for v in values["cell_bbox"]])
        return self._add_action(values)

    def undo(self, reviewer: str = "") -> Review | None:
        """Undo the latest review action still in effect; returns the action undone (None: nothing)."""
        if not self._state.applied:
            return None
        target = self._state.applied[-1]
        self._add_action(self._follow_up("undo", target, reviewer))
        return target

    def redo(self, reviewer: str = "") -> Review | None:
        """Redo the latest undone action; returns it (None: nothing to redo)."""
        if not self._state.redoable:
            return None
        target = self._state.redoable[-1]
        self._add_action(self._follow_up("redo", target, reviewer))
        return target

    def _follow_up(self, action: str, target: Review, reviewer: str) -> dict[str, Any]:
        values = {c: getattr(target, c) for c in REVIEW_COLUMNS}
        values.update(at=now(), action=action, target=target.id, reviewer=reviewer.strip() or target.reviewer,
                      comment="")
        return values

    def _add_action(self, values: dict[str, Any]) -> Review:
        rowid = self._append("reviews", values)
        row = Review(rowid, **{c: plain(values.get(c)) for c in REVIEW_COLUMNS})
        self._reviews.append(row)
        self._state.apply(row)
        return row

    # ---- reading ------------------------------------------------------------------------------
    @property
    def state(self) -> ReviewState:
        """The current review state (replay of every action)."""
        return self._state

    def actions(self) -> list[Review]:
        """Every review action, oldest first (the audit trail)."""
        return list(self._reviews)

    def current_reviews(self) -> dict[tuple[str, int], Review]:
        """(image hash, cell) -> the review in effect."""
        return dict(self._state.current)

    def predictions(self) -> list[Prediction]:
        cols = ", ".join(("id",) + PREDICTION_COLUMNS)
        return [Prediction(r[0], *r[1:]) for r in self._con.execute(
            f"SELECT {cols} FROM predictions ORDER BY id")]

    def latest_predictions(self) -> dict[str, Prediction]:
        """Image hash -> its latest recorded prediction, in the order images were first recorded."""
        out: dict[str, Prediction] = {}
        for p in self.predictions():
            out[p.image_sha256] = p      # a later row replaces an earlier one, keeping its place
        return out

    def models(self) -> list[dict[str, Any]]:
        return [{"sha256": r[0], "name": r[1], "card": json.loads(r[2] or "{}"), "at": r[3]}
                for r in self._con.execute("SELECT sha256, name, card, at FROM models ORDER BY id")]

    def image_paths(self) -> dict[str, tuple[str, str | None]]:
        """Image hash -> (its latest recorded path, that path relative to the case file)."""
        out: dict[str, tuple[str, str | None]] = {}
        for table in ("predictions", "reviews"):
            for sha, p, rel in self._con.execute(f"SELECT image_sha256, path, rel_path FROM {table} ORDER BY id"):
                out[sha] = (p, rel)
        return out

    def resolve(self, path: str, rel_path: str | None) -> Path | None:
        """Where an image recorded as ``path`` / ``rel_path`` is now; None when it is nowhere.

        Beside the case file first (the case moved with its images), else the recorded path.
        """
        if rel_path:
            p = self.path.parent / rel_path
            if p.is_file():
                return p
        p = Path(path)
        return p if p.is_file() else None


