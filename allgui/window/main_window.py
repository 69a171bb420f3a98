"""The main window: it lays out the views and menus and wires the controllers that do the work.

One controller per concern, each given what it needs in its constructor:

- :class:`~allgui.window.analysis.AnalysisController`: the model in use (its
  :class:`~allgui.model.session.ModelSession`), the queue of images, the image cache;
- :class:`~allgui.window.files.FilesController`: the File menu's images, table export and overlays;
- :class:`~allgui.model.controller.ModelController`: the Model menu, the model's thresholds and band;
- :class:`~allgui.review.cases.CaseController` and :class:`~allgui.review.controller.ReviewController`:
  case files and review mode;
- :class:`~allgui.views.heatmap.HeatmapController`: explanations on demand.

Where to add things:

- a menu entry: ``self.add_action("model", "&Do it\u2026", controller.do_it, "Ctrl+D")`` (menus ``file``,
  ``view``, ``model``, ``review``, ``help``; :meth:`MainWindow.add_menu` makes a new one);
- a panel: ``self.add_panel("Title", widget, Qt.RightDockWidgetArea)``; a panel that shows results
  takes the :class:`~allgui.state.AppState` and subscribes to its topics (:class:`~allgui.state.Topic`);
- work off the GUI thread: a :class:`~allgui.workers.ThreadTask`, or a method of the analysis
  controller when it concerns the model or the queue of images.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from allgui.imaging import counts_text
from allgui.model.controller import ModelController
from allgui.qtutil import ElidedLabel, signals_blocked
from allgui.resources import default_model_path, icon_path
from allgui.review.cases import CaseController
from allgui.review.controller import ReviewController
from allgui.review.review_model import ReviewModel
from allgui.state import AppState, Topic
from allgui.views.batch_table import BatchTable
from allgui.views.heatmap import HeatmapController
from allgui.views.image_view import ImageView
from allgui.views.overlay_bar import OverlayBar
from allgui.views.side_panel import RESEARCH_NOTE, SidePanel
from allgui.window.analysis import AnalysisController
from allgui.window.files import FilesController, skipped_text
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
        c = pred.count(t, st.band_for(pred))
        if not pred.assessable:
            text += "  \u2014 not assessable: no nucleus or white cell was found"
        elif pred.kind == "field" and not pred.field_by_cells:
            text += (f"  \u2014 field judged whole ({len(pred.cells)} white cells found): "
                     f"{st.decision(pred)} at threshold {t:.3f}")
        else:
            kind = "field" if pred.kind == "field" else "single-cell crop"
            text += f"  \u2014 {kind}: {counts_text(c)} at threshold {t:.3f}"
        text += f"  [{pred.model_name}]"
        if pred.seconds:
            text += f"  ({pred.seconds * 1000:.0f} ms)"
    elif st.current in st.errors:
        text += "  \u2014 could not be analysed"
    return text


class MainWindow(QMainWindow):
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

    modelLoaded = Signal(str)        # path of the newly loaded model, once its thresholds are set
    predictionShown = Signal(str)    # path whose result is now on screen

    def __init__(self, model: str | None = None, settings: QSettings | None = None,
                 retrain_defaults: TrainConfig | None = None, models_dir: str | Path | None = None,
                 parent=None, load_now: bool = True) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings()
        self.state = AppState()
        self.analysis = AnalysisController(self.state, self)
        self.heatmaps = HeatmapController(self.state, self.analysis, self)  # explanations, on demand
        self.menus: dict[str, QMenu] = {}

        self.setWindowTitle("allgui \u2014 ALL blast detection (research use only)")
        if icon_path().exists():
            self.setWindowIcon(QIcon(str(icon_path())))
        self.setAcceptDrops(True)
        self.resize(1360, 860)
        self._build_ui()
        self._build_controllers(retrain_defaults, models_dir)
        self._build_menus()
        self._restore_settings()
        self._update_status()

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
            self.models.load_model(model)
        else:
            self.models.no_model(reason)

    def _build_controllers(self, retrain_defaults: TrainConfig | None, models_dir: str | Path | None) -> None:
        """One controller per concern, given what it needs; the views and the analysis exist already."""
        sb = self.statusBar()
        self.review = ReviewModel(self.state)   # the reviews and their case file (Qt-free)
        self.files = FilesController(self, self.state, self.settings, self.analysis, self.review,
                                     self.table.batch, sb)
        # features cached per user: a retrain re-extracts only new images
        self.models = ModelController(self, self.state, self.settings, self.analysis, self.side, self.banner,
                                      self.model_label, sb,
                                      retrain_defaults or TrainConfig(cache_dir=default_cache_dir()),
                                      Path(models_dir) if models_dir else None, lambda: self.review.case_path)
        self.models.modelLoaded.connect(self.modelLoaded)
        self.side.thresholdReset.connect(self.models.reset_threshold)
        self._connect()
        # review mode after the window's own subscriptions: it redraws once the window has
        self.cases = CaseController(self, self.review, self.state, self.settings, sb, self.files.open_files)
        # an image whose picture the analysis or the display could read (a failed analysis may still be read)
        self.reviews = ReviewController(self, self.review, self.state, self.settings, self.table, sb, self.cases,
                                        readable=lambda p: self.analysis.cached(p) is not None)
        self.analysis.modelChanged.connect(self.reviews.set_session)
        self.analysis.imageReady.connect(lambda p: p == self.state.current and self.reviews.refresh())
        self.add_panel("Review", self.reviews.bar, Qt.BottomDockWidgetArea, "reviewDock")

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
        # the status line is a widget of the bar's layout, not its message: the progress bar and the
        # labels beside it take their own place and never cover it; it elides what does not fit
        self.status_label = ElidedLabel()
        self.status_label.setObjectName("statusText")
        sb.addWidget(self.status_label, 1)
        self.status_progress = QProgressBar()
        self.status_progress.setMaximumWidth(160)
        self.status_progress.hide()
        self.model_label = ElidedLabel("no model")
        self.model_label.setMinimumWidth(120)
        self.model_label.setMaximumWidth(280)
        self.model_label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)
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
        files = self.files
        self.act_open = self.add_action(f, "&Open images\u2026", files.open_dialog, QKeySequence.Open)
        self.act_open_folder = self.add_action(f, "Open &folder\u2026", files.open_folder_dialog, "Ctrl+Shift+O")
        f.addMenu(files.recent_menu)
        f.addSeparator()
        self.act_export = self.add_action(f, "&Export table as CSV\u2026", files.export_csv_dialog, "Ctrl+E")
        self.act_save_overlays = self.add_action(f, "&Save overlay images\u2026", files.save_overlays_dialog,
                                                 "Ctrl+S")
        f.addActions(list(self.cases.actions))
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
        m, models = self.add_menu("model", "&Model"), self.models
        self.act_load_model = self.add_action(m, "&Load model\u2026", models.load_model_dialog, "Ctrl+L")
        self.act_card = self.add_action(m, "Model &card\u2026", models.show_model_card, "Ctrl+I")
        self.act_retrain = self.add_action(m, "&Retrain\u2026", models.show_retrain, "Ctrl+R")
        self.act_report = self.add_action(m, "Evaluation &report\u2026", models.open_report_dialog)
        self.menus["review"] = self.reviews.menu
        self.menuBar().addMenu(self.reviews.menu)
        self.add_action(self.add_menu("help", "&Help"), "&About allgui", self.about)

    def _connect(self) -> None:
        """Listen to the state and to the analysis controller."""
        for topic, slot in ((Topic.CURRENT, self._on_current), (Topic.PREDICTION, self._on_prediction),
                            (Topic.THRESHOLD, self._update_status), (Topic.OVERLAY, self._on_overlay),
                            (Topic.IMAGES, self._update_status), (Topic.HEATMAP, self._on_heatmap)):
            self.state.subscribe(topic, slot)
        a = self.analysis
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

    def showEvent(self, event) -> None:  # Qt's name
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            if self.settings.value("window/state") is None:
                QTimer.singleShot(0, lambda: self.resizeDocks(list(self._docks), [550, 390], Qt.Horizontal))

    def closeEvent(self, event) -> None:  # Qt's name
        if not self.models.may_close():   # a retraining runs and the user keeps it
            event.ignore()
            return
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("overlay/opacity", self.state.overlay_opacity)
        s.setValue("overlay/mode", self.state.overlay_mode)
        self.models.save_settings()
        s.sync()
        self.analysis.shutdown()
        self.reviews.close()
        self.heatmaps.shutdown()
        super().closeEvent(event)

    def keyPressEvent(self, event) -> None:  # Qt's name
        """A key no shortcut took, because the window is not active yet (a dialog just closed): its shortcut.

        Until the window system hands the focus back, Qt matches no window shortcut, and a decision key
        typed right after the reviewer's name would be lost.
        """
        if QApplication.activeWindow() is not self:
            pressed = QKeySequence(event.keyCombination())
            for action in self.findChildren(QAction):
                if (action.isEnabled() and action.shortcutContext() == Qt.WindowShortcut
                        and any(s.matches(pressed) == QKeySequence.ExactMatch for s in action.shortcuts())):
                    action.trigger()
                    event.accept()
                    return
        super().keyPressEvent(event)

    def dragEnterEvent(self, event) -> None:  # Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # Qt's name
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.files.open_files(paths)

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
        self.status_label.setText(status_text(self.state))
        if hasattr(self, "files"):   # the image count, and what the folders held that is not an image
            n, skipped = len(self.state.paths), len(self.files.skipped)
            self._docks[0].setWindowTitle(f"Images ({n}" + (f"; {skipped_text(skipped)})" if skipped else ")")
                                          if n else "Images")

    def about(self) -> None:
        QMessageBox.about(self, "About allgui",
                          "<b>allgui</b> \u2014 ALL blast detection in blood-smear images: nucleus segmentation, "
                          "DenseNet-121 + ResNet-34 features, a weighted vote of five classifiers and a "
                          f"calibrated probability.<p><b>{RESEARCH_NOTE}</b></p>")
