"""A case a pathologist can sign: metadata and sign-off in the case file's hash chain, addenda after
it, the description protected, older case files still read. Qt-free, on generated rows."""
from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3

import pytest

from trainer.cases import CaseStore
from trainer.cases.schema import SCHEMA, SCHEMA_V1, genesis, row_hash, statements
from trainer.util.errors import CaseError


def _record(i: int, cell: int = -1, decision: str = "ALL blast") -> dict:
    return {"image_sha256": f"{i:064x}", "path": f"/images/img{i}.png", "cell": cell, "model_sha256": "m" * 64,
            "model_name": "crop model", "model_key": "single_cell", "threshold": 0.5, "band": 0.05,
            "probability": 0.9, "raw_probability": 0.8, "vote_share": 1.0, "votes": [], "model_decision": decision}


def _prediction(i: int, kind: str = "single_cell") -> dict:
    return {"image_sha256": f"{i:064x}", "path": f"/images/img{i}.png", "model_sha256": "m" * 64,
            "model_key": kind, "model_name": "crop model", "kind": kind, "unit": "image", "width": 64,
            "height": 64, "threshold": 0.5, "band": 0.05, "probability": 0.9, "raw_probability": 0.8,
            "vote_share": 1.0, "decision": "ALL blast", "votes": [], "regions": [], "cells": []}


METADATA = {"specimen_id": "S24-0012", "specimen_type": "peripheral blood", "stain": "May-Gruenwald-Giemsa",
            "magnification": "100x oil", "clinical_note": "Fatigue, WBC 38 G/l."}


@pytest.fixture
def case(tmp_path):
    return tmp_path / "case.sqlite"


def _sql(case, *sql, params=()):
    con = sqlite3.connect(case)
    for s in sql:
        con.execute(s, params)
    con.commit()
    con.close()


def _behind_trigger(case, table, sql):
    """``sql`` with ``table``'s append-only triggers dropped and put back (an edit outside allgui that
    keeps the structure)."""
    con = sqlite3.connect(case)
    triggers = [s for s in statements(SCHEMA) if f"ON {table}" in s]
    for t in triggers:
        con.execute(f"DROP TRIGGER {t.split()[2]}")
    con.execute(sql)
    for t in triggers:
        con.execute(t)
    con.commit()
    con.close()


def _signed_case(case):
    with CaseStore.create(case, name="patient 7") as s:
        s.set_metadata(METADATA, author="Dr A")
        s.record_predictions([_prediction(i) for i in range(4)])
        s.add_review(_record(0), "ALL blast", "Dr A")
        s.add_review(_record(1), "normal", "Dr A")
        s.sign("Dr A", conclusion="Blasts present; consistent with ALL.")


def test_metadata_is_set_append_only_and_kept(case):
    with CaseStore.create(case) as s:
        assert s.metadata == {} and s.status == "preliminary" and s.signoff is None
        written = s.set_metadata(METADATA, author="Dr A")
        assert len(written) == 5 and all(e.author == "Dr A" for e in written)
        assert s.set_metadata({"stain": "May-Gruenwald-Giemsa"}, author="Dr A") == []   # unchanged: nothing
        s.set_metadata({"stain": "Wright"}, author="Dr B")
        with pytest.raises(CaseError, match="Unknown case metadata 'age'"):
            s.set_metadata({"age": "7"}, author="Dr A")
        with pytest.raises(CaseError, match="longer than 200"):
            s.set_metadata({"specimen_id": "x" * 201}, author="Dr A")
        with pytest.raises(CaseError, match="needs the name"):
            s.set_metadata({"stain": "x"}, author=" ")
    with CaseStore.open(case) as s:
        assert s.metadata == dict(METADATA, stain="Wright")
        assert [e.value for e in s.events() if e.field == "stain"] == ["May-Gruenwald-Giemsa", "Wright"]
    con = sqlite3.connect(case)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE events SET value = 'x'")
    con.close()


