"""Retraining from the app.

The dialog (data folder, layout, positive classes, split protocol, weights, device), the training run in a
child process, progress, log, Cancel, and on success the new model beside the one in use (per image kind,
warnings in red where it is worse) and its evaluation; switching is the user's explicit choice ("Use the
new model", confirmed once more where the comparison warns). The dialog never grows past the screen: its
content scrolls, and its buttons (Close, Esc) always work.

The new model is always written to a new file (never the loaded model's path); the trainer writes
it atomically, so a cancelled or crashed run leaves the current model loaded and its file intact.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QElapsedTimer, QPoint, QRect, QSettings, QStandardPaths, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from allgui.model.case_picker import CasePicker
from allgui.model.comparison_view import ComparisonView
from allgui.model.evaluation_view import EvaluationView
from allgui.model.training_job import run_training
from allgui.workers import ProcessTask
from trainer.config import (
    FINETUNE_CHOICES,
    MIN_IMAGE_SIZE,
    STAIN_JITTER_MAX,
    TrainConfig,
    choices,
    describe,
    finetune_wanted,
)


def models_dir() -> Path:
    """Folder where retrained models are written (user data location)."""
    base = QStandardPaths.writableLocation(QStandardPaths.AppDataLocation) or str(Path.home() / ".allgui")
    d = Path(base) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def new_model_path(folder: Path | None = None, avoid: str | None = None) -> Path:
    """A fresh file name for a retrained model, never ``avoid`` (the loaded model)."""
    folder = folder or models_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        p = folder / (f"model-{stamp}.allmodel" if i == 0 else f"model-{stamp}-{i}.allmodel")
        if not p.exists() and (avoid is None or Path(avoid).resolve() != p.resolve()):
            return p
    raise RuntimeError("could not find a free file name for the new model")


def choice_box(name: str, editable: bool = False) -> QComboBox:
    """A combo box offering the choices of config setting ``name``, its description as tooltip."""
    box = QComboBox()
    box.setEditable(editable)
    box.addItems([str(c) for c in choices(name)])
    box.setToolTip(describe(name))
    return box


class RetrainDialog(QDialog):
    """Options, then progress with a log and Cancel, then the evaluation and a switch question.

    Signals ``accepted_model(path)`` when the user chooses to switch to the new model.
    """

    accepted_model = Signal(str)

    def __init__(self, current_model: str | None = None, parent: QWidget | None = None,
                 output_dir: Path | None = None, base_config: TrainConfig | None = None,
                 settings: QSettings | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Retrain model")
        self.setMinimumWidth(560)
        self.current_model = current_model
        self.output_dir = output_dir
        self.base = base_config or TrainConfig()
        self.task: ProcessTask | None = None
        self.result: dict[str, Any] | None = None
        self.output: Path | None = None
        self.comparison_view: ComparisonView | None = None
        self.settings = settings if settings is not None else QSettings()
        self._clock = QElapsedTimer()

        lay = QVBoxLayout(self)
        body = QWidget()
        inner = QVBoxLayout(body)
        inner.addLayout(self._options_form())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.stage = QLabel("Not started.")
        self.stage.setWordWrap(True)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setMinimumHeight(140)
        inner.addWidget(self.stage)
        inner.addWidget(self.progress)
        inner.addWidget(self.log, 1)
        self.eval_holder = QVBoxLayout()
        inner.addLayout(self.eval_holder)
        # everything but the buttons scrolls: on a small screen Close and "Use the new model" stay in reach
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(body)
        self._scroll_pending = False
        self.scroll.verticalScrollBar().rangeChanged.connect(self._scroll_to_comparison)
        lay.addWidget(self.scroll, 1)
        lay.addWidget(self._button_box())

    def _button_box(self) -> QDialogButtonBox:
        self.buttons = QDialogButtonBox()
        self.start_btn = self.buttons.addButton("Start training", QDialogButtonBox.AcceptRole)
        self.cancel_btn = self.buttons.addButton("Cancel training", QDialogButtonBox.ActionRole)
        self.use_btn = self.buttons.addButton("Use the new model", QDialogButtonBox.ApplyRole)
        self.use_btn.setEnabled(False)
        self.use_btn.clicked.connect(self.use_new_model)
        self.close_btn = self.buttons.addButton("Close", QDialogButtonBox.RejectRole)
        self.cancel_btn.setEnabled(False)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.close_btn.clicked.connect(self.reject)
        return self.buttons

    # ---- options ------------------------------------------------------------------------------
    def _options_form(self) -> QFormLayout:
        """The training options, each set as it was last used (else from the base config)."""
        form = QFormLayout()
        self.data = QLineEdit(self.settings.value("retrain/data", "", str))
        self.data.setPlaceholderText("folder with class sub-folders or a C-NMC style tree")
        browse = QPushButton("Browse\u2026")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.data, 1)
        row.addWidget(browse)
        form.addRow("Data folder", row)
        self.layout_box = choice_box("layout")
        form.addRow("Layout", self.layout_box)
        self.positive = QLineEdit(self.settings.value("retrain/positive", "", str))
        self.positive.setPlaceholderText("e.g. Early, Pre, Pro (folders layout; empty = automatic)")
        form.addRow("Positive (ALL) classes", self.positive)
        self.split = choice_box("split")
        form.addRow("Split protocol", self.split)
        self.weights = choice_box("weights", editable=True)  # or a weights file
        form.addRow("Backbone weights", self.weights)
        self.device = choice_box("device")
        form.addRow("Device", self.device)
        self.size_box = QSpinBox()   # not "size": that would hide QWidget.size()
        self.size_box.setRange(MIN_IMAGE_SIZE, 512)
        self.size_box.setValue(int(self.base.image_size))
        self.size_box.setSuffix(" px")
        self.size_box.setToolTip(describe("image_size"))
        form.addRow("Network input size", self.size_box)
        self.finetune = QComboBox()
        self.finetune.addItems(list(FINETUNE_CHOICES))
        ft = self.base.finetuning
        self.finetune.setToolTip(f"Fine-tune both backbones on the training split first (the paper's set-up: "
                                 f"Adam {ft.lr:g}, at most {ft.epochs} epochs, early stopping after {ft.patience}). "
                                 "auto = on when training on a CUDA GPU; slow on a CPU.")
        form.addRow("Fine-tune backbones", self.finetune)
        self.stain_jitter = QDoubleSpinBox()
        self.stain_jitter.setRange(0.0, STAIN_JITTER_MAX)
        self.stain_jitter.setSingleStep(0.01)
        self.stain_jitter.setDecimals(2)
        self.stain_jitter.setSpecialValueText("off")
        self.stain_jitter.setValue(self.settings.value("retrain/stain_jitter", float(ft.stain_jitter), float))
        self.stain_jitter.setToolTip(describe("finetuning.stain_jitter") + "; only when the backbones are fine-tuned")
        form.addRow("Stain jitter (fine-tuning)", self.stain_jitter)
        self.cases = CasePicker(self.settings.value("retrain/cases", "", str))
        form.addRow("Reviewed cases", self.cases)
        for box, key in ((self.layout_box, "layout"), (self.split, "split"), (self.weights, "weights"),
                         (self.device, "device")):
            box.setCurrentText(self.settings.value(f"retrain/{key}", getattr(self.base, key), str))
        self.finetune.setCurrentText(self.settings.value("retrain/finetune",
                                                         "on" if self.base.finetune else "auto", str))
        return form

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Training data folder", self.data.text())
        if d:
            self.data.setText(d)

    def config(self) -> TrainConfig:
        """The TrainConfig the dialog's fields describe (output = a new file)."""
        positive = [s.strip() for s in self.positive.text().replace(";", ",").split(",") if s.strip()]
        cfg = TrainConfig.from_dict(self.base.to_dict())
        cfg.data = self.data.text().strip()
        cfg.layout = self.layout_box.currentText()
        cfg.positive = positive or None
        cfg.split = self.split.currentText()
        cfg.weights = self.weights.currentText().strip() or "none"
        cfg.device = self.device.currentText()
        cfg.image_size = int(self.size_box.value())
        cfg.finetune = finetune_wanted(self.finetune.currentText(), cfg.device)
        cfg.finetuning.stain_jitter = float(self.stain_jitter.value())
        cfg.cases = tuple(self.cases.paths())
        self.output = new_model_path(self.output_dir, avoid=self.current_model)
        cfg.output = str(self.output)
        return cfg

    def _set_editable(self, on: bool) -> None:
        for w in (self.data, self.layout_box, self.positive, self.split, self.weights, self.device, self.size_box,
                  self.finetune, self.stain_jitter, self.cases):
            w.setEnabled(on)

    # ---- run ----------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config()
        if not cfg.data or not Path(cfg.data).is_dir():
            QMessageBox.warning(self, "Retrain", "Choose an existing data folder to train on.")
            return
        refused = self.cases.check()
        if refused:
            QMessageBox.warning(self, "Retrain", f"{refused}\n\nRemove it from the reviewed cases to train.")
            return
        for key, val in (("data", cfg.data), ("layout", cfg.layout), ("positive", self.positive.text()),
                         ("split", cfg.split), ("weights", cfg.weights), ("device", cfg.device),
                         ("finetune", self.finetune.currentText()), ("stain_jitter", cfg.finetuning.stain_jitter),
                         ("cases", self.cases.edit.text())):
            self.settings.setValue(f"retrain/{key}", val)
        self._clear_evaluation()
        self.result = None
        self.use_btn.setEnabled(False)
        self.log.clear()
        self._append(f"Training on {cfg.data} (layout {cfg.layout}, split {cfg.split}, weights {cfg.weights}, "
                     f"device {cfg.device}); new model file: {cfg.output}")
        if cfg.cases:
            self._append(f"Adding the reviewed images of {len(cfg.cases)} case(s): "
                         + ", ".join(Path(c).name for c in cfg.cases))
        compare_cases = list(dict.fromkeys([*cfg.cases, *([str(c)] if (c := self.cases.open_case()) else [])]))
        self.task = ProcessTask(run_training, cfg.to_dict(), compare_with=self.current_model,
                                compare_cases=compare_cases, name="retrain")
        self.task.progress.connect(self._on_progress)
        self.task.log.connect(self._append)
        self.task.finished.connect(self._on_finished)
        self.task.failed.connect(self._on_failed)
        self.task.cancelled.connect(self._on_cancelled)
        self._set_editable(False)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setValue(0)
        self.stage.setText("Starting the training process\u2026")
        self._clock.start()
        self.task.start()

    def running(self) -> bool:
        return self.task is not None and self.task.running

    def cancel(self) -> None:
        if self.running():
            self.task.cancel()

    def _append(self, text: str) -> None:
        self.log.appendPlainText(text.rstrip())

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(1000 * max(0.0, min(1.0, fraction)))))
        secs = self._clock.elapsed() / 1000
        self.stage.setText(f"{message}  ({secs:.0f} s)" if message else f"{secs:.0f} s")

    def _done(self) -> None:
        self._set_editable(True)
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _remove_partial(self) -> None:
        """Delete the new (never the current) model file left by an unfinished run."""
        if self.output is not None and self.output.exists() and (
                self.current_model is None or Path(self.current_model).resolve() != self.output.resolve()):
            try:
                self.output.unlink()
            except OSError:
                pass

    def _on_cancelled(self) -> None:
        self._done()
        self._remove_partial()
        self.stage.setText("Training cancelled. The current model is unchanged.")
        self._append("Cancelled by the user; the current model stays loaded.")

    def _on_failed(self, message: str) -> None:
        self._done()
        self._remove_partial()
        self.stage.setText("Training failed. The current model is unchanged.")
        self._append(message)
        QMessageBox.critical(self, "Training failed", f"{message}\n\nThe current model stays loaded and unchanged.")

    def _on_finished(self, result: dict[str, Any]) -> None:
        self._done()
        self.result = result
        self.progress.setValue(1000)
        secs = result.get("seconds", self._clock.elapsed() / 1000)
        self.stage.setText(f"Training finished in {secs:.0f} s: {result['bundle_path']}. Compare the two models "
                           "below; the current one stays in use until you choose \u201cUse the new model\u201d.")
        self._append(f"New model written to {result['bundle_path']}")
        if result.get("comparison_error"):
            self._append(f"The comparison with the current model failed: {result['comparison_error']}")
        self.show_evaluation(result.get("evaluation"), _threshold_of(result), result.get("comparison"))
        self.use_btn.setEnabled(True)

    def _clear_evaluation(self) -> None:
        while self.eval_holder.count():
            w = self.eval_holder.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.comparison_view = None

    def show_evaluation(self, evaluation: dict | None, threshold: float,
                        comparison: dict | None = None) -> EvaluationView:
        """The new model beside the current one (when compared), then its evaluation plots."""
        self._clear_evaluation()
        if comparison:
            self.comparison_view = ComparisonView(comparison)
            self.eval_holder.addWidget(self.comparison_view)
        self.evaluation_view = EvaluationView(evaluation, threshold)
        self.eval_holder.addWidget(self.evaluation_view)
        self.fit_to_screen()
        self._scroll_pending = self.comparison_view is not None   # its warnings at the top, once laid out
        self._scroll_to_comparison()
        return self.evaluation_view

    def _scroll_to_comparison(self, *_) -> None:
        """Bring the comparison to the top of the view (when asked, as soon as the layout lets it scroll)."""
        bar = self.scroll.verticalScrollBar()
        if self._scroll_pending and self.comparison_view is not None and bar.maximum() > 0:
            bar.setValue(self.comparison_view.mapTo(self.scroll.widget(), QPoint(0, 0)).y())
            self._scroll_pending = False

    def available_geometry(self) -> QRect:
        """The part of the screen a window may take (without task bars)."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        return screen.availableGeometry()

    def fit_to_screen(self) -> None:
        """As large as the results want, never larger than the screen (the content scrolls instead)."""
        avail = self.available_geometry()
        frame = 40        # a title bar and borders, which resize() leaves out
        w = min(max(self.width(), 900), avail.width() - 16)
        h = min(max(self.height(), 820), avail.height() - frame)
        self.resize(w, h)
        # move() places the frame, resize() the inside: the whole window within the available area
        self.move(max(min(self.x(), avail.right() - w), avail.left()),
                  max(min(self.y(), avail.bottom() - h - frame), avail.top()))

    def use_new_model(self) -> bool:
        """Switch to the new model, asked once more where the comparison warns; True when switched."""
        if not self.result:
            return False
        warnings = self.comparison_view.warning_texts if self.comparison_view is not None else []
        if warnings:
            ans = QMessageBox.question(self, "Use a model that is worse?",
                                       "\n\n".join(warnings) + "\n\nUse the new model anyway? The current model "
                                       "file is kept either way.", QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            if ans != QMessageBox.Yes:
                return False
        self.accepted_model.emit(self.result["bundle_path"])
        return True

    def reject(self) -> None:
        """Close, Esc and the title bar's close button: close, after stopping a run if the user agrees.

        QDialog's own closeEvent comes here too, so one place decides, and a finished or cancelled run
        never keeps the dialog open.
        """
        if self.running():
            ans = QMessageBox.question(self, "Training is running", "Stop the training run and close?",
                                       QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
            if ans != QMessageBox.Yes:
                return
            self.cancel()
        super().reject()


def _threshold_of(result: dict[str, Any]) -> float:
    """The new model's decision threshold from a training summary (0.5 if it is not there)."""
    if isinstance(result.get("threshold"), (int, float)):
        return float(result["threshold"])
    method = (result.get("card") or {}).get("method") or {}
    if isinstance(method.get("threshold"), (int, float)):
        return float(method["threshold"])
    return 0.5
