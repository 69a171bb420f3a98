"""The case report: a PDF of the case summary and every image with the model's and the reviewer's decision.

Page 1: the case, counts, the model card's headline and limitations; then ``per_page`` images a
page, each with its thumbnail and outlines, probabilities, votes, the model's decision and the
reviewer's.

Written with matplotlib's PDF backend (``Figure`` + ``PdfPages``, no pyplot and no Qt), so the
command line (``allgui-train report``) and the app write the same report, also on a machine
without a display. Page count: 1 summary page + ceil(images / per_page).
"""
from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon, Rectangle

from trainer.cases.reviews import Prediction, Review, model_review_decision
from trainer.cases.schema import REVIEW_ALL, REVIEW_DECISIONS, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE, file_sha256, now
from trainer.cases.store import CaseStore
from trainer.inference.results import DECISION_NOT_ASSESSABLE, decide
from trainer.io.imageio import read_image
from trainer.util.atomic import atomic_write
from trainer.util.errors import Cancelled, CaseError

RESEARCH_ONLY = "Research use only \u2014 not for clinical diagnosis."
DEFAULT_PER_PAGE = 6
PAGE_SIZE = (8.27, 11.69)          # A4 portrait, inches
THUMB_PX = 320                      # longest side of an embedded thumbnail

#: outline / text colours (RGB 0..1), as the app draws them
COLOURS = {"ALL blast": (0.84, 0.10, 0.11), "normal": (0.13, 0.44, 0.71), "uncertain, review": (0.90, 0.55, 0.0),
           "not assessable": (0.43, 0.43, 0.43), None: (0.30, 0.30, 0.30),
           REVIEW_UNCLASSIFIABLE: (0.43, 0.43, 0.43)}
OVERRIDE_COLOUR = (0.45, 0.10, 0.55)


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
    file: Path | None                            # where the image is now (None: not found)
    changed: bool                                # the file's content differs from the recorded one


def collect(store: CaseStore, thresholds: dict[str, float] | None = None,
            band: float | None = None, model_sha256: str | None = None) -> list[ImageEntry]:
    """The case's images sorted by path, with their latest prediction and reviews in effect.

    The model's decision of a reviewed image is the one the reviewer saw (its threshold is kept
    with the review); an unreviewed image is decided at ``thresholds[model key]`` and ``band`` when
    given (the app's current settings for the model ``model_sha256``; other models' predictions keep
    theirs), else at the threshold recorded with its prediction.
    """
    preds = store.latest_predictions()
    current = store.current_reviews()
    paths = store.image_paths()
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
            decision = DECISION_NOT_ASSESSABLE if pred.probability is None else decide(pred.probability, t, b)
        else:
            t = b = None
            decision = ""
        found = store.resolve(path, rel)
        out.append(ImageEntry(sha, path, pred, review, sorted(by_image.get(sha, []), key=lambda r: r.cell),
                              decision, t, b, found, False))
    out.sort(key=lambda e: (Path(e.path).name.lower(), e.path))
    return out


def summary(store: CaseStore, entries: list[ImageEntry]) -> dict[str, Any]:
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


# ---- drawing ---------------------------------------------------------------------------------
def _thumbnail(entry: ImageEntry) -> tuple[np.ndarray | None, float, str]:
    """(RGB thumbnail or None, scale from image to thumbnail pixels, note)."""
    if entry.file is None:
        return None, 1.0, "image file not found"
    try:
        if file_sha256(entry.file) != entry.sha256:
            entry.changed = True
            return None, 1.0, "image file changed since it was analysed"
        img = read_image(entry.file)
    except Exception as exc:
        return None, 1.0, f"image not readable: {exc}"
    h, w = img.shape[:2]
    s = min(1.0, THUMB_PX / max(h, w))
    if s < 1.0:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return img, s, ""


def _draw_thumb(ax, entry: ImageEntry) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    img, s, note = _thumbnail(entry)
    if img is None:
        ax.text(0.5, 0.5, textwrap.fill(note, 22), ha="center", va="center", fontsize=6.5, color="0.35",
                transform=ax.transAxes)
        for sp in ax.spines.values():
            sp.set_color("0.7")
        return
    ax.imshow(img, interpolation="lanczos")
    pred = entry.prediction
    if pred is None:
        return
    t = entry.threshold if entry.threshold is not None else pred.threshold
    b = entry.band if entry.band is not None else pred.band
    reviewed_cells = {r.cell: r for r in entry.cell_reviews}
    lw = 1.0 if pred.kind == "field" else 1.4
    for reg in pred.regions_list():
        pts = np.asarray(reg.get("outline") or [], float).reshape(-1, 2) * s
        if len(pts) < 3:
            continue
        p = reg.get("p")
        colour = COLOURS[decide(p, t, b)] if p is not None else COLOURS[None]
        ax.add_patch(Polygon(pts, closed=True, fill=False, edgecolor=colour, linewidth=lw))
        if pred.kind == "field" and reg.get("cell", -1) >= 0:
            x, y = pts.min(axis=0)
            r = reviewed_cells.get(reg["cell"])
            label = f"#{reg['cell'] + 1}" + ("*" if r is not None else "")
            ax.text(x, y - 2, label, fontsize=5, color=OVERRIDE_COLOUR if r is not None and r.override else colour,
                    va="bottom")
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "\u2014" if v is None else format(v, spec)


