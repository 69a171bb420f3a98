"""Command line: ``allgui-train train|evaluate|predict|report`` (also ``python -m trainer``)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import signal
import sys
from pathlib import Path

from .atomic import atomic_write
from .config import BACKBONE_NAMES, CALIBRATE_ON, CLASSIFIER_NAMES, COMBINERS, STAIN_METHODS, TrainConfig
from .csvsafe import printable, safe_dict
from .errors import AllguiError, Cancelled

#: Images classified together by ``predict`` (one pass through the networks); the rows of a batch are
#: written as soon as it is done, so an interrupted run keeps them.
PREDICT_BATCH = 16


class UsageError(AllguiError):
    """An argument or output path that cannot work, found before any work is done."""


def _int_at_least(lo: int):
    """An argparse type: a whole number >= ``lo``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _switch(group, flag: str, default: bool, help: str) -> None:
    """An ``on|off`` option whose default comes from the config."""
    group.add_argument(flag, choices=("on", "off"), default="on" if default else "off",
                       help=f"{help} (default: %(default)s)")


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {v}")
    return v


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_folder(folder: Path, what: str) -> None:
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UsageError(f"{what}: {printable(str(base))} is a file, not a folder.")
    import tempfile
    try:  # a real probe: permissions, read-only mounts and special file systems all show here
        fd, probe = tempfile.mkstemp(prefix=".allgui-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {printable(str(base))} "
                         f"({exc.strerror or 'permission denied or read-only'}).") from None


