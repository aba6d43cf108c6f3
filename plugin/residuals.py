"""Review of tie points as in QGIS's Georeferencer: a residual table docked beside the map.

One row per tie point (point id, residual, role: inlier / check / outlier, score), sortable, its selection
linked both ways with the layer's selection. Deleting rows deletes the points (in the layer's edit buffer);
toggling "use" sets the ``inlier`` field. Every change re-fits the model to the points in use (least squares,
milliseconds: :func:`refit`) and updates the residuals, the RMSE and the model at once. *Apply edited tie
points* in the panel writes the result through ``hsscl:apply``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from qgis.core import QgsVectorLayer
from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("point", "residual (px)", "role", "score")
ROLE_COLOURS = {"inlier": None, "check": QColor(60, 110, 200), "outlier": QColor(150, 150, 150)}


@dataclass(frozen=True)
class Refit:
    """Result of :func:`refit`: the model fitted to the points in use and every point's residual."""

    kind: str
    ids: np.ndarray            # feature ids (N,)
    residual_px: np.ndarray    # (N,) reference pixels; NaN when no model
    role: tuple[str, ...]      # "inlier" (used in the fit), "check" (held out), "outlier" (not used)
    rmse_fit_px: float
    rmse_check_px: float | None
    n_used: int
    error: str = ""
    model: object = None       # the fitted engine Transform (reference px -> target px), None on error


def _number(value, default=float("nan")) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def read_points(layer: QgsVectorLayer) -> dict[str, np.ndarray]:
    """The tie point fields of every feature (edits and deletions in the edit buffer included)."""
    rows = [(f.id(), _number(f["ref_x"]), _number(f["ref_y"]), _number(f["tgt_x"]), _number(f["tgt_y"]),
             bool(_number(f["inlier"], 1.0)) if "inlier" in f.fields().names() else True,
             bool(_number(f["check"], 0.0)) if "check" in f.fields().names() else False,
             _number(f["score"]) if "score" in f.fields().names() else float("nan"))
            for f in layer.getFeatures()]
    cols = list(zip(*rows)) if rows else [()] * 8
    names = ("id", "ref_x", "ref_y", "tgt_x", "tgt_y", "inlier", "check", "score")
    return {n: np.asarray(c) for n, c in zip(names, cols)}


def refit(points: dict[str, np.ndarray], kind: str) -> Refit:
    """Least-squares fit of ``kind`` to the inliers that are not check points; residuals of all points.

    Residuals are in reference pixels (target pixels divided by the pixel-size ratio of an affine fit),
    as in the engine's report. ``kind`` "auto" uses affine (the panel passes the engine's chosen model).
    """
    from ..engine.errors import HSSCLError
    from ..engine.geometry.transforms import Affine, fit_model, min_points

    ids = np.asarray(points.get("id", ()), dtype=np.int64)
    n = len(ids)
    role = tuple("outlier" if not points["inlier"][i] else ("check" if points["check"][i] else "inlier")
                 for i in range(n))
    kind = "affine" if kind in ("", "auto", None) else kind
    ref = np.stack([points["ref_x"], points["ref_y"]], 1).astype(float) if n else np.zeros((0, 2))
    tgt = np.stack([points["tgt_x"], points["tgt_y"]], 1).astype(float) if n else np.zeros((0, 2))
    finite = np.isfinite(ref).all(1) & np.isfinite(tgt).all(1)
    use = np.array([r == "inlier" for r in role], bool) & finite
    check = np.array([r == "check" for r in role], bool) & finite
    nan = np.full(n, np.nan)
    if use.sum() < min_points(kind):
        return Refit(kind, ids, nan, role, float("nan"), None, int(use.sum()),
                     f"{int(use.sum())} points in use: a {kind} model needs at least {min_points(kind)}")
    try:
        model = fit_model(kind, ref[use], tgt[use])
        scale = 1.0
        if use.sum() >= 3:
            scale = float(np.sqrt(abs(np.linalg.det(Affine.fit(ref[use], tgt[use]).A[:, :2])))) or 1.0
        residual = np.where(finite, model.residuals(np.nan_to_num(ref), np.nan_to_num(tgt)) / scale, np.nan)
    except (HSSCLError, np.linalg.LinAlgError, ValueError) as err:
        return Refit(kind, ids, nan, role, float("nan"), None, int(use.sum()), str(err))

    def rms(values: np.ndarray) -> float:
        return float(np.sqrt(np.mean(values ** 2))) if len(values) else float("nan")

    return Refit(kind, ids, residual, role, rms(residual[use]), rms(residual[check]) if check.any() else None,
                 int(use.sum()), model=model)


class NumericItem(QTableWidgetItem):
    """Sorts by number, not by text."""

    def __lt__(self, other) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        a = -math.inf if a is None or a != a else a
        b = -math.inf if b is None or b != b else b
        return a < b


