"""Interactive matching: the user clicks a point on the reference, the engine finds its partner in the target
by a local search around the current model, and the pair becomes a tie point (the residual table re-fits).

:func:`match_point` composes engine stages on two small chips (read -> prepare -> CFOG -> masked ZNCC with a
sub-pixel peak, :func:`engine.scene.chip_match`); it knows nothing of Qt and runs in a :class:`QgsTask`
(:class:`PointMatchTask`). :class:`AddTiePointTool` is the map tool; :func:`add_tiepoint` writes the feature.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsTask,
    QgsVectorLayer,
)
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QColor

from .compat import LINE

TEMPLATE = 64   # px of the reference template around the click
RADIUS = 16     # px searched around the model's prediction
BORDER = 8      # context the descriptor sees around a chip


@dataclass(frozen=True)
class PointMatch:
    ref_xy: tuple[float, float]   # reference pixels
    tgt_xy: tuple[float, float]   # target pixels (its own grid)
    score: float                  # ZNCC at the peak
    distinct: float               # peak minus the best other peak
    predicted_xy: tuple[float, float]  # where the model put it

    @property
    def shift_px(self) -> float:
        """How far the match is from the model's prediction (target pixels)."""
        return math.hypot(self.tgt_xy[0] - self.predicted_xy[0], self.tgt_xy[1] - self.predicted_xy[1])

    @property
    def confidence(self) -> float:
        """A plain 0..1 reading of the peak (score x distinctiveness); not the engine's calibrated confidence."""
        return float(max(0.0, min(1.0, self.score)) * max(0.0, min(1.0, 2.0 * self.distinct)))


class _Offset:
    """``model`` on chips: chip-reference pixels -> chip-target pixels."""

    def __init__(self, model, ref_off: np.ndarray, tgt_off: np.ndarray) -> None:
        self.model, self.ref_off, self.tgt_off = model, ref_off, tgt_off

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(np.asarray(xy, float) + self.ref_off)) - self.tgt_off


def match_point(reference: str, target: str, ref_xy: tuple[float, float], model, template: int = TEMPLATE,
                radius: int = RADIUS, ref_modality: str = "auto", tgt_modality: str = "auto") -> PointMatch:
    """Find the target partner of the reference pixel ``ref_xy`` within ``radius`` px of ``model(ref_xy)``.

    ``model`` maps reference pixels to target pixels ((N, 2) -> (N, 2)). Raises the engine's InputError when
    the point is too close to an edge and NotEnoughMatchesError when no peak is found.
    """
    import torch

    from ..engine.descriptors.base import get_descriptor
    from ..engine.errors import InputError, NotEnoughMatchesError
    from ..engine.io.raster import Window, open_raster_info, read_bands
    from ..engine.preprocess import prepare
    from ..engine.scene import chip_match

    ref_info, tgt_info = open_raster_info(reference), open_raster_info(target)
    half = template // 2 + BORDER + 2
    cx, cy = float(ref_xy[0]), float(ref_xy[1])
    x0, y0 = int(math.floor(cx)) - half, int(math.floor(cy)) - half
    size = 2 * half + 1
    if x0 < 0 or y0 < 0 or x0 + size > ref_info.width or y0 + size > ref_info.height:
        raise InputError("The point is too close to the edge of the reference.",
                         f"Click at least {half} px inside the reference raster.")
    ref_data, ref_valid = read_bands(reference, window=Window(x0, y0, size, size))
    corners = np.array([[x0, y0], [x0 + size, y0], [x0, y0 + size], [x0 + size, y0 + size]], float)
    tc = np.asarray(model(corners))
    pad = radius + BORDER + 4
    tx0, ty0 = int(math.floor(tc[:, 0].min())) - pad, int(math.floor(tc[:, 1].min())) - pad
    tx1, ty1 = int(math.ceil(tc[:, 0].max())) + pad, int(math.ceil(tc[:, 1].max())) + pad
    tx0, ty0 = max(0, tx0), max(0, ty0)
    tx1, ty1 = min(tgt_info.width, tx1), min(tgt_info.height, ty1)
    if tx1 - tx0 < template or ty1 - ty0 < template:
        raise InputError("The model puts this point outside the target.", "Click where both rasters overlap.")
    mov_data, mov_valid = read_bands(target, window=Window(tx0, ty0, tx1 - tx0, ty1 - ty0))
    pr = prepare(ref_data, ref_valid, ref_info.dtypes[0], ref_info.descriptions, "reference", reference,
                 ref_modality, None, True)
    pt = prepare(mov_data, mov_valid, tgt_info.dtypes[0], tgt_info.descriptions, "target", target,
                 tgt_modality, None, True)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))[None, None]

    local = _Offset(model, np.array([x0, y0], float), np.array([tx0, ty0], float))
    centre = np.array([[cx - x0, cy - y0]])
    with torch.no_grad():
        fm = chip_match(tensor(pr.image.astype(np.float32)), tensor(pr.valid), tensor(pt.image.astype(np.float32)),
                        tensor(pt.valid), local, centre, template, radius, get_descriptor("cfog"), border=BORDER)
    if len(fm) == 0 or not np.isfinite(fm.score[0]) or fm.score[0] <= 0:
        raise NotEnoughMatchesError("No partner found around the model's prediction.",
                                    "Try a point on a clear structure (edge, corner, field boundary).")
    predicted = np.asarray(model(np.array([[cx, cy]])))[0]
    tgt = fm.mov_xy[0] + np.array([tx0, ty0])
    return PointMatch((cx, cy), (float(tgt[0]), float(tgt[1])), float(fm.score[0]), float(fm.distinct[0]),
                      (float(predicted[0]), float(predicted[1])))


