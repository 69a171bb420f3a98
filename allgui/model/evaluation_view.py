"""Evaluation of a model on one of its held-out splits.

ROC, precision-recall, calibration (reliability) curve and the confusion matrix at the model threshold, with
headline numbers.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QComboBox, QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

SPLIT_ORDER = ("test", "validation", "val", "train")


def _pair(d: Any) -> dict[str, np.ndarray] | None:
    """{"y_true", "probability"} from one split's arrays (keys y/y_true, calibrated/probability)."""
    if not isinstance(d, dict):
        return None
    y = d.get("y_true", d.get("y"))
    p = d.get("probability", d.get("calibrated"))
    if y is None or p is None:
        return None
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, float).ravel()
    if len(y) and len(y) == len(p) and len(np.unique(y)) == 2:
        return {"y_true": y, "probability": p}
    return None


def splits_of(evaluation: dict[str, Any] | None, default: str = "test") -> dict[str, dict[str, np.ndarray]]:
    """``{split: {"y_true", "probability"}}`` for the splits that carry both classes.

    Accepts one split's arrays (as ``trainer.training.pipeline.TrainResult.evaluation``, named ``default``)
    or ``{split: arrays}``.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    if not evaluation:
        return out
    flat = _pair(evaluation)
    if flat is not None:
        return {default: flat}
    items = evaluation.get("splits", evaluation)
    if isinstance(items, dict):
        for k in sorted(items, key=lambda k: SPLIT_ORDER.index(k) if k in SPLIT_ORDER else 99):
            pair = _pair(items[k])
            if pair is not None:
                out[k] = pair
    return out


def _plot(title: str, xlabel: str, ylabel: str) -> pg.PlotWidget:
    w = pg.PlotWidget(background="w", title=title)
    w.setMouseEnabled(False, False)
    w.hideButtons()
    w.getPlotItem().setMenuEnabled(False)
    w.disableAutoRange()
    w.setXRange(0, 1, padding=0.03)
    w.setYRange(0, 1, padding=0.03)
    w.getAxis("bottom").setLabel(xlabel)
    w.getAxis("left").setLabel(ylabel)
    w.setMinimumSize(260, 220)
    return w


class EvaluationView(QWidget):
    """Four plots for one split; a combo box switches split."""

    def __init__(self, evaluation: dict[str, Any] | None, threshold: float = 0.5, parent=None) -> None:
        super().__init__(parent)
        self.splits = splits_of(evaluation)
        self.threshold = float(threshold)
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Held-out split:"))
        self.combo = QComboBox()
        self.combo.addItems(list(self.splits))
        top.addWidget(self.combo)
        self.summary = QLabel()
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        top.addWidget(self.summary, 1)
        lay.addLayout(top)
        grid = QGridLayout()
        self.roc = _plot("ROC", "1 - specificity", "sensitivity")
        self.pr = _plot("Precision-recall", "recall", "precision")
        self.cal = _plot("Calibration", "mean predicted P(ALL), 10 bins", "fraction ALL")
        self.cal.setToolTip("Dot size grows with the number of images in the bin")
        self.cm = QLabel()
        self.cm.setAlignment(Qt.AlignCenter)
        self.cm.setMinimumSize(260, 220)
        f = QFont()
        f.setPointSize(f.pointSize() + 1)
        self.cm.setFont(f)
        grid.addWidget(self.roc, 0, 0)
        grid.addWidget(self.pr, 0, 1)
        grid.addWidget(self.cal, 1, 0)
        grid.addWidget(self.cm, 1, 1)
        lay.addLayout(grid, 1)
        self.combo.currentTextChanged.connect(self.show_split)
        if self.splits:
            self.show_split(self.combo.currentText())
        else:
            self.summary.setText("This training run returned no held-out predictions to plot.")

    def show_split(self, name: str) -> None:
        d = self.splits.get(name)
        if d is None:
            return
        y, p = d["y_true"], d["probability"]
        t = self.threshold
        for w in (self.roc, self.pr, self.cal):
            w.clear()
        # scikit-learn and SciPy (a second to import) stay out of the window's start-up
        from trainer.stats import metrics as M

        fpr, tpr, _ = M.roc(y, p)
        self.roc.plot([0, 1], [0, 1], pen=pg.mkPen((180, 180, 180), style=Qt.DashLine))
        self.roc.plot(fpr, tpr, pen=pg.mkPen((33, 113, 181), width=2))
        pred = (p >= t).astype(int)
        tm = M.threshold_metrics(y, pred)
        self.roc.addItem(pg.ScatterPlotItem([1 - tm["specificity"]], [tm["sensitivity"]], size=10,
                                            brush=pg.mkBrush(215, 25, 28)))
        prec, rec, _ = M.pr_curve(y, p)
        self.pr.plot(rec, prec, pen=pg.mkPen((33, 113, 181), width=2), stepMode=None)
        self.pr.plot([0, 1], [y.mean()] * 2, pen=pg.mkPen((180, 180, 180), style=Qt.DashLine))
        rc = M.reliability_curve(y, p, n_bins=10)
        ok = rc["count"] > 0
        self.cal.plot([0, 1], [0, 1], pen=pg.mkPen((180, 180, 180), style=Qt.DashLine))
        sizes = 5 + 14 * np.sqrt(rc["count"][ok] / rc["count"].max())
        self.cal.plot(rc["mean_predicted"][ok], rc["fraction_positive"][ok], pen=pg.mkPen((215, 25, 28), width=1.5),
                      symbol="o", symbolSize=list(sizes), symbolBrush=(215, 25, 28))
        cm = tm["confusion_matrix"]
        self.cm.setText(
            f"<b>Confusion matrix</b> at threshold {t:.3f} ({name}, n = {len(y)})"
            "<table border='1' cellpadding='8' style='border-collapse:collapse; margin-top:8px'>"
            "<tr><th></th><th>called normal</th><th>called ALL</th></tr>"
            f"<tr><th>normal</th><td align='center'>{cm['tn']}</td><td align='center'>{cm['fp']}</td></tr>"
            f"<tr><th>ALL</th><td align='center'>{cm['fn']}</td><td align='center'>{cm['tp']}</td></tr></table>"
            f"<p>sensitivity {tm['sensitivity']:.1%} &nbsp; specificity {tm['specificity']:.1%}</p>")
        self.summary.setText(f"AUC {M.auc(y, p):.3f} \u00b7 average precision {M.average_precision(y, p):.3f} "
                             f"\u00b7 Brier {M.brier(y, p):.3f} \u00b7 accuracy {tm['accuracy']:.1%}")
