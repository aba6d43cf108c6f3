"""Map tool to draw the rectangle that matching is restricted to."""
from __future__ import annotations

from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsRectangle
from qgis.gui import QgsMapCanvas, QgsMapToolExtent, QgsRubberBand
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QColor

from .compat import POLYGON


class MatchExtentTool(QgsMapToolExtent):
    """Drag a rectangle; ``extentDrawn`` gives it with the canvas CRS. Keeps it visible until cleared."""

    extentDrawn = pyqtSignal(QgsRectangle, QgsCoordinateReferenceSystem)  # noqa: N815

    def __init__(self, canvas: QgsMapCanvas) -> None:
        super().__init__(canvas)
        self._canvas = canvas
        self.band = QgsRubberBand(canvas, POLYGON)
        self.band.setStrokeColor(QColor(242, 193, 46))
        self.band.setFillColor(QColor(242, 193, 46, 40))
        self.band.setWidth(2)
        self.extentChanged.connect(self._on_extent)

    def _on_extent(self, rect: QgsRectangle) -> None:
        if rect.isNull() or rect.isEmpty():
            return
        self.show_extent(rect)
        self.extentDrawn.emit(QgsRectangle(rect), self._canvas.mapSettings().destinationCrs())

    def show_extent(self, rect: QgsRectangle | None) -> None:
        self.band.reset(POLYGON)
        if rect is not None and not rect.isEmpty():
            self.band.setToGeometry(QgsGeometry.fromRect(rect), None)

    def remove(self) -> None:
        """Unset the tool if active and remove the rubber band from the canvas scene."""
        if self._canvas.mapTool() is self:
            self._canvas.unsetMapTool(self)
        self.clearRubberBand()
        if self.band is not None:
            self.band.reset(POLYGON)
            self._canvas.scene().removeItem(self.band)
            self.band = None
