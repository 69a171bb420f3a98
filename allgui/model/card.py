"""The model card dialog: what the model was trained on, how, how well it did, versions, intended use."""
from __future__ import annotations

import html
import json
from typing import Any

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from trainer.inference.card_text import headline_lines

FIRST = ("name", "created", "intended_use", "trained_on", "split", "split_protocol", "models", "metrics",
         "threshold", "config", "versions", "notes")


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
    return head + _headline(card) + "<h3>All fields</h3>" + _table(card)


HEADLINE = (("accuracy", "accuracy", "{:.1%}"), ("auc", "AUC", "{:.3f}"), ("sensitivity", "sensitivity", "{:.1%}"),
            ("specificity", "specificity", "{:.1%}"), ("brier", "Brier score", "{:.3f}"))


def _metric_rows(metrics: dict[str, Any], prefix: str = "", groups: dict | None = None) -> list[str]:
    """Headline table rows (validation, test, test per source) of one model's metrics."""
    rows = []
    blocks = [(split, (metrics.get(split) or {}).get("ensemble_calibrated")
               or (metrics.get(split) or {}).get("ensemble") or {})   # the app's rule first
              for split in ("validation", "test")]
    blocks += [(f"test, {source} only", m) for source, m in (metrics.get("test_by_source") or {}).items()]
    for split, ens in blocks:
        if not ens:
            continue
        cells = []
        for key, _, fmt in HEADLINE:
            v = ens.get(key)
            text = fmt.format(v) if isinstance(v, (int, float)) else "\u2014"
            ci = ens.get(f"{key}_ci")
            if key == "auc" and isinstance(ci, (list, tuple)) and len(ci) == 2:
                text += f" ({ci[0]:.2f}\u2013{ci[1]:.2f})"
            cells.append(f"<td align='center'>{text}</td>")
        n = ens.get("n", "")
        label = "validation (set the threshold)" if split == "validation" else split
        size = [f"n = {n}"] if n else []
        g = (groups or {}).get(split)
        if g:
            size.append(f"{g} subjects")
        label = html.escape(prefix + label) + (f" ({', '.join(size)})" if size else "")
        rows.append(f"<tr><th align='left'>{label}</th>{''.join(cells)}</tr>")
    return rows


def _headline(card: dict[str, Any]) -> str:
    """Ensemble metrics of each model on the validation and test splits, in one small table.

    Validation (in-sample for the threshold and calibration) and held-out test metrics of each model (crop
    model, field model), and what the model was trained on.
    """
    sections = card.get("models") or {}
    rows = [] if sections else _metric_rows(card.get("metrics") or {})
    # each model's labelled headline (cross-validation first, then the test split), as the case report says it
    lines = "".join(f"<p><b>{html.escape(str(sec.get('name', 'model')).capitalize())}</b></p><ul>"
                    + "".join(f"<li>{html.escape(x)}</li>" for x in headline_lines(sec)) + "</ul>"
                    for sec in sections.values())
    out = ""
    trained = card.get("trained_on") or {}
    if trained:
        counts = trained.get("class_counts") or {}
        split = card.get("split") or {}
        out += (f"<p><b>Trained on</b> {trained.get('n_images', '?')} images "
                f"({', '.join(f'{k} {v}' for k, v in counts.items())}); "
                f"{html.escape(str(split.get('protocol', '?')))}-level split "
                f"{split.get('n_train', '?')}/{split.get('n_validation', '?')}/{split.get('n_test', '?')}.</p>")
    reviewed = trained.get("reviewed") if isinstance(trained.get("reviewed"), dict) else {}
    if reviewed.get("n_images"):
        cases = reviewed.get("cases") or []
        labels = ", ".join(f"{k} {v}" for k, v in (reviewed.get("by_label") or {}).items())
        out += (f"<p><b>Reviewed corrections:</b> {reviewed['n_images']} images reviewed in {len(cases)} "
                f"case{'s' if len(cases) != 1 else ''} ({html.escape(labels)}), with the reviewer's labels; "
                f"train/validation/test {reviewed.get('n_train', '?')}/{reviewed.get('n_validation', '?')}/"
                f"{reviewed.get('n_test', '?')}.</p>")
    if len(sections) > 1 or (sections and "any" not in sections):
        names = ", ".join(html.escape(str(sec.get("name", k))) for k, sec in sections.items())
        out += (f"<p><b>Models:</b> {names}. Each image is judged by the model of its kind (single-cell crop "
                "or smear field), with that model's own calibration and threshold.</p>")
    out += lines
    if rows:
        head = "".join(f"<th>{label}</th>" for _, label, _ in HEADLINE)
        out += ("<p><b>Calibrated ensemble probability at the model threshold (the app's decision rule)</b></p>"
                "<table border='1' cellspacing='0' cellpadding='4'>"
                f"<tr><th></th>{head}</tr>{''.join(rows)}</table>")
    for note in card.get("notes") or []:
        out += f"<p><i>{html.escape(str(note))}</i></p>"
    limits = card.get("limitations") or []
    if limits:
        out += "<p><b>Limitations</b></p><ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in limits) + "</ul>"
    return out


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
