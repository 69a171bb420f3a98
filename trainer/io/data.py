"""Labelled image folders: finding the images, their binary labels and subject/group ids.

Two layouts are read:

* ``cnmc``: the C-NMC 2019 layout, ``training_data/fold_0..2/{all,hem}/*.bmp`` at any depth, or a
  flat folder with ``all/`` and ``hem/``. ``all`` is positive (ALL blast), ``hem`` negative; the
  subject id comes from the file name (``UID_11_10_1_all.bmp`` -> ``11``). A labels.csv named by
  ``labels_csv`` (or one present when a ``group_column`` of it is asked for) decides instead: its labels,
  and its groups where it has them, else the file names'; one merely present is not read.
* ``folders``: one sub-folder per class and a mapping naming the positive classes (for example
  ``Early, Pre, Pro`` positive, ``Benign`` negative). A ``labels.csv`` (a path column, a label or
  class column, optionally a group column) takes precedence over the folder names when present.

Label 1 is the positive class ``'ALL'``, label 0 the negative class ``'normal'``.
The samples themselves are :mod:`trainer.io.samples`, ``labels.csv`` and class names
:mod:`trainer.io.labels`, the seeded splits and cross-validation folds :mod:`trainer.io.splits`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from trainer.config import LAYOUTS
from trainer.io.imageio import IMAGE_SUFFIXES, content_hash, is_image_file, pixel_hash
from trainer.io.labels import class_mapping, find_labels_csv, load_labels_csv, positive_set
from trainer.io.samples import CLASS_NAMES, Dataset, Sample
from trainer.util.errors import AllguiError, DataError, ImageReadError
from trainer.util.progress import Progress, check_cancel
from trainer.util.threads import map_in_chunks

_CNMC_NAME = re.compile(r"^UID_(H?\d+)_(\d+)_(\d+)_(all|hem)$", re.IGNORECASE)
_IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini", "labels.csv"})
#: skipped files and data warnings are logged here (the command line prints them on the console)
log = logging.getLogger(__name__)  # "trainer.io.data": the CLI prints its warnings
_LOGGED_SKIPS = 20



def parse_cnmc_subject(name: str | os.PathLike) -> str:
    """Subject id from a C-NMC file name: ``UID_11_10_1_all.bmp`` -> ``'11'``, ``UID_H10_43_1_hem.bmp`` -> ``'H10'``.

    Raises DataError for other names.
    """
    stem = Path(name).name
    for suffix in IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = _CNMC_NAME.match(stem)
    if not m:
        raise DataError(
            f"'{Path(name).name}' is not a C-NMC file name; expected "
            "UID_<subject>_<image>_<cell>_<all|hem>.bmp, e.g. UID_11_10_1_all.bmp.")
    return m.group(1).upper() if m.group(1)[0] in "hH" else m.group(1)


def detect_layout(root: str | os.PathLike) -> str:
    """'cnmc' when ``root`` holds ``all``/``hem`` folders of C-NMC-named images, else 'folders'."""
    for d in _cnmc_dirs(Path(root)):
        for f in _files_in(d):
            if is_image_file(f) and _CNMC_NAME.match(f.stem):
                return "cnmc"
    return "folders"


def load_dataset(root: str | os.PathLike, layout: str = "auto",
                 positive: Sequence[str] | str | None = None,
                 labels_csv: str | os.PathLike | bool | None = None,
                 group_column: str | None = None, check_readable: bool = False,
                 progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None) -> Dataset:
    """Find the labelled images under ``root``.

    Args:
        root: the data folder (or a labels csv file, whose folder is then the root).
        layout: 'auto', 'cnmc' or 'folders' (see module docstring).
        positive: class names that are positive (ALL), as a list or comma-separated string;
            case-insensitive. Needed for 'folders' unless the class names say it
            (``all``/``hem``, ``ALL``/``normal``, ``malignant``/``benign``, ...).
        labels_csv: csv file (absolute, or relative to root) giving the labels in every layout;
            None uses ``root/labels.csv`` when present in the 'folders' layout (in the 'cnmc' layout
            only with a ``group_column``), False ignores any csv.
        group_column: csv column holding subject/group ids; None picks the first of
            group, subject_id, subject, patient_id, patient.
        check_readable: open every image; unreadable ones go to ``skipped``, and images with identical
            pixels are found (see :func:`_drop_pixel_duplicates`); without it only byte-identical files
            under both labels are.
        progress, cancel: optional callbacks (fraction, message) and cancel check for
            the readability pass.

    Raises
    ------
        DataError: missing/empty folder, no images, only one class, unknown classes or columns, a
            group column without a labels.csv.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv" and labels_csv is None:
        root, labels_csv = root.parent, root
    if not root.exists():
        raise DataError(f"Data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"Data path is not a folder: {root}")
    if layout not in LAYOUTS:
        raise DataError(f"Unknown data layout '{layout}'; use one of {', '.join(LAYOUTS)}.")
    if layout == "auto":
        layout = detect_layout(root)

    skipped: list[tuple[Path, str]] = []
    warnings: list[str] = []
    samples = _listed_samples(root, layout, positive, labels_csv, group_column, skipped, warnings)
    samples = _non_empty_files(samples, skipped)
    if check_readable:
        samples = _readable(samples, skipped, progress, cancel)
        samples = _drop_pixel_duplicates(samples, skipped, warnings)
    else:
        samples = _drop_conflicting_duplicates(samples, skipped, warnings)

    samples.sort(key=lambda s: str(s.path))
    ds = Dataset(samples, CLASS_NAMES, skipped, root, layout, warnings)
    _log_skipped(ds)
    _check_dataset(ds)
    return ds


def _listed_samples(root: Path, layout: str, positive, labels_csv, group_column: str | None, skipped: list,
                    warnings: list) -> list[Sample]:
    """The samples a ``"cnmc"`` or ``"folders"`` layout names, by its folders or by a labels csv (see load_dataset)."""
    if layout != "cnmc":
        csv_path = find_labels_csv(root, labels_csv)
        if csv_path is not None:
            return load_labels_csv(root, csv_path, positive, group_column, skipped, warnings)
        if group_column is not None:
            raise DataError(f"A group column ('{group_column}') needs a labels.csv; none found in {root}.")
        return _load_class_folders(root, positive, skipped, warnings)
    # the folders give the labels unless a labels.csv is named (or a column of it): then the csv
    # does, as in every layout
    csv_path = None
    if labels_csv is not None and labels_csv is not False:
        csv_path = find_labels_csv(root, labels_csv)
    elif group_column is not None and labels_csv is None:
        csv_path = find_labels_csv(root, None)
    if csv_path is not None:
        return _cnmc_from_csv(root, csv_path, positive, group_column, skipped, warnings)
    if group_column is not None:
        raise DataError(f"A group column ('{group_column}') is read from a labels.csv; there is none in "
                        f"{root}, whose C-NMC layout takes each subject from the file name.")
    if positive is not None and positive_set(positive) != {"all"}:
        raise DataError(f"{root} has the C-NMC layout, where all/ holds the ALL images and hem/ the "
                        "normal ones; positive classes apply to one folder per class or a labels.csv.")
    return _load_cnmc(root, skipped, warnings)


def _non_empty_files(samples: list[Sample], skipped: list) -> list[Sample]:
    """``samples`` whose files exist and are not empty; the others go to ``skipped`` with the reason."""
    kept = []
    for s in samples:
        try:
            size = s.path.stat().st_size
        except OSError:
            skipped.append((s.path, "file not found"))
            continue
        if size == 0:
            skipped.append((s.path, "empty file (0 bytes)"))
        else:
            kept.append(s)
    return kept


def _log_skipped(ds: Dataset) -> None:
    for path, why in ds.skipped[:_LOGGED_SKIPS]:
        log.info("skipped %s: %s", path, why)
    if len(ds.skipped) > _LOGGED_SKIPS:
        log.info("... and %d more skipped file(s)", len(ds.skipped) - _LOGGED_SKIPS)
    for w in ds.warnings:
        log.info("warning: %s", w)


def _digest(path: Path, head_only: bool) -> str | None:
    """SHA-256 of a file (or of its first and last 64 KiB: a cheap first pass); None if unreadable."""
    if not head_only:
        try:
            return content_hash(path)
        except ImageReadError:
            return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            h.update(fh.read(1 << 16))
            fh.seek(-min(1 << 16, max(os.fstat(fh.fileno()).st_size, 0)), os.SEEK_END)
            h.update(fh.read(1 << 16))
    except OSError:
        return None
    return h.hexdigest()


def _drop_pixel_duplicates(samples: list[Sample], skipped: list, warnings: list) -> list[Sample]:
    """One copy of every image whose pixels occur more than once; none of an image under both labels.

    Copies of an image (the same pixels, whatever the file format or name) could otherwise land in the
    training and the test split and be recognised rather than judged. Same-label copies are kept once
    (the first by path), the others listed in ``skipped``; copies labelled both ALL and normal are all left
    out. ``samples`` carry their ``pixel_hash``.
    """
    by_hash: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_hash.setdefault(s.pixel_hash or f"path:{s.path}", []).append(s)
    drop: set[Path] = set()
    n_same = n_conflict = 0
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        if len({c.label for c in copies}) > 1:
            names = ", ".join(sorted(c.path.name for c in copies)[:4])
            for c in copies:
                skipped.append((c.path, f"the same image is labelled both ALL and normal ({names}); left out"))
                drop.add(c.path)
            n_conflict += len(copies)
            continue
        for c in copies[1:]:
            skipped.append((c.path, f"same pixels as {copies[0].path.name} (kept once)"))
            drop.add(c.path)
            n_same += 1
    if n_conflict:
        warnings.append(f"{n_conflict} file(s) hold identical images under both labels and were left "
                        "out; check their labels.")
    if n_same:
        warnings.append(f"{n_same} file(s) repeat the pixels of another image with the same label; each image "
                        "is used once.")
    return [s for s in samples if s.path not in drop]


def _drop_conflicting_duplicates(samples: list[Sample], skipped: list, warnings: list) -> list[Sample]:
    """Leave out every copy of an image that appears (byte for byte) under both labels.

    Such a training set teaches nothing but noise, and the user must decide which label is right.
    """
    by_size: dict[int, list[Sample]] = {}
    for s in samples:
        try:
            by_size.setdefault(s.path.stat().st_size, []).append(s)
        except OSError:
            continue
    conflicted: dict[Path, Sample] = {}
    for group in by_size.values():
        if len({s.label for s in group}) < 2:
            continue
        for head_only in (True, False):  # cheap digest first, full hash only where that matches
            by_digest: dict[str, list[Sample]] = {}
            for s in group:
                d = _digest(s.path, head_only)
                if d is not None:
                    by_digest.setdefault(d, []).append(s)
            group = [s for g in by_digest.values() if len({x.label for x in g}) > 1 for s in g]
            if not group:
                break
        if group:
            for g in by_digest.values():
                if len({x.label for x in g}) > 1:
                    names = ", ".join(sorted(x.path.name for x in g)[:4])
                    for x in g:
                        conflicted[x.path] = x
                        skipped.append((x.path, f"the same image is labelled both ALL and normal ({names}); "
                                                "left out"))
    if conflicted:
        warnings.append(f"{len(conflicted)} file(s) hold identical images under both labels and were left "
                        "out; check their labels.")
    return [s for s in samples if s.path not in conflicted]


# ---------------------------------------------------------------------------------------------
# layouts

def _files_in(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_file())
    except OSError:
        return []


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and p.name.lower() not in _IGNORED_FILES


def _cnmc_dirs(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if d.lower() in ("all", "hem"):
                out.append(Path(dirpath) / d)
    return out


def _load_cnmc(root: Path, skipped: list, warnings: list) -> list[Sample]:
    samples, unnamed = [], 0
    for d in _cnmc_dirs(root):
        label = 1 if d.name.lower() == "all" else 0
        for f in _files_in(d):
            if not _visible(f):
                continue
            if not is_image_file(f):
                skipped.append((f, f"not an image file (suffix '{f.suffix}')"))
                continue
            try:
                group = parse_cnmc_subject(f.name)
            except DataError:
                group, unnamed = None, unnamed + 1
            samples.append(Sample(f, label, d.name.lower(), group))
    if unnamed:
        warnings.append(f"{unnamed} image(s) have no C-NMC subject id in their name; "
                        "subject-level splitting is not possible.")
    return samples


def _cnmc_from_csv(root: Path, csv_path: Path, positive, group_column: str | None, skipped: list,
                   warnings: list) -> list[Sample]:
    """A C-NMC folder labelled by a named labels.csv: its labels and groups decide.

    An image the csv gives no group gets the subject of its C-NMC file name; images whose csv label
    contradicts their all/ or hem/ folder are counted in a warning (the csv is what was asked for).
    """
    samples = []
    contradicted = 0
    for s in load_labels_csv(root, csv_path, positive, group_column, skipped, warnings):
        folder = s.path.parent.name.lower()
        if folder in ("all", "hem") and s.label != (folder == "all"):
            contradicted += 1
        if s.group is None and _CNMC_NAME.match(s.path.stem):
            s = Sample(s.path, s.label, s.class_name, parse_cnmc_subject(s.path.name))
        samples.append(s)
    if contradicted:
        warnings.append(f"{contradicted} image(s) are labelled in {csv_path.name} against their all/ or hem/ "
                        f"folder; the labels of {csv_path.name} were used.")
    return samples


def _load_class_folders(root: Path, positive, skipped: list, warnings: list) -> list[Sample]:
    class_files: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            for fn in sorted(filenames):
                f = Path(dirpath) / fn
                if not _visible(f):
                    continue
                if is_image_file(f):
                    files.append(f)
                else:
                    skipped.append((f, f"not an image file (suffix '{f.suffix}')"))
        if files:
            class_files[d.name] = files
        else:
            warnings.append(f"Folder '{d.name}' has no images and was ignored.")
    for f in _files_in(root):
        if _visible(f) and is_image_file(f):
            skipped.append((f, "image not inside a class folder"))
    if not class_files:
        return []
    if len(class_files) == 1:
        only = next(iter(class_files))
        raise DataError(f"Only one class folder with images found in {root}: '{only}' "
                        f"({len(class_files[only])} images). Two classes are needed.")
    mapping = class_mapping(class_files, positive)
    return [Sample(f, mapping[c], c, None) for c, files in class_files.items() for f in files]


def _read_error(sample: Sample) -> tuple[str | None, str | None]:
    """(why ``sample``'s image cannot be read or None, the hash of its pixels or None)."""
    try:
        return None, pixel_hash(sample.path)
    except AllguiError as exc:
        return str(exc), None


def _readable(samples: list[Sample], skipped: list, progress: Progress | None,
              cancel: Callable[[], bool] | None) -> list[Sample]:
    """The samples whose image can be read (in a few threads), with their pixel hashes.

    The others go to ``skipped`` with the reason.
    """
    n = len(samples)

    def between(done: int) -> None:
        check_cancel(cancel)
        if progress is not None:
            progress(done / max(n, 1), f"Checked {done}/{n} images")

    results = map_in_chunks(_read_error, samples, between, chunk=50)
    skipped.extend((s.path, e) for s, (e, _) in zip(samples, results) if e is not None)
    return [dataclasses.replace(s, pixel_hash=h) for s, (e, h) in zip(samples, results) if e is None]


def _check_dataset(ds: Dataset) -> None:
    if not ds.samples:
        msg = f"No images found in {ds.root} (layout '{ds.layout}'; looked for files ending in " \
              f"{', '.join(IMAGE_SUFFIXES)})."
        subdirs = sorted(p.name for p in ds.root.iterdir() if p.is_dir()) if ds.root else []
        if subdirs:
            msg += f" Sub-folders found: {', '.join(subdirs[:10])}."
        if ds.skipped:
            first = "; ".join(f"{p.name}: {why}" for p, why in ds.skipped[:3])
            msg += f" {len(ds.skipped)} file(s) were skipped ({first})."
        raise DataError(msg)
    counts = ds.class_counts()
    missing = [k for k, v in counts.items() if v == 0]
    if missing:
        present = ", ".join(f"{k} {v}" for k, v in ds.source_class_counts().items())
        raise DataError(f"Only one class in {ds.root}: no '{missing[0]}' images "
                        f"(found {present}). Both normal and ALL images are needed.")


def merge_datasets(datasets: Sequence[Dataset]) -> Dataset:
    """One Dataset of several folders' images, merged by subject id.

    Samples keep their group ids, so a subject found in two folders (e.g. C-NMC subject 16 in
    two releases) is one group. An image whose pixels already came from an earlier folder is
    left out (listed in ``skipped``), so no image can sit on two sides of a split. Pixels are
    compared, not file bytes: the same crop as BMP in one folder and PNG in another is one image.
    """
    datasets = list(datasets)
    if len(datasets) == 1:
        return datasets[0]
    seen: dict[str, Path] = {}
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    warnings: list[str] = []
    for ds in datasets:
        skipped.extend(ds.skipped)
        warnings.extend(ds.warnings)
        for s in ds.samples:
            try:
                h = s.pixel_hash or pixel_hash(s.path)
            except ImageReadError as exc:
                skipped.append((s.path, str(exc)))
                continue
            if h in seen:
                skipped.append((s.path, f"same file as {seen[h]}"))
                continue
            seen[h] = s.path
            samples.append(dataclasses.replace(s, pixel_hash=h))
    merged = Dataset(samples, CLASS_NAMES, skipped, datasets[0].root, "+".join(d.layout for d in datasets),
                     warnings)
    _check_dataset(merged)
    return merged
