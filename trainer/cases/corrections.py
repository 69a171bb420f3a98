"""Reviewed images as training data: the reviewer's decision is the label.

Only whole-image reviews in effect count (an undone review does not); *unclassifiable* images are
left out, and so are single-cell reviews of fields (the trainer learns from image files). An image
is used only if its file is still there with the content that was reviewed (SHA-256): a moved
case is looked up beside the case file first, and a changed or missing file is skipped with a
warning.

Groups: an image whose file name carries a C-NMC subject id (``UID_11_...``) keeps that subject as
its group, so it joins the same subject's images in the training folders; any other image's group
is its case (``case:<case id>``), one case being one patient's smear. Subject-level splits then
never put one case on two sides.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from trainer.cases.schema import REVIEW_LABELS, REVIEW_UNCLASSIFIABLE, file_sha256
from trainer.cases.store import CaseStore
from trainer.io.data import parse_cnmc_subject
from trainer.io.samples import CLASS_NAMES, Dataset, Sample
from trainer.util.errors import DataError

log = logging.getLogger("trainer.io.data")
#: class names of reviewed samples start with this (``"reviewed: ALL blast"``, ``"reviewed: normal"``)
REVIEWED = "reviewed: "


def case_group(case_id: str, path: str | os.PathLike) -> str:
    """The group of a reviewed image: its C-NMC subject id where the name has one, else its case."""
    try:
        return parse_cnmc_subject(Path(path).name)
    except DataError:
        return f"case:{case_id[:12]}"


def case_dataset(cases: Iterable[str | os.PathLike]) -> tuple[Dataset, list[dict[str, Any]]]:
    """The reviewed images of ``cases`` (case files) as a :class:`Dataset`, and per case what was used.

    An image reviewed in two cases is used once (the later case's label wins);
    merged after the training folders (:func:`trainer.data.merge_datasets`), an image that is
    already among them keeps its label there.

    Raises :class:`trainer.errors.CaseError` for a case file that cannot be opened.
    """
    chosen: dict[str, Sample] = {}
    skipped: list[tuple[Path, str]] = []
    warnings: list[str] = []
    info: list[dict[str, Any]] = []
    for case in cases:
        with CaseStore.open(case, readonly=True) as store:
            entry = {"file": Path(case).name, "case_id": store.case_id, "name": store.name, "n_reviewed": 0,
                     "n_used": 0, "n_unclassifiable": 0, "n_skipped": 0}
            for (sha, cell), r in sorted(store.current_reviews().items(), key=lambda kv: kv[1].id):
                if cell != -1:
                    continue
                entry["n_reviewed"] += 1
                if r.reviewer_decision == REVIEW_UNCLASSIFIABLE or r.reviewer_decision not in REVIEW_LABELS:
                    entry["n_unclassifiable"] += 1
                    continue
                found = store.resolve(r.path, r.rel_path)
                why = ""
                if found is None:
                    why = f"reviewed in case {store.name} but the file is no longer there"
                else:
                    try:
                        if file_sha256(found) != sha:
                            why = f"changed since it was reviewed in case {store.name}"
                    except OSError as exc:
                        why = f"cannot be read ({exc.strerror or exc})"
                if why:
                    entry["n_skipped"] += 1
                    skipped.append((Path(found or r.path), why))
                    log.warning("reviewed image skipped: %s: %s", Path(r.path).name, why)
                    continue
                chosen[sha] = Sample(Path(found), REVIEW_LABELS[r.reviewer_decision],
                                     REVIEWED + r.reviewer_decision, case_group(store.case_id, found))
                entry["n_used"] += 1
            info.append(entry)
    if skipped:
        warnings.append(f"{len(skipped)} reviewed image(s) were skipped (missing or changed since review).")
    samples = sorted(chosen.values(), key=lambda s: str(s.path))
    return Dataset(samples, CLASS_NAMES, skipped, None, "cases", warnings), info


def is_reviewed(sample: Sample) -> bool:
    return str(sample.class_name).startswith(REVIEWED)


def reviewed_summary(dataset: Dataset, splits, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """What the model card records of the reviewed images.

    How many were used in all and in each split, by the reviewer's label, and per case; and the content
    hashes (SHA-256) of those in the held-out test split (``test_images``), which the model never learnt
    from: a later comparison of models may use them.
    """
    flags = np.array([is_reviewed(s) for s in dataset.samples], bool)
    labels = dataset.labels
    tr, va, te = (np.asarray(a, dtype=int) for a in splits)
    held_out = sorted(file_sha256(dataset.samples[i].path) for i in te if flags[i])
    return {"n_images": int(flags.sum()),
            "by_label": {CLASS_NAMES[c]: int(np.sum(flags & (labels == c))) for c in (0, 1)},
            "n_train": int(flags[tr].sum()), "n_validation": int(flags[va].sum()), "n_test": int(flags[te].sum()),
            "cases": cases, "test_images": held_out}
