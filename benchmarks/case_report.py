"""Case report of a big case: this checkout against the code before, in one run.

  python benchmarks/case_report.py [--actions 100000] [--small 2000] [--baseline REV] [--keep DIR]

Measures (ratios against a baseline taken in the same run, never absolute goals):

  small     a case of ``--small`` review actions (one image each, no image files), reported by the
            trainer package of commit REV (default: the last commit before the case store and report
            were reworked) and by this checkout: seconds and CPU seconds of each, and their ratio
  big       a case of ``--actions`` review actions the same way, by this checkout only (the baseline
            did not finish 100,000 in 300 s): open and verify, then the whole report (image pages
            for at most the default number of images, the others counted and listed by name)

Each report is written by a child process (``--child CODE``) that imports the trainer package from
CODE. The case files are written directly with SQLite in case format 1, which both read; the row
hashes come from this checkout's ``trainer.cases.schema``, unchanged since format 1. On a shared
machine the CPU seconds are the steadier figure.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "cdc8026"


def write_case(path: Path, n: int) -> None:
    """A format-1 case of ``n`` reviews, one per image (every image gets an entry in the report)."""
    sys.path.insert(0, str(ROOT))
    # this checkout's hashing (the parent process never imports the trainer otherwise)
    from trainer.cases.schema import REVIEW_COLUMNS, SCHEMA_V1, genesis, row_hash, statements

    case_id = "b" * 32
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN")
    for stmt in statements(SCHEMA_V1):
        con.execute(stmt)
    con.execute("PRAGMA application_id = 1095518019")
    con.execute("PRAGMA user_version = 1")
    prev = genesis(case_id, "reviews")
    cols = REVIEW_COLUMNS + ("prev_hash", "hash")
    insert = f"INSERT INTO reviews ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for i in range(n):
        values = {"at": f"2025-01-01T08:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00", "action": "review",
                  "target": None, "image_sha256": f"{i:064x}", "path": f"/gone/img{i:06d}.png", "rel_path": None,
                  "cell": -1, "cell_bbox": None, "model_sha256": "m" * 64, "model_name": "crop model",
                  "model_key": "single_cell", "threshold": 0.5, "band": 0.05, "probability": 0.9,
                  "raw_probability": 0.8, "vote_share": 1.0, "votes": "[]", "model_decision": "ALL blast",
                  "reviewer_decision": "normal" if i % 2 else "ALL blast", "confirmed": 0, "comment": "c",
                  "reviewer": "Dr K"}
        h = row_hash("reviews", prev, values)
        con.execute(insert, [values[c] for c in REVIEW_COLUMNS] + [prev, h])
        prev = h
    meta = {"format": "allgui-case", "case_id": case_id, "name": f"{n} actions",
            "created_at": "2025-01-01T08:00:00.000+00:00", "created_by": "benchmark"}
    for t in ("models", "predictions", "reviews"):
        meta[f"head:{t}"], meta[f"count:{t}"] = genesis(case_id, t), "0"
    meta["head:reviews"], meta["count:reviews"] = prev, str(n)
    con.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
    con.execute("COMMIT")
    con.close()


def child(case: str, out: str) -> dict:
    # the trainer package of the code under test, on this child's path
    from trainer.cases.report import write_case_report
    from trainer.cases.store import CaseStore
    t0, c0 = time.perf_counter(), time.process_time()
    CaseStore.open(case, readonly=True).close()
    t1, c1 = time.perf_counter(), time.process_time()
    counts = write_case_report(case, out)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"open_s": t1 - t0, "open_cpu_s": c1 - c0, "report_s": t2 - t1, "report_cpu_s": c2 - c1,
            "pages": counts["pages"], "images": counts["images"]}


def run(code: Path, case: Path, out: Path, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    try:
        p = subprocess.run([sys.executable, __file__, "--child", str(code), str(case), str(out)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout}
    if p.returncode:
        return {"error": p.stderr[-400:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actions", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--keep", help="folder for the case files and reports (default: a temporary one)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[1], a.child[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = work / "baseline-code"
        if not base.exists():
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.baseline, "trainer"], check=True,
                                     capture_output=True).stdout
            base.mkdir()
            with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
                tf.extractall(base, filter="data")
        results = {}
        for label, n in (("small", a.small), ("big", a.actions)):
            case = work / f"case-{n}.sqlite"
            if not case.exists():
                write_case(case, n)
            for who, code in (("baseline", base), ("new", ROOT)):
                if who == "baseline" and label == "big":
                    continue
                results[f"{label} {who}"] = r = run(code, case, work / f"{label}-{who}.pdf", a.timeout)
                print(f"{label:5} {who:8} {n:7d} actions: {json.dumps(r)}", flush=True)
        b, s = results["small baseline"], results["small new"]
        if "report_s" in b and "report_s" in s:
            print(f"small: new / baseline report seconds {s['report_s'] / b['report_s']:.2f}, "
                  f"CPU {s['report_cpu_s'] / b['report_cpu_s']:.2f}; CPU seconds a page "
                  f"{b['report_cpu_s'] / b['pages']:.3f} (baseline), {s['report_cpu_s'] / s['pages']:.3f} (new)")


if __name__ == "__main__":
    main()
