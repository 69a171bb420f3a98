"""The model card dialog: what the model was trained on, how, how well it did, versions, intended use."""
from __future__ import annotations

import html
import json
from typing import Any

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

FIRST = ("name", "created", "intended_use", "trained_on", "split", "split_protocol", "metrics", "threshold",
         "config", "versions", "notes")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list, tuple)) for x in v):
        return html.escape(", ".join(_fmt(x) if isinstance(x, float) else str(x) for x in v))
    return html.escape(str(v))


def _table(d: dict[str, Any], depth: int = 0) -> str:
    rows = []
    for k in sorted(d, key=lambda k: (FIRST.index(k) if k in FIRST else 99, str(k))):
        v = d[k]
        label = html.escape(str(k).replace("_", " "))
        if isinstance(v, dict):
            inner = _table(v, depth + 1) if depth < 4 else html.escape(json.dumps(v, default=str))
            rows.append(f"<tr><th align='left' valign='top'>{label}</th><td>{inner}</td></tr>")
        else:
            rows.append(f"<tr><th align='left' valign='top'>{label}</th><td>{_fmt(v)}</td></tr>")
    return "<table cellspacing='0' cellpadding='3' border='0'>" + "".join(rows) + "</table>"


def card_html(card: dict[str, Any], path: str | None = None) -> str:
    """The model card as HTML (headline, then every field as a nested table)."""
    name = html.escape(str(card.get("name", "model")))
    head = f"<h2>{name}</h2>"
    if path:
        head += f"<p><small>{html.escape(path)}</small></p>"
    head += ("<p style='background:#fff3cd;padding:4px'><b>Research use only \u2014 not for clinical "
             "diagnosis.</b></p>")
    return head + _table(card)


class ModelCardDialog(QDialog):
    def __init__(self, card: dict[str, Any], path: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model card")
        self.resize(640, 600)
        lay = QVBoxLayout(self)
        self.text = QTextBrowser()
        self.text.setHtml(card_html(card, path))
        lay.addWidget(self.text)
        bb = QDialogButtonBox(QDialogButtonBox.Close)
        bb.rejected.connect(self.reject)
        bb.accepted.connect(self.accept)
        lay.addWidget(bb)