class ResidualTable(QgsDockWidget):
    """The residual table for one tie point layer. ``refitted(Refit)`` after every re-fit."""

    refitted = pyqtSignal(object)

    def __init__(self, parent=None) -> None:
        super().__init__("HSSCL tie point residuals", parent)
        self.setObjectName("HSSCLResiduals")
        self.layer: QgsVectorLayer | None = None
        self.kind = "affine"
        self.last: Refit | None = None
        self._syncing = False

        body = QWidget(self)
        layout = QVBoxLayout(body)
        self.summaryLabel = QLabel(body)
        self.summaryLabel.setWordWrap(True)
        layout.addWidget(self.summaryLabel)
        self.table = QTableWidget(0, len(COLUMNS), body)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setSortingEnabled(True)
        layout.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.toggleButton = QPushButton("Use / don't use", body)
        self.toggleButton.setToolTip("Switch the selected points in or out of the fit (their 'inlier' field)")
        self.deleteButton = QPushButton("Delete", body)
        self.deleteButton.setToolTip("Delete the selected points (in the layer's edit buffer; save or roll back "
                                     "the layer as usual)")
        row.addWidget(self.toggleButton)
        row.addWidget(self.deleteButton)
        layout.addLayout(row)
        self.setWidget(body)

        self.table.itemSelectionChanged.connect(self._table_selection_changed)
        self.toggleButton.clicked.connect(self.toggle_selected)
        self.deleteButton.clicked.connect(self.delete_selected)

    # ---- layer ------------------------------------------------------------------------------------------
    def set_layer(self, layer: QgsVectorLayer | None, kind: str = "affine") -> None:
        self._disconnect()
        self.layer = layer
        self.kind = kind or "affine"
        if layer is not None:
            for signal in (layer.featureAdded, layer.featureDeleted, layer.attributeValueChanged,
                           layer.geometryChanged, layer.afterRollBack, layer.dataChanged):
                signal.connect(self.refresh)
            layer.selectionChanged.connect(self._layer_selection_changed)
            layer.willBeDeleted.connect(self._layer_gone)
        self.refresh()

    def _disconnect(self) -> None:
        layer = self.layer
        if layer is None:
            return
        for signal, slot in ((layer.featureAdded, self.refresh), (layer.featureDeleted, self.refresh),
                             (layer.attributeValueChanged, self.refresh), (layer.geometryChanged, self.refresh),
                             (layer.afterRollBack, self.refresh), (layer.dataChanged, self.refresh),
                             (layer.selectionChanged, self._layer_selection_changed),
                             (layer.willBeDeleted, self._layer_gone)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass

    def _layer_gone(self) -> None:
        self._disconnect()
        self.layer = None
        self.refresh()

    # ---- re-fit and table -------------------------------------------------------------------------------
    def refresh(self, *_args) -> Refit | None:
        """Re-fit and redraw (called on every edit of the layer)."""
        if self.layer is None:
            self.table.setRowCount(0)
            self.summaryLabel.setText("No tie point layer.")
            self.last = None
            return None
        result = refit(read_points(self.layer), self.kind)
        self.last = result
        self._fill(result)
        check = f", check points {result.rmse_check_px:.2f} px" if result.rmse_check_px is not None else ""
        if result.error:
            text = f"Model {result.kind}: {result.error}"
        else:
            text = (f"Model {result.kind} fitted to {result.n_used} points: RMSE {result.rmse_fit_px:.2f} px"
                    f"{check} ({len(result.ids)} points in the layer)")
        self.summaryLabel.setText(text)
        self.refitted.emit(result)
        return result

    def _fill(self, result: Refit) -> None:
        self._syncing = True
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(result.ids))
        scores = read_scores(self.layer) if self.layer is not None else {}
        for row, (fid, res, role) in enumerate(zip(result.ids, result.residual_px, result.role)):
            score = scores.get(int(fid), float("nan"))
            values = ((int(fid), str(int(fid))), (float(res), "" if res != res else f"{res:.2f}"),
                      (None, role), (score, "" if score != score else f"{score:.2f}"))
            for col, (number, text) in enumerate(values):
                item = NumericItem(text) if number is not None else QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, number)
                item.setData(Qt.ItemDataRole.UserRole + 1, int(fid))
                colour = ROLE_COLOURS.get(role)
                if colour is not None:
                    item.setForeground(colour)
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(sorting)
        self.table.resizeColumnsToContents()
        self._syncing = False
        self._layer_selection_changed()

    def selected_ids(self) -> list[int]:
        rows = {i.row() for i in self.table.selectedItems()}
        return sorted({int(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole + 1)) for r in rows})

    def _table_selection_changed(self) -> None:
        if self._syncing or self.layer is None:
            return
        self._syncing = True
        self.layer.selectByIds(self.selected_ids())
        self._syncing = False

    def _layer_selection_changed(self, *_args) -> None:
        if self._syncing or self.layer is None:
            return
        wanted = set(self.layer.selectedFeatureIds())
        self._syncing = True
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row in range(self.table.rowCount()):
            if int(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole + 1)) in wanted:
                self.table.selectRow(row)
        self.table.setSelectionMode(mode)
        self._syncing = False

    # ---- edits ------------------------------------------------------------------------------------------
    def _editable(self) -> QgsVectorLayer | None:
        """The layer, in editing mode (None when there is none or it cannot be edited)."""
        layer = self.layer
        if layer is None or not (layer.isEditable() or layer.startEditing()):
            return None
        return layer

    def toggle_selected(self) -> None:
        ids = self.selected_ids()
        layer = self._editable() if ids else None
        if layer is None:
            return
        field = layer.fields().indexOf("inlier")
        if field < 0:
            return
        layer.beginEditCommand("Toggle tie points")
        for fid in ids:
            current = bool(_number(layer.getFeature(fid)["inlier"], 1.0))
            layer.changeAttributeValue(fid, field, 0 if current else 1)
        layer.endEditCommand()
        self.refresh()

    def delete_selected(self) -> None:
        ids = self.selected_ids()
        layer = self._editable() if ids else None
        if layer is None:
            return
        layer.beginEditCommand("Delete tie points")
        layer.deleteFeatures(ids)
        layer.endEditCommand()
        self.refresh()

    def cleanup(self) -> None:
        self._disconnect()
        self.layer = None


def read_scores(layer: QgsVectorLayer) -> dict[int, float]:
    if layer.fields().indexOf("score") < 0:
        return {}
    return {f.id(): _number(f["score"]) for f in layer.getFeatures()}
