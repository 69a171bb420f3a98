"""Seeded, time-bounded fuzzing of case files: mutated bytes, edits of any value, row or meta entry
outside allgui, and sign-offs forged by someone who rewrites the whole chain. Every edit is refused
with a CaseError; whatever opens reports without any other exception."""
from __future__ import annotations

import random
import shutil
import sqlite3
import struct
import time

import pytest

from trainer.cases import CaseStore
from trainer.cases.schema import COLUMNS, SCHEMA, dumps, genesis, meta_digest, row_hash, statements
from trainer.util.errors import AllguiError, CaseError

BUDGET_S = 5.0  # per target


def _record(i: int, cell: int = -1) -> dict:
    return {"image_sha256": f"{i:064x}", "path": f"/images/img{i}.png", "cell": cell, "model_sha256": "m" * 64,
            "model_name": "crop model", "model_key": "single_cell", "threshold": 0.5, "band": 0.05,
            "probability": 0.9, "raw_probability": 0.8, "vote_share": 1.0, "votes": [["svm", 0.9, 1, 1.0]],
            "model_decision": "ALL blast"}


def _prediction(i: int) -> dict:
    return {"image_sha256": f"{i:064x}", "path": f"/images/img{i}.png", "model_sha256": "m" * 64,
            "model_key": "single_cell", "model_name": "crop model", "kind": "single_cell", "unit": "image",
            "width": 64, "height": 64, "threshold": 0.5, "band": 0.05, "probability": i / 10,
            "raw_probability": 0.5, "vote_share": 0.5, "decision": "normal", "votes": [["svm", 0.5, 0, 1.0]],
            "regions": [{"cell": -1, "outline": [[1, 1], [9, 1], [9, 9]], "p": 0.5}], "cells": []}


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A signed case with models, predictions, reviews (undo, redo), metadata and addenda in every table."""
    case = tmp_path_factory.mktemp("fuzz") / "seed.sqlite"
    with CaseStore.create(case, name="fuzz seed") as s:
        s.record_model("m" * 64, "crop model", {"name": "tiny", "headline": {}})
        s.record_predictions([_prediction(i) for i in range(5)])
        for i in range(4):
            s.add_review(_record(i), "ALL blast" if i % 2 else "normal", "Dr A", comment=f"c{i}")
        s.undo("Dr A")
        s.redo("Dr A")
        s.sign("Dr A", conclusion="Blasts present.", metadata={"specimen_id": "S1", "stain": "MGG"})
        s.add_review(_record(9), "normal", "Dr B")
        s.set_metadata({"stain": "Wright"}, author="Dr B")
        s.add_addendum("later finding", author="Dr A")
    return case


def _use(case) -> None:
    """Open ``case`` as the app and the report do; only the product's own errors may come out."""
    from trainer.cases import report_front
    from trainer.cases.summary import addenda, case_view, collect, summary
    for readonly in (True, False):
        with CaseStore.open(case, readonly=readonly) as s:
            view = case_view(s)
            entries = collect(s, view=view, locate=False)
            report_front.build(s, view, entries, summary(s, entries), addenda(s, view), len(entries)).pages()


def _mutate(data: bytes, r: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(r.randint(1, 6)):
        op = r.random()
        if op < 0.5:
            b[r.randrange(len(b))] = r.randrange(256)
        elif op < 0.7:
            i = r.randrange(max(len(b) - 4, 1))
            b[i:i + 4] = struct.pack(">I", r.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
        elif op < 0.85:
            del b[r.randrange(len(b) + 1):]
        else:
            i, j = sorted(r.randrange(len(b)) for _ in range(2))
            b[i:i] = b[i:j][:512]
    return bytes(b)


@pytest.mark.timeout(120)
def test_fuzzed_case_bytes_raise_only_case_errors(signed, tmp_path):
    r = random.Random(2718)
    data = signed.read_bytes()
    f = tmp_path / "fuzz.sqlite"
    t0, n, opened = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < BUDGET_S:
        f.write_bytes(_mutate(data, r))
        for extra in (f.with_name(f.name + "-wal"), f.with_name(f.name + "-shm")):
            extra.unlink(missing_ok=True)
        try:
            _use(f)
            opened += 1
        except AllguiError:
            pass
        n += 1
    assert n > 20 and opened


def _columns(con, table) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def _strange(r: random.Random, old):
    """A value different from ``old``: nearby, another type, or one allgui never writes."""
    choices = [None, "", "x", 0, -1, 2 ** 62, 1e308, float("inf"), float("nan"), b"\x00\xff", "' OR 1=1 --",
               "\x1b[31m$\\undefinedcmd$", "{\"signed\": {\"reviews\": [99, \"x\"]}}"]
    if isinstance(old, str) and old:
        choices += [old[:-1], old + " ", old.upper(), old[::-1]]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old + 1, old * 1.0000001, -old]
    return r.choice(choices)


def _edit(case, r: random.Random) -> bool:
    """One random edit outside allgui that keeps the structure; False when it changed nothing."""
    con = sqlite3.connect(case, isolation_level=None)
    try:
        tables = ["meta", "models", "predictions", "reviews", "events"]
        table = r.choice(tables)
        triggers = [s for s in statements(SCHEMA) if s.startswith("CREATE TRIGGER") and f"ON {table}" in s]
        for t in triggers:
            con.execute(f"DROP TRIGGER {t.split()[2]}")
        rows = con.execute(f"SELECT rowid, * FROM {table}").fetchall()
        cols = _columns(con, table)
        op = r.random()
        if op < 0.6 and rows:                         # one value of one row
            row = r.choice(rows)
            col = r.choice(cols)
            old = row[1 + cols.index(col)]
            try:
                con.execute(f"UPDATE {table} SET {col} = ? WHERE rowid = ?", (_strange(r, old), row[0]))
            except sqlite3.Error:                     # NOT NULL, CHECK, UNIQUE, a taken id: no edit
                return False
            new = con.execute(f"SELECT {col} FROM {table} WHERE rowid = ?",
                              (row[0] if col != "id" else con.execute("SELECT max(rowid) FROM " + table).fetchone()[0],)
                              ).fetchone()
            changed = new is None or new[0] != old or type(new[0]) is not type(old)
        elif op < 0.75 and rows:                      # a row removed
            con.execute(f"DELETE FROM {table} WHERE rowid = ?", (r.choice(rows)[0],))
            changed = True
        elif op < 0.9 and rows:                       # a row copied
            row = r.choice(rows)
            keep = [c for c in cols if c not in ("id", "key")]
            try:
                if table == "meta":
                    con.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"extra{r.random()}", row[2]))
                else:
                    con.execute(f"INSERT INTO {table} ({', '.join(keep)}) SELECT {', '.join(keep)} FROM {table} "
                                "WHERE rowid = ?", (row[0],))
            except sqlite3.Error:
                return False
            changed = True
        elif rows and table != "meta":                # two rows' order swapped
            a, b = r.sample(rows, 2) if len(rows) > 1 else (rows[0], rows[0])
            if a[0] == b[0]:
                return False
            con.execute(f"UPDATE {table} SET id = -1 WHERE id = ?", (a[0],))
            con.execute(f"UPDATE {table} SET id = ? WHERE id = ?", (a[0], b[0]))
            con.execute(f"UPDATE {table} SET id = ? WHERE id = -1", (b[0],))
            changed = a[1:] != b[1:]
        else:
            return False
        for t in triggers:
            con.execute(t)
        return changed
    finally:
        con.close()


