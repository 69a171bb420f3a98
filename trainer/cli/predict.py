"""``allgui-train predict``: classify images or folders in batches and write a CSV."""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.cli.common import ProgressBar, check_output_file, probability, sigterm_interrupts
from trainer.util.atomic import atomic_write
from trainer.util.csvsafe import printable, safe_dict
from trainer.util.errors import AllguiError, BundleError, Cancelled
from trainer.util.memory import release_freed_memory

#: Images classified together by ``predict`` (one pass through the networks); the rows of a batch are
#: written as soon as it is done, so an interrupted run keeps them.
PREDICT_BATCH = 16


def register(sub) -> argparse.ArgumentParser:
    """Add the ``predict`` subcommand to ``sub`` (an argparse subparsers object)."""
    r = sub.add_parser("predict", help="classify images with a model bundle; write a CSV",
                       description="Classify images or folders; one CSV row per image and one per white cell found. "
                                   "The image row holds the image-level result the app shows (probability, "
                                   "decision, decided_by); crop_probability is the model's output for the "
                                   "row's own region.")
    r.add_argument("inputs", nargs="+", help="image files or folders")
    r.add_argument("-m", "--model", required=True, help="model bundle (.allmodel)")
    r.add_argument("-o", "--output", default="predictions.csv", help="CSV to write, '-' for stdout")
    r.add_argument("--threshold", type=probability, default=None,
                   help="decision threshold for every model (default: each model's own Youden threshold)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="forward-pass arithmetic: auto (default) = bfloat16 on CPUs that compute it natively "
                        "(AVX512-BF16/AMX), else float32; fp32 = always float32")
    r.add_argument("--case", metavar="CASE.sqlite",
                   help="also record every result in this case file (created if missing) for review in the app; "
                        "DIR/allgui-case.sqlite opens with the folder")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run)
    return r


CSV_FIELDS = ["file", "kind", "cell", "x", "y", "w", "h", "nucleus_area_px", "circularity", "nc_ratio"]


