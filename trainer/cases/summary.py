"""What a case report says, computed from a case file (no drawing; the PDF is :mod:`trainer.cases.report`).

:func:`case_view` is the case as the report shows it: as signed once there is a sign-off, with what
was recorded after it as addenda (:func:`addenda`), else as it is now. :func:`collect` lists its
images, :func:`summary` counts them, :func:`case_numbers` gives the case-level figures a sign-off
records (images and cells reviewed, blasts counted and their proportion).
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.cases.events import Event
from trainer.cases.reviews import Prediction, Review, model_review_decision, replay
from trainer.cases.schema import METADATA_FIELDS, REVIEW_ALL, REVIEW_DECISIONS, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE
from trainer.inference.results import DECISION_NOT_ASSESSABLE, decide


def file_name(path: str) -> str:
    """The last part of a recorded path, whichever system's separators it has."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def when(iso: str, convert: bool = True) -> str:
    """A recorded time as ``2025-03-01 14:05 (UTC+01:00)``.

    ``convert``: in this computer's time zone (times recorded in UTC); else in the zone it was
    recorded with (a signer's local time).
    """
    try:
        t = _dt.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)[:32]
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    if convert:
        t = t.astimezone()
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} (UTC{off[:3]}:{off[3:]})"


def case_numbers(current: dict[tuple[str, int], Review], predictions: dict[str, Prediction]) -> dict[str, Any]:
    """Case-level figures of the reviews in effect ``current`` on the images of ``predictions``.

    A reviewed cell is a single-cell image with a whole-image review or a cell of a field reviewed on
    its own; blasts are those the reviewer called ALL blast. ``blast_proportion`` is over the reviewed
    cells with a class (unclassifiable cells left out), None without any. Fields decided as a whole
    are counted apart.
    """
    fields = {sha for sha, p in predictions.items() if p.kind == "field"}
    images = set(predictions) | {sha for sha, _ in current}
    cells = [r for (sha, cell), r in current.items() if cell >= 0 or sha not in fields]
    by = {d: sum(1 for r in cells if r.reviewer_decision == d) for d in REVIEW_DECISIONS}
    classified = by[REVIEW_ALL] + by[REVIEW_NORMAL]
    whole_fields = [r for (sha, cell), r in current.items() if cell < 0 and sha in fields]
    return {"images": len(images), "images_reviewed": sum(1 for _, cell in current if cell < 0),
            "cells_reviewed": len(cells), "cells_classified": classified, "blasts": by[REVIEW_ALL],
            "cells_unclassifiable": by[REVIEW_UNCLASSIFIABLE],
            "blast_proportion": by[REVIEW_ALL] / classified if classified else None,
            "fields_reviewed": len(whole_fields),
            "fields_with_blasts": sum(1 for r in whole_fields if r.reviewer_decision == REVIEW_ALL)}


def numbers_text(n: dict[str, Any]) -> list[str]:
    """The case-level figures in words (a line each)."""
    lines = [f"Images: {n['images']}, {n['images_reviewed']} reviewed, "
             f"{n['images'] - n['images_reviewed']} not reviewed."]
    if n["cells_reviewed"]:
        p = n["blast_proportion"]
        share = "no cell with a class" if p is None else \
            f"{n['blasts']} of {n['cells_classified']} classified cells = {100 * p:.1f} %"
        lines.append(f"Cells reviewed: {n['cells_reviewed']}; blasts counted: {share}"
                     + (f" ({n['cells_unclassifiable']} unclassifiable, not counted)" if n["cells_unclassifiable"]
                        else "") + ".")
    else:
        lines.append("Cells reviewed: none; no blast count.")
    if n["fields_reviewed"]:
        lines.append(f"Smear fields decided as a whole: {n['fields_reviewed']}, "
                     f"{n['fields_with_blasts']} with blasts.")
    return lines


@dataclass
class CaseView:
    """The case as a report shows it: as signed, or as it is now while not signed."""

    current: dict[tuple[str, int], Review]          # reviews in effect in the view
    predictions: dict[str, Prediction]              # image hash -> its latest prediction in the view
    metadata: dict[str, str]
    signoff: Event | None
    now: dict[tuple[str, int], Review] = field(default_factory=dict)   # reviews in effect now


