"""Labels from names: known class names, the user's positive classes and labels.csv.

``labels.csv`` has a path column, a label or class column and optionally a group column.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from trainer.io.imageio import is_image_file
from trainer.io.samples import Sample
from trainer.util.errors import DataError

#: Class or label names understood without a user mapping (lower case).
POSITIVE_NAMES = frozenset({"all", "b-all", "blast", "blasts", "malignant", "positive", "leukemia",
                            "leukaemia", "cancer", "tumor", "tumour", "1", "true", "yes"})
NEGATIVE_NAMES = frozenset({"hem", "normal", "benign", "healthy", "negative", "control", "0",
                            "false", "no"})

_PATH_COLUMNS = ("path", "relpath", "rel_path", "file", "filename", "file_name", "filepath",
                 "image", "image_path", "image_name")
_CLASS_COLUMNS = ("class", "class_name", "classname", "category", "diagnosis")
_LABEL_COLUMNS = ("label", "target", "y")
_GROUP_COLUMNS = ("group", "subject_id", "subject", "patient_id", "patient", "group_id")


def find_labels_csv(root: Path, labels_csv) -> Path | None:
    if labels_csv is False:
        return None
    if labels_csv is None or labels_csv is True:
        p = root / "labels.csv"
        if p.is_file():
            return p
        if labels_csv is True:
            raise DataError(f"No labels.csv in {root}.")
        return None
    p = Path(labels_csv)
    if not p.is_absolute():
        p = root / p
    if not p.is_file():
        raise DataError(f"Labels file not found: {p}")
    return p


def positive_set(positive: Sequence[str] | str | None) -> set[str] | None:
    """The positive class names given (a list or a comma-separated string), lower case; None for none given."""
    if positive is None:
        return None
    if isinstance(positive, str):
        positive = positive.split(",")
    names = {str(p).strip().lower() for p in positive if str(p).strip()}
    if not names:
        raise DataError("The list of positive classes is empty.")
    return names


def class_mapping(classes: Iterable[str], positive: Sequence[str] | str | None) -> dict[str, int]:
    """Binary label for each class name found (keys as found)."""
    classes = sorted(set(classes))
    pos = positive_set(positive)
    found = ", ".join(classes) if classes else "none"
    if pos is None:
        mapping = {}
        for c in classes:
            k = c.strip().lower()
            if k in POSITIVE_NAMES:
                mapping[c] = 1
            elif k in NEGATIVE_NAMES:
                mapping[c] = 0
            else:
                raise DataError(
                    f"Cannot tell which classes are ALL (positive): found classes {found}. "
                    "Name the positive classes (e.g. positive=Early,Pre,Pro).")
        return mapping
    lower = {c.strip().lower() for c in classes}
    given = positive.split(",") if isinstance(positive, str) else list(positive)
    missing = [str(p).strip() for p in given if str(p).strip().lower() not in lower]
    if missing:
        raise DataError(f"Positive class(es) {', '.join(missing)} not found; "
                        f"classes found: {found}.")
    mapping = {c: int(c.strip().lower() in pos) for c in classes}
    if all(mapping.values()):
        raise DataError(f"Every class found ({found}) is marked positive; "
                        "at least one class must be negative (normal).")
    return mapping


def _pick_column(columns: dict[str, str], candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in columns:
            return columns[c]
    return None


def _label_from_value(value: str, pos: set[str] | None) -> int | None:
    v = value.strip().lower()
    if pos is not None:
        return int(v in pos)
    try:
        num = float(v)
    except ValueError:
        num = None
    if num is not None and num in (0.0, 1.0):
        return int(num)
    if v in POSITIVE_NAMES:
        return 1
    if v in NEGATIVE_NAMES:
        return 0
    return None


class _Columns(NamedTuple):
    """Which labels.csv column holds what (the csv's own spelling)."""

    path: str
    value: str                 # the label: class names with a positive-class mapping, else 0/1
    name: str                  # the source class name stored with each sample
    group: str | None


def _read_rows(csv_path: Path) -> tuple[list[dict], list]:
    """(rows as dicts, header) of a labels csv; DataError when it cannot be read or has no rows."""
    reader = None
    try:  # bytes that are not UTF-8 kept as they are: a path column then names the very file on disk
        with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = rows[0].keys() if rows else []
    except (OSError, csv.Error) as exc:
        where = f" (line {reader.reader.line_num})" if isinstance(exc, csv.Error) and reader is not None else ""
        raise DataError(f"Cannot read labels file {csv_path.name}{where}: {exc}") from exc
    if not rows:
        raise DataError(f"Labels file {csv_path.name} has no rows.")
    return rows, header


def _columns(csv_path: Path, header, positive, group_column: str | None) -> _Columns:
    """The path, label, class-name and group columns of a labels csv; DataError naming what is missing."""
    columns = {str(c).strip().lower(): c for c in header if c is not None}
    shown = ", ".join(str(c) for c in header if c is not None)
    path_col = _pick_column(columns, _PATH_COLUMNS)
    if path_col is None:
        raise DataError(f"Labels file {csv_path.name} has no path column (looked for "
                        f"{', '.join(_PATH_COLUMNS[:3])}); columns: {shown}.")
    class_col = _pick_column(columns, _CLASS_COLUMNS)
    label_col = _pick_column(columns, _LABEL_COLUMNS)
    if group_column is not None:
        group_col = columns.get(group_column.strip().lower())
        if group_col is None:
            raise DataError(f"Group column '{group_column}' not in {csv_path.name}; "
                            f"columns: {shown}.")
    else:
        group_col = _pick_column(columns, _GROUP_COLUMNS)
    pos = positive_set(positive)
    # with a positive-class mapping the class names decide; otherwise a 0/1 label column
    if pos is not None:
        value_col = class_col or label_col
    else:
        value_col = label_col or class_col
    if value_col is None:
        raise DataError(f"Labels file {csv_path.name} has no label or class column; "
                        f"columns: {shown}.")
    return _Columns(path_col, value_col, class_col or value_col, group_col)


def load_labels_csv(root: Path, csv_path: Path, positive, group_column: str | None,
                    skipped: list, warnings: list) -> list[Sample]:
    """The samples a labels csv lists under ``root``; refused rows go to ``skipped``, notes to ``warnings``.

    Raises DataError for a csv without the needed columns or with labels that cannot be told apart.
    """
    rows, header = _read_rows(csv_path)
    path_col, value_col, name_col, group_col = _columns(csv_path, header, positive, group_column)
    pos = positive_set(positive)
    if pos is not None:
        class_mapping({(r.get(value_col) or "").strip() for r in rows} - {""}, positive)

    base = csv_path.parent
    samples, seen, unknown = [], set(), Counter()
    for r in rows:
        rel = (r.get(path_col) or "").strip()
        if not rel:
            continue
        if _escapes(rel):  # confined by the path as written: links inside the folder may point anywhere
            skipped.append((Path(rel), f"outside the data folder (listed in {csv_path.name}); refused"))
            continue
        p = base / rel
        value = (r.get(value_col) or "").strip()
        if not value:
            skipped.append((p, f"no {value_col} in {csv_path.name}"))
            continue
        label = _label_from_value(value, pos)
        if label is None:
            unknown[value] += 1
            continue
        key = os.path.normcase(os.path.abspath(p))
        if key in seen:
            skipped.append((p, f"listed twice in {csv_path.name}"))
            continue
        seen.add(key)
        try:
            what = None if p.is_file() else "a folder, not an image file" if p.is_dir() else "file not found"
        except OSError as exc:  # a name longer than the system takes, say: that row's loss alone
            what = exc.strerror or str(exc)
        if what is not None:
            skipped.append((p, f"{what} (listed in {csv_path.name})"))
            continue
        if not is_image_file(p):
            skipped.append((p, f"not an image file (suffix '{p.suffix}')"))
            continue
        group = None
        if group_col:
            group = (r.get(group_col) or "").strip() or None
        samples.append(Sample(p, label, (r.get(name_col) or value).strip(), group))
    if unknown:
        vals = ", ".join(sorted(unknown))
        raise DataError(f"Cannot tell which labels in {csv_path.name} are ALL (positive): "
                        f"{vals}. Use 0/1 labels or name the positive classes.")
    unlisted = sum(1 for d, _, fs in os.walk(root) for f in fs if is_image_file(f)
                   and os.path.normcase(os.path.abspath(os.path.join(d, f))) not in seen)
    if unlisted:
        warnings.append(f"{unlisted} image file(s) under {root.name} are not listed "
                        f"in {csv_path.name} and were left out.")
    if group_col and samples and any(s.group is None for s in samples):
        n = sum(s.group is None for s in samples)
        warnings.append(f"{n} row(s) in {csv_path.name} have no {group_col}; "
                        "subject-level splitting is not possible.")
    return samples


def _escapes(rel: str) -> bool:
    """True for a labels.csv path that is absolute or climbs out of the csv's folder with '..'."""
    text = rel.replace("\\", "/")
    if text.startswith("/") or os.path.isabs(rel) or re.match(r"^[A-Za-z]:", text):
        return True
    norm = os.path.normpath(text)
    return norm == ".." or norm.startswith("../")
