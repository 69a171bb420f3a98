"""What the window's File menu does: the files controller.

Open images, folders and recent files (also by drag and drop), export the table as CSV and save overlay
images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
from PySide6.QtCore import QObject, QSettings, QThreadPool
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox, QStatusBar, QWidget

from allgui.imaging import draw_overlay
from allgui.state import AppState
from allgui.workers import ThreadTask, error_message
from trainer.io.imageio import IMAGE_SUFFIXES, read_image
from trainer.util.atomic import atomic_write

MAX_RECENT = 10
CASE_FILE_ENDINGS = (".sqlite", ".sqlite-wal", ".sqlite-shm", ".sqlite-journal")
IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ");;All files (*)"


def _save_overlays(items: list[tuple[str, Any, float, float]], folder: str, mode: str,
                   opacity: float, progress, cancel, emit) -> int:
    """Write an overlay PNG per (path, prediction, threshold, band) item; returns how many."""
    n = 0
    used: set[str] = set()
    for i, (path, pred, threshold, band) in enumerate(items):
        if cancel():
            break
        img = draw_overlay(read_image(path), pred, threshold, band, mode, opacity)
        out = Path(folder) / _overlay_name(path, used)
        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"Could not encode the overlay of {Path(path).name}")
        data = png.tobytes()
        atomic_write(out, lambda fh, data=data: fh.write(data), fsync=False)
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
    return list_folder(folder)[0]


def list_folder(folder: str | Path) -> tuple[list[str], list[str]]:
    """(image files, other files) in ``folder`` and its sub-folders, each sorted by path.

    Hidden files and the app's own case files (and SQLite's companions of them) are not counted as others.
    """
    images, others = [], []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(str(p))
        elif not p.name.startswith(".") and not p.name.endswith(CASE_FILE_ENDINGS):
            others.append(str(p))
    return images, others


def skipped_text(n: int) -> str:
    """'3 files that are not images skipped'."""
    return f"{n} files that are not images skipped" if n != 1 else "1 file that is not an image skipped"


class FilesController(QObject):
    """The File menu's images: open them (files, folders, recent, dropped), export the table, save overlays.

    Parameters
    ----------
    parent : QWidget
        The window: parent of the dialogs.
    state : AppState
        Where opened images go.
    settings : QSettings
        Recent files and the folders the dialogs start in.
    analysis : AnalysisController
        Told about opened images (``open``) and started on them (``start``).
    review : ReviewModel
        The open case: a folder opened while it holds reviews joins it, or it is closed, as the user says.
    batch
        The batch table's model (``export_csv(path)``).
    status_bar : QStatusBar
        Where short confirmations go.
    """

    def __init__(self, parent: QWidget, state: AppState, settings: QSettings, analysis, review, batch,
                 status_bar: QStatusBar) -> None:
        super().__init__(parent)
        self.dialog_parent = parent
        self.state = state
        self.settings = settings
        self.analysis = analysis
        self.review = review
        self.batch = batch
        self.status_bar = status_bar
        self.recent_menu = QMenu("Open &recent", parent)
        #: files in the folders opened that are not images (left out; the window says how many)
        self.skipped: list[str] = []
        self._overlay_task: ThreadTask | None = None
        self._rebuild_recent()

    def open_dialog(self) -> None:
        start = self.settings.value("dirs/images", str(Path.home()), str)
        paths, _ = QFileDialog.getOpenFileNames(self.dialog_parent, "Open images", start, IMAGE_FILTER)
        if paths:
            self.open_files(paths)

    def open_folder_dialog(self) -> None:
        start = self.settings.value("dirs/folder", str(Path.home()), str)
        d = QFileDialog.getExistingDirectory(self.dialog_parent, "Open folder of images", start)
        if d:
            self.open_folder(d)

    def open_files(self, paths: list[str], make_current: bool = True) -> None:
        """Open image files, added to those open and to their case (the first becomes current)."""
        paths = [str(Path(p)) for p in paths]
        if not paths:
            return
        folders = [p for p in paths if Path(p).is_dir()]
        files = [p for p in paths if not Path(p).is_dir()]
        for d in folders:
            self.open_folder(d)
        if not files:
            return
        self.analysis.open(files, explicit=True)
        # the analysis of the first starts here, before the rest below
        self.state.add_images(files, make_current=make_current)
        self.analysis.start()
        self.settings.setValue("dirs/images", str(Path(files[0]).parent))
        for p in files:
            self._add_recent(p)

    def open_folder(self, folder: str) -> bool:
        """Open every image in ``folder`` as the batch; False (with a message) when there is none."""
        if not Path(folder).is_dir():
            QMessageBox.warning(self.dialog_parent, "Open folder", f"{folder} is not a folder.")
            return False
        paths, others = list_folder(folder)
        if not paths:
            QMessageBox.warning(self.dialog_parent, "Open folder",
                                f"No images found in {folder}.\n\nReadable types: {', '.join(IMAGE_SUFFIXES)}")
            return False
        choice = self._add_or_replace(folder, len(paths))
        if choice == "cancel":
            return False
        self.settings.setValue("dirs/folder", str(folder))
        self._add_recent(str(folder))
        self.analysis.open(paths)
        self.skipped = others if choice != "add" else self.skipped + others
        if choice == "add":
            self.state.add_images(paths)
        else:
            if choice == "own":
                self.review.close_case()   # its reviews stay in its file; the folder's own case follows
            self.state.set_images(paths)
        self.analysis.start()
        if others:
            names = ", ".join(Path(p).name for p in others[:3]) + (", \u2026" if len(others) > 3 else "")
            self.status_bar.showMessage(f"Opened {len(paths)} images of {Path(folder).name}; "
                                        f"{skipped_text(len(others))} ({names})", 15000)
        return True

    def _add_or_replace(self, folder: str, n: int) -> str:
        """What a folder's images do: "replace", "add", "own" or "cancel".

        They replace the open images, unless those hold reviews of the open case: then the user chooses
        whether they join that case ("add"), open on their "own" (the case closes) or not at all.
        """
        if not self.state.paths or not self.review.has_reviews():
            return "replace"
        return self.ask_add_to_case(self.review.store.name, folder, n)

    def ask_add_to_case(self, case: str, folder: str, n: int) -> str:
        """Ask whether a folder's images join the open case: "add", "own" or "cancel"."""
        box = QMessageBox(QMessageBox.Question, "Open folder",
                          f"Case “{case}” is open, with reviews.\n\nAdd the {n} image(s) of "
                          f"{Path(folder).name} to this case, or open them on their own? The case's reviews "
                          "stay in its file either way.", parent=self.dialog_parent)
        add = box.addButton(f"Add to case “{case}”", QMessageBox.AcceptRole)
        own = box.addButton("Open on their own", QMessageBox.DestructiveRole)
        box.addButton(QMessageBox.Cancel)
        box.setDefaultButton(add)
        box.exec()
        return "add" if box.clickedButton() is add else "own" if box.clickedButton() is own else "cancel"

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

    def export_csv_dialog(self) -> None:
        if not self.state.paths:
            QMessageBox.information(self.dialog_parent, "Export", "There are no images to export.")
            return
        start = self.settings.value("dirs/export", str(Path.home()), str)
        path, _ = QFileDialog.getSaveFileName(self.dialog_parent, "Export table as CSV",
                                              str(Path(start) / "allgui_results.csv"), "CSV (*.csv)")
        if path:
            self.settings.setValue("dirs/export", str(Path(path).parent))
            try:
                n = self.batch.export_csv(path)
            except OSError as exc:
                QMessageBox.critical(self.dialog_parent, "Export", f"Could not write {path}: {exc.strerror or exc}")
                return
            except Exception as exc:  # never fail silently: the user asked for a file
                QMessageBox.critical(self.dialog_parent, "Export", f"Could not write {path}: {error_message(exc)}")
                return
            self.status_bar.showMessage(f"Exported {n} rows to {path}", 8000)

    def save_overlays_dialog(self) -> None:
        if not self.state.predictions:
            QMessageBox.information(self.dialog_parent, "Save overlays", "No analysed images yet.")
            return
        start = self.settings.value("dirs/export", str(Path.home()), str)
        d = QFileDialog.getExistingDirectory(self.dialog_parent, "Save overlay images to", start)
        if d:
            self.settings.setValue("dirs/export", d)
            self.save_overlays(d)

    def save_overlays(self, folder: str) -> ThreadTask:
        st = self.state
        items = [(p, pred, st.threshold_for(pred), st.band_for(pred)) for p in st.paths
                 if (pred := st.predictions.get(p)) is not None]
        task = ThreadTask(_save_overlays, items, folder, st.overlay_mode,
                          st.overlay_opacity, pool=QThreadPool.globalInstance(), name="save-overlays")
        task.finished.connect(lambda n: self.status_bar.showMessage(f"Saved {n} overlay images to {folder}", 8000))
        task.failed.connect(lambda msg: QMessageBox.critical(self.dialog_parent, "Save overlays", msg))
        self._overlay_task = task  # kept alive while it runs
        return task.start()
