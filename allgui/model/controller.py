"""What the window's Model menu does.

Load a bundle, switch to it with its own thresholds, show its card, an evaluation report, and the Retrain
dialog.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox

from allgui.model.card import ModelCardDialog
from allgui.model.report_view import ReportDialog
from allgui.model.retrain import RetrainDialog
from allgui.workers import ThreadTask
from trainer.util.errors import AllguiError


class ModelMixin:
    """The Model menu of :class:`~allgui.window.main_window.MainWindow`.

    Needs the window's ``state``, ``settings``, ``analysis``, ``side``, ``banner`` and ``model_label``.
    """

    def _no_model(self, reason: str) -> None:
        self.banner.setText((reason + " " if reason else "") +
                            "No model is loaded: use Model \u2192 Load model\u2026 to open a model bundle, or "
                            "Model \u2192 Retrain\u2026 to train one. Images can be viewed meanwhile.")
        self.banner.show()
        self.model_label.setText("no model")

    def load_model_dialog(self) -> None:
        start = self.settings.value("dirs/model", str(Path.home()), str)
        path, _ = QFileDialog.getOpenFileName(self, "Load model bundle", start,
                                              "allgui models (*.allmodel);;All files (*)")
        if path:
            self.settings.setValue("dirs/model", str(Path(path).parent))
            self.load_model(path)

    def load_model(self, path: str) -> ThreadTask:
        """Load a model bundle in the background; on failure the current model stays."""
        self.statusBar().showMessage(f"Loading model {Path(path).name}\u2026")
        return self.analysis.load_model(path)

    def _model_failed(self, path: str, message: str) -> None:
        kept = (f"The current model ({Path(self.model_path).name}) stays loaded."
                if self.model_path else "No model is loaded.")
        self.statusBar().showMessage(f"Could not load {Path(path).name}", 8000)
        QMessageBox.critical(self, "Cannot load model", f"{message}\n\n{kept}")
        if self.predictor is None:
            self._no_model(f"Could not load {Path(path).name}.")

    def set_predictor(self, predictor, path: str | None = None) -> None:
        """Switch to ``predictor``: drop cached results, restore this model's threshold, re-analyse."""
        self.analysis.set_predictor(predictor, path)

    def _on_model_changed(self, predictor, path: str) -> None:
        self._save_threshold()  # the previous model's thresholds, under its key
        card = getattr(predictor, "model_card", {}) or {}
        name = str(card.get("name") or (Path(path).stem if path else "model"))
        ident = f"{name}|{card.get('created', '')}|{Path(path).name if path else ''}"
        self._model_key = hashlib.sha1(ident.encode()).hexdigest()[:16]
        defaults = dict(getattr(predictor, "thresholds", None) or {"any": float(predictor.threshold)})
        saved = {k: float(v) for k in defaults
                 if (v := self.settings.value(f"threshold/{self._model_key}/{k}")) is not None}
        self.state.clear_predictions(model_name=name)
        self.state.set_models(defaults, saved)
        self.side.set_model(predictor)
        self.side.set_training_kinds((card.get("trained_on") or {}).get("image_kinds"))
        self.banner.hide()
        self.model_label.setText(f"model: {name}")
        self.statusBar().showMessage(f"Model {name} loaded", 5000)
        self.modelLoaded.emit(path)

    def reset_threshold(self) -> None:
        self.state.set_threshold(self.state.default_threshold)

    def show_model_card(self) -> None:
        if self.predictor is None:
            QMessageBox.information(self, "Model card", "No model is loaded.")
            return
        ModelCardDialog(getattr(self.predictor, "model_card", {}) or {}, self.model_path, self).exec()

    def open_report_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder written by 'allgui-train evaluate --out'",
                                             str(self.settings.value("dirs/report", "", str)))
        if d:
            self.settings.setValue("dirs/report", d)
            self.show_report(d)

    def show_report(self, path: str) -> ReportDialog | None:
        """Open an evaluation report folder; a clear message when it is not one."""
        try:
            dlg = ReportDialog(path, self)
        except AllguiError as e:
            QMessageBox.warning(self, "Evaluation report", str(e))
            return None
        dlg.show()
        return dlg

    def show_retrain(self) -> RetrainDialog:
        if self.retrain_dialog is None:
            self.retrain_dialog = RetrainDialog(self.model_path, self, output_dir=self.models_dir,
                                                base_config=self.retrain_defaults, settings=self.settings)
            self.retrain_dialog.accepted_model.connect(self.load_model)
            self.retrain_dialog.cases.open_case = lambda: self.review_controller.review.case_path
        self.retrain_dialog.current_model = self.model_path
        self.retrain_dialog.show()
        self.retrain_dialog.raise_()
        return self.retrain_dialog

    def _save_threshold(self) -> None:
        if self._model_key:
            for key, t in self.state.thresholds.items():
                self.settings.setValue(f"threshold/{self._model_key}/{key}", t)
