"""The case file's integrity and transactions: chains checked on one snapshot, writes that follow others.

:class:`ChainedFile` is the base of :class:`~trainer.cases.store.CaseStore` (see there for what the
tables hold). Every chained table's rows carry ``hash`` = SHA-256 over their values and the previous
row's hash, from a start tied to the case id; ``meta`` keeps each chain's head and count and, from
case format 2, ``meta:sha256`` over the case's description. A store is opened on one snapshot (one
read transaction), so rows another writer commits meanwhile are wholly in it or wholly after it and
never look like tampering. Each write takes the write lock (waiting up to :data:`BUSY_TIMEOUT_MS` for
another writer's transaction), follows what other writers appended since (checking it), then appends.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.cases.events import Event
from trainer.cases.schema import (
    APPLICATION_ID,
    COLUMNS,
    FORMAT,
    IDENTITY_KEYS,
    META_HASH,
    SCHEMA_VERSION,
    UPGRADE_KEYS,
    expected_schema,
    genesis,
    hash_row,
    meta_digest,
    now,
    plain,
    row_hash,
    schema_of,
    schema_script,
    statements,
    tables,
)
from trainer.util.errors import CaseError

#: how long a writer waits for another writer's transaction before giving up (milliseconds)
BUSY_TIMEOUT_MS = 10000
#: the chains a sign-off signs (their row counts and heads)
SIGNED_TABLES = ("models", "predictions", "reviews")
#: tries at taking a consistent snapshot when the file stays locked (a rollback-journal writer)
READ_TRIES = 3

_EXPECTED: dict[int, set[tuple]] = {}
_TRUST = "the case is refused so that its audit trail can be trusted."


def _refused(path: Path, what: str) -> CaseError:
    return CaseError(f"{path.name}: {what} outside allgui; {_TRUST}")


def _check_structure(path: Path, con: sqlite3.Connection, version: int) -> None:
    if version not in _EXPECTED:
        _EXPECTED[version] = expected_schema(version)
    found = schema_of(con)
    if found != _EXPECTED[version]:
        names = sorted({r[1] for r in found ^ _EXPECTED[version]})
        raise CaseError(f"{path.name}: the structure of this case file was changed outside allgui "
                        f"({', '.join(names[:5])}); it is refused so that its audit trail can be trusted.")


def _check_header(path: Path, con: sqlite3.Connection) -> int:
    """The case format of an open file; refuses a foreign, newer or damaged one."""
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
    _check_structure(path, con, version)
    return version


def _hash(table: str, prev: str, values: list[Any]) -> str | None:
    """The row's hash; None for values allgui never writes (a blob, an infinite number)."""
    try:
        return hash_row(table, prev, values)
    except (TypeError, ValueError):
        return None


