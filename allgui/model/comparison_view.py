"""The current and the new model side by side, as the Retrain dialog shows it when a training run ends.

Warnings first, in red: where the new model is worse than the current one on any figure, or lacks a model
for an image kind the current one has. Then one table per image kind: each source (held-out test split,
cross-validated by subject, reviewed case images) as a pair of columns, current and new, with image and
subject counts; a worse figure of the new model in red. The data is :func:`allgui.model.comparison.compare`'s.
"""
from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from allgui.model.comparison import METRICS, SOURCES, fmt, is_worse

WORSE = "#b00000"


def _cell(key: str, figs: dict[str, Any] | None, worse: bool) -> str:
    if not figs:
        return "<td align='center' style='color:#888'>\u2014</td>"
    text = fmt(key, figs.get(key))
    ci = figs.get("auc_ci") if key == "auc" else None
    if ci:
        text += f"<br><small>({ci[0]:.2f}\u2013{ci[1]:.2f})</small>"
    style = f" style='color:{WORSE}; font-weight:bold'" if worse else ""
    return f"<td align='center'{style}>{text}</td>"


def _counts(figs: dict[str, Any] | None) -> tuple[str, str]:
    """(images, subjects) cells of one column."""
    if not figs:
        return "<td></td>", "<td></td>"
    n, pos, neg = figs.get("n"), figs.get("n_all"), figs.get("n_normal")
    images = "\u2014" if n is None else str(n) + (f" ({pos} ALL / {neg} normal)" if pos is not None else "")
    subjects = figs.get("n_subjects")
    return (f"<td align='center'><small>{images}</small></td>",
            f"<td align='center'>{fmt('n', subjects)}</td>")


def kind_table(row: dict[str, Any]) -> str:
    """HTML table of one image kind: metrics down, (source, current | new) across."""
    sources = row["sources"]
    if not sources:
        return f"<p><b>{html.escape(row['label'].capitalize())}</b>: no figures for either model.</p>"
    head = "".join(f"<th colspan='2'>{SOURCES[s]}</th>" for s in sources)
    sub = "<th>current</th><th>new</th>" * len(sources)
    body = []
    for key, label, _ in METRICS:
        cells = []
        for pair in sources.values():
            cur, new = pair["current"], pair["new"]
            worse = bool(cur and new) and is_worse(key, cur.get(key), new.get(key))
            cells.append(_cell(key, cur, False) + _cell(key, new, worse))
        body.append(f"<tr><th align='left'>{label}</th>{''.join(cells)}</tr>")
    counts = [(_counts(p["current"]), _counts(p["new"])) for p in sources.values()]
    body.append("<tr><th align='left'>images</th>" + "".join(c[0][0] + c[1][0] for c in counts) + "</tr>")
    body.append("<tr><th align='left'>subjects</th>" + "".join(c[0][1] + c[1][1] for c in counts) + "</tr>")
    return (f"<p style='margin-top:8px'><b>{html.escape(row['label'].capitalize())}</b></p>"
            "<table border='1' cellspacing='0' cellpadding='4' style='border-collapse:collapse'>"
            f"<tr><th></th>{head}</tr><tr><th></th>{sub}</tr>{''.join(body)}</table>")


class ComparisonView(QWidget):
    """Warnings and the side-by-side tables of one comparison."""

    def __init__(self, comparison: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.comparison = comparison
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        title = QLabel(f"<b>Current model</b> {html.escape(str(comparison.get('current') or 'none'))} "
                       f"\u2003<b>New model</b> {html.escape(str(comparison.get('new')))}")
        title.setWordWrap(True)
        lay.addWidget(title)
        self.warnings = QLabel()
        self.warnings.setObjectName("comparisonWarnings")
        self.warnings.setWordWrap(True)
        self.warnings.setTextFormat(Qt.RichText)
        warnings = comparison.get("warnings") or []
        if warnings:
            self.warnings.setText("".join(f"<p>\u26a0 {html.escape(w)}</p>" for w in warnings))
            self.warnings.setStyleSheet(f"color:{WORSE}; font-weight:bold; background:#fde2e1; padding:6px;"
                                        "border:1px solid #e0a0a0;")
        elif comparison.get("current"):
            self.warnings.setText("The new model is not worse than the current one on any figure shown.")
        lay.addWidget(self.warnings)
        self.tables = QLabel("".join(kind_table(r) for r in comparison.get("rows") or []))
        self.tables.setTextFormat(Qt.RichText)
        self.tables.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.tables)
        self.notes = QLabel("".join(f"<p>{html.escape(n)}</p>" for n in comparison.get("notes") or []))
        self.notes.setWordWrap(True)
        self.notes.setStyleSheet("color:#555;")
        lay.addWidget(self.notes)

    @property
    def warning_texts(self) -> list[str]:
        return list(self.comparison.get("warnings") or [])