def _review_line(r: Review | None, what: str = "") -> tuple[str, tuple]:
    if r is None:
        return f"{what}not reviewed", (0.35, 0.35, 0.35)
    if r.override:
        return (f"{what}OVERRIDE \u2192 {r.reviewer_decision} (model: {r.model_decision})", OVERRIDE_COLOUR)
    if r.model_decision == "uncertain, review":
        return f"{what}reviewer: {r.reviewer_decision} (model uncertain)", COLOURS.get(r.reviewer_decision, (0, 0, 0))
    return f"{what}confirmed: {r.reviewer_decision}", COLOURS.get(r.reviewer_decision, (0, 0, 0))


def _kind(pred: Prediction | None) -> str:
    if pred is None:
        return ""
    if pred.kind == "field":
        n = len(pred.cells_list())
        how = "judged by its most suspicious cell" if pred.unit == "cells" else "judged whole"
        return f"smear field, {n} white cell{'s' if n != 1 else ''}, {how}"
    return "single-cell crop"


def _entry_lines(i: int, e: ImageEntry) -> list[tuple[str, dict]]:
    """(text, text properties) lines of one image block."""
    pred = e.prediction
    lines: list[tuple[str, dict]] = [(f"{i}. {Path(e.path).name}", {"weight": "bold", "fontsize": 8})]
    if pred is not None:
        lines.append((f"{_kind(pred)} \u00b7 {pred.model_name} \u00b7 {pred.width}\u00d7{pred.height} px", {}))
        src = e.review if e.review is not None else None
        p = src.probability if src is not None else pred.probability
        raw = src.raw_probability if src is not None else pred.raw_probability
        vs = src.vote_share if src is not None else pred.vote_share
        colour = COLOURS.get(e.model_decision, (0, 0, 0))
        lines.append((f"calibrated P(ALL) {_fmt(p)} \u00b7 raw ensemble {_fmt(raw)} \u00b7 weighted vote for ALL "
                      f"{_fmt(vs, '.0%')}", {}))
        lines.append((f"model decision at threshold {_fmt(e.threshold)} \u00b1 {_fmt(e.band, '.2f')}: "
                      f"{e.model_decision}", {"color": colour, "weight": "bold"}))
        votes = src.votes if src is not None and src.votes else pred.votes
        vl = json.loads(votes) if isinstance(votes, str) else votes
        if vl:
            items = [f"{n} {pv:.2f}{' (ALL)' if v else ''} w {w:.2f}" for n, pv, v, w in vl]
            for k in range(0, len(items), 3):
                lines.append((("votes: " if k == 0 else "           ") + " \u00b7 ".join(items[k:k + 3]),
                              {"fontsize": 6.5}))
    else:
        lines.append(("no model result recorded", {}))
    text, colour = _review_line(e.review)
    lines.append((text, {"color": colour, "weight": "bold"}))
    if e.review is not None:
        lines.append((f"by {e.review.reviewer}, {e.review.at[:19].replace('T', ' ')} UTC", {"fontsize": 6.5}))
        if e.review.comment:
            for part in textwrap.wrap(f"comment: {e.review.comment}", 100)[:2]:
                lines.append((part, {"style": "italic", "fontsize": 6.5}))
    if e.cell_reviews:
        parts = []
        for r in e.cell_reviews[:8]:
            parts.append(f"#{r.cell + 1} {r.reviewer_decision}" + (" (override)" if r.override else ""))
        more = f" \u2026 and {len(e.cell_reviews) - 8} more" if len(e.cell_reviews) > 8 else ""
        lines.append(("reviewed cells: " + ", ".join(parts) + more, {"fontsize": 6.5}))
    lines.append((f"image SHA-256 {e.sha256[:16]}\u2026" + (" \u2014 FILE CHANGED SINCE ANALYSIS" if e.changed else ""),
                  {"fontsize": 5.5, "color": (0.8, 0, 0) if e.changed else (0.45, 0.45, 0.45)}))
    return lines


