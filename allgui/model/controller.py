"""What the window's Model menu does: the model controller.

Load a bundle, switch to it with its own thresholds and uncertainty bands, one per model key (kept per
model by its :class:`~allgui.model.session.ModelSession`), show its card, an evaluation report, and the
Retrain dialog.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal
from PySide6.QtWidgets import QFileDialog, QLabel, QMessageBox, QStatusBar, QWidget

from allgui.model.card import ModelCardDialog
from allgui.model.report_view import ReportDialog
from allgui.model.retrain import RetrainDialog
from allgui.model.session import ModelSession
from allgui.state import AppState
from allgui.workers import ThreadTask
from trainer.config import TrainConfig
from trainer.util.errors import AllguiError


class ModelController(QObject):
    """The Model menu and the model in use: its thresholds, band, card, reports and retraining.

    Parameters
    ----------
    parent : QWidget
        The window: parent of the dialogs.
    state : AppState
        Gets the model's thresholds and band; its predictions are dropped when the model changes.
    settings : QSettings
        The thresholds and band the user set, per model, and the dialogs' folders.
    analysis : AnalysisController
        Loads models (``load_model``), holds the one in use (``session``) and says when it changes
        (``modelChanged(session)``, connected here).
    side : SidePanel
        Shows the model's ROC and the shares of image kinds it was trained on.
    banner, model_label : QLabel
        The window's "no model" banner and the status bar's model name.
    status_bar : QStatusBar
        Where short confirmations go.
    retrain_defaults : TrainConfig
        The config the Retrain dialog starts from.
    models_dir : path, optional
        Where retrained models are written (default: the user data folder).
    case_path : callable, optional
        The open case file's path, or None (the Retrain dialog offers its reviews).

    Signals
    -------
    modelLoaded(path)
        A model is in use and its thresholds are set (``path`` "" when it has no file).
    """

    modelLoaded = Signal(str)

    def __init__(self, parent: QWidget, state: AppState, settings: QSettings, analysis, side, banner: QLabel,
                 model_label: QLabel, status_bar: QStatusBar, retrain_defaults: TrainConfig,
                 models_dir: Path | None = None, case_path: Callable[[], Path | None] = lambda: None) -> None:
        super().__init__(parent)
        self.dialog_parent = parent
        self.state, self.settings, self.analysis, self.side = state, settings, analysis, side
        self.banner, self.model_label, self.status_bar = banner, model_label, status_bar
        self.retrain_defaults = retrain_defaults
        self.models_dir = models_dir
        self.case_path = case_path
        self.retrain_dialog: RetrainDialog | None = None
        self._shown: ModelSession | None = None  # the model whose thresholds the state holds
        analysis.modelChanged.connect(self._on_model_changed)
        analysis.modelFailed.connect(self._model_failed)

    @property
    def session(self) -> ModelSession | None:
        """The model in use (None before one is loaded)."""
        return self.analysis.session

    # ---- loading ------------------------------------------------------------------------------
    def no_model(self, reason: str = "") -> None:
        """Say that no model is loaded (``reason``: why) and how to get one."""
        self.banner.setText((reason + " " if reason else "") +
                            "No model is loaded: use Model \u2192 Load model\u2026 to open a model bundle, or "
                            "Model \u2192 Retrain\u2026 to train one. Images can be viewed meanwhile.")
        self.banner.show()
        self.model_label.setText("no model")

    def load_model_dialog(self) -> None:
        start = self.settings.value("dirs/model", str(Path.home()), str)
        path, _ = QFileDialog.getOpenFileName(self.dialog_parent, "Load model bundle", start,
                                              "allgui models (*.allmodel);;All files (*)")
        if path:
            self.settings.setValue("dirs/model", str(Path(path).parent))
            self.load_model(path)

    def load_model(self, path: str) -> ThreadTask:
        """Load a model bundle in the background; on failure the current model stays."""
        self.status_bar.showMessage(f"Loading model {Path(path).name}\u2026")
        return self.analysis.load_model(path)

    def set_predictor(self, predictor, path: str | None = None) -> None:
        """Switch to ``predictor``: drop cached results, restore this model's threshold, re-analyse."""
        self.analysis.set_predictor(predictor, path)

    def _model_failed(self, path: str, message: str) -> None:
        current = self.analysis.model_path
        kept = f"The current model ({Path(current).name}) stays loaded." if current else "No model is loaded."
        self.status_bar.showMessage(f"Could not load {Path(path).name}", 8000)
        QMessageBox.critical(self.dialog_parent, "Cannot load model", f"{message}\n\n{kept}")
        if self.analysis.predictor is None:
            self.no_model(f"Could not load {Path(path).name}.")

    def _on_model_changed(self, session: ModelSession) -> None:
        self.save_settings(self._shown)  # the previous model's thresholds and band, under its identity
        self._shown = session
        self.state.clear_predictions(model_name=session.name)
        self.state.set_models(session.default_thresholds, session.saved_thresholds(self.settings),
                              session.bands, session.saved_bands(self.settings))
        self.side.set_model(session.predictor, session)
        self.side.set_training_kinds(session.training_kinds)
        self.banner.hide()
        self.model_label.setText(f"model: {session.name}")
        self.status_bar.showMessage(f"Model {session.name} loaded", 5000)
        self.modelLoaded.emit(session.path or "")

    def reset_threshold(self) -> None:
        """The active model's own threshold and band."""
        self.state.set_threshold(self.state.default_threshold)
        self.state.set_band(self.state.default_band)

    # ---- settings -----------------------------------------------------------------------------
    def save_settings(self, session: ModelSession | None = None) -> None:
        """Keep the thresholds and bands the user set for ``session`` (default: the model in use)."""
        session = session if session is not None else self._shown
        if session is not None:
            session.save_thresholds(self.settings, self.state.thresholds)
            session.save_bands(self.settings, self.state.bands)

    def may_close(self) -> bool:
        """False when a retraining runs and the user keeps it (the window stays open)."""
        return self.retrain_dialog is None or not self.retrain_dialog.running() or self.retrain_dialog.close()

    # ---- dialogs ------------------------------------------------------------------------------
    def show_model_card(self) -> None:
        session = self.session
        if session is None:
            QMessageBox.information(self.dialog_parent, "Model card", "No model is loaded.")
            return
        ModelCardDialog(session.card, session.path, self.dialog_parent).exec()

    def open_report_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self.dialog_parent, "Folder written by 'allgui-train evaluate --out'",
                                             str(self.settings.value("dirs/report", "", str)))
        if d:
            self.settings.setValue("dirs/report", d)
            self.show_report(d)

    def show_report(self, path: str) -> ReportDialog | None:
        """Open an evaluation report folder; a clear message when it is not one."""
        try:
            dlg = ReportDialog(path, self.dialog_parent)
        except AllguiError as e:
            QMessageBox.warning(self.dialog_parent, "Evaluation report", str(e))
            return None
        dlg.show()
        return dlg

    def show_retrain(self) -> RetrainDialog:
        if self.retrain_dialog is None:
            self.retrain_dialog = RetrainDialog(self.analysis.model_path, self.dialog_parent,
                                                output_dir=self.models_dir, base_config=self.retrain_defaults,
                                                settings=self.settings)
            self.retrain_dialog.accepted_model.connect(self.load_model)
            self.retrain_dialog.cases.open_case = self.case_path
        self.retrain_dialog.current_model = self.analysis.model_path
        self.retrain_dialog.show()
        self.retrain_dialog.raise_()
        return self.retrain_dialog
