"""The case report's first pages: status, specimen, summary, conclusion, addenda, images not reviewed.

Then the counts and models.

Built as a flow of lines (:class:`Flow`) that continues on further pages when it does not fit on the
first, so nothing is cut; the page count is known before anything is drawn (every page's footer says
"page n of m").
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from matplotlib.patches import Rectangle

from trainer.cases.pdftext import (
    GREY,
    OVERRIDE_COLOUR,
    RESEARCH_ONLY,
    decision_style,
    literal,
    put,
    signed_text,
    status_text,
)
from trainer.cases.schema import METADATA_FIELDS, REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE, now
from trainer.cases.summary import Addendum, CaseView, ImageEntry, case_numbers, file_name, numbers_text, when

#: names of images not reviewed listed at most (the rest are counted)
MAX_UNREVIEWED_LISTED = 300
#: addenda listed at most (the rest are counted; all are in the case file)
MAX_ADDENDA_LISTED = 60
TOP_FIRST, TOP_REST, BOTTOM = 0.875, 0.95, 0.06
LABEL_X, VALUE_X = 0.09, 0.33          # the two columns of the specimen block
FINAL_COLOUR, PRELIMINARY_COLOUR = (0.0, 0.40, 0.20), (0.75, 0.38, 0.0)


@dataclass
class Line:
    """One line of the flow: texts at x positions (figure fraction) with their properties."""

    cells: list[tuple[float, str, dict[str, Any]]]
    dy: float


@dataclass
class Flow:
    """Lines laid out top-down over as many pages as they need."""

    lines: list[Line] = field(default_factory=list)

    def line(self, text: str, size: float = 8.5, dy: float = 0.018, x: float = 0.07, **kw) -> None:
        self.lines.append(Line([(x, text, {"fontsize": size, **kw})], dy))

    def wrapped(self, text: str, width: int, size: float = 8.5, max_lines: int = 6, x: float = 0.07,
                first: str = "", label: str = "", **kw) -> None:
        """``text`` (made literal first) wrapped at ``width`` characters, at most ``max_lines`` lines.

        ``first`` starts the first line (the others are indented as far); ``label`` is drawn at the
        left of the first line, as in a two-column row.
        """
        parts = textwrap.wrap(literal(text, width * max_lines + 1), width, initial_indent=first,
                              subsequent_indent=" " * len(first)) or [first]
        if len(parts) > max_lines:
            parts = parts[:max_lines - 1] + [parts[max_lines - 1] + " \u2026"]
        start = len(self.lines)
        for part in parts:
            self.line(part, size, (size + 3.5) / 72 / 11.69, x, **kw)
        if label:
            self.lines[start].cells.insert(0, (LABEL_X, label, {"fontsize": size}))

    def row(self, cells: list[tuple[float, str, dict[str, Any]]], dy: float = 0.017) -> None:
        self.lines.append(Line(cells, dy))

    def space(self, dy: float) -> None:
        self.lines.append(Line([], dy))

    def pages(self) -> list[list[tuple[float, Line]]]:
        """The lines with their y, page by page (the first page starts below the title)."""
        out: list[list[tuple[float, Line]]] = [[]]
        y = TOP_FIRST
        for ln in self.lines:
            if y - ln.dy < BOTTOM and out[-1]:
                out.append([])
                y = TOP_REST
            out[-1].append((y, ln))
            y -= ln.dy
        return out


def draw(fig, placed: list[tuple[float, Line]], first: bool, title: str) -> None:
    """One front page: the title and banner on the first, then its lines."""
    if first:
        put(fig, 0.07, 0.955, "allgui case report", fontsize=18, va="top", weight="bold")
        fig.patches.append(Rectangle((0.05, 0.888), 0.9, 0.03, transform=fig.transFigure,
                                     facecolor=(1.0, 0.95, 0.80), edgecolor=(0.88, 0.75, 0.38), linewidth=0.8))
        put(fig, 0.5, 0.903, RESEARCH_ONLY + " Every result needs review by a qualified haematologist or "
            "pathologist.", fontsize=8, ha="center", va="center", color=(0.48, 0.36, 0.0), weight="bold")
    else:
        put(fig, 0.07, 0.97, f"{title} (continued)", fontsize=11, weight="bold", va="center")
    for y, ln in placed:
        for x, text, props in ln.cells:
            put(fig, x, y, text, va="top", **props)


def build(store, view: CaseView, entries: list[ImageEntry], counts: dict[str, Any], adds: list[Addendum],
          shown: int) -> Flow:
    """The flow of the front pages. ``shown``: how many images get an entry on the image pages."""
    f = Flow()
    _status(f, view, adds)
    _specimen(f, store, view)
    _case_summary(f, view, counts)
    _addenda(f, adds)
    _unreviewed(f, entries)
    _counts(f, store, counts, entries, shown)
    _models(f, store, entries)
    return f


def _status(f: Flow, view: CaseView, adds: list[Addendum]) -> None:
    final = view.signoff is not None
    colour = FINAL_COLOUR if final else PRELIMINARY_COLOUR
    f.line(status_text(view.signoff), 13, 0.03, weight="bold", color=colour,
           bbox={"boxstyle": "square,pad=0.4", "facecolor": "white", "edgecolor": colour, "linewidth": 1.2})
    if final:
        f.wrapped(signed_text(view.signoff, len(adds)), 80, 10, 3, weight="bold", color=colour)
    else:
        f.line("Not signed: findings may still change. A sign-off (name, local time) makes the report final.",
               7.5, 0.018, color=GREY)
    f.space(0.006)


def _specimen(f: Flow, store, view: CaseView) -> None:
    f.line("Specimen", 11, 0.022, weight="bold")
    for key in ("specimen_id", "specimen_type", "stain", "magnification", "clinical_note"):
        label, value = METADATA_FIELDS[key][0], view.metadata.get(key, "")
        if value:
            f.wrapped(value, 80, 8.5, 8 if key == "clinical_note" else 3, x=VALUE_X, label=label,
                      weight="normal" if key == "clinical_note" else "bold")
        else:
            f.row([(LABEL_X, label, {"fontsize": 8.5}), (VALUE_X, "not entered", {"fontsize": 8.5, "color": GREY})])
    f.wrapped(f"{store.name}   (id {store.case_id[:12]}, file {store.path.name})", 80, 8.5, 3, x=VALUE_X,
              label="Case")
    f.wrapped(f"{when(store.created_at)} by {store.created_by}", 80, 8.5, 2, x=VALUE_X, label="Created")
    if not store.meta_protected:
        f.line("Case file written by an older allgui: metadata not protected (an edit of its name or creation "
               "outside allgui would go unnoticed).", 7.5, 0.018, x=0.09, color=OVERRIDE_COLOUR)
    elif store.upgraded_from:
        f.line(f"Case file of an older allgui (format {store.upgraded_from}), upgraded: its description is "
               "protected since then.", 7.5, 0.018, x=0.09, color=GREY)
    f.space(0.008)


def _case_summary(f: Flow, view: CaseView, counts: dict[str, Any]) -> None:
    f.line("Case summary" + (" (as signed)" if view.signoff is not None else ""), 11, 0.022, weight="bold")
    for text in numbers_text(case_numbers(view.current, view.predictions)):
        f.line(text, 8.5, 0.017, x=0.09)
    conclusion = view.metadata.get("conclusion", "")
    label = METADATA_FIELDS["conclusion"][0]
    if conclusion:
        f.wrapped(conclusion, 72, 9, 10, x=VALUE_X, label=label, weight="bold")
    else:
        f.row([(LABEL_X, label, {"fontsize": 8.5}), (VALUE_X, "not entered yet", {"fontsize": 8.5, "color": GREY})])
    if view.signoff is not None:
        f.wrapped(signed_text(view.signoff) + ".", 95, 8.5, 3, x=0.09, weight="bold", color=FINAL_COLOUR)
    f.space(0.008)


def _addenda(f: Flow, adds: list[Addendum]) -> None:
    if not adds:
        return
    f.line(f"Addenda: {len(adds)} change{'s' if len(adds) != 1 else ''} recorded after the sign-off", 11, 0.022,
           weight="bold", color=OVERRIDE_COLOUR)
    f.line("The figures above are as signed; these follow them, oldest first. None is a silent edit.", 7.5,
           0.016, x=0.09, color=GREY)
    for k, a in enumerate(adds[:MAX_ADDENDA_LISTED], 1):
        f.wrapped(f"{a.when}, {a.author}: {a.text}", 110, 7.5, 4, x=0.09, first=f"{k}. ")
    if len(adds) > MAX_ADDENDA_LISTED:
        f.line(f"\u2026 and {len(adds) - MAX_ADDENDA_LISTED} more (all are in the case file's audit trail)", 7.5,
               0.016, x=0.09, color=GREY)
    f.space(0.008)


def _unreviewed(f: Flow, entries: list[ImageEntry]) -> None:
    todo = [e for e in entries if e.review is None]
    if not todo:
        f.line("Every image has been reviewed.", 8.5, 0.02, x=0.07)
        return
    f.line(f"Images not reviewed ({len(todo)})", 11, 0.022, weight="bold")
    names = [file_name(e.path) + (f" ({len(e.cell_reviews)} cell{'s' if len(e.cell_reviews) > 1 else ''} reviewed)"
                                  if e.cell_reviews else "")
             for e in todo[:MAX_UNREVIEWED_LISTED]]
    for r in range(0, len(names), 3):          # row by row, so that the order reads on across a page break
        f.row([(0.09 + 0.29 * c, literal(name, 48), {"fontsize": 7.2, "color": GREY})
               for c, name in enumerate(names[r:r + 3])], 0.0145)
    if len(todo) > MAX_UNREVIEWED_LISTED:
        f.line(f"\u2026 and {len(todo) - MAX_UNREVIEWED_LISTED} more not listed here (this report lists at most "
               f"{MAX_UNREVIEWED_LISTED}; every image is in the case file)", 7.5, 0.016, x=0.09, color=GREY)
    f.space(0.008)


def _counts(f: Flow, store, counts: dict[str, Any], entries: list[ImageEntry], shown: int) -> None:
    f.line(f"Report written {when(now())}", 8.5)
    if counts["reviewers"]:
        text = (f"Reviewer{'s' if len(counts['reviewers']) > 1 else ''}: {', '.join(counts['reviewers'])}; "
                f"review actions {when(counts['first'])} \u2013 {when(counts['last'])} ({counts['actions']} "
                f"actions, {counts['undone']} undone; the full audit trail is in the case file)")
        f.wrapped(text, 115, 8.5, 3)
    f.space(0.01)
    f.line("Counts", 11, 0.024, weight="bold")
    rows = [("images", counts["images"]), ("reviewed", counts["reviewed"]), ("not reviewed", counts["not_reviewed"]),
            ("reviewer agreed with the model", counts["confirmed"]),
            ("reviewer overrode the model", counts["overrides"]),
            ("decided where the model was uncertain", counts["resolved"])]
    rows += [(f"reviewer: {d}", counts["reviewer"][d]) for d in (REVIEW_ALL, REVIEW_NORMAL, REVIEW_UNCLASSIFIABLE)]
    rows += [(f"model: {decision_style(d)[0]}", n) for d, n in sorted(counts["model"].items())]
    if counts["cells_reviewed"]:
        rows.append(("single cells of fields reviewed", counts["cells_reviewed"]))
        rows.append(("of these overridden", counts["cell_overrides"]))
    half = math.ceil(len(rows) / 2)
    for k in range(half):
        cells = []
        for col, (label, n) in enumerate(rows[k::half][:2]):
            cells += [(0.09 + 0.44 * col, label, {"fontsize": 8.5}),
                      (0.42 + 0.44 * col, str(n), {"fontsize": 8.5, "ha": "right", "weight": "bold",
                                                   "color": OVERRIDE_COLOUR if "overr" in label and n else "black"})]
        f.row(cells)
    if shown < len(entries):
        f.line(f"The image pages show {shown} of the {len(entries)} images (the reviewed ones first): the limit of "
               "one report. The counts above are of all images.", 8, 0.02, x=0.09, weight="bold",
               color=OVERRIDE_COLOUR)
    f.space(0.015)


def _models(f: Flow, store, entries: list[ImageEntry]) -> None:
    line = f.line
    line("Models", 11, 0.024, weight="bold")
    if not store.models():
        line("no model result is recorded in this case", 8.5, x=0.09, color=GREY)
    for m in store.models()[:4]:
        card = m["card"] or {}
        used = sorted({f"{e.prediction.model_name} {e.threshold:.3f}" for e in entries
                       if e.prediction is not None and e.prediction.model_sha256 == m["sha256"]
                       and e.threshold is not None})
        line(f"{m['name']}   SHA-256 {m['sha256'][:16]}\u2026   created {str(card.get('created', ''))[:10]}",
             8.5, weight="bold")
        if used:
            f.wrapped("thresholds in this report: " + ", ".join(used), 120, 7.5, 2)
        for name, lines in (card.get("headline_lines") or {}).items():  # the model card's own words
            for k, text in enumerate(lines[:3]):
                f.wrapped(literal(f"{name}: {text}" if k == 0 else text), 130, 7.5, 3)
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
                for k, part in enumerate(textwrap.wrap(literal(item), 120)[:3]):
                    line(("\u2022 " if k == 0 else "   ") + part, 7)
        if card.get("intended_use"):
            for part in textwrap.wrap(literal("Intended use: " + str(card["intended_use"])), 125)[:2]:
                line(part, 7, style="italic")
        f.space(0.008)