@pytest.mark.timeout(120)
def test_every_edit_outside_allgui_is_refused(signed, tmp_path):
    r = random.Random(31415)
    f = tmp_path / "edited.sqlite"
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < BUDGET_S:
        shutil.copy(signed, f)
        if not _edit(f, r):
            continue
        with pytest.raises(CaseError):
            CaseStore.open(f, readonly=True)
        n += 1
    assert n > 10


def _rechain(case) -> None:
    """What a forger who rewrites every chain, head and the description's hash would do."""
    con = sqlite3.connect(case, isolation_level=None)
    meta = dict(con.execute("SELECT key, value FROM meta"))
    for t in [s for s in statements(SCHEMA) if " TRIGGER " in s]:
        con.execute(f"DROP TRIGGER {t.split()[2]}")
    for table in ("models", "predictions", "reviews", "events"):
        prev, n = genesis(meta["case_id"], table), 0
        cols = COLUMNS[table]
        for row in con.execute(f"SELECT id, {', '.join(cols)} FROM {table} ORDER BY id").fetchall():
            try:
                h = row_hash(table, prev, dict(zip(cols, row[1:])))
            except (TypeError, ValueError):
                h = "0" * 64
            con.execute(f"UPDATE {table} SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, row[0]))
            prev, n = h, n + 1
        con.execute("UPDATE meta SET value = ? WHERE key = ?", (prev, f"head:{table}"))
        con.execute("UPDATE meta SET value = ? WHERE key = ?", (str(n), f"count:{table}"))
    meta = dict(con.execute("SELECT key, value FROM meta"))
    con.execute("UPDATE meta SET value = ? WHERE key = 'meta:sha256'", (meta_digest(meta),))
    for t in [s for s in statements(SCHEMA) if " TRIGGER " in s]:
        con.execute(t)
    con.close()


def _forged_events(case, r: random.Random) -> None:
    con = sqlite3.connect(case, isolation_level=None)
    con.execute("DROP TRIGGER events_append_only_u")
    rows = con.execute("SELECT id, kind FROM events").fetchall()
    target = next(row for row in rows if row[1] == "signoff") if r.random() < 0.5 else r.choice(rows)
    detail = r.choice([
        "not json", "[]", "null", "{}", dumps({"signed": {"reviews": [1, "x"]}}),
        dumps({"signed": {"models": [0, ""], "predictions": [-1, ""], "reviews": [True, ""]}}),
        dumps({"signed": {"models": [10 ** 6, "h"], "predictions": [0, ""], "reviews": [0, ""]}, "numbers": "x"}),
        dumps({"numbers": {"blasts": "many"}})])
    others = [("kind", r.choice(["signoff", "addendum", "metadata"])),
              ("field", r.choice([None, "stain", "nonsense", "conclusion"])),
              ("local_at", r.choice(["", "yesterday", "9999-99-99", "2025-01-01T00:00:00+14:00"])),
              ("value", r.choice(["", "\x00", "$\\frac$" * 50]))]
    col, value = ("detail", detail) if r.random() < 0.5 else r.choice(others)
    try:
        con.execute(f"UPDATE events SET {col} = ? WHERE id = ?", (value, target[0]))
    except sqlite3.Error:
        pass
    con.execute(next(s for s in statements(SCHEMA) if "events_append_only_u" in s))
    con.close()


@pytest.mark.timeout(120)
def test_forged_sign_offs_and_addenda_raise_only_case_errors(signed, tmp_path):
    r = random.Random(1618)
    f = tmp_path / "forged.sqlite"
    t0, n, opened = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < BUDGET_S:
        shutil.copy(signed, f)
        _forged_events(f, r)
        _rechain(f)
        try:
            _use(f)
            opened += 1
        except CaseError:
            pass
        n += 1
    assert n > 10 and 0 < opened < n       # some forgeries hold together (not a signature), none crashes