def case_view(store) -> CaseView:
    """The view of an open :class:`~trainer.cases.store.CaseStore`."""
    so = store.signoff
    if so is None:
        current = store.current_reviews()
        return CaseView(current, store.latest_predictions(), store.metadata, None, current)
    signed = so.signed() or {}
    n_reviews = signed.get("reviews", (0, ""))[0]
    n_predictions = signed.get("predictions", (0, ""))[0]
    return CaseView(replay(store.actions()[:n_reviews]).current, store.latest_predictions(n_predictions),
                    store.metadata_before(so.id), so, store.current_reviews())


@dataclass(frozen=True)
class Addendum:
    """A line of the report's addenda: something recorded after the sign-off."""

    at: str            # UTC, for the order
    when: str          # as shown
    author: str
    text: str


def _review_change(r: Review) -> str:
    what = f"{file_name(r.path)}" + (f", cell #{r.cell + 1}" if r.cell >= 0 else "")
    if r.action == "undo":
        return f"{what}: review '{r.reviewer_decision}' undone"
    if r.action == "redo":
        return f"{what}: review '{r.reviewer_decision}' redone"
    return f"{what}: reviewed as {r.reviewer_decision}" + (f"; comment: {r.comment}" if r.comment else "")


def addenda(store, view: CaseView) -> list[Addendum]:
    """What was recorded after the sign-off, oldest first (empty while not signed).

    Free-text addenda, metadata changes, review actions and model results.
    """
    so = view.signoff
    if so is None:
        return []
    signed = so.signed() or {}
    out = []
    for r in store.actions()[signed.get("reviews", (0, ""))[0]:]:
        out.append(Addendum(r.at, when(r.at), r.reviewer, _review_change(r)))
    before = dict(view.metadata)
    for e in store.events():
        if e.id <= so.id:
            continue
        if e.kind == "addendum":
            out.append(Addendum(e.at, when(e.local_at, convert=False), e.author, e.value))
        elif e.kind == "metadata" and e.field:
            label = METADATA_FIELDS.get(e.field, (e.field, 0))[0]
            old = before.get(e.field, "")
            out.append(Addendum(e.at, when(e.local_at, convert=False), e.author,
                                f"{label} changed to '{e.value}'" + (f" (was '{old}')" if old else "")))
            before[e.field] = e.value
    later = store.predictions()[signed.get("predictions", (0, ""))[0]:]
    if later:
        names = sorted({file_name(p.path) for p in later})
        out.append(Addendum(later[0].at, when(later[0].at), "allgui",
                            f"{len(later)} model result(s) recorded after the sign-off, not part of the signed "
                            f"report: {', '.join(names[:5])}" + (" \u2026" if len(names) > 5 else "")))
    return sorted(out, key=lambda a: a.at)


@dataclass
class ImageEntry:
    """Everything the report says about one image."""

    sha256: str
    path: str
    prediction: Prediction | None
    review: Review | None                        # the image-level review in effect
    cell_reviews: list[Review]
    model_decision: str
    threshold: float | None
    band: float | None
    file: Path | None                            # where the image is now (None: not found or not looked for)
    changed: bool                                # the file's content differs from the recorded one
    later: str = ""                              # a signed case: what changed after the sign-off
    rel_path: str | None = None                  # the recorded path relative to the case file


def _id(r: Review | None) -> int | None:
    return None if r is None else r.id


def _changed(view: CaseView) -> dict[str, set[int]]:
    """Image hash -> the cells (-1: the image) whose review in effect changed after the sign-off."""
    out: dict[str, set[int]] = {}
    if view.signoff is not None:
        for key in set(view.current) | set(view.now):
            if _id(view.current.get(key)) != _id(view.now.get(key)):
                out.setdefault(key[0], set()).add(key[1])
    return out


