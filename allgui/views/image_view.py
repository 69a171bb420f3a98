"""The image view: zoom (wheel), pan (drag), fit; nuclei outlines or translucent fill; cell picking.

Observes :class:`allgui.state.AppState`; clicking a cell calls ``state.select_cell``. Outlines: solid in the
probability colour where the model decides, dashed inside the uncertain band, dotted grey outside the
model's training (no class); each outline's tooltip says which.
"""
from __future__ import annotations

import cv2
import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsPathItem, QGraphicsRectItem

from allgui.imaging import cell_regions, fill_overlay, region_colour, regions_outside
from allgui.state import AppState, Topic
from allgui.views.result_text import checks_text
from trainer.inference.explain import heatmap_rgba
from trainer.inference.results import DECISION_OUTSIDE, ImagePrediction

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


class _CellItem(QGraphicsPathItem):
    """One nucleus outline, pen colour = probability colour."""

    def __init__(self, index: int, contour: np.ndarray) -> None:
        xy = np.asarray(contour, np.float64) + 0.5     # through pixel centres
        path = pg.arrayToQPath(xy[:, 0], xy[:, 1], connect="all")
        path.closeSubpath()
        super().__init__(path)
        self.index = index
        self.contour = contour

    def set_style(self, colour: tuple[int, int, int], width: float, dashed: bool, selected: bool,
                  outside: bool = False) -> None:
        pen = QPen(QColor(*colour))
        pen.setCosmetic(True)                    # width in screen pixels, independent of zoom
        pen.setWidthF(width + (1.5 if selected else 0.0))
        pen.setStyle(Qt.DotLine if outside else Qt.DashLine if dashed else Qt.SolidLine)
        self.setPen(pen)


def outline_tip(pred: ImagePrediction, index: int, p: float | None, outside: bool, threshold: float,
                band: float) -> str:
    """The tooltip of one outline: what it is and the model's result on it."""
    what = f"Cell {index + 1}" if index >= 0 else "This cell"
    if p is None:
        return f"{what}: outlined for review; this model judges the whole field"
    unit = pred.cells[index] if 0 <= index < len(pred.cells) else pred.whole
    if outside:
        return (f"{what}: {DECISION_OUTSIDE} ({checks_text(unit.domain_checks)}): no class; "
                f"its P(ALL) {p:.3f} is not meaningful")
    return f"{what}: {unit.decision(threshold, band)}, P(ALL) {p:.3f} (threshold {threshold:.3f} \u00b1 {band:.3f})"