def _locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class ChainedFile:
    """An open, verified case file: its chains, format and description, and one-transaction writes.

    Subclasses take each row in through :meth:`_take` (called in order, at open and after writes).
    """

    def __init__(self, path: Path, con: sqlite3.Connection, readonly: bool, version: int,
                 meta: dict[str, str]) -> None:
        """Verify every chain of the open file (call inside one read transaction)."""
        self.path = path
        self._con = con
        self.readonly = readonly
        self.version = version
        self.case_id: str = meta.get("case_id", "")
        self.name: str = meta.get("name", "")
        self.created_at: str = meta.get("created_at", "")
        self.created_by: str = meta.get("created_by", "")
        self.upgraded_from: str | None = meta.get("upgraded_from")
        self._chain: dict[str, tuple[int, str, int]] = {}     # table -> (rows, head hash, last id)
        self._upgrading = False
        self._check_meta(meta)
        for table in tables(version):
            self._chain[table] = (0, genesis(self.case_id, table), 0)
        self._follow(meta)

    @property
    def meta_protected(self) -> bool:
        """Whether the case's name, id and creation are protected (format 2; False: an older allgui's file)."""
        return self.version >= 2

    #: the tables whose rows :meth:`_take` gets
    KEPT: tuple[str, ...] = ()

    def _take(self, table: str, rowid: int, values: list[Any]) -> None:
        """A checked row of ``table`` (its values in the order of ``COLUMNS[table]``), in the file's order."""

    def _signoffs(self) -> list[Event]:
        """Sign-offs taken in since the last call, whose chains :meth:`_follow` checks."""
        return []

    def _check_meta(self, meta: dict[str, str]) -> None:
        if meta.get("format") != FORMAT or not self.case_id or not all(isinstance(v, str) for v in meta.values()):
            raise CaseError(f"{self.path.name}: the case description is missing or altered; it is refused.")
        if self.version < 2:
            return
        chains = {f"{p}:{t}" for t in tables(self.version) for p in ("head", "count")}
        required = set(IDENTITY_KEYS) | chains | {META_HASH}
        if not required <= set(meta) <= required | set(UPGRADE_KEYS):
            raise _refused(self.path, "entries of 'meta' were removed or added")
        if meta[META_HASH] != meta_digest(meta):
            raise _refused(self.path, "the case description (name, id, creation) was altered")

    def _follow(self, meta: dict[str, str]) -> bool:
        """Read, check and take in the rows appended after the ones this store holds (in a transaction).

        ``meta`` as read in the same transaction. Returns whether there were any.
        """
        grown = False
        for table in tables(self.version):
            n, prev, last = self._chain[table]
            if meta.get(f"head:{table}") == prev and meta.get(f"count:{table}") == str(n):
                continue
            cols = ", ".join(("id",) + COLUMNS[table] + ("prev_hash", "hash"))
            kept = table in self.KEPT
            for row in self._con.execute(f"SELECT {cols} FROM {table} WHERE id > ? ORDER BY id", (last,)):
                values = list(row[1:-2])
                # ids run 1, 2, 3...: rows are never deleted, and undo / redo and sign-offs name rows by them
                if row[0] != last + 1 or row[-2] != prev or _hash(table, prev, values) != row[-1]:
                    raise _refused(self.path, f"entry {row[0]} of '{table}' was altered")
                prev, n, last = row[-1], n + 1, row[0]
                if kept:
                    self._take(table, row[0], values)
            if meta.get(f"head:{table}") != prev or meta.get(f"count:{table}") != str(n):
                raise _refused(self.path, f"entries of '{table}' were removed or added")
            self._chain[table] = (n, prev, last)
            grown = True
        for event in self._signoffs():
            self._check_signed(event)
        return grown

    def _check_signed(self, event: Event) -> None:
        """A sign-off names the count and head of each chain it signed: they must be there."""
        signed = event.signed()
        if signed is None or set(signed) != set(SIGNED_TABLES):
            raise _refused(self.path, f"the sign-off (entry {event.id} of 'events') was altered")
        for table, (count, head) in signed.items():
            found = genesis(self.case_id, table) if count == 0 else (self._con.execute(
                f"SELECT hash FROM {table} ORDER BY id LIMIT 1 OFFSET ?", (count - 1,)).fetchone() or [None])[0]
            if found != head:
                raise _refused(self.path, f"entries of '{table}' signed off (entry {event.id} of 'events') "
                                          "were altered")

    def refresh(self) -> bool:
        """Take in what other writers appended since this store last read the file; True if anything."""
        con = self._con
        try:
            con.execute("BEGIN")
            try:
                return self._catch_up()
            finally:
                if con.in_transaction:
                    con.execute("COMMIT")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise CaseError(f"Could not read the case file {self.path.name}: {exc}.") from None

    def _catch_up(self) -> bool:
        """Inside a transaction: follow the file's rows (and its format, upgraded by another writer)."""
        version = self._con.execute("PRAGMA user_version").fetchone()[0]
        meta = dict(self._con.execute("SELECT key, value FROM meta"))
        if version != self.version:
            if not self.version < version <= SCHEMA_VERSION:
                raise _refused(self.path, f"the case format was changed (from {self.version} to {version})")
            _check_structure(self.path, self._con, version)
            self.version, self.upgraded_from = version, meta.get("upgraded_from")
            for table in tables(version):
                self._chain.setdefault(table, (0, genesis(self.case_id, table), 0))
        self._check_meta(meta)
        if any(meta.get(k) != getattr(self, k) for k in ("case_id", "name", "created_at", "created_by")):
            raise _refused(self.path, "the case description (name, id, creation) was altered")
        return self._follow(meta)

    def _write(self, build: Callable[[], list[tuple[str, dict[str, Any]]]]) -> list[int]:
        """One transaction: take in other writers' rows, then append the rows ``build()`` returns.

        ``build`` runs inside the transaction, after the catch-up, so it sees the newest state (what
        undo undoes, whether a model is known); it returns (table, values) pairs. All or none are
        appended. Returns the new rows' ids.
        """
        if self.readonly:
            raise CaseError(f"{self.path.name} is open read-only.")
        con = self._con
        self._upgrading = False
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                self._catch_up()
                rows = [(table, {c: plain(values.get(c)) for c in COLUMNS[table]}) for table, values in build()]
                chain, ids = self._insert(rows)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if self._upgrading:               # an upgrade begun in build() was rolled back too
                    self.version, self.upgraded_from = 1, None
                    del self._chain["events"]
                raise
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise CaseError(f"Could not write to the case file {self.path.name}: {exc}. "
                            "The last action was not recorded.") from None
        self._chain = chain
        for (table, values), rowid in zip(rows, ids):
            if table in self.KEPT:
                self._take(table, rowid, [values[c] for c in COLUMNS[table]])
        return ids

    def _insert(self, rows: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, tuple[int, str, int]], list[int]]:
        """INSERT ``rows`` chained on the current heads; returns the new heads and the rows' ids."""
        chain = dict(self._chain)
        ids = []
        for table, values in rows:
            n, prev, _ = chain[table]
            cols = COLUMNS[table] + ("prev_hash", "hash")
            h = row_hash(table, prev, values)
            cur = self._con.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                    [values[c] for c in COLUMNS[table]] + [prev, h])
            chain[table] = (n + 1, h, int(cur.lastrowid))
            ids.append(int(cur.lastrowid))
        for table in dict.fromkeys(t for t, _ in rows):
            self._con.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                  [(chain[table][1], f"head:{table}"), (str(chain[table][0]), f"count:{table}")])
        return chain, ids

    def _upgrade(self) -> None:
        """Inside a write transaction: turn a format-1 file into format 2.

        Adds the events table, its chain and the description's hash. An older allgui then refuses the
        file as newer, as it should.
        """
        if self.version >= 2:
            return
        for stmt in statements(schema_script(2)[len(schema_script(1)):]):
            self._con.execute(stmt)
        meta = dict(self._con.execute("SELECT key, value FROM meta"))
        add = {"upgraded_from": str(self.version), "upgraded_at": now(), "head:events": genesis(self.case_id, "events"),
               "count:events": "0"}
        add[META_HASH] = meta_digest({**meta, **add})
        self._con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(add.items()))
        self._con.execute("PRAGMA user_version = 2")
        self.version, self.upgraded_from, self._upgrading = 2, add["upgraded_from"], True
        self._chain["events"] = (0, add["head:events"], 0)


def snapshot(cls: type[ChainedFile], path: Path, con: sqlite3.Connection, readonly: bool) -> ChainedFile:
    """Check and load the file in one read transaction.

    Rows another writer commits meanwhile are either wholly in it or wholly after it, never half (a
    half would look like tampering).
    """
    for attempt in range(READ_TRIES):
        try:
            con.execute("BEGIN")
            try:
                version = _check_header(path, con)
                meta = dict(con.execute("SELECT key, value FROM meta"))
                return cls(path, con, readonly, version, meta)
            finally:
                if con.in_transaction:
                    con.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or attempt == READ_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")