def _footer(fig, page: int, pages: int, case_name: str) -> None:
    fig.text(0.06, 0.02, f"allgui case report \u2014 {case_name}", fontsize=6.5, color="0.4")
    fig.text(0.5, 0.02, RESEARCH_ONLY, fontsize=7, color=(0.48, 0.36, 0.0), ha="center", weight="bold")
    fig.text(0.94, 0.02, f"page {page} of {pages}", fontsize=6.5, color="0.4", ha="right")


def _summary_page(fig, store: CaseStore, entries: list[ImageEntry], counts: dict[str, Any],
                  pages: int) -> None:
    y = 0.955

    def line(text: str, size: float = 8.5, dy: float = 0.018, **kw) -> None:
        nonlocal y
        fig.text(0.07, y, text, fontsize=size, va="top", **kw)
        y -= dy

    line("allgui case report", 18, 0.035, weight="bold")
    fig.patches.append(_banner(fig, y + 0.004))
    fig.text(0.5, y - 0.012, RESEARCH_ONLY + " Every result needs review by a qualified haematologist "
             "or pathologist.", fontsize=8, ha="center", va="center", color=(0.48, 0.36, 0.0), weight="bold")
    y -= 0.045
    line(f"Case: {store.name}   (id {store.case_id[:12]})", 10, 0.022, weight="bold")
    line(f"Case file: {store.path.name}   created {store.created_at[:19].replace('T', ' ')} UTC "
         f"by {store.created_by}")
    line(f"Report written {now()[:19].replace('T', ' ')} UTC")
    if counts["reviewers"]:
        text = (f"Reviewer{'s' if len(counts['reviewers']) > 1 else ''}: {', '.join(counts['reviewers'])}; "
                f"review actions {counts['first'][:16].replace('T', ' ')} \u2013 "
                f"{counts['last'][:16].replace('T', ' ')} UTC ({counts['actions']} actions, {counts['undone']} "
                "undone; the full audit trail is in the case file)")
        for part in textwrap.wrap(text, 115)[:3]:
            line(part)
    y -= 0.01
    line("Counts", 11, 0.024, weight="bold")
    rows = [("images", counts["images"]), ("reviewed", counts["reviewed"]), ("not reviewed", counts["not_reviewed"]),
            ("reviewer agreed with the model", counts["confirmed"]),
            ("reviewer overrode the model", counts["overrides"]),
            ("decided where the model was uncertain", counts["resolved"])]
    rows += [(f"reviewer: {d}", counts["reviewer"][d]) for d in (REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE)]
    rows += [(f"model: {d}", n) for d, n in sorted(counts["model"].items())]
    if counts["cells_reviewed"]:
        rows.append(("single cells of fields reviewed", counts["cells_reviewed"]))
        rows.append(("of these overridden", counts["cell_overrides"]))
    half = math.ceil(len(rows) / 2)
    for k, (label, n) in enumerate(rows):
        col, row = divmod(k, half)
        fig.text(0.09 + 0.44 * col, y - 0.017 * row, label, fontsize=8.5, va="top")
        fig.text(0.42 + 0.44 * col, y - 0.017 * row, str(n), fontsize=8.5, va="top", ha="right", weight="bold",
                 color=OVERRIDE_COLOUR if "overr" in label and n else "black")
    y -= 0.017 * half + 0.015
    line("Models", 11, 0.024, weight="bold")
    for m in store.models()[:4]:
        card = m["card"] or {}
        used = sorted({f"{e.prediction.model_name} {e.threshold:.3f}" for e in entries
                       if e.prediction is not None and e.prediction.model_sha256 == m["sha256"]
                       and e.threshold is not None})
        line(f"{m['name']}   SHA-256 {m['sha256'][:16]}\u2026   created {str(card.get('created', ''))[:10]}",
             8.5, weight="bold")
        if used:
            line("thresholds in this report: " + ", ".join(used), 7.5)
        for name, lines in (card.get("headline_lines") or {}).items():  # the model card's own words
            for k, text in enumerate(lines[:3]):
                for part in textwrap.wrap(f"{name}: {text}" if k == 0 else text, 130)[:3]:
                    line(part, 7.5)
        for name, h in ({} if card.get("headline_lines") else card.get("headline") or {}).items():
            parts = [f"n = {h['n']}" if "n" in h else ""]
            for key, label, spec in (("accuracy", "accuracy", ".1%"), ("auc", "AUC", ".3f"),
                                     ("sensitivity", "sensitivity", ".1%"), ("specificity", "specificity", ".1%")):
                if key in h:
                    parts.append(f"{label} {format(h[key], spec)}")
            line(f"{name}, {h.get('split', '')} split: " + ", ".join(p for p in parts if p), 7.5)
        reviewed = (card.get("trained_on") or {}).get("reviewed")
        if isinstance(reviewed, dict) and reviewed.get("n_images"):
            line(f"trained with {reviewed['n_images']} reviewed images from earlier cases", 7.5)
        limits = card.get("limitations") or []
        if limits:
            line("Limitations:", 7.5, weight="bold")
            for item in limits[:6]:
                for k, part in enumerate(textwrap.wrap(str(item), 120)[:3]):
                    line(("\u2022 " if k == 0 else "   ") + part, 7)
        if card.get("intended_use"):
            for part in textwrap.wrap("Intended use: " + str(card["intended_use"]), 125)[:2]:
                line(part, 7, style="italic")
        y -= 0.008
        if y < 0.12:
            break
    _footer(fig, 1, pages, store.name)


