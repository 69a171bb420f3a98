"""The case database: one SQLite file per case holding the model's results and every review action.

A case file is an ordinary SQLite database (standard library ``sqlite3``), so it can be read by any
SQLite tool. What allgui writes into it:

``meta``         case id, name, creation time and version; the last hash and count of each chain below,
                 and (format 2) ``meta:sha256``, a hash over the case's description
``models``       each model bundle used (SHA-256 of the file, name, model card headline, limitations)
``predictions``  the model's result for an image: probabilities, votes, decision, cell outlines
``reviews``      every review action, in order: ``review`` (a person's decision, with the model's
                 result it was made on), ``undo`` and ``redo`` (naming the action they undo / redo)
``events``       (format 2) case metadata entered by a person, the sign-off and the addenda after it
                 (see :mod:`trainer.cases.signoff` for that API)

Nothing is ever changed or deleted: the tables are append-only (triggers abort any UPDATE or DELETE),
and undo is an action of its own. The current review state is the replay of the actions
(:func:`replay`). Each action is one transaction with a synchronous commit (write-ahead log where the
file system allows it), so a crash or a killed process loses at most the action being written.

Integrity (:mod:`trainer.cases.chain`): every row carries ``hash`` = SHA-256 over its values and the
previous row's hash (a chain per table that starts from the case id), and ``meta`` keeps the last hash
and count of each chain and a hash over the case's name, id and creation, so that no entry of ``meta``
can be changed, added or removed unnoticed. A file whose schema, rows, description or chain heads do
not match is refused with :class:`CaseError`, as is a file of another application or of a newer case
format. This finds edits made outside allgui (a spreadsheet tool, a careless script, a damaged copy);
it is not a signature: someone who rewrites the whole chain on purpose is not stopped by it. A case
file of format 1 (an older allgui) still opens; its description is not protected
(:attr:`CaseStore.meta_protected`) until metadata or a sign-off is written, which upgrades it.

Several writers: the app and ``allgui-train predict --case`` (or two windows) may write one case at
once. A store is opened and verified on one snapshot of the file, and each write first waits for
another writer's transaction, takes in and checks what other writers appended since, then appends.
Undo and redo therefore act on the newest action of the case, whoever wrote it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer import __version__
from trainer.cases import signoff as rules
from trainer.cases.chain import BUSY_TIMEOUT_MS, SIGNED_TABLES, ChainedFile, snapshot
from trainer.cases.events import CaseRecord, Event
from trainer.cases.reviews import Prediction, Review, ReviewState
from trainer.cases.schema import (
    APPLICATION_ID,
    FORMAT,
    META_HASH,
    PREDICTION_COLUMNS,
    REVIEW_COLUMNS,
    REVIEW_DECISIONS,
    SCHEMA_VERSION,
    SQLITE_MAGIC,
    dumps,
    genesis,
    local_now,
    meta_digest,
    now,
    plain,
    schema_script,
    statements,
    tables,
)
from trainer.cases.summary import case_numbers
from trainer.util.errors import CaseError


class CaseStore(ChainedFile):
    """An open case file. Use :meth:`create` or :meth:`open`; :meth:`close` when done.

    Writes happen on the thread that opened the store. A store opened with ``readonly=True``
    (reports, retraining) can be used next to a writer in another thread or process. Metadata,
    sign-off and addenda: :meth:`set_metadata`, :meth:`sign`, :meth:`add_addendum` (their rules:
    :mod:`trainer.cases.signoff`).
    """

    def __init__(self, path: Path, con: sqlite3.Connection, readonly: bool, version: int,
                 meta: dict[str, str]) -> None:
        """Verify every chain of the open file (inside one read transaction); see :meth:`open`."""
        self._reviews: list[Review] = []
        self._state = ReviewState()
        self._record = CaseRecord()
        super().__init__(path, con, readonly, version, meta)

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
                for stmt in statements(schema_script(SCHEMA_VERSION)):
                    con.execute(stmt)
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                meta = {"format": FORMAT, "case_id": case_id, "name": plain(name or path.stem),
                        "created_at": now(), "created_by": f"allgui {__version__}"}
                for table in tables(SCHEMA_VERSION):
                    meta[f"head:{table}"] = genesis(case_id, table)
                    meta[f"count:{table}"] = "0"
                meta[META_HASH] = meta_digest(meta)
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
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            store = snapshot(cls, path, con, readonly)
            if not readonly:
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":       # e.g. a network file system: rollback journal
                    con.execute("PRAGMA journal_mode = DELETE")
                con.execute("PRAGMA synchronous = FULL")
            return store
        except sqlite3.DatabaseError as exc:
            con.close()
            raise CaseError(f"{path.name} is not a readable allgui case file ({exc}).") from None
        except UnicodeDecodeError:          # allgui writes UTF-8 only
            con.close()
            raise CaseError(f"{path.name} is damaged (text that is not UTF-8); it is refused.") from None
        except BaseException:
            con.close()
            raise

    KEPT = ("reviews", "events")

    def _take(self, table: str, rowid: int, values: list[Any]) -> None:
        if table == "reviews":
            row = Review(rowid, *values)          # the dataclass's fields are the columns, in order
            self._reviews.append(row)
            self._state.apply(row)
        else:
            self._record.apply(Event(rowid, *values))

    def _signoffs(self) -> list[Event]:
        return self._record.unchecked()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None  # type: ignore[assignment]

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ------------------------------------------------------------------------------
    def _rel(self, path: str) -> str | None:
        try:
            return Path(os.path.relpath(Path(path).resolve(), self.path.resolve().parent)).as_posix()
        except ValueError:   # another drive
            return None

    def record_model(self, sha256: str, name: str, card: dict[str, Any] | None = None) -> bool:
        """Note a model bundle (once per SHA-256); True when it was new to this case."""
        row = {"at": now(), "sha256": sha256, "name": name, "card": dumps(card or {})}

        def build():
            known = self._con.execute("SELECT 1 FROM models WHERE sha256 = ?", (sha256,)).fetchone()
            return [] if known else [("models", row)]
        return bool(self._write(build))

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
            rows.append(("predictions", values))
        return self._write(lambda: rows) if rows else []

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
        self._write(lambda: [("reviews", values)])
        return self._reviews[-1]

    def undo(self, reviewer: str = "") -> Review | None:
        """Undo the latest review action still in effect; returns the action undone (None: nothing)."""
        return self._follow_up("undo", lambda: self._state.applied, reviewer)

    def redo(self, reviewer: str = "") -> Review | None:
        """Redo the latest undone action; returns it (None: nothing to redo)."""
        return self._follow_up("redo", lambda: self._state.redoable, reviewer)

    def _follow_up(self, action: str, stack: Callable[[], list[Review]], reviewer: str) -> Review | None:
        """Undo / redo the last action of ``stack()`` as it is once other writers' actions are in."""
        done: list[Review] = []

        def build():
            if not stack():
                return []
            target = stack()[-1]
            done.append(target)
            values = {c: getattr(target, c) for c in REVIEW_COLUMNS}
            values.update(at=now(), action=action, target=target.id,
                          reviewer=reviewer.strip() or target.reviewer, comment="")
            return [("reviews", values)]
        self._write(build)
        return done[-1] if done else None

    # ---- metadata, sign-off and addenda (their rules: trainer.cases.signoff) ---------------------
    def set_metadata(self, values: dict[str, str], author: str) -> list[Event]:
        """Set metadata fields (one event per changed value, all in one transaction).

        Unknown fields and over-long values are refused with :class:`CaseError`; unchanged values
        are not written again. After the sign-off a change is recorded and shown as an addendum.
        Returns the events written.
        """
        author = rules.checked_name(author, "Case metadata")
        clean = rules.checked_metadata(values)
        return self._append_events(lambda: rules.metadata_rows(self._record, clean, author, now(), local_now()))

    def sign(self, signer: str, conclusion: str | None = None, metadata: dict[str, str] | None = None) -> Event:
        """Sign the case off: it becomes *final*. Returns the sign-off event.

        ``metadata`` (as for :meth:`set_metadata`) and ``conclusion`` (the reviewer's conclusion in
        words) are entered first, in the same transaction, by the signer. Refused, with nothing
        written, without a specimen id or a conclusion (given or entered before), and when the case is
        already signed (add an addendum instead).
        """
        signer = rules.checked_name(signer, "A sign-off")
        clean = rules.checked_metadata(dict(metadata or {}, **({} if conclusion is None else
                                                                {"conclusion": conclusion})))

        def build():  # inside the write: other writers' rows are in, the chain heads are current
            signed = {t: [self._chain[t][0], self._chain[t][1]] for t in SIGNED_TABLES}
            return rules.signoff_rows(self._record, clean, signer, now(), local_now(), signed,
                                      case_numbers(self._state.current, self.latest_predictions()))
        self._append_events(build)
        return self._record.signoff

    def add_addendum(self, text: str, author: str) -> Event:
        """Add a free-text addendum to a signed case (refused before the sign-off: edit the case instead)."""
        author = rules.checked_name(author, "An addendum")
        text = rules.checked_addendum(text)
        self._append_events(lambda: rules.addendum_rows(self._record, text, author, now(), local_now()))
        return self._record.events[-1]

    def _append_events(self, build) -> list[Event]:
        """Write ``build()``'s event rows, upgrading a format-1 file first; returns the new events."""
        def with_upgrade():
            rows = build()
            if rows:
                self._upgrade()
            return rows
        ids = set(self._write(with_upgrade))
        return [e for e in self._record.events if e.id in ids]

    # ---- reading ------------------------------------------------------------------------------
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
        """Every metadata, sign-off and addendum Event, oldest first."""
        return list(self._record.events)

    def metadata_before(self, event_id: int) -> dict[str, str]:
        """The metadata in effect just before event ``event_id`` (the sign-off's: what was signed)."""
        return self._record.metadata_before(event_id)

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

    def latest_predictions(self, upto: int | None = None) -> dict[str, Prediction]:
        """Image hash -> its latest recorded prediction, in the order images were first recorded.

        ``upto``: only the first ``upto`` predictions (what a sign-off signed).
        """
        out: dict[str, Prediction] = {}
        for p in self.predictions()[:upto]:
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
            p = os.path.join(self.path.parent, rel_path)
            if os.path.isfile(p):
                return Path(p)
        return Path(path) if path and os.path.isfile(path) else None