def check_output_file(path: str, what: str) -> None:
    """Refuse, before any work, an output file that is a folder or lies where nothing can be written."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {printable(path)} is an existing folder; give a file name.")
    if p.exists() and not p.is_file():
        raise UsageError(f"{what} {printable(path)} is not a regular file.")
    _writable_folder(p.parent if str(p.parent) else Path("."), what)


def check_output_dir(path: str, what: str) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created/written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} {printable(path)} is a file; give a folder.")
    _writable_folder(p, what)


def check_names(text: str | None, allowed: tuple[str, ...], what: str) -> None:
    names = _csv_list(text) or []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise UsageError(f"Unknown {what}: {', '.join(unknown)}; choose from {', '.join(allowed)}.")
    if text is not None and not names:
        raise UsageError(f"No {what} given; choose from {', '.join(allowed)}.")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "allgui", "features")


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="+", help="data folder(s): C-NMC layout (training_data/fold_*/{all,hem} or "
                                           "all/ + hem/) or one sub-folder per class; several folders are "
                                           "merged by subject id (identical images once)")
    g.add_argument("--layout", choices=("auto", "cnmc", "folders"), default="auto",
                   help="folder layout (default: detect)")
    g.add_argument("--positive", metavar="CLASSES",
                   help="comma-separated class folders that are ALL, e.g. Early,Pre,Pro (folders layout)")
    g.add_argument("--labels-csv", metavar="FILE",
                   help="labels.csv with path, label or class, and group columns (default: DATA/labels.csv if present)")
    g.add_argument("--group-column", metavar="NAME", help="column of labels.csv with subject/group ids")
    g.add_argument("--split", choices=("auto", "subject", "image"), default="auto",
                   help="subject: grouped 70/15/15 split, no subject on two sides (default where subject or "
                        "group ids are known); image: the paper's stratified image-level split")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and classifiers")
    g.add_argument("--add-case", action="append", default=[], metavar="CASE",
                   help="a case file (allgui's review database); its reviewed images are added with the "
                        "reviewer's labels (unclassifiable ones left out), grouped by case; repeatable")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features and model")
    g.add_argument("--weights", default="none",
                   help="backbone weights: 'none' (random init), 'imagenet' (torchvision weights from the torch "
                        "cache, downloaded there when online) or a local state_dict file (default: none)")
    g.add_argument("--backbones", default=",".join(BACKBONE_NAMES),
                   help=f"comma-separated backbones (default: {','.join(BACKBONE_NAMES)})")
    g.add_argument("--image-size", type=_positive_int, default=224, help="network input size in pixels (default: 224)")
    g.add_argument("--gamma", type=float, default=1.0, help="gamma correction in [0.8, 1.2] (default: 1.0)")
    g.add_argument("--batch-size", type=_positive_int, default=32)
    g.add_argument("--workers", type=int, default=None, help="data loader workers (default: automatic)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto uses a CUDA GPU when one is present")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="feature extraction arithmetic: auto = mixed precision on CUDA, float32 on the CPU; "
                        "bf16 = bfloat16 also on CPUs with native support (about 2x faster, features within "
                        "~0.5%% of float32)")
    g.add_argument("--no-pca", action="store_true", help="skip PCA (default: PCA keeping 98%% of the variance)")
    g.add_argument("--classifiers", default=",".join(CLASSIFIER_NAMES),
                   help=f"comma-separated subset of {','.join(CLASSIFIER_NAMES)}")
    g.add_argument("--calibration", choices=("auto", "platt", "isotonic"), default="auto",
                   help="auto keeps the method with the lower cross-validated Brier score on validation data")
    d = TrainConfig()
    g.add_argument("--combiner", choices=COMBINERS, default=d.combiner,
                   help="ensemble score: weighted = the paper's eq. 8 weights (validation accuracy); stacked = "
                        "a logistic regression with non-negative weights on the classifiers' out-of-fold "
                        "probabilities (default: %(default)s)")
    _switch(g, "--nucleus-features", d.nucleus_features,
            "add the hand-crafted nucleus block (morphology, GLCM/LBP texture, colour) beside the networks")
    _switch(g, "--block-l2", d.block_l2, "L2-normalise each feature block before fusion")
    g.add_argument("--stain", choices=STAIN_METHODS, default=d.stain,
                   help="colour normalisation before feature extraction, reference fitted on the training "
                        "images: none or reinhard (default: %(default)s)")
    g.add_argument("--calibrate-on", choices=CALIBRATE_ON, default=d.calibrate_on,
                   help="data that set the calibration and the Youden threshold: cross-fit = out-of-fold scores "
                        "of the training split plus the validation split; validation = the validation split "
                        "alone (default: %(default)s)")
    _switch(g, "--per-kind", d.per_kind, "one calibrated model per image kind (single-cell crops, smear fields)")
    g.add_argument("--cache-dir", default=default_cache_dir(),
                   help="feature cache folder (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    g.add_argument("--finetune", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="fine-tune both backbones on the training split before extracting features; "
                        "auto (default) = on when training on a CUDA GPU, off on the CPU")
    g.add_argument("--epochs", type=_positive_int, default=50, help="fine-tuning epochs at most (default: 50)")
    g.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default: 10)")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate for fine-tuning (default: 1e-4)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="fine-tuning checkpoints, one per epoch; a rerun resumes from them")
    g.add_argument("--deterministic", action="store_true", help="deterministic fine-tuning (slower)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision when fine-tuning on CUDA")


def finetune_wanted(choice: str, device: str) -> bool:
    """Resolve --finetune auto|on|off: auto fine-tunes when training will run on a CUDA GPU."""
    if choice != "auto":
        return choice == "on"
    if device == "cpu":
        return False
    import torch
    return bool(torch.cuda.is_available())


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=str(a.data[0]) if len(a.data) == 1 else [str(d) for d in a.data], layout=a.layout, positive=_csv_list(a.positive), labels_csv=a.labels_csv,
        cases=tuple(str(c) for c in getattr(a, "add_case", None) or ()),
        group_column=a.group_column, split=a.split, seed=a.seed, weights=a.weights,
        backbones=tuple(_csv_list(a.backbones) or BACKBONE_NAMES), image_size=a.image_size,
        gamma=a.gamma, batch_size=a.batch_size, num_workers=a.workers, device=a.device, precision=a.precision,
        pca=not a.no_pca, classifiers=tuple(_csv_list(a.classifiers) or CLASSIFIER_NAMES),
        calibration=a.calibration, cache_dir=None if a.no_cache else a.cache_dir,
        combiner=a.combiner, nucleus_features=a.nucleus_features == "on", block_l2=a.block_l2 == "on",
        stain=a.stain, per_kind=a.per_kind == "on", calibrate_on=a.calibrate_on,
        output=str(getattr(a, "output", "model.allmodel")), finetune=finetune_wanted(a.finetune, a.device),
        finetune_epochs=a.epochs, finetune_patience=a.patience, finetune_lr=a.finetune_lr,
        finetune_checkpoint_dir=a.checkpoint_dir, finetune_deterministic=a.deterministic,
        finetune_amp=not a.no_amp)


class ProgressBar:
    """tqdm bar fed by (fraction, message) callbacks; silent when ``quiet``."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self._last = float("-inf")
        if not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {desc}",
                            file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            return
        import time
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < 0.2:  # keep logs and slow terminals readable
            return
        self._last = now
        self.bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        self.bar.set_description_str(message[:70], refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_model_args(a) -> None:
    """Everything about the model options that can be checked before data is read."""
    check_names(a.classifiers, CLASSIFIER_NAMES, "classifiers")
    check_names(a.backbones, BACKBONE_NAMES, "backbones")
    if not 0.8 <= a.gamma <= 1.2:
        raise UsageError(f"--gamma must be between 0.8 and 1.2, not {a.gamma}.")
    if a.weights not in ("none", "imagenet") and not Path(a.weights).is_file():
        raise UsageError(f"--weights: no such file {printable(a.weights)} (or use 'none' or 'imagenet').")
    for case in getattr(a, "add_case", None) or ():
        from .cases.store import CaseStore  # refused here, before any work, when it cannot be read
        CaseStore.open(case, readonly=True).close()


def cmd_train(a) -> int:
    from .pipeline import train
    check_model_args(a)
    check_output_file(a.output, "-o/--output")
    config = config_from_args(a)
    bar = ProgressBar(a.quiet)
    try:
        result = train(config, progress=bar)
    finally:
        bar.close()
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return 0
    print(f"Model written to {result.bundle_path} ({result.seconds:.0f} s)")
    split = result.card["split"]
    print(f"Split: {split['protocol']}-level, train/val/test = {split['n_train']}/{split['n_validation']}/{split['n_test']}")
    for note in result.card.get("notes", []):
        print(note)
    for key, model in result.model.models.items():
        section = result.card["models"][key]
        data = section["data"]
        print(f"\n{section['name'].capitalize()}: {data['n_train']}/{data['n_validation']}/{data['n_test']} images, "
              f"test subjects/groups: {data['n_groups']['test']}; threshold (Youden, validation) "
              f"{model.threshold_:.3f}; combiner {model.combiner_}; calibration {model.calibrator_.method_}")
        test = result.per_model.get(key) or {}
        if test:
            print(_table(test))
        else:
            val = section["metrics"]["validation"]["ensemble_calibrated"]
            print(f"No test split; validation accuracy {val['accuracy']:.3f}")
    return 0


def _table(m: dict) -> str:
    rows = ["classifier       acc    prec   recall spec   F1     AUC    Brier"]
    for name, r in m.items():
        auc = "  -  " if r.get("auc") is None else f"{r['auc']:.3f}"
        brier = "  -  " if r.get("brier") is None else f"{r['brier']:.3f}"
        rows.append(f"{name:15s} {r['accuracy']:.3f}  {r['precision']:.3f}  {r['recall']:.3f}  "
                    f"{r['specificity']:.3f}  {r['f1']:.3f}  {auc}  {brier}")
    return "\n".join(rows)


def cmd_evaluate(a) -> int:
    from .evaluation import run_evaluation
    check_model_args(a)
    check_output_dir(a.out, "--out")
    check_names(a.protocols, ("subject", "image"), "protocols")
    config = config_from_args(a)
    bar = ProgressBar(a.quiet)
    try:
        out = run_evaluation(config, a.out, progress=bar, n_folds=a.folds, n_boot=a.bootstrap,
                             protocols=tuple(_csv_list(a.protocols) or ("subject", "image")),
                             ablation=not a.no_ablation, finetune_ablation=a.finetune_ablation)
    finally:
        bar.close()
    print(f"Report written to {out}")
    return 0


def cmd_report(a) -> int:
    from .cases.report import write_case_report
    check_output_file(a.output, "-o/--output")
    bar = ProgressBar(a.quiet)
    try:
        counts = write_case_report(a.case, a.output, per_page=a.per_page, progress=bar)
    finally:
        bar.close()
    print(f"Case report written to {printable(a.output)}: {counts['pages']} pages, {counts['images']} images, "
          f"{counts['reviewed']} reviewed, {counts['overrides']} overridden")
    if counts["missing"] or counts["changed"]:
        print(f"allgui-train: {counts['missing']} image file(s) not found and {counts['changed']} changed since "
              "analysis; the report says which", file=sys.stderr)
    return 0


CSV_FIELDS = ["file", "kind", "cell", "x", "y", "w", "h", "nucleus_area_px", "circularity", "nc_ratio"]


def _input_files(inputs: list[str]) -> list[Path]:
    from .imageio import IMAGE_SUFFIXES
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


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM is handled like Ctrl-C (temporary files removed, completed work kept and reported)."""
    try:
        old = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    except (ValueError, OSError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _rows_for(r, f: Path, threshold: float) -> list[dict]:
    """CSV rows of one image's result (image row, then one per cell) at ``threshold``."""
    from .results import decide
    rows = []
    decision = r.decision(threshold)
    for c in [r.whole] + r.cells:
        image_row = c.index < 0
        # the image row carries the image-level result the app shows: the whole image, or for a
        # field decided by cells its most suspicious cell (named in decided_by)
        p_img = r.probability if image_row else c.probability
        if image_row and r.field_by_cells:
            decided_by = f"cell {r.deciding.index}"
        else:
            decided_by = "whole image" if image_row else ""
        row = {"file": str(f), "kind": r.kind, "cell": "image" if image_row else c.index,
               "x": c.bbox[0], "y": c.bbox[1], "w": c.bbox[2], "h": c.bbox[3],
               "nucleus_area_px": round(c.area_px, 1), "circularity": round(c.circularity, 4),
               "nc_ratio": "" if c.nc_ratio is None else round(c.nc_ratio, 4),
               "vote_share": round(c.vote_share, 4), "raw_probability": round(c.raw_probability, 4),
               "probability": round(p_img, 4), "decision": decide(p_img, threshold),
               "decided_by": decided_by, "crop_probability": round(c.probability, 4),
               "model": r.model_name, "threshold": round(threshold, 4),
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
    """Classify ``files`` in batches of PREDICT_BATCH through ``predictor.predict_batch``, each image
    decided at the threshold of the model that judged it (``thresholds``: model key -> threshold); call
    ``emit(rows)`` with the CSV rows of each batch as soon as it is done. A batch that fails is
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
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")

    def prepare_all(batch):
        out = []
        for f in batch:
            try:
                out.append(prepare(f))
            except Exception as exc:  # noqa: BLE001 - raised again by predict_batch, then redone alone
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
                results = list(zip(batch, predictor.predict_batch(batch, **kwargs)))
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception:  # one bad file: redo this batch image by image
                results = []
                for f in batch:
                    try:
                        results.append((f, predictor.predict(f)))
                    except (KeyboardInterrupt, Cancelled):
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
                    rows += _rows_for(r, f, thresholds[r.model])
            emit(rows)
    except KeyboardInterrupt:
        return n_ok, n_err, True
    finally:
        if pool is not None:
            if ahead is not None:
                ahead.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    return n_ok, n_err, False


def cmd_predict(a) -> int:
    from .predictor import Predictor
    if a.output != "-":
        check_output_file(a.output, "-o/--output")
    files = _input_files(a.inputs)
    if not files:
        raise AllguiError("No images found in the given paths.")
    predictor = Predictor.from_bundle(a.model, device=a.device, precision=a.precision)
    thresholds = {k: (t if a.threshold is None else a.threshold) for k, t in predictor.thresholds.items()}
    names = predictor.classifier_names
    fields = CSV_FIELDS + [f"p_{n}" for n in names] + ["vote_share", "raw_probability", "crop_probability",
                                                        "probability", "decision", "decided_by", "model",
                                                        "threshold", "notes"]
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

    with _sigterm_interrupts():
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
    where = "" if a.output == "-" else f"; results in {printable(a.output)}"
    if interrupted:
        print(f"allgui-train: interrupted after {n_ok + n_err} of {len(files)} images; the rows of the "
              f"{n_ok} classified" + (f" and {n_err} unreadable" if n_err else "") + f" were kept{where}.",
              file=sys.stderr)
        return 130
    from .results import MODEL_NAMES
    at = ", ".join(f"{MODEL_NAMES.get(k, k)} {t:.3f}" for k, t in thresholds.items())
    print(f"{n_ok} images classified at threshold {at}"
          + (f", {n_err} could not be read" if n_err else "") + where, file=sys.stderr)
    if n_ok == 0:
        print("allgui-train: error: no image could be classified (see the error column).", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="allgui-train",
        description="Train, evaluate and apply the allgui ALL-blast ensemble (DenseNet-121 + ResNet-34 deep "
                    "features, SVM/KNN/RF/AdaBoost/MLP, weighted voting, calibration). Research use only.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict,report}")

    t = sub.add_parser("train", help="train a model and write a bundle",
                       description="Train on a labelled image folder; write a model bundle with its model card.")
    add_data_options(t)
    add_model_options(t)
    t.add_argument("-o", "--output", default="model.allmodel", help="model bundle to write (default: %(default)s)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="full evaluation report (tables, figures, statistics)",
                       description="Reproduce the paper's evaluation: held-out metrics with bootstrap CIs, ROC/PR, "
                                   "calibration, 5-fold CV with paired tests, ablations, both split protocols.")
    add_data_options(e)
    add_model_options(e)
    e.add_argument("--out", default="report", help="output folder for report.md, report.json and figures")
    e.add_argument("--folds", type=_positive_int, default=5, help="cross-validation folds (default: 5)")
    e.add_argument("--bootstrap", type=_non_negative_int, default=1000, help="bootstrap resamples for CIs (default: 1000)")
    e.add_argument("--protocols", default="subject,image",
                   help="split protocols to compare (default: subject,image; subject needs group ids)")
    e.add_argument("--no-ablation", action="store_true", help="skip the backbone / PCA ablation")
    e.add_argument("--finetune-ablation", action="store_true",
                   help="add frozen vs fine-tuned backbone features on the primary split (fine-tunes both "
                        "backbones with --epochs/--patience/--finetune-lr; slow on a CPU)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="classify images with a model bundle; write a CSV",
                       description="Classify images or folders; one CSV row per image and one per white cell found. "
                                   "The image row holds the image-level result the app shows (probability, "
                                   "decision, decided_by); crop_probability is the model's output for the "
                                   "row's own region.")
    r.add_argument("inputs", nargs="+", help="image files or folders")
    r.add_argument("-m", "--model", required=True, help="model bundle (.allmodel)")
    r.add_argument("-o", "--output", default="predictions.csv", help="CSV to write, '-' for stdout")
    r.add_argument("--threshold", type=_probability, default=None, help="decision threshold for every model (default: each model's own Youden threshold)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="forward-pass arithmetic: auto (default) = bfloat16 on CPUs that compute it natively "
                        "(AVX512-BF16/AMX), else float32; fp32 = always float32")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_predict)

    c = sub.add_parser("report", help="write a case's review report as a PDF",
                       description="Write the report of a case file (the app's review database): case summary, "
                                   "counts, model card headline and limitations, then each image with its "
                                   "outlines, probabilities, votes, the model's and the reviewer's decision. "
                                   "Research use only.")
    c.add_argument("case", help="case file (.sqlite) written by the app")
    c.add_argument("-o", "--output", default="case.pdf", help="PDF to write (default: %(default)s)")
    c.add_argument("--per-page", type=_positive_int, default=6, help="images per page (default: %(default)s)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_report)
    return p


class _ConsoleLog(logging.Handler):
    """Data warnings (skipped files and why) printed on stderr while the CLI runs."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            print(f"allgui-train: {printable(record.getMessage())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = logging.getLogger("trainer.data")
    handler = _ConsoleLog()
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with _sigterm_interrupts():
            return int(args.func(args) or 0)
    except Cancelled as e:
        print(f"allgui-train: {e}", file=sys.stderr)
        return 130
    except AllguiError as e:
        print(f"allgui-train: error: {printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allgui-train: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only folder, a vanished file: one line, no traceback
        where = f": {printable(str(e.filename))}" if e.filename else ""
        print(f"allgui-train: error: {printable(e.strerror or str(e))}{where}", file=sys.stderr)
        return 1
    except (ValueError, MemoryError) as e:
        text = "not enough memory" if isinstance(e, MemoryError) else printable(str(e))
        print(f"allgui-train: error: {text}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