def test_sign_off_makes_the_case_final_once(case):
    with CaseStore.create(case) as s:
        s.add_review(_record(1), "ALL blast", "Dr A")
        with pytest.raises(CaseError, match="specimen id"):
            s.sign("Dr A", conclusion="ALL")
        s.set_metadata({"specimen_id": "S1"}, author="Dr A")
        with pytest.raises(CaseError, match="conclusion"):
            s.sign("Dr A")
        with pytest.raises(CaseError, match="not signed yet"):
            s.add_addendum("late finding", author="Dr A")
        so = s.sign("Dr A", conclusion="Blasts present.")
        assert s.status == "final" and so.author == "Dr A" and s.metadata["conclusion"] == "Blasts present."
        local = dt.datetime.fromisoformat(so.local_at)
        assert local.utcoffset() is not None                      # local time with its UTC offset
        assert abs(local - dt.datetime.fromisoformat(so.at)) < dt.timedelta(seconds=2)
        assert so.numbers()["blasts"] == 1 and so.numbers()["cells_reviewed"] == 1
        with pytest.raises(CaseError, match="already signed by Dr A"):
            s.sign("Dr B", conclusion="again")
        s.add_review(_record(2), "normal", "Dr B")                 # after the sign-off: recorded, an addendum
        add = s.add_addendum("Flow cytometry confirms B-ALL.", author="Dr A")
        assert add.kind == "addendum"
    with CaseStore.open(case, readonly=True) as s:
        assert s.status == "final" and s.signoff.author == "Dr A"
        assert [e.kind for e in s.events()] == ["metadata", "metadata", "signoff", "addendum"]
        assert len(s.actions()) == 2


def _forge_reviews_without_the_last(case):
    """Delete the last signed review and rewrite the reviews chain and its head as a careful forger would."""
    con = sqlite3.connect(case)
    case_id = con.execute("SELECT value FROM meta WHERE key = 'case_id'").fetchone()[0]
    con.execute("DROP TRIGGER reviews_append_only_d")
    con.execute("DROP TRIGGER reviews_append_only_u")
    con.execute("DELETE FROM reviews WHERE id = (SELECT max(id) FROM reviews)")
    from trainer.cases.schema import COLUMNS
    prev = genesis(case_id, "reviews")
    cols = COLUMNS["reviews"]
    rows = con.execute(f"SELECT id, {', '.join(cols)} FROM reviews ORDER BY id").fetchall()
    for row in rows:
        h = row_hash("reviews", prev, dict(zip(cols, row[1:])))
        con.execute("UPDATE reviews SET prev_hash = ?, hash = ? WHERE id = ?", (prev, h, row[0]))
        prev = h
    con.execute("UPDATE meta SET value = ? WHERE key = 'head:reviews'", (prev,))
    con.execute("UPDATE meta SET value = ? WHERE key = 'count:reviews'", (str(len(rows)),))
    for t in statements(SCHEMA):
        if "reviews_append_only_d" in t or "reviews_append_only_u" in t:
            con.execute(t)
    con.commit()
    con.close()


@pytest.mark.parametrize("tamper, message", [
    (lambda c: _sql(c, "UPDATE meta SET value = 'Someone else patient' WHERE key = 'name'"),
     r"case description \(name, id, creation\) was altered outside allgui"),
    (lambda c: _sql(c, "UPDATE meta SET value = 'allgui 0.1' WHERE key = 'created_by'"),
     "case description .* was altered outside allgui"),
    (lambda c: _sql(c, "UPDATE meta SET value = '2020-01-01T00:00:00+00:00' WHERE key = 'created_at'"),
     "case description .* was altered outside allgui"),
    (lambda c: _sql(c, "INSERT INTO meta (key, value) VALUES ('specimen_id', 'X')"),
     "entries of 'meta' were removed or added outside allgui"),
    (lambda c: _sql(c, "DELETE FROM meta WHERE key = 'meta:sha256'"),
     "entries of 'meta' were removed or added outside allgui"),
    (lambda c: _sql(c, "PRAGMA user_version = 1"), "structure of this case file was changed outside allgui"),
    (lambda c: _behind_trigger(c, "events", "UPDATE events SET author = 'Dr Evil' WHERE kind = 'signoff'"),
     r"entry \d+ of 'events' was altered outside allgui"),
    (lambda c: _behind_trigger(c, "events", "UPDATE events SET value = 'S99' WHERE field = 'specimen_id'"),
     "entry 1 of 'events' was altered outside allgui"),
    (lambda c: _behind_trigger(c, "events", "DELETE FROM events WHERE kind = 'signoff'"),
     "entries of 'events' were removed or added outside allgui"),
    (_forge_reviews_without_the_last, r"entries of 'reviews' signed off \(entry \d+ of 'events'\) were altered"),
])
def test_edits_of_metadata_and_sign_off_outside_allgui_are_refused(case, tamper, message):
    _signed_case(case)
    tamper(case)
    for readonly in (False, True):
        with pytest.raises(CaseError, match=message + ".*audit trail can be trusted"):
            CaseStore.open(case, readonly=readonly)