class PointMatchTask(QgsTask):
    """:func:`match_point` in the background; ``result`` (PointMatch) or ``error`` (str) when done."""

    def __init__(self, reference: str, target: str, ref_xy: tuple[float, float], model) -> None:
        super().__init__("HSSCL: matching one tie point", QgsTask.Flag.CanCancel)
        self.args = (reference, target, ref_xy, model)
        self.result: PointMatch | None = None
        self.error = ""

    def run(self) -> bool:
        from ..engine.errors import HSSCLError

        try:
            self.result = match_point(*self.args)
        except HSSCLError as err:
            self.error = str(err)
        except Exception as err:  # never let a click take QGIS down
            self.error = f"Matching failed: {err}"
        return self.result is not None


def _number(value, default=float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def add_tiepoint(layer: QgsVectorLayer, match: PointMatch, ref_grid, source_crs: QgsCoordinateReferenceSystem
                 ) -> int | None:
    """Add ``match`` to the tie point layer (edit buffer) at its reference position; returns the feature id."""
    if not (layer.isEditable() or layer.startEditing()):
        return None
    xy = ref_grid.pixel_to_map(np.array([match.ref_xy]))[0]
    point = QgsPointXY(float(xy[0]), float(xy[1]))
    if source_crs.isValid() and layer.crs().isValid() and source_crs != layer.crs():
        point = QgsCoordinateTransform(source_crs, layer.crs(), QgsProject.instance()).transform(point)
    feature = QgsFeature(layer.fields())
    feature.setGeometry(QgsGeometry.fromPointXY(point))
    values = {"ref_x": match.ref_xy[0], "ref_y": match.ref_xy[1], "tgt_x": match.tgt_xy[0],
              "tgt_y": match.tgt_xy[1], "score": match.score, "inlier": 1, "check": 0}
    for name, value in values.items():
        if layer.fields().indexOf(name) >= 0:
            feature[name] = value
    layer.beginEditCommand("Add tie point")
    ok = layer.addFeature(feature)
    layer.endEditCommand()
    return feature.id() if ok else None


class AddTiePointTool(QgsMapTool):
    """Click on the reference: ``clicked(map point, canvas CRS)``; the dock runs the search and shows the partner
    with :meth:`show_pair` (a line from the partner's uncorrected position to the click). Press near an end of an
    existing tie point (its reference position or its target position) and drag: ``moved(fid, end, point, CRS)``
    with ``end`` "reference" or "target" when released. ``ends_fn()`` gives the draggable ends:
    ``[(fid, end, QgsPointXY in the canvas CRS), ...]`` (set by the dock)."""

    clicked = pyqtSignal(QgsPointXY, QgsCoordinateReferenceSystem)
    moved = pyqtSignal(int, str, QgsPointXY, QgsCoordinateReferenceSystem)
    TOLERANCE_PX = 8

    def __init__(self, canvas) -> None:
        super().__init__(canvas)
        self._canvas = canvas
        self.ends_fn: Callable[[], list[tuple[int, str, QgsPointXY]]] = lambda: []
        self._drag: tuple[int, str, QgsPointXY] | None = None
        self.band = QgsRubberBand(canvas, LINE)
        self.band.setColor(QColor(255, 40, 200))
        self.band.setWidth(2)
        self.drag_band = QgsRubberBand(canvas, LINE)
        self.drag_band.setColor(QColor(255, 200, 0))
        self.drag_band.setWidth(2)

    def nearest_end(self, point: QgsPointXY) -> tuple[int, str, QgsPointXY] | None:
        """The draggable end within TOLERANCE_PX screen pixels of ``point`` (canvas CRS), nearest first."""
        tolerance = self.TOLERANCE_PX * self._canvas.mapUnitsPerPixel()
        best, best_d = None, tolerance
        for fid, end, xy in self.ends_fn():
            d = math.hypot(xy.x() - point.x(), xy.y() - point.y())
            if d <= best_d:
                best, best_d = (fid, end, xy), d
        return best

    def canvasPressEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self._drag = self.nearest_end(self.toMapCoordinates(event.pos()))

    def canvasMoveEvent(self, event) -> None:  # noqa: N802 (Qt name)
        if self._drag is not None:
            self.drag_band.reset(LINE)
            self.drag_band.addPoint(self._drag[2], False)
            self.drag_band.addPoint(self.toMapCoordinates(event.pos()), True)

    def canvasReleaseEvent(self, event) -> None:  # noqa: N802 (Qt name)
        point = self.toMapCoordinates(event.pos())
        crs = self._canvas.mapSettings().destinationCrs()
        drag, self._drag = self._drag, None
        self.drag_band.reset(LINE)
        if drag is not None:
            moved = math.hypot(point.x() - drag[2].x(), point.y() - drag[2].y())
            if moved > 0.5 * self._canvas.mapUnitsPerPixel():
                self.moved.emit(int(drag[0]), drag[1], QgsPointXY(point), crs)
                return
        self.clicked.emit(QgsPointXY(point), crs)

    def show_pair(self, start: QgsPointXY | None, end: QgsPointXY | None) -> None:
        self.band.reset(LINE)
        if start is not None and end is not None:
            self.band.addPoint(start, False)
            self.band.addPoint(end, True)

    def remove(self) -> None:
        if self._canvas.mapTool() is self:
            self._canvas.unsetMapTool(self)
        for name in ("band", "drag_band"):
            band = getattr(self, name)
            if band is not None:
                band.reset(LINE)
                self._canvas.scene().removeItem(band)
                setattr(self, name, None)
