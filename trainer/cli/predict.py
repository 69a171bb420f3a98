"""``allgui-train predict``: classify images or folders in batches and write a CSV."""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.cli.common import (
    ProgressBar,
    check_output_file,
    hold_signals,
    probability,
    raise_if_stopped,
    sigterm_interrupts,
    stop_requested,
)
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
                   help="decision threshold for every model (default: each model's own threshold)")
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


CSV_FIELDS = ["file", "kind", "cell", "x", "y", "w", "h", "nucleus_area_px", "circularity", "nc_ratio",
              "segmentation_confidence"]


def _input_files(inputs: list[str]) -> list[Path]:
    from trainer.io.imageio import IMAGE_SUFFIXES  # OpenCV loads only for this command
    files: list[Path] = []
    for p in map(Path, inputs):
        try:
            folder = p.is_dir()
        except OSError:  # a name too long, say: that input's own error row, not the run's end
            folder = False
        if folder:
            found = []
            for d, dirs, names in os.walk(p):
                dirs.sort()
                found += [Path(d) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            files += sorted(found)
        else:
            files.append(p)  # a missing or unreadable file becomes an error row
    return files



def _nc_text(c) -> str | float:
    """The N:C column: the ratio, "no cytoplasm visible" where a crop shows none, empty where not measured."""
    from trainer.inference.results import NO_CYTOPLASM  # the inference package loads only for this command

    if c.nc_ratio is None:
        return ""
    return round(c.nc_ratio, 4) if c.nc_measured else NO_CYTOPLASM


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
               "nc_ratio": _nc_text(c),
               "segmentation_confidence": ("" if c.segmentation_confidence is None
                                           else round(c.segmentation_confidence, 3)),
               "vote_share": round(c.vote_share, 4), "raw_probability": round(c.raw_probability, 4),
               "probability": round(p_img, 4),
               "decision": decision if image_row else c.decision(threshold, band),
               "novelty": "" if unit.novelty is None else round(unit.novelty, 3),
               "in_domain": {None: "", True: "yes", False: "no"}[unit.in_domain],
               "domain_checks": " ".join(unit.domain_checks),
               "quality_flags": "; ".join(unit.quality_flags),
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


#: errors that end the whole run rather than cost one image its row (a model loaded late may be refused)
_FATAL = (KeyboardInterrupt, Cancelled, BundleError)


def _one_by_one(batch: list, judge) -> list[tuple]:
    """(item, judge(item) or the exception it raised) for each of ``batch``, stopping when asked to."""
    out = []
    for item in batch:
        raise_if_stopped()
        try:
            out.append((item, judge(item)))
        except _FATAL:
            raise
        except Exception as exc:
            out.append((item, exc))
    return out


def _judge_prepared(predictor, batch: list[Path], prepared: list) -> list[tuple]:
    """(file, result or exception) for each of ``batch``, prepared already (``Predictor.prepare``).

    A file whose preparation failed (unreadable, too small) gets its error without going near the
    networks; if the batch of the others fails, they are redone one at a time, each with its preparation.
    """
    good = [(f, p) for f, p in zip(batch, prepared) if not isinstance(p, BaseException)]
    judged: dict[int, object] = {}
    if good:
        try:
            done = predictor.predict_batch([f for f, _ in good], prepared=[p for _, p in good])
            judged = {id(f): r for (f, _), r in zip(good, done)}
        except _FATAL:
            raise
        except Exception:  # one bad image among them
            one = _one_by_one(good, lambda fp: predictor.predict_batch([fp[0]], prepared=[fp[1]])[0])
            judged = {id(f): r for (f, _), r in one}
    return [(f, judged[id(f)] if id(f) in judged else p) for f, p in zip(batch, prepared)]


def _judge_unprepared(predictor, batch: list[Path]) -> list[tuple]:
    """(file, result or exception) for each of ``batch``, for a predictor that prepares its own images."""
    try:
        if len(batch) == 1:  # a lone image: its networks run beside its segmentation
            return [(batch[0], predictor.predict(batch[0]))]
        return list(zip(batch, predictor.predict_batch(batch)))
    except _FATAL:
        raise
    except Exception:  # one bad file: redo this batch image by image
        return _one_by_one(batch, predictor.predict)


def classify_files(predictor, files: list[Path], thresholds: dict[str, float], emit,
                   progress=None) -> tuple[int, int, bool]:
    """Classify ``files`` in batches of PREDICT_BATCH through ``predictor.predict_batch``.

    Each image is decided at the threshold of the model that judged it (``thresholds``: model key ->
    threshold); ``emit(rows)`` gets the CSV rows of each batch as soon as it is done. A file that cannot be
    read costs only its own error row (found by ``predictor.prepare``, it never reaches the networks); a
    batch that fails is redone one image at a time.

    Returns (images with a result, images with an error, interrupted); a result may be *not assessable*.
    Ctrl-C / SIGTERM stop the run after the batches already emitted, within about one image's work
    (see :func:`trainer.cli.common.sigterm_interrupts`).
    """
    n_ok = n_err = 0
    batches = [files[s:s + PREDICT_BATCH] for s in range(0, len(files), PREDICT_BATCH)]
    prepare = None if len(files) == 1 else getattr(predictor, "prepare", None)
    pool = None
    if prepare is not None and len(batches) > 1:
        # decoding and segmentation of the next batch overlap the networks' work on this one
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")

    def prepare_all(batch):
        out = []
        for f in batch:
            if stop_requested():  # the main thread waits for this one when it stops
                break
            try:
                out.append(prepare(f))
            except Exception as exc:  # becomes the file's error row
                out.append(exc)
        return out

    ahead = pool.submit(prepare_all, batches[0]) if pool is not None else None
    try:
        for b, batch in enumerate(batches):
            raise_if_stopped()
            if progress is not None:
                progress(b * PREDICT_BATCH / len(files), printable(batch[0].name))
            if prepare is None:
                results = _judge_unprepared(predictor, batch)
            else:
                if ahead is not None:
                    prepared = ahead.result()
                    ahead = pool.submit(prepare_all, batches[b + 1]) if b + 1 < len(batches) else None
                else:
                    prepared = prepare_all(batch)
                raise_if_stopped()  # prepare_all may have stopped short
                results = _judge_prepared(predictor, batch, prepared)
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
    from trainer.inference.results import DECISION_NOT_ASSESSABLE as NOT_ASSESSABLE
    from trainer.inference.results import DECISION_OUTSIDE as OUTSIDE
    if a.output != "-":
        check_output_file(a.output, "-o/--output")
    files = _input_files(a.inputs)
    if not files:
        raise AllguiError("No images found in the given paths.")
    if a.case:  # refused here, before any work, when it cannot be opened or created
        from trainer.cases.batch import CaseRecorder, open_for_predictions  # sqlite and the case code only here
        case = open_for_predictions(a.case)
    # lazy: a model is loaded when the first image of its kind arrives (a folder of crops skips the field model)
    predictor = Predictor.from_bundle(a.model, device=a.device, precision=a.precision, lazy=True)
    thresholds = {k: (t if a.threshold is None else a.threshold) for k, t in predictor.thresholds.items()}
    if a.case:
        predictor = CaseRecorder(predictor, case, a.model, thresholds)
    names = predictor.classifier_names
    fields = CSV_FIELDS + [f"p_{n}" for n in names] + ["vote_share", "raw_probability", "crop_probability",
                                                        "probability", "decision", "novelty", "in_domain",
                                                        "domain_checks", "quality_flags", "decided_by", "model",
                                                        "threshold",
                                                        "band", "notes"]
    outcome = {NOT_ASSESSABLE: 0, OUTSIDE: 0}

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
            for r in rows:
                if r.get("cell") == "image" and r.get("decision") in outcome:
                    outcome[r["decision"]] += 1

        bar = ProgressBar(a.quiet or a.output == "-")
        try:
            outcome["result"] = classify_files(predictor, files, thresholds, emit, bar)
        finally:
            bar.close()
        hold_signals()  # every row is written: a late signal must not cost the file its rename

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
    n_done, n_err, interrupted = outcome["result"]
    n_na, n_out = outcome[NOT_ASSESSABLE], outcome[OUTSIDE]
    counts = _counts(n_done - n_na - n_out, n_na, n_out, n_err)
    if a.case:
        case.close()
        print(f"{predictor.recorded} result(s) recorded in the case file {printable(a.case)}", file=sys.stderr)
    where = "" if a.output == "-" else f"; results in {printable(a.output)}"
    if interrupted:
        print(f"allgui-train: interrupted after {n_done + n_err} of {len(files)} images; their rows were kept "
              f"({counts}){where}.", file=sys.stderr)
        return 130
    if n_done == n_na + n_out:  # not one image got a class: a script must not read this run as a success
        print(f"allgui-train: error: no image received a class ({counts}){where}.", file=sys.stderr)
        return 1
    from trainer.inference.results import MODEL_NAMES  # see _rows_for
    at = ", ".join(f"{MODEL_NAMES.get(k, k)} {t:.3f}" for k, t in thresholds.items())
    print(f"{counts} (threshold {at}){where}", file=sys.stderr)
    return 0


def _counts(n_classified: int, n_not_assessable: int, n_outside: int, n_errors: int) -> str:
    """The run's counts in words, e.g. '3 images classified, 1 outside training, 2 could not be read'.

    Zero counts after the first are left out.
    """
    text = f"{n_classified} image{'' if n_classified == 1 else 's'} classified"
    if n_not_assessable:
        text += f", {n_not_assessable} not assessable (no cell found, no class given)"
    if n_outside:
        text += f", {n_outside} outside training (unlike the model's training images, no class given)"
    if n_errors:
        text += f", {n_errors} could not be read"
    return text