class ImageView(pg.GraphicsLayoutWidget):
    """Shows the current image of the state with its overlay."""

    cellClicked = Signal(int)

    def __init__(self, state: AppState, parent=None) -> None:
        super().__init__(parent)
        self.state = state
        self.setBackground("#202020")
        self.viewbox: pg.ViewBox = self.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.fill_item = pg.ImageItem(axisOrder="row-major")
        self.fill_item.setZValue(5)
        self.viewbox.addItem(self.image_item)
        self.viewbox.addItem(self.fill_item)
        # the heatmap (explanation) sits over the fill and under the nucleus outlines
        self.heat_item = pg.ImageItem(axisOrder="row-major")
        self.heat_item.setZValue(6)
        self.heat_item.hide()
        self.viewbox.addItem(self.heat_item)
        self.selection_box = QGraphicsRectItem()
        pen = QPen(QColor(20, 20, 20))
        pen.setCosmetic(True)
        pen.setWidthF(1.5)
        pen.setStyle(Qt.DashLine)
        self.selection_box.setPen(pen)
        self.selection_box.setZValue(12)
        self.selection_box.hide()
        self.viewbox.addItem(self.selection_box)
        # frame in the decision colour when the model judges the whole field (cells are grey then)
        self.field_frame = QGraphicsRectItem()
        self.field_frame.setZValue(9)
        self.field_frame.hide()
        self.viewbox.addItem(self.field_frame)
        self.cell_items: list[_CellItem] = []
        self.labels: list[pg.TextItem] = []
        self.image: np.ndarray | None = None
        self._shown_prediction = None
        self.scene().sigMouseClicked.connect(self._on_click)
        for topic, cb in ((Topic.CURRENT, self.refresh_all), (Topic.PREDICTION, self._on_prediction),
                          (Topic.THRESHOLD, self.restyle), (Topic.SELECTION, self.restyle),
                          (Topic.OVERLAY, self.refresh_overlay), (Topic.MODEL, self.refresh_overlay)):
            state.subscribe(topic, cb)
        for topic in (Topic.HEATMAP, Topic.CURRENT, Topic.PREDICTION, Topic.SELECTION, Topic.MODEL):
            state.subscribe(topic, self.refresh_heatmap)

    # ---- content ------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray | None) -> None:
        """Show ``image`` (H, W, 3) uint8 RGB and fit it to the view."""
        self.image = image
        if image is None:
            self.image_item.clear()
        else:
            self.image_item.setImage(image, levels=None, autoLevels=False)  # uint8 RGB: shown as it is
            self.fit()
        self.refresh_overlay()
        self.refresh_heatmap()

    def fit(self) -> None:
        if self.image is not None:
            h, w = self.image.shape[:2]
            self.viewbox.setRange(xRange=(0, w), yRange=(0, h), padding=0.02)

    def refresh_all(self) -> None:
        self.refresh_overlay()

    def _on_prediction(self, path: str) -> None:
        if path == self.state.current:
            self.refresh_overlay()

    def _clear_overlay(self) -> None:
        self.field_frame.hide()
        for it in self.cell_items:
            self.viewbox.removeItem(it)
        for it in self.labels:
            self.viewbox.removeItem(it)
        self.cell_items, self.labels = [], []
        self.fill_item.clear()
        self.selection_box.hide()
        self._shown_prediction = None

    def refresh_overlay(self) -> None:
        """Rebuild the outlines for the current prediction (new image, prediction or mode)."""
        self._clear_overlay()
        pred = self.state.prediction
        if pred is None or self.image is None or tuple(pred.shape) != tuple(self.image.shape[:2]):
            return
        self._shown_prediction = pred
        for index, contour, _ in cell_regions(pred):
            item = _CellItem(index, contour)
            item.setZValue(10)
            self.viewbox.addItem(item)
            self.cell_items.append(item)
            if pred.kind == "field":
                label = pg.TextItem("", anchor=(0, 1), fill=pg.mkBrush(255, 255, 255, 190))
                x, y = contour.min(axis=0)
                label.setPos(float(x), float(y))
                label.setZValue(11)
                self.viewbox.addItem(label)
                self.labels.append(label)
        self.restyle()

    def restyle(self) -> None:
        """Recolour outlines, labels and fill for the current threshold / selection (no geometry)."""
        pred = self._shown_prediction
        if pred is None:
            return
        st = self.state
        threshold, band = st.threshold_for(pred), st.band_for(pred)
        visible = st.overlay_visible
        regions = cell_regions(pred)
        for k, (item, (index, _, p), outside) in enumerate(zip(self.cell_items, regions, regions_outside(pred))):
            colour = region_colour(p, outside, threshold, band)
            uncertain = p is not None and abs(p - threshold) < band
            selected = pred.kind == "field" and index == st.selected_cell
            width = 3.0 if st.overlay_mode == "outline" else 1.5
            item.set_style(colour, width, uncertain, selected, outside)
            item.setToolTip(outline_tip(pred, index, p, outside, threshold, band))
            item.setVisible(visible)
            if k < len(self.labels):
                score = "" if p is None else "  outside" if outside else f"  {p:.2f}"
                self.labels[k].setText(f"#{index + 1}{score}", color=QColor(*colour))
                self.labels[k].setVisible(visible)
        self.field_frame.hide()
        if pred.kind == "field" and not pred.field_by_cells and visible:
            h, w = pred.shape
            outside = pred.in_domain is False
            pen = QPen(QColor(*region_colour(pred.probability, outside, threshold, band)))
            pen.setCosmetic(True)
            pen.setWidthF(5.0)
            uncertain = abs(pred.probability - threshold) < band
            pen.setStyle(Qt.DotLine if outside else Qt.DashLine if uncertain else Qt.SolidLine)
            self.field_frame.setPen(pen)
            self.field_frame.setToolTip(f"The field: {st.decision(pred)}")
            self.field_frame.setRect(0, 0, w, h)
            self.field_frame.show()
        self.selection_box.hide()
        if pred.kind == "field" and 0 <= st.selected_cell < len(pred.cells):
            x, y, w, h = pred.cells[st.selected_cell].bbox
            m = max(3, 0.08 * max(w, h))
            self.selection_box.setRect(x - m, y - m, w + 2 * m, h + 2 * m)
            self.selection_box.show()
        if visible and st.overlay_mode == "fill":
            self.fill_item.setImage(fill_overlay(pred, threshold, st.overlay_opacity, band),
                                    levels=(0, 255), autoLevels=False)
            self.fill_item.setVisible(True)
        else:
            self.fill_item.setVisible(False)

    def refresh_heatmap(self, *_) -> None:
        """Show the current explanation's map of the chosen backbone at its region, or hide it."""
        st = self.state
        ex = st.explanation if st.heatmap_visible and self.image is not None else None
        hm = None if ex is None else ex.heatmaps.get(st.heatmap_backbone)
        if hm is None or tuple(ex.image_shape) != tuple(self.image.shape[:2]):
            self.heat_item.hide()
            return
        self.heat_item.setImage(heatmap_rgba(hm, st.heatmap_opacity), levels=(0, 255), autoLevels=False)
        self.heat_item.setRect(QRectF(*ex.region))
        self.heat_item.show()

    # ---- picking ------------------------------------------------------------------------------
    def cell_at(self, x: float, y: float) -> int | None:
        """Index of the cell whose outline contains image point (x, y), the smallest if nested."""
        best, best_area = None, np.inf
        for item in self.cell_items:
            c = item.contour.reshape(-1, 1, 2).astype(np.float32)
            if cv2.pointPolygonTest(c, (float(x), float(y)), False) >= 0:
                area = cv2.contourArea(c)
                if area < best_area:
                    best, best_area = item.index, area
        return best

    def _on_click(self, event) -> None:
        if event.button() != Qt.LeftButton or self._shown_prediction is None:
            return
        pt = self.viewbox.mapSceneToView(event.scenePos())
        index = self.cell_at(pt.x(), pt.y())
        if self._shown_prediction.kind != "field":
            index = -1
        self.state.select_cell(-1 if index is None else index)
        self.cellClicked.emit(-1 if index is None else index)
