"""The main window: wires the state, the views, the predictor and the background tasks together.

Predictions run one image at a time on the inference thread (current image first); results are
cached in the state, so moving the threshold, changing the selection or switching images back
never recomputes features.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSettings, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from allgui.batch_table import BatchTable
from allgui.image_view import ImageView
from allgui.imaging import draw_overlay, thumbnail
from allgui.model_card import ModelCardDialog
from allgui.report_view import ReportDialog
from allgui.resources import default_model_path, icon_path
from allgui.retrain import RetrainDialog
from allgui.side_panel import RESEARCH_NOTE, SidePanel
from allgui.state import AppState
from allgui.workers import ThreadTask
from trainer.config import TrainConfig
from trainer.io.imageio import IMAGE_SUFFIXES, read_image
from trainer.util.atomic import atomic_write
from trainer.util.errors import AllguiError

MAX_RECENT = 10
IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ");;All files (*)"


def _predict_one(predictor, path: str, progress, cancel, emit) -> tuple[str, np.ndarray, Any, np.ndarray, float]:
    """Inference-thread work: read, predict, make a thumbnail. Returns (path, image, prediction, thumb, s)."""
    t0 = time.perf_counter()
    image = read_image(path)
    pred = predictor.predict(image, path=path)
    return path, image, pred, thumbnail(image), time.perf_counter() - t0


def _load_predictor(path: str, progress, cancel, emit):
    from trainer.inference.predictor import Predictor

    predictor = Predictor.from_bundle(path)
    predictor.warm_up()  # here, off the GUI thread: the first image opened gets a warm network
    return predictor


def _save_overlays(items: list[tuple[str, Any, float]], folder: str, band: float, mode: str,
                   opacity: float, progress, cancel, emit) -> int:
    """Write an overlay PNG per (path, prediction, threshold) item; returns how many."""
    import cv2

    n = 0
    used: set[str] = set()
    for i, (path, pred, threshold) in enumerate(items):
        if cancel():
            break
        img = draw_overlay(read_image(path), pred, threshold, band, mode, opacity)
        out = Path(folder) / _overlay_name(path, used)
        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"Could not encode the overlay of {Path(path).name}")
        atomic_write(out, lambda fh, data=png.tobytes(): fh.write(data), fsync=False)
        n += 1
        progress((i + 1) / len(items), out.name)
    return n


def _overlay_name(path: str, used: set[str]) -> str:
    """``<stem>_overlay.png``, numbered when two images share a stem (e.g. from sub-folders)."""
    stem, k = Path(path).stem, 1
    name = f"{stem}_overlay.png"
    while name in used:
        k += 1
        name = f"{stem}_{k}_overlay.png"
    used.add(name)
    return name


def list_images(folder: str | Path) -> list[str]:
    """Image files directly in ``folder`` and its sub-folders, sorted by path."""
    root = Path(folder)
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class MainWindow(QMainWindow):
    """allgui's window.

    ``model``: bundle to load (None = the bundled default model, "" = none). ``settings``: where
    preferences persist (default QSettings()). ``retrain_defaults``: TrainConfig the Retrain dialog
    starts from. ``models_dir``: where retrained models are written (default: user data folder).
    """

    modelLoaded = Signal(str)        # path of the newly loaded model
    predictionShown = Signal(str)    # path whose result is now on screen

    def __init__(self, model: str | None = None, settings: QSettings | None = None,
                 retrain_defaults: TrainConfig | None = None, models_dir: str | Path | None = None,
                 parent=None) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings()
        if retrain_defaults is None:  # features cached per user: a retrain re-extracts only new images
            from trainer.config import default_cache_dir
            retrain_defaults = TrainConfig(cache_dir=default_cache_dir())
        self.retrain_defaults = retrain_defaults
        self.models_dir = Path(models_dir) if models_dir else None
        self.state = AppState()
        self.predictor = None
        self.model_path: str | None = None
        self._model_key = ""
        self._generation = 0                 # bumps on model change: late results are dropped
        self._task: ThreadTask | None = None
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._explicit: set[str] = set()     # paths the user opened one by one (errors get a box)
        self._batch_errors: list[str] = []
        self.last_seconds: float | None = None
        self.retrain_dialog: RetrainDialog | None = None
        self._model_loading = False
        self._load_seq = 0                   # numbers model loads; only the latest may switch
        self._closed = False                 # after close no new analysis starts

        self.setWindowTitle("allgui \u2014 ALL blast detection (research use only)")
        if icon_path().exists():
            self.setWindowIcon(QIcon(str(icon_path())))
        self.setAcceptDrops(True)
        self.resize(1360, 860)
        self._build_ui()
        self._build_menus()
        self.state.subscribe("current", self._on_current)
        self.state.subscribe("prediction", self._on_prediction)
        self.state.subscribe("threshold", self._on_threshold)
        self.state.subscribe("overlay", self._on_overlay)
        self.state.subscribe("images", self._update_status)
        self._restore_settings()

        reason = ""
        if model is None:
            model = str(default_model_path())
            if not Path(model).exists():
                reason = f"The bundled default model was not found ({Path(model).name})."
                model = ""
        if model:
            self.load_model(model)
        else:
            self._no_model(reason)

    # ---- UI -----------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        st = self.state
        central = QWidget()
        v = QVBoxLayout(central)
        v.setContentsMargins(4, 4, 4, 4)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#fde2e1; color:#7a0000; padding:6px; border:1px solid #e0a0a0;")
        self.banner.hide()
        v.addWidget(self.banner)
        bar = QHBoxLayout()
        self.overlay_box = QCheckBox("Overlay (O)")
        self.overlay_box.setChecked(st.overlay_visible)
        self.overlay_box.toggled.connect(lambda on: st.set_overlay(visible=on))
        self.mode_box = QComboBox()
        self.mode_box.addItems(["outline", "fill"])
        self.mode_box.currentTextChanged.connect(lambda m: st.set_overlay(mode=m))
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(st.overlay_opacity * 100))
        self.opacity.setMinimumWidth(90)
        self.opacity.setMaximumWidth(140)
        self.opacity.setToolTip("Fill opacity")
        self.opacity.valueChanged.connect(lambda x: st.set_overlay(opacity=x / 100))
        fit = QPushButton("Fit (F)")
        fit.clicked.connect(lambda: self.image_view.fit())
        for w in (self.overlay_box, QLabel("Style"), self.mode_box, QLabel("Fill opacity"), self.opacity, fit):
            bar.addWidget(w)
        bar.addStretch(1)
        v.addLayout(bar)
        self.image_view = ImageView(st)
        v.addWidget(self.image_view, 1)
        self.setCentralWidget(central)

        self.side = SidePanel(st)
        self.side.thresholdReset.connect(self.reset_threshold)
        dock = QDockWidget("Result", self)
        dock.setObjectName("resultDock")
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(self.side)
        scroll.setMinimumWidth(390)
        dock.setWidget(scroll)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(Qt.RightDockWidgetArea, dock)

        self.table = BatchTable(st)
        tdock = QDockWidget("Images", self)
        tdock.setObjectName("imagesDock")
        tdock.setWidget(self.table)
        self.table.setMinimumWidth(320)
        tdock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable)
        self.addDockWidget(Qt.LeftDockWidgetArea, tdock)
        self._docks = (tdock, dock)
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

    def _action(self, menu, text: str, slot, shortcut=None, checkable: bool = False) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.WindowShortcut)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        menu.addAction(a)
        return a

    def _build_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self.act_open = self._action(f, "&Open images\u2026", self.open_dialog, QKeySequence.Open)
        self.act_open_folder = self._action(f, "Open &folder\u2026", self.open_folder_dialog, "Ctrl+Shift+O")
        self.recent_menu = f.addMenu("Open &recent")
        f.addSeparator()
        self.act_export = self._action(f, "&Export table as CSV\u2026", self.export_csv_dialog, "Ctrl+E")
        self.act_save_overlays = self._action(f, "&Save overlay images\u2026", self.save_overlays_dialog, "Ctrl+S")
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.Quit)
        vmenu = mb.addMenu("&View")
        self.act_overlay = self._action(vmenu, "Show &overlay", lambda on: self.state.set_overlay(visible=on), "O",
                                        checkable=True)
        self.act_overlay.setChecked(True)
        self._action(vmenu, "Outline / &fill", self.toggle_fill, "Shift+O")
        self._action(vmenu, "&Fit image", lambda: self.image_view.fit(), "F")
        vmenu.addSeparator()
        self.act_next = self._action(vmenu, "&Next image", lambda: self.state.step(1), "PgDown")
        self.act_prev = self._action(vmenu, "&Previous image", lambda: self.state.step(-1), "PgUp")
        self.act_next.setShortcuts([QKeySequence("PgDown"), QKeySequence("Ctrl+Right")])
        self.act_prev.setShortcuts([QKeySequence("PgUp"), QKeySequence("Ctrl+Left")])
        m = mb.addMenu("&Model")
        self.act_load_model = self._action(m, "&Load model\u2026", self.load_model_dialog, "Ctrl+L")
        self.act_card = self._action(m, "Model &card\u2026", self.show_model_card, "Ctrl+I")
        self.act_retrain = self._action(m, "&Retrain\u2026", self.show_retrain, "Ctrl+R")
        self.act_report = self._action(m, "Evaluation &report\u2026", self.open_report_dialog)
        h = mb.addMenu("&Help")
        self._action(h, "&About allgui", self.about)
        self._rebuild_recent()

    # ---- settings -----------------------------------------------------------------------------
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

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        if not self._docks_sized:
            self._docks_sized = True
            if self.settings.value("window/state") is None:
                QTimer.singleShot(0, lambda: self.resizeDocks(list(self._docks), [480, 400], Qt.Horizontal))

    def closeEvent(self, event) -> None:  # noqa: N802
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
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        super().closeEvent(event)

    def _save_threshold(self) -> None:
        if self._model_key:
            for key, t in self.state.thresholds.items():
                self.settings.setValue(f"threshold/{self._model_key}/{key}", t)

    # ---- model --------------------------------------------------------------------------------
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
        self._model_loading = True
        self._load_seq += 1
        seq = self._load_seq  # only the latest request may switch the model (loads can overlap)
        task = ThreadTask(_load_predictor, str(path), pool=QThreadPool.globalInstance(), name="load-model")
        task.finished.connect(lambda pred, p=str(path), n=seq: n == self._load_seq and self.set_predictor(pred, p))
        task.failed.connect(lambda msg, p=str(path), n=seq: n == self._load_seq and self._model_failed(p, msg))
        self._model_task = task
        return task.start()

    def _model_failed(self, path: str, message: str) -> None:
        self._model_loading = False
        kept = (f"The current model ({Path(self.model_path).name}) stays loaded."
                if self.model_path else "No model is loaded.")
        self.statusBar().showMessage(f"Could not load {Path(path).name}", 8000)
        QMessageBox.critical(self, "Cannot load model", f"{message}\n\n{kept}")
        if self.predictor is None:
            self._no_model(f"Could not load {Path(path).name}.")

    def set_predictor(self, predictor, path: str | None = None) -> None:
        """Switch to ``predictor``: drop cached results, restore this model's threshold, re-analyse."""
        self._model_loading = False
        self._load_seq += 1  # a load still in flight must not switch back to an older model
        if self._task is not None:
            self._task.cancel()
        self._save_threshold()
        self.predictor = predictor
        self.model_path = str(path) if path else None
        self._generation += 1
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
        self._task = None
        self.modelLoaded.emit(self.model_path or "")
        self._analyse_next()

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
        self.retrain_dialog.current_model = self.model_path
        self.retrain_dialog.show()
        self.retrain_dialog.raise_()
        return self.retrain_dialog

    # ---- opening images -----------------------------------------------------------------------
    def open_dialog(self) -> None:
        start = self.settings.value("dirs/images", str(Path.home()), str)
        paths, _ = QFileDialog.getOpenFileNames(self, "Open images", start, IMAGE_FILTER)
        if paths:
            self.open_files(paths)

    def open_folder_dialog(self) -> None:
        start = self.settings.value("dirs/folder", str(Path.home()), str)
        d = QFileDialog.getExistingDirectory(self, "Open folder of images", start)
        if d:
            self.open_folder(d)

    def open_files(self, paths: list[str]) -> None:
        """Open image files (added to the list; the first becomes current)."""
        paths = [str(Path(p)) for p in paths]
        if not paths:
            return
        folders = [p for p in paths if Path(p).is_dir()]
        files = [p for p in paths if not Path(p).is_dir()]
        for d in folders:
            self.open_folder(d)
        if not files:
            return
        self.settings.setValue("dirs/images", str(Path(files[0]).parent))
        self._explicit.update(files)
        for p in files:
            self._add_recent(p)
        self.state.add_images(files)
        self._analyse_next()

    def open_folder(self, folder: str) -> bool:
        """Open every image in ``folder`` as the batch; False (with a message) when there is none."""
        if not Path(folder).is_dir():
            QMessageBox.warning(self, "Open folder", f"{folder} is not a folder.")
            return False
        paths = list_images(folder)
        if not paths:
            QMessageBox.warning(self, "Open folder",
                                f"No images found in {folder}.\n\nReadable types: {', '.join(IMAGE_SUFFIXES)}")
            return False
        self.settings.setValue("dirs/folder", str(folder))
        self._add_recent(str(folder))
        self._batch_errors = []
        self.state.set_images(paths)
        self._analyse_next()
        return True

    def _add_recent(self, path: str) -> None:
        rec = [p for p in (self.settings.value("recent", [], list) or []) if p != path]
        rec.insert(0, path)
        self.settings.setValue("recent", rec[:MAX_RECENT])
        self._rebuild_recent()

    def _rebuild_recent(self) -> None:
        self.recent_menu.clear()
        rec = self.settings.value("recent", [], list) or []
        for p in rec:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _=False, p=p: self.open_files([p]))
        self.recent_menu.setEnabled(bool(rec))

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.open_files(paths)

    # ---- analysis -----------------------------------------------------------------------------
    def _analyse_next(self) -> None:
        """Start the next pending prediction (current image first), one at a time."""
        if self.predictor is None or self._closed or (self._task is not None and self._task.running):
            return
        todo = self.state.pending()
        if not todo:
            self.status_progress.hide()
            self._report_batch_errors()
            return
        path = todo[0]
        n = len(self.state.paths)
        done = n - len(todo)
        if n > 1:
            self.status_progress.setRange(0, n)
            self.status_progress.setValue(done)
            self.status_progress.setFormat(f"analysing {done + 1}/{n}")
            self.status_progress.show()
        gen = self._generation
        task = ThreadTask(_predict_one, self.predictor, path, name="predict")
        task.finished.connect(lambda res, g=gen: self._on_predicted(res, g))
        task.failed.connect(lambda msg, p=path, g=gen: self._on_predict_failed(p, msg, g))
        task.done.connect(self._analyse_next)
        self._task = task
        task.start()

    def _on_predicted(self, result, generation: int) -> None:
        path, image, pred, thumb, secs = result
        if generation != self._generation:
            return
        self.last_seconds = secs
        self._cache_image(path, image)
        self.table.batch.set_thumbnail(path, thumb)
        self.state.set_prediction(path, pred)

    def _on_predict_failed(self, path: str, message: str, generation: int) -> None:
        if generation != self._generation:
            return
        already_shown = path in self.state.errors      # the display read failed first
        self.state.set_error(path, message)
        if path in self._explicit:
            self._explicit.discard(path)
            QMessageBox.warning(self, "Cannot analyse image", message)
        elif not already_shown:
            self._batch_errors.append(message)

    def _report_batch_errors(self) -> None:
        if self._batch_errors:
            errs, self._batch_errors = self._batch_errors, []
            more = f"\n\u2026 and {len(errs) - 5} more" if len(errs) > 5 else ""
            QMessageBox.warning(self, "Some images could not be analysed",
                                f"{len(errs)} image(s) could not be analysed (marked 'error' in the table):\n\n"
                                + "\n".join(errs[:5]) + more)

    def _cache_image(self, path: str, image: np.ndarray) -> None:
        self._images[path] = image
        self._images.move_to_end(path)
        while len(self._images) > 24:
            self._images.popitem(last=False)

    def _on_current(self) -> None:
        path = self.state.current
        if path is None:
            self.image_view.set_image(None)
            self._update_status()
            return
        self._analyse_next()                 # start inference first; it reads the file on its own thread
        image = self._images.get(path)
        if image is None:  # also after a failed analysis: the picture may still be readable
            try:
                image = read_image(path)
                self._cache_image(path, image)
            except Exception as exc:  # noqa: BLE001 - shown to the user
                from allgui.workers import error_message

                if path not in self.state.errors:  # report each unreadable file once
                    msg = error_message(exc)
                    self.state.set_error(path, msg)
                    if path in self._explicit:
                        self._explicit.discard(path)
                        QMessageBox.warning(self, "Cannot open image", msg)
        self.image_view.set_image(image)
        self._update_status()
        if path in self.state.predictions:
            self.predictionShown.emit(path)

    def _on_prediction(self, path: str) -> None:
        if path == self.state.current:
            if path in self.state.predictions and self.image_view.image is None and path in self._images:
                self.image_view.set_image(self._images[path])
            self._update_status()
            if path in self.state.predictions:
                self.predictionShown.emit(path)

    def _on_threshold(self) -> None:
        self._update_status()

    def _on_overlay(self) -> None:
        st = self.state
        for w, val in ((self.overlay_box, st.overlay_visible), (self.act_overlay, st.overlay_visible)):
            if w.isChecked() != val:
                w.blockSignals(True)
                w.setChecked(val)
                w.blockSignals(False)
        if self.mode_box.currentText() != st.overlay_mode:
            self.mode_box.blockSignals(True)
            self.mode_box.setCurrentText(st.overlay_mode)
            self.mode_box.blockSignals(False)
        if self.opacity.value() != round(st.overlay_opacity * 100):
            self.opacity.blockSignals(True)
            self.opacity.setValue(round(st.overlay_opacity * 100))
            self.opacity.blockSignals(False)

    def toggle_fill(self) -> None:
        self.state.set_overlay(mode="fill" if self.state.overlay_mode == "outline" else "outline")

    def _update_status(self) -> None:
        st = self.state
        if not st.paths:
            self.statusBar().showMessage("Open an image (Ctrl+O), a folder (Ctrl+Shift+O) or drop files here.")
            return
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
        self.statusBar().showMessage(text)

    # ---- export -------------------------------------------------------------------------------
    def export_csv_dialog(self) -> None:
        if not self.state.paths:
            QMessageBox.information(self, "Export", "There are no images to export.")
            return
        start = self.settings.value("dirs/export", str(Path.home()), str)
        path, _ = QFileDialog.getSaveFileName(self, "Export table as CSV", str(Path(start) / "allgui_results.csv"),
                                              "CSV (*.csv)")
        if path:
            self.settings.setValue("dirs/export", str(Path(path).parent))
            try:
                n = self.table.batch.export_csv(path)
            except OSError as exc:
                QMessageBox.critical(self, "Export", f"Could not write {path}: {exc.strerror or exc}")
                return
            except Exception as exc:  # never fail silently: the user asked for a file
                from allgui.workers import error_message
                QMessageBox.critical(self, "Export", f"Could not write {path}: {error_message(exc)}")
                return
            self.statusBar().showMessage(f"Exported {n} rows to {path}", 8000)

    def save_overlays_dialog(self) -> None:
        if not self.state.predictions:
            QMessageBox.information(self, "Save overlays", "No analysed images yet.")
            return
        start = self.settings.value("dirs/export", str(Path.home()), str)
        d = QFileDialog.getExistingDirectory(self, "Save overlay images to", start)
        if d:
            self.settings.setValue("dirs/export", d)
            self.save_overlays(d)

    def save_overlays(self, folder: str) -> ThreadTask:
        st = self.state
        items = [(p, st.predictions[p], st.threshold_for(st.predictions[p])) for p in st.paths
                 if p in st.predictions]
        task = ThreadTask(_save_overlays, items, folder, st.band, st.overlay_mode,
                          st.overlay_opacity, pool=QThreadPool.globalInstance(), name="save-overlays")
        task.finished.connect(lambda n: self.statusBar().showMessage(f"Saved {n} overlay images to {folder}", 8000))
        task.failed.connect(lambda msg: QMessageBox.critical(self, "Save overlays", msg))
        self._overlay_task = task
        return task.start()

    def about(self) -> None:
        QMessageBox.about(self, "About allgui",
                          "<b>allgui</b> \u2014 ALL blast detection in blood-smear images: nucleus segmentation, "
                          "DenseNet-121 + ResNet-34 features, a weighted vote of five classifiers and a "
                          f"calibrated probability.<p><b>{RESEARCH_NOTE}</b></p>")
