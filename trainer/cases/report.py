"""The case report: a PDF a pathologist can sign, with every image's model and reviewer decision.

First page(s) (:mod:`trainer.cases.report_front`): the status (*Preliminary — not signed*, or *Final*
with the signer and their local time), the specimen (id, type, stain, magnification, clinical
note), the case summary (images and cells reviewed, blasts counted and their proportion, the
reviewer's conclusion), the addenda recorded after a sign-off, the images not reviewed by name, the
counts and the model card's headline and limitations. Then ``per_page`` images a page, each with its
thumbnail and outlines, probabilities, votes, the model's decision and the reviewer's. A signed
case is shown as signed (:func:`trainer.cases.summary.case_view`). Every page's footer gives the
specimen id, the status and "page n of m".

A case of more than ``max_images`` images gets image pages for that many (the reviewed ones first)
and says so on the first page; its counts and lists cover every image. Text from the case is drawn
literally (:mod:`trainer.cases.pdftext`).

Written with matplotlib's PDF backend (``Figure`` + ``PdfPages``, no pyplot and no Qt), so the
command line (``allgui-train report``) and the app write the same report, also on a machine
without a display.
"""
from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from trainer.cases import report_front
from trainer.cases.pdftext import (
    COLOURS,
    GREY,
    OVERRIDE_COLOUR,
    PAGE_SIZE,
    RESEARCH_ONLY,
    decision_style,
    literal,
    put,
    short_status,
)
from trainer.cases.reviews import Prediction, Review
from trainer.cases.schema import file_sha256
from trainer.cases.store import CaseStore
from trainer.cases.summary import ImageEntry, addenda, case_view, collect, file_name, summary, when
from trainer.inference.results import DECISION_OUTSIDE, decide
from trainer.io.imageio import read_image
from trainer.util.atomic import atomic_write
from trainer.util.errors import CaseError
from trainer.util.progress import check_cancel

__all__ = ["DEFAULT_MAX_IMAGES", "DEFAULT_PER_PAGE", "MAX_PER_PAGE", "RESEARCH_ONLY", "ImageEntry", "collect",
           "summary", "write_case_report"]

DEFAULT_PER_PAGE = 6
MAX_PER_PAGE = 12
#: images with an entry on the image pages at most, by default (about 50 s of drawing on two cores)
DEFAULT_MAX_IMAGES = 500
THUMB_PX = 320                      # longest side of an embedded thumbnail


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
        return None, 1.0, f"image not readable: {literal(exc, 80)}"
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
                transform=ax.transAxes, parse_math=False)
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
                    va="bottom", parse_math=False)
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "\u2014" if v is None else format(v, spec)


def _review_line(r: Review | None, what: str = "") -> tuple[str, tuple]:
    if r is None:
        return f"{what}not reviewed", GREY
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
    lines: list[tuple[str, dict]] = [(f"{i}. {file_name(e.path)}", {"weight": "bold", "fontsize": 8})]
    if pred is not None:
        lines.append((f"{_kind(pred)} \u00b7 {pred.model_name} \u00b7 {pred.width}\u00d7{pred.height} px", {}))
        src = e.review if e.review is not None else None
        p = src.probability if src is not None else pred.probability
        raw = src.raw_probability if src is not None else pred.raw_probability
        vs = src.vote_share if src is not None else pred.vote_share
        words, colour = decision_style(e.model_decision)
        lines.append((f"calibrated P(ALL) {_fmt(p)} \u00b7 raw ensemble {_fmt(raw)} \u00b7 weighted vote for ALL "
                      f"{_fmt(vs, '.0%')}", {}))
        lines.append((f"model decision at threshold {_fmt(e.threshold)} \u00b1 {_fmt(e.band, '.2f')}: "
                      f"{words}", {"color": colour, "weight": "bold"}))
        if e.model_decision == DECISION_OUTSIDE:
            lines.append(("unlike the model's training images: no class, the probability is not meaningful",
                          {"color": colour}))
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
        lines.append((f"by {literal(e.review.reviewer, 100)}, {when(e.review.at)}", {"fontsize": 6.5}))
        if e.review.comment:
            for part in textwrap.wrap(literal(f"comment: {e.review.comment}", 220), 100)[:2]:
                lines.append((part, {"style": "italic", "fontsize": 6.5}))
    if e.cell_reviews:
        parts = []
        for r in e.cell_reviews[:8]:
            parts.append(f"#{r.cell + 1} {r.reviewer_decision}" + (" (override)" if r.override else ""))
        more = f" \u2026 and {len(e.cell_reviews) - 8} more" if len(e.cell_reviews) > 8 else ""
        lines.append(("reviewed cells: " + ", ".join(parts) + more, {"fontsize": 6.5}))
    if e.later:
        lines.append((e.later, {"color": OVERRIDE_COLOUR, "weight": "bold", "fontsize": 6.5}))
    lines.append((f"image SHA-256 {e.sha256[:16]}\u2026" + (" \u2014 FILE CHANGED SINCE ANALYSIS" if e.changed else ""),
                  {"fontsize": 5.5, "color": (0.8, 0, 0) if e.changed else (0.45, 0.45, 0.45)}))
    return lines