def _later(view: CaseView, sha: str, cells: set[int]) -> str:
    """What changed on image ``sha`` (its ``cells``) after the sign-off, in words ('' if nothing)."""
    parts = []
    if -1 in cells:
        r = view.now.get((sha, -1))
        parts.append("review undone" if r is None else f"now {r.reviewer_decision} ({r.reviewer}, {when(r.at)})")
    n = len(cells - {-1})
    if n:
        parts.append(f"{n} cell review(s) changed")
    return "after the sign-off: " + "; ".join(parts) if parts else ""


def collect(store, thresholds: dict[str, float] | None = None, band: float | None = None,
            model_sha256: str | None = None, view: CaseView | None = None, locate: bool = True) -> list[ImageEntry]:
    """The images of ``view`` sorted by file name, with their latest prediction and reviews in effect.

    ``view``: default :func:`case_view` of ``store``. ``locate``: look for each image's file
    (:meth:`~trainer.cases.store.CaseStore.resolve`); else ``file`` stays None for the caller to fill.
    The model's decision of a reviewed image is the one the reviewer saw (its threshold is kept
    with the review); an unreviewed image is decided at ``thresholds[model key]`` and ``band`` when
    given (the app's current settings for the model ``model_sha256``; other models' predictions keep
    theirs), else at the threshold recorded with its prediction.
    """
    view = view or case_view(store)
    preds, current = view.predictions, view.current
    paths = store.image_paths()
    changed = _changed(view)
    by_image: dict[str, list[Review]] = {}
    for (sha, cell), r in current.items():
        if cell >= 0:
            by_image.setdefault(sha, []).append(r)
    out = []
    for sha in dict.fromkeys(list(preds) + [k[0] for k in current]):
        pred = preds.get(sha)
        review = current.get((sha, -1))
        path, rel = paths.get(sha, ("", None))
        if review is not None:
            t, b, decision = review.threshold, review.band, review.model_decision or ""
        elif pred is not None:
            ours = model_sha256 is None or pred.model_sha256 == model_sha256
            t = (thresholds or {}).get(pred.model_key, pred.threshold) if ours else pred.threshold
            b = pred.band if band is None or not ours else band
            decision = DECISION_NOT_ASSESSABLE if pred.probability is None or math.isnan(pred.probability) \
                else decide(pred.probability, t, b)
        else:
            t = b = None
            decision = ""
        out.append(ImageEntry(sha, path, pred, review, sorted(by_image.get(sha, []), key=lambda r: r.cell),
                              decision, t, b, store.resolve(path, rel) if locate else None, False,
                              _later(view, sha, changed[sha]) if sha in changed else "", rel))
    keys = {id(e): (file_name(e.path).lower(), e.path) for e in out}
    out.sort(key=lambda e: keys[id(e)])
    return out


def summary(store, entries: list[ImageEntry]) -> dict[str, Any]:
    """Counts of the case.

    Images, reviewed, agreed with the model (confirmed), overridden, decided where the model was
    uncertain (resolved), decisions of model and reviewer.
    """
    reviewed = [e for e in entries if e.review is not None]
    model_counts: dict[str, int] = {}
    for e in entries:
        model_counts[e.model_decision or "no result"] = model_counts.get(e.model_decision or "no result", 0) + 1
    actions = store.actions()
    return {
        "images": len(entries), "reviewed": len(reviewed), "not_reviewed": len(entries) - len(reviewed),
        "confirmed": sum(1 for e in reviewed if model_review_decision(e.review.model_decision) is not None
                         and not e.review.override),
        "overrides": sum(1 for e in reviewed if e.review.override),
        "resolved": sum(1 for e in reviewed if model_review_decision(e.review.model_decision) is None),
        "reviewer": {d: sum(1 for e in reviewed if e.review.reviewer_decision == d) for d in REVIEW_DECISIONS},
        "model": model_counts,
        "cells_reviewed": sum(len(e.cell_reviews) for e in entries),
        "cell_overrides": sum(1 for e in entries for r in e.cell_reviews if r.override),
        "actions": len(actions), "undone": sum(1 for a in actions if a.action == "undo"),
        "reviewers": sorted({a.reviewer for a in actions if a.action == "review"}),
        "first": actions[0].at if actions else "", "last": actions[-1].at if actions else "",
    }
