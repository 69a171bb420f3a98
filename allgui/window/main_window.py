"""The main window: views, menus and dialogs laid out around an analysis controller.

The analysis work goes to an :class:`~allgui.window.analysis.AnalysisController`.

Where to add things:

- a menu entry: ``self.add_action("model", "&Do it\u2026", self.do_it, "Ctrl+D")`` (menus ``file``,
  ``view``, ``model``, ``help``; :meth:`MainWindow.add_menu` makes a new one);
- a panel: ``self.add_panel("Title", widget, Qt.RightDockWidgetArea)``; a panel that shows results
  takes the :class:`~allgui.state.AppState` and subscribes to its topics (:class:`~allgui.state.Topic`);
- work off the GUI thread: a :class:`~allgui.workers.ThreadTask`, or a method of the controller
  when it concerns the model or the queue of images.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from allgui.model.controller import ModelMixin
from allgui.model.retrain import RetrainDialog
from allgui.qtutil import signals_blocked
from allgui.resources import default_model_path, icon_path
from allgui.review.controller import ReviewController
from allgui.state import AppState, Topic
from allgui.views.batch_table import BatchTable
from allgui.views.heatmap import HeatmapController
from allgui.views.image_view import ImageView
from allgui.views.overlay_bar import OverlayBar
from allgui.views.side_panel import RESEARCH_NOTE, SidePanel
from allgui.window.analysis import AnalysisController
from allgui.window.files import FilesMixin
from trainer.config import TrainConfig, default_cache_dir


def status_text(st: AppState) -> str:
    """The status-bar line for the state: which image, what was found, at which threshold."""
    if not st.paths:
        return "Open an image (Ctrl+O), a folder (Ctrl+Shift+O) or drop files here."
    i = st.paths.index(st.current) + 1 if st.current in st.paths else 0
    name = Path(st.current).name if st.current else ""
    pred = st.prediction
    text = f"{i}/{len(st.paths)}  {name}"
    if pred is not None:
        t = st.threshold_for(pred)
        c = pred.count(t, st.band)
        if not pred.assessable:
            text += "  \u2014 not assessable: no nucleus or white cell was found"
        elif pred.kind == "field" and not pred.field_by_cells:
            text += (f"  \u2014 field judged whole ({len(pred.cells)} white cells found): "
                     f"{st.decide(pred.probability, pred)} at threshold {t:.3f}")
        else:
            kind = "field" if pred.kind == "field" else "single-cell crop"
            text += (f"  \u2014 {kind}: {c['ALL blast']} ALL blast, {c['uncertain, review']} uncertain, "
                     f"{c['normal']} normal at threshold {t:.3f}")
        text += f"  [{pred.model_name}]"
        if pred.seconds:
            text += f"  ({pred.seconds * 1000:.0f} ms)"
    elif st.current in st.errors:
        text += "  \u2014 could not be analysed"
    return text


class MainWindow(FilesMixin, ModelMixin, QMainWindow):
    """allgui's window.

    Parameters
    ----------
    model : str, optional
        Bundle to load (None = the bundled default model, "" = none).
    settings : QSettings, optional
        Where preferences persist (default ``QSettings()``).
    retrain_defaults : TrainConfig, optional
        The config the Retrain dialog starts from.
    models_dir : path, optional
        Where retrained models are written (default: the user data folder).
    """

    modelLoaded = Signal(str)        # path of the newly loaded model
    predictionShown = Signal(str)    # path whose result is now on screen

    def __init__(self, model: str | None = None, settings: QSettings | None = None,
                 retrain_defaults: TrainConfig | None = None, models_dir: str | Path | None = None,
                 parent=None, load_now: bool = True) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings()
        # features cached per user: a retrain re-extracts only new images
        self.retrain_defaults = retrain_defaults or TrainConfig(cache_dir=default_cache_dir())
        self.models_dir = Path(models_dir) if models_dir else None
        self.state = AppState()
        self.analysis = AnalysisController(self.state, self)
        self.heatmaps = HeatmapController(self.state, self.analysis, self)  # explanations, on demand
        self._model_key = ""
        self.retrain_dialog: RetrainDialog | None = None
        self.menus: dict[str, QMenu] = {}

        self.setWindowTitle("allgui \u2014 ALL blast detection (research use only)")
        if icon_path().exists():
            self.setWindowIcon(QIcon(str(icon_path())))
        self.setAcceptDrops(True)
        self.resize(1360, 860)
        self._build_ui()
        self._build_menus()
        self._connect()
        self.review_controller = ReviewController(self)   # review mode: its panel, menu and case file
        self._restore_settings()

        self._initial_model = model
        if load_now:
            self.load_initial_model()

    def load_initial_model(self) -> None:
        """Load the model given at start (the bundled default without one).

        ``allgui`` calls it once the window has painted (``load_now=False``): loading imports torch on a
        worker thread, which would otherwise hold the interpreter while the window waits to paint.
        """
        model, reason = self._initial_model, ""
        if model is None:
            model = str(default_model_path())
            if not Path(model).exists():
                reason = f"The bundled default model was not found ({Path(model).name})."
                model = ""
        if model:
            self.load_model(model)
        else:
            self._no_model(reason)

    @property
    def predictor(self):
        """The predictor in use (None before a model is loaded)."""
        return self.analysis.predictor

    @property
    def model_path(self) -> str | None:
        """The loaded bundle's path (None for a predictor set without one)."""
        return self.analysis.model_path

    # ---- layout --------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        central = QWidget()
        v = QVBoxLayout(central)
        v.setContentsMargins(4, 4, 4, 4)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#fde2e1; color:#7a0000; padding:6px; border:1px solid #e0a0a0;")
        self.banner.hide()
        v.addWidget(self.banner)
        self.overlay_bar = OverlayBar(self.state)
        v.addWidget(self.overlay_bar)
        self.image_view = ImageView(self.state)
        self.overlay_bar.fitRequested.connect(self.image_view.fit)
        v.addWidget(self.image_view, 1)
        self.setCentralWidget(central)

        self.side = SidePanel(self.state)
        self.side.thresholdReset.connect(self.reset_threshold)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(self.side)
        scroll.setMinimumWidth(390)
        self.table = BatchTable(self.state)
        self.table.setMinimumWidth(320)
        self._docks = (self.add_panel("Images", self.table, Qt.LeftDockWidgetArea, "imagesDock"),
                       self.add_panel("Result", scroll, Qt.RightDockWidgetArea, "resultDock"))
        self._docks_sized = False

        sb = self.statusBar()
        self.status_progress = QProgressBar()
        self.status_progress.setMaximumWidth(180)
        self.status_progress.hide()
        self.model_label = QLabel("no model")
        note = QLabel(RESEARCH_NOTE)
        note.setStyleSheet("color:#7a5b00; font-weight:bold;")
        sb.addPermanentWidget(self.status_progress)
        sb.addPermanentWidget(self.model_label)
        sb.addPermanentWidget(note)

    def add_panel(self, title: str, widget: QWidget, area=Qt.RightDockWidgetArea, name: str = "") -> QDockWidget:
        """Dock ``widget`` as a movable panel titled ``title`` (``name``: its key in saved layouts)."""
        dock = QDockWidget(title, self)
        dock.setObjectName(name or f"{title.lower()}Dock")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def add_menu(self, key: str, title: str) -> QMenu:
        """A menu-bar menu, made once and kept in ``self.menus[key]``."""
        if key not in self.menus:
            self.menus[key] = self.menuBar().addMenu(title)
        return self.menus[key]

    def add_action(self, menu: str | QMenu, text: str, slot, shortcut=None, checkable: bool = False) -> QAction:
        """Add an entry to a menu (a ``self.menus`` key or a menu) that calls ``slot``."""
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.WindowShortcut)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        (self.menus[menu] if isinstance(menu, str) else menu).addAction(a)
        return a

    def _build_menus(self) -> None:
        f = self.add_menu("file", "&File")
        self.act_open = self.add_action(f, "&Open images\u2026", self.open_dialog, QKeySequence.Open)
        self.act_open_folder = self.add_action(f, "Open &folder\u2026", self.open_folder_dialog, "Ctrl+Shift+O")
        self.recent_menu = f.addMenu("Open &recent")
        f.addSeparator()
        self.act_export = self.add_action(f, "&Export table as CSV\u2026", self.export_csv_dialog, "Ctrl+E")
        self.act_save_overlays = self.add_action(f, "&Save overlay images\u2026", self.save_overlays_dialog,
                                                 "Ctrl+S")
        f.addSeparator()
        self.add_action(f, "&Quit", self.close, QKeySequence.Quit)
        v = self.add_menu("view", "&View")
        self.act_overlay = self.add_action(v, "Show &overlay", lambda on: self.state.set_overlay(visible=on), "O",
                                           checkable=True)
        self.act_overlay.setChecked(True)
        self.add_action(v, "Outline / &fill", self.toggle_fill, "Shift+O")
        self.add_action(v, "&Fit image", lambda: self.image_view.fit(), "F")
        self.act_heatmap = self.add_action(v, "Show &heatmap", lambda on: self.state.set_heatmap(visible=on), "H",
                                           checkable=True)
        v.addSeparator()
        self.act_next = self.add_action(v, "&Next image", lambda: self.state.step(1), "PgDown")
        self.act_prev = self.add_action(v, "&Previous image", lambda: self.state.step(-1), "PgUp")
        self.act_next.setShortcuts([QKeySequence("PgDown"), QKeySequence("Ctrl+Right")])
        self.act_prev.setShortcuts([QKeySequence("PgUp"), QKeySequence("Ctrl+Left")])
        m = self.add_menu("model", "&Model")
        self.act_load_model = self.add_action(m, "&Load model\u2026", self.load_model_dialog, "Ctrl+L")
        self.act_card = self.add_action(m, "Model &card\u2026", self.show_model_card, "Ctrl+I")
        self.act_retrain = self.add_action(m, "&Retrain\u2026", self.show_retrain, "Ctrl+R")
        self.act_report = self.add_action(m, "Evaluation &report\u2026", self.open_report_dialog)
        self.add_action(self.add_menu("help", "&Help"), "&About allgui", self.about)
        self._rebuild_recent()

    def _connect(self) -> None:
        """Listen to the state and to the analysis controller."""
        for topic, slot in ((Topic.CURRENT, self._on_current), (Topic.PREDICTION, self._on_prediction),
                            (Topic.THRESHOLD, self._update_status), (Topic.OVERLAY, self._on_overlay),
                            (Topic.IMAGES, self._update_status), (Topic.HEATMAP, self._on_heatmap)):
            self.state.subscribe(topic, slot)
        a = self.analysis
        a.modelChanged.connect(self._on_model_changed)
        a.modelFailed.connect(self._model_failed)
        a.thumbnailReady.connect(self.table.batch.set_thumbnail)
        a.imageFailed.connect(self._on_image_failed)
        a.imageReady.connect(self._on_image_read)
        a.batchFailed.connect(self._report_batch_errors)
        a.progress.connect(self._on_progress)

    # ---- settings -------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geo = s.value("window/geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        ws = s.value("window/state")
        if ws is not None:
            self.restoreState(ws)
        op = s.value("overlay/opacity")
        if op is not None:
            self.state.set_overlay(opacity=float(op))
        mode = s.value("overlay/mode")
        if mode in ("outline", "fill"):
            self.state.set_overlay(mode=mode)
        band = s.value("threshold/band")
        if band is not None:
            self.state.set_band(float(band))

    def showEvent(self, event) -> None:  # Qt's name
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            if self.settings.value("window/state") is None:
                QTimer.singleShot(0, lambda: self.resizeDocks(list(self._docks), [520, 400], Qt.Horizontal))

    def closeEvent(self, event) -> None:  # Qt's name
        if self.retrain_dialog is not None and self.retrain_dialog.running():
            if not self.retrain_dialog.close():
                event.ignore()
                return
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("overlay/opacity", self.state.overlay_opacity)
        s.setValue("overlay/mode", self.state.overlay_mode)
        s.setValue("threshold/band", self.state.band)
        self._save_threshold()
        s.sync()
        self.analysis.shutdown()
        self.review_controller.close()
        self.heatmaps.shutdown()
        super().closeEvent(event)

    # ---- results --------------------------------------------------------------------------------
    def _on_progress(self, done: int, total: int) -> None:
        if total <= 0:
            self.status_progress.hide()
            return
        self.status_progress.setRange(0, total)
        self.status_progress.setValue(done)
        self.status_progress.setFormat(f"analysing {done + 1}/{total}")
        self.status_progress.show()

    def _on_image_failed(self, path: str, message: str, step: str) -> None:
        title = "Cannot open image" if step == "open" else "Cannot analyse image"
        QMessageBox.warning(self, title, message)

    def _report_batch_errors(self, errors: list[str]) -> None:
        more = f"\n\u2026 and {len(errors) - 5} more" if len(errors) > 5 else ""
        QMessageBox.warning(self, "Some images could not be analysed",
                            f"{len(errors)} image(s) could not be analysed (marked 'error' in the table):\n\n"
                            + "\n".join(errors[:5]) + more)

    def _on_current(self) -> None:
        path = self.state.current
        if path is None:
            self.image_view.set_image(None)
            self._update_status()
            return
        # the analysis controller, subscribed first, has started reading the file on its own thread
        # None until the picture is read, off this thread (imageReady)
        self.image_view.set_image(self.analysis.request_image(path))
        self._update_status()
        if path in self.state.predictions:
            self.predictionShown.emit(path)

    def _on_image_read(self, path: str) -> None:
        if path == self.state.current and self.image_view.image is None:
            self.image_view.set_image(self.analysis.cached(path))

    def _on_prediction(self, path: str) -> None:
        if path == self.state.current:
            image = self.analysis.cached(path)
            if path in self.state.predictions and self.image_view.image is None and image is not None:
                self.image_view.set_image(image)
            self._update_status()
            if path in self.state.predictions:
                self.predictionShown.emit(path)

    def _on_overlay(self) -> None:
        if self.act_overlay.isChecked() != self.state.overlay_visible:
            with signals_blocked(self.act_overlay):
                self.act_overlay.setChecked(self.state.overlay_visible)

    def _on_heatmap(self) -> None:
        if self.act_heatmap.isChecked() != self.state.heatmap_visible:
            with signals_blocked(self.act_heatmap):
                self.act_heatmap.setChecked(self.state.heatmap_visible)

    def toggle_fill(self) -> None:
        self.state.set_overlay(mode="fill" if self.state.overlay_mode == "outline" else "outline")

    def _update_status(self) -> None:
        self.statusBar().showMessage(status_text(self.state))

    def about(self) -> None:
        QMessageBox.about(self, "About allgui",
                          "<b>allgui</b> \u2014 ALL blast detection in blood-smear images: nucleus segmentation, "
                          "DenseNet-121 + ResNet-34 features, a weighted vote of five classifiers and a "
                          f"calibrated probability.<p><b>{RESEARCH_NOTE}</b></p>")
