"""The same images through this checkout and another (e.g. the code before a change): identical results?

  python benchmarks/compare_predictions.py --baseline OLD_CHECKOUT [--model BUNDLE] [--n 100] PATH [PATH ...]

Each checkout loads the bundle as ``allgui-train predict`` does (``Predictor.from_bundle(lazy=True)``) in a
process of its own and predicts every image (``predict_batch``, batches of 8); the image's and every
white cell's calibrated probability, raw probability, member probabilities and votes are compared:
largest absolute differences, and how many decisions (at the model's threshold) and votes are the same.
PATHs are image files or folders (searched recursively, sorted by path; with ``--n``, that many spread
evenly over the sorted list).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.io.imageio import IMAGE_SUFFIXES

_CHILD = r"""
import json, sys
from trainer.inference.predictor import Predictor
model, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
p = Predictor.from_bundle(model, lazy=True)
rows = []
for start in range(0, len(files), 8):
    for r in p.predict_batch(files[start:start + 8]):
        units = [r.whole] + list(r.cells)
        rows.append({"path": r.path, "model": r.model, "threshold": p.thresholds[r.model],
                     "calibrated": [u.probability for u in units], "raw": [u.raw_probability for u in units],
                     "members": [[v.probability for v in u.votes] for u in units],
                     "votes": [[v.vote for v in u.votes] for u in units]})
json.dump(rows, open(out, "w"))
"""


def images(paths: list[str], n: int | None) -> list[str]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES] if p.is_dir() else [p]
    found = sorted(found)
    if n and len(found) > n:
        found = [found[i * len(found) // n] for i in range(n)]
    return [str(f) for f in found]


def run(checkout: Path, model: str, files: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = dict(os.environ, PYTHONPATH=str(checkout))
        subprocess.run([sys.executable, "-c", _CHILD, model, str(out), *files], check=True, cwd=checkout, env=env)
        return json.loads(out.read_text())


def compare(old: list[dict], new: list[dict]) -> dict:
    assert [r["path"] for r in old] == [r["path"] for r in new]
    worst = {"calibrated": 0.0, "raw": 0.0, "members": 0.0}
    same_decisions = same_votes = units = 0
    for a, b in zip(old, new):
        assert a["model"] == b["model"] and len(a["calibrated"]) == len(b["calibrated"]), a["path"]
        for key in worst:
            for x, y in zip(a[key], b[key]):
                diffs = [abs(p - q) for p, q in zip(x, y)] if isinstance(x, list) else [abs(x - y)]
                worst[key] = max(worst[key], *diffs)
        for pa, pb, va, vb in zip(a["calibrated"], b["calibrated"], a["votes"], b["votes"]):
            units += 1
            same_decisions += (pa >= a["threshold"]) == (pb >= b["threshold"])
            same_votes += va == vb
    return {"images": len(old), "units": units, "identical_decisions": same_decisions,
            "identical_votes": same_votes, **{f"max_abs_diff_{k}": v for k, v in worst.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--baseline", required=True, help="checkout of the other code")
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "default.allmodel"))
    ap.add_argument("--n", type=int, help="images spread evenly over the sorted paths")
    a = ap.parse_args(argv)
    files = images(a.paths, a.n)
    out = compare(run(Path(a.baseline).resolve(), a.model, files), run(ROOT, a.model, files))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