def _input_files(inputs: list[str]) -> list[Path]:
    from trainer.io.imageio import IMAGE_SUFFIXES  # OpenCV loads only for this command
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = []
            for d, dirs, names in os.walk(p):
                dirs.sort()
                found += [Path(d) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            files += sorted(found)
        else:
            files.append(p)  # a missing or unreadable file becomes an error row
    return files



def _rows_for(r, f: Path, threshold: float, band: float) -> list[dict]:
    """CSV rows of one image's result (image row, then one per cell) at ``threshold`` with uncertain ``band``."""
    rows = []
    decision = r.decision(threshold, band)
    for c in [r.whole] + r.cells:
        image_row = c.index < 0
        # the image row carries the image-level result the app shows: the whole image, or for a
        # field decided by cells its most suspicious cell (named in decided_by)
        p_img = r.probability if image_row else c.probability
        unit = r.deciding if image_row else c  # whose domain check the row reports
        if image_row and r.field_by_cells:
            decided_by = f"cell {r.deciding.index}"
        else:
            decided_by = "whole image" if image_row else ""
        row = {"file": str(f), "kind": r.kind, "cell": "image" if image_row else c.index,
               "x": c.bbox[0], "y": c.bbox[1], "w": c.bbox[2], "h": c.bbox[3],
               "nucleus_area_px": round(c.area_px, 1), "circularity": round(c.circularity, 4),
               "nc_ratio": "" if c.nc_ratio is None else round(c.nc_ratio, 4),
               "vote_share": round(c.vote_share, 4), "raw_probability": round(c.raw_probability, 4),
               "probability": round(p_img, 4),
               "decision": decision if image_row else c.decision(threshold, band),
               "novelty": "" if unit.novelty is None else round(unit.novelty, 3),
               "in_domain": {None: "", True: "yes", False: "no"}[unit.in_domain],
               "domain_checks": " ".join(unit.domain_checks),
               "decided_by": decided_by, "crop_probability": round(c.probability, 4),
               "model": r.model_name, "threshold": round(threshold, 4), "band": round(band, 4),
               "notes": " ".join(r.notes) if image_row else ""}
        if image_row and not r.assessable:  # no nucleus: no class and no image-level probability
            row.update(probability="", decision=decision, decided_by="")
        row.update({f"p_{v.name}": round(v.probability, 4) for v in c.votes})
        rows.append(row)
    return rows


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, AllguiError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Not enough memory to analyse this image."
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def classify_files(predictor, files: list[Path], thresholds: dict[str, float], emit,
                   progress=None) -> tuple[int, int, bool]:
    """Classify ``files`` in batches of PREDICT_BATCH through ``predictor.predict_batch``.

    Each image is decided at the threshold of the model that judged it (``thresholds``: model key ->
    threshold); ``emit(rows)`` gets the CSV rows of each batch as soon as it is done. A batch that fails is
    redone one image at a time, so one bad file costs only its own error row.

    Returns (images classified, images with an error, interrupted). Ctrl-C / SIGTERM stop the run
    after the batches already emitted.
    """
    n_ok = n_err = 0
    batches = [files[s:s + PREDICT_BATCH] for s in range(0, len(files), PREDICT_BATCH)]
    prepare = getattr(predictor, "prepare", None)
    pool = None
    if prepare is not None and len(batches) > 1:
        # decoding and segmentation of the next batch overlap the networks' work on this one

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")

    def prepare_all(batch):
        out = []
        for f in batch:
            try:
                out.append(prepare(f))
            except Exception as exc:  # raised again by predict_batch, then redone alone
                out.append(exc)
        return out

    ahead = pool.submit(prepare_all, batches[0]) if pool is not None else None
    try:
        for b, batch in enumerate(batches):
            start = b * PREDICT_BATCH
            if progress is not None:
                progress(start / len(files), printable(batch[0].name))
            kwargs = {}
            if ahead is not None:
                kwargs["prepared"] = ahead.result()
                ahead = pool.submit(prepare_all, batches[b + 1]) if b + 1 < len(batches) else None
            try:
                if len(batch) == 1 and not kwargs:  # a lone image: its networks run beside its segmentation
                    results = [(batch[0], predictor.predict(batch[0]))]
                else:
                    results = list(zip(batch, predictor.predict_batch(batch, **kwargs)))
            except (KeyboardInterrupt, Cancelled, BundleError):  # a model loaded late may be refused
                raise
            except Exception:  # one bad file: redo this batch image by image
                results = []
                for f in batch:
                    try:
                        results.append((f, predictor.predict(f)))
                    except (KeyboardInterrupt, Cancelled, BundleError):
                        raise
                    except Exception as exc:
                        results.append((f, exc))
            rows = []
            for f, r in results:
                if isinstance(r, BaseException):
                    n_err += 1
                    rows.append({"file": str(f), "error": _error_text(r)})
                else:
                    n_ok += 1
                    rows += _rows_for(r, f, thresholds[r.model], predictor.band_for(r.model))
            release_freed_memory()  # RSS flat in the number of images (see trainer.util.memory)
            emit(rows)
    except KeyboardInterrupt:
        return n_ok, n_err, True
    finally:
        if pool is not None:
            if ahead is not None:
                ahead.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    return n_ok, n_err, False


def run(a) -> int:
    from trainer.inference.predictor import Predictor  # torch and the models load only for this command
    if a.output != "-":
        check_output_file(a.output, "-o/--output")
    files = _input_files(a.inputs)
    if not files:
        raise AllguiError("No images found in the given paths.")
    if a.case:  # refused here, before any work, when it cannot be opened or created
        from trainer.cases.batch import CaseRecorder, open_for_predictions  # sqlite and the case code only here
        case = open_for_predictions(a.case)
    # lazy: a model is loaded when the first image of its kind arrives (a folder of crops skips the field model),
    # as its numpy read-out where the bundle offers one (no scikit-learn at start-up)
    predictor = Predictor.from_bundle(a.model, device=a.device, precision=a.precision, lazy=True)
    thresholds = {k: (t if a.threshold is None else a.threshold) for k, t in predictor.thresholds.items()}
    if a.case:
        predictor = CaseRecorder(predictor, case, a.model, thresholds)
    names = predictor.classifier_names
    fields = CSV_FIELDS + [f"p_{n}" for n in names] + ["vote_share", "raw_probability", "crop_probability",
                                                        "probability", "decision", "novelty", "in_domain",
                                                        "domain_checks", "decided_by", "model", "threshold",
                                                        "band", "notes"]
    outcome = {}

    def write_rows(out) -> None:
        header = io.StringIO(newline="")
        csv.DictWriter(header, fieldnames=fields + ["error"]).writeheader()
        out.write(header.getvalue())

        def emit(rows: list[dict]) -> None:
            buf = io.StringIO(newline="")  # one write per batch: an interruption never cuts a row
            w = csv.DictWriter(buf, fieldnames=fields + ["error"])
            for row in rows:  # formula-like names neutralised, undecodable bytes escaped
                w.writerow(safe_dict(row))
            out.write(buf.getvalue())
            out.flush()

        bar = ProgressBar(a.quiet or a.output == "-")
        try:
            outcome["result"] = classify_files(predictor, files, thresholds, emit, bar)
        finally:
            bar.close()

    with sigterm_interrupts():
        if a.output == "-":
            write_rows(sys.stdout)
        else:  # written to a temporary file and renamed: never a half-written row
            def write_text(fh) -> None:
                text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
                write_rows(text)
                text.flush()
                text.detach()  # leave the binary file open for atomic_write to sync and rename

            atomic_write(a.output, write_text)
    n_ok, n_err, interrupted = outcome["result"]
    if a.case:
        case.close()
        print(f"{predictor.recorded} result(s) recorded in the case file {printable(a.case)}", file=sys.stderr)
    where = "" if a.output == "-" else f"; results in {printable(a.output)}"
    if interrupted:
        print(f"allgui-train: interrupted after {n_ok + n_err} of {len(files)} images; the rows of the "
              f"{n_ok} classified" + (f" and {n_err} unreadable" if n_err else "") + f" were kept{where}.",
              file=sys.stderr)
        return 130
    from trainer.inference.results import MODEL_NAMES  # see _rows_for
    at = ", ".join(f"{MODEL_NAMES.get(k, k)} {t:.3f}" for k, t in thresholds.items())
    print(f"{n_ok} images classified at threshold {at}"
          + (f", {n_err} could not be read" if n_err else "") + where, file=sys.stderr)
    if n_ok == 0:
        print("allgui-train: error: no image could be classified (see the error column).", file=sys.stderr)
        return 1
    return 0