def _footer(fig, page: int, pages: int, specimen: str, status: str) -> None:
    put(fig, 0.06, 0.02, f"Specimen {specimen or 'not entered'}", 60, fontsize=6.5, color="0.3", weight="bold")
    put(fig, 0.5, 0.02, RESEARCH_ONLY, fontsize=7, color=(0.48, 0.36, 0.0), ha="center", weight="bold")
    put(fig, 0.94, 0.02, f"{status} \u00b7 page {page} of {pages}", fontsize=6.5, color="0.3", ha="right",
        weight="bold")


def _image_page(fig, entries: list[tuple[int, ImageEntry]], per_page: int, page: int, pages: int,
                footer: tuple[str, str]) -> None:
    top, bottom = 0.95, 0.05
    h = (top - bottom) / per_page
    put(fig, 0.06, 0.97, "Images", fontsize=11, weight="bold", va="center")
    for k, (i, e) in enumerate(entries):
        y0 = top - (k + 1) * h
        ax = fig.add_axes((0.06, y0 + 0.008, 0.22, h - 0.016))
        _draw_thumb(ax, e)
        ty = y0 + h - 0.012
        for text, props in _entry_lines(i, e):
            size = props.pop("fontsize", 7.2)
            put(fig, 0.31, ty, text, 160, fontsize=size, va="top", **props)
            ty -= (size + 2.6) / 72 / PAGE_SIZE[1]
            if ty < y0 + 0.004:
                break
        fig.add_artist(_rule(fig, y0))
    _footer(fig, page, pages, *footer)


def _rule(fig, y: float):
    return Line2D([0.06, 0.94], [y, y], transform=fig.transFigure, color="0.85", linewidth=0.5)


def _shown(entries: list[ImageEntry], max_images: int) -> list[tuple[int, ImageEntry]]:
    """(number in the full list, entry) of the images that get an entry on the image pages.

    All of them, or ``max_images`` with the reviewed (or changed) ones first, in the list's order.
    """
    numbered = list(enumerate(entries, 1))
    if len(numbered) <= max_images:
        return numbered
    first = sorted(numbered, key=lambda ie: ie[1].review is None and not ie[1].cell_reviews and not ie[1].later)
    return sorted(first[:max_images], key=lambda ie: ie[0])


def write_case_report(case: str | os.PathLike | CaseStore, output: str | os.PathLike,
                      per_page: int = DEFAULT_PER_PAGE, thresholds: dict[str, float] | None = None,
                      band: float | None = None, model_sha256: str | None = None,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: Callable[[], bool] | None = None,
                      max_images: int = DEFAULT_MAX_IMAGES) -> dict[str, Any]:
    """Write the report of ``case`` (a case file, opened read-only, or an open store) to ``output``.

    Written atomically. ``thresholds``, ``band``, ``model_sha256``: see :func:`collect`.
    ``max_images``: images with an entry on the image pages at most (see the module). Returns the
    counts (see :func:`summary`) with ``pages``, ``shown`` (images with an entry), ``status``,
    ``missing`` and ``changed`` (image files of those shown gone or changed since analysis).
    """
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise CaseError(f"Images per page must be between 1 and {MAX_PER_PAGE}.")
    if max_images < 0:
        raise CaseError("The number of images shown cannot be negative.")
    own = not isinstance(case, CaseStore)
    store = CaseStore.open(case, readonly=True) if own else case
    try:
        view = case_view(store)
        entries = collect(store, thresholds, band, model_sha256, view, locate=False)
        counts = summary(store, entries)
        adds = addenda(store, view)
        shown = _shown(entries, max_images)
        for _, e in shown:                     # only the images drawn are looked for (a stat each)
            e.file = store.resolve(e.path, e.rel_path)
        front = report_front.build(store, view, entries, counts, adds, len(shown)).pages()
        pages = len(front) + math.ceil(len(shown) / per_page)
        footer = (view.metadata.get("specimen_id", ""), short_status(view.signoff, len(adds)))
        buf = io.BytesIO()
        meta = {"Title": literal(f"allgui case report: {store.name}"), "Creator": "allgui",
                "Author": literal(", ".join(counts["reviewers"])), "Subject": RESEARCH_ONLY,
                "Keywords": f"case {store.case_id}"}
        with PdfPages(buf, metadata=meta) as pdf:
            for page in range(1, pages + 1):
                check_cancel(cancel, "The case report was cancelled; nothing was written.")
                if progress is not None:
                    progress((page - 1) / pages, f"Report page {page} of {pages}")
                fig = Figure(figsize=PAGE_SIZE)
                if page <= len(front):
                    report_front.draw(fig, front[page - 1], page == 1, "Case summary")
                    _footer(fig, page, pages, *footer)
                else:
                    k = page - len(front) - 1
                    _image_page(fig, shown[k * per_page:(k + 1) * per_page], per_page, page, pages, footer)
                pdf.savefig(fig)
        atomic_write(output, lambda fh: fh.write(buf.getvalue()))
        if progress is not None:
            progress(1.0, f"Report written: {Path(output).name}")
        counts.update(pages=pages, shown=len(shown), status=short_status(view.signoff, len(adds)),
                      changed=sum(1 for _, e in shown if e.changed),
                      missing=sum(1 for _, e in shown if e.file is None))
        return counts
    finally:
        if own:
            store.close()