def _banner(fig, y: float):
    return Rectangle((0.05, y - 0.032), 0.9, 0.03, transform=fig.transFigure, facecolor=(1.0, 0.95, 0.80),
                     edgecolor=(0.88, 0.75, 0.38), linewidth=0.8)


def _image_page(fig, entries: list[tuple[int, ImageEntry]], per_page: int, page: int, pages: int,
                case_name: str) -> None:
    top, bottom = 0.95, 0.05
    h = (top - bottom) / per_page
    fig.text(0.06, 0.97, "Images", fontsize=11, weight="bold", va="center")
    for k, (i, e) in enumerate(entries):
        y0 = top - (k + 1) * h
        ax = fig.add_axes((0.06, y0 + 0.008, 0.22, h - 0.016))
        _draw_thumb(ax, e)
        ty = y0 + h - 0.012
        for text, props in _entry_lines(i, e):
            size = props.pop("fontsize", 7.2)
            fig.text(0.31, ty, text, fontsize=size, va="top", **props)
            ty -= (size + 2.6) / 72 / PAGE_SIZE[1]
            if ty < y0 + 0.004:
                break
        fig.add_artist(_rule(fig, y0))
    _footer(fig, page, pages, case_name)


def _rule(fig, y: float):
    return Line2D([0.06, 0.94], [y, y], transform=fig.transFigure, color="0.85", linewidth=0.5)


def write_case_report(case: str | os.PathLike | CaseStore, output: str | os.PathLike,
                      per_page: int = DEFAULT_PER_PAGE, thresholds: dict[str, float] | None = None,
                      band: float | None = None, model_sha256: str | None = None,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Write the report of ``case`` (a case file, opened read-only, or an open store) to ``output``.

    Written atomically. ``thresholds``, ``band``, ``model_sha256``: see :func:`collect`. Returns
    the counts (see :func:`summary`) with ``pages``.
    """
    if per_page < 1:
        raise CaseError("Images per page must be at least 1.")
    own = not isinstance(case, CaseStore)
    store = CaseStore.open(case, readonly=True) if own else case
    try:
        entries = collect(store, thresholds, band, model_sha256)
        counts = summary(store, entries)
        pages = 1 + math.ceil(len(entries) / per_page)
        buf = io.BytesIO()
        with PdfPages(buf, metadata={"Title": f"allgui case report: {store.name}", "Creator": "allgui",
                                     "Author": ", ".join(counts["reviewers"]), "Subject": RESEARCH_ONLY,
                                     "Keywords": f"case {store.case_id}"}) as pdf:
            fig = Figure(figsize=PAGE_SIZE)
            _summary_page(fig, store, entries, counts, pages)
            pdf.savefig(fig)
            numbered = list(enumerate(entries, 1))
            for page in range(2, pages + 1):
                if cancel is not None and cancel():
                    raise Cancelled("The case report was cancelled; nothing was written.")
                if progress is not None:
                    progress((page - 1) / pages, f"Report page {page} of {pages}")
                chunk = numbered[(page - 2) * per_page:(page - 1) * per_page]
                fig = Figure(figsize=PAGE_SIZE)
                _image_page(fig, chunk, per_page, page, pages, store.name)
                pdf.savefig(fig)
        atomic_write(output, lambda fh: fh.write(buf.getvalue()))
        if progress is not None:
            progress(1.0, f"Report written: {Path(output).name}")
        counts["pages"] = pages
        counts["changed"] = sum(1 for e in entries if e.changed)
        counts["missing"] = sum(1 for e in entries if e.file is None)
        return counts
    finally:
        if own:
            store.close()