def _v1_case(case, name="old case"):
    """A case file as allgui wrote it before format 2 (no events, meta unprotected)."""
    case_id = hashlib.sha256(b"v1").hexdigest()[:32]
    con = sqlite3.connect(case, isolation_level=None)
    for stmt in statements(SCHEMA_V1):
        con.execute(stmt)
    con.execute("PRAGMA application_id = 1095518019")
    con.execute("PRAGMA user_version = 1")
    meta = {"format": "allgui-case", "case_id": case_id, "name": name, "created_at": "2024-05-01T08:00:00.000+00:00",
            "created_by": "allgui 0.9"}
    for t in ("models", "predictions", "reviews"):
        meta[f"head:{t}"], meta[f"count:{t}"] = genesis(case_id, t), "0"
    con.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
    con.close()


def test_a_case_file_of_an_older_allgui_opens_and_is_upgraded_when_signed(case):
    _v1_case(case)
    with CaseStore.open(case) as s:
        assert s.version == 1 and not s.meta_protected
        s.add_review(_record(1), "normal", "Dr A")               # reviews alone keep the old format
    _sql(case, "UPDATE meta SET value = 'renamed' WHERE key = 'name'")
    with CaseStore.open(case) as s:                              # unprotected: opens (the report says so)
        assert s.version == 1 and s.name == "renamed" and len(s.actions()) == 1
        s.set_metadata({"specimen_id": "S7"}, author="Dr A")     # upgrades in the same transaction
        assert s.version == 2 and s.meta_protected and s.upgraded_from == "1"
        s.sign("Dr A", conclusion="No blasts seen.")
    with CaseStore.open(case) as s:
        assert s.version == 2 and s.status == "final" and s.metadata["specimen_id"] == "S7"
    _sql(case, "UPDATE meta SET value = 'renamed again' WHERE key = 'name'")
    with pytest.raises(CaseError, match="case description .* was altered outside allgui"):
        CaseStore.open(case)


def test_a_writer_follows_an_upgrade_and_a_sign_off_by_another(case):
    _v1_case(case)
    a, b = CaseStore.open(case), CaseStore.open(case)
    try:
        a.add_review(_record(1), "ALL blast", "Dr A")
        b.set_metadata({"specimen_id": "S1"}, author="Dr B")     # b upgrades the file
        a.set_metadata({"stain": "MGG"}, author="Dr A")          # a takes the upgrade in, no second upgrade
        b.sign("Dr B", conclusion="ALL")
        with pytest.raises(CaseError, match="already signed by Dr B"):
            a.sign("Dr A", conclusion="ALL")
        assert a.version == 2 and a.metadata == {"specimen_id": "S1", "stain": "MGG", "conclusion": "ALL"}
        assert b.current_reviews().keys() == a.current_reviews().keys()
    finally:
        a.close()
        b.close()
    with CaseStore.open(case) as s:
        assert s.status == "final" and s.signoff.author == "Dr B"


def test_rows_are_read_in_the_order_of_their_columns():
    """The store builds Review and Event from a row's values by position."""
    from dataclasses import fields

    from trainer.cases.events import Event
    from trainer.cases.reviews import Review
    from trainer.cases.schema import EVENT_COLUMNS, REVIEW_COLUMNS
    assert [f.name for f in fields(Review)] == ["id", *REVIEW_COLUMNS]
    assert [f.name for f in fields(Event)] == ["id", *EVENT_COLUMNS]
