"""The residual table: one row per tie point, sorted, linked with the map selection; deleting or switching
points off re-fits the model live (RMSE and residuals update at once)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from qgis.core import QgsFeature, QgsField, QgsGeometry, QgsPointXY, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QVariant

pytestmark = pytest.mark.usefixtures("qgis_app")


def _layer(n=20, outlier=7, seed=0) -> QgsVectorLayer:
    """Tie points under a known shift (3, -2) with a 0.1 px jitter and one gross outlier."""
    layer = QgsVectorLayer("Point?crs=EPSG:32631", "ties", "memory")
    fields = [QgsField(name, QVariant.Double) for name in ("ref_x", "ref_y", "tgt_x", "tgt_y", "score",
                                                            "residual_px")]
    fields += [QgsField("inlier", QVariant.Int), QgsField("check", QVariant.Int)]
    layer.dataProvider().addAttributes(fields)
    layer.updateFields()
    rng = np.random.default_rng(seed)
    features = []
    for i in range(n):
        x, y = (float(v) for v in rng.uniform(0, 400, 2))
        dx, dy = (float(v) for v in (3.0, -2.0) + rng.normal(0, 0.1, 2))
        if i == outlier:
            dx += 9.0
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, -y)))
        f.setAttributes([x, y, x + dx, y + dy, 0.5 + i / 100, 0.0, 1, 1 if i % 5 == 4 else 0])
        features.append(f)
    layer.dataProvider().addFeatures(features)
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.fixture
def table(qgis_new_project):
    from hsscl.plugin.residuals import ResidualTable

    widget = ResidualTable()
    yield widget
    widget.cleanup()
    widget.deleteLater()


def test_refit_matches_the_known_shift():
    from hsscl.plugin.residuals import read_points, refit

    layer = _layer()
    result = refit(read_points(layer), "shift")
    assert result.n_used == 16 and result.role.count("check") == 4
    worst = int(result.ids[np.nanargmax(result.residual_px)])
    assert worst == 8  # feature ids start at 1: the outlier (index 7)
    assert result.rmse_fit_px > 1.5  # the outlier spoils the fit


def test_table_delete_and_toggle_refit_live(table):
    layer = _layer()
    table.set_layer(layer, "shift")
    assert table.table.rowCount() == 20
    before = table.last.rmse_fit_px
    # sorted by residual, worst first
    table.table.sortItems(1, order=1)  # Qt.DescendingOrder
    assert int(table.table.item(0, 0).text()) == 8
    # selecting the row selects the point on the map, and back
    table.table.selectRow(0)
    assert layer.selectedFeatureIds() == [8]
    layer.selectByIds([3])
    assert table.selected_ids() == [3]
    # switch the outlier off: the fit is re-done at once
    layer.selectByIds([8])
    t0 = time.perf_counter()
    table.toggle_selected()
    elapsed = time.perf_counter() - t0
    assert table.last.n_used == 15 and table.last.rmse_fit_px < 0.3 < before
    assert elapsed < 0.5  # milliseconds in practice
    assert "outlier" in [table.table.item(r, 2).text() for r in range(20) if table.table.item(r, 0).text() == "8"]
    assert f"RMSE {table.last.rmse_fit_px:.2f} px" in table.summaryLabel.text()
    # toggle back, then delete it instead
    table.toggle_selected()
    assert table.last.n_used == 16
    layer.selectByIds([8])
    table.delete_selected()
    assert table.table.rowCount() == 19 and table.last.rmse_fit_px < 0.3
    # an edit made elsewhere (attribute table, map) re-fits too
    layer.changeAttributeValue(3, layer.fields().indexOf("inlier"), 0)
    assert table.last.n_used == 14
    layer.rollBack()
    assert table.table.rowCount() == 20


def test_too_few_points_says_so(table):
    layer = _layer(n=3, outlier=-1)
    table.set_layer(layer, "poly2")
    assert "needs at least" in table.summaryLabel.text()


@pytest.fixture
def ran_dock(qgis_iface, provider, project, s1s2_pair, fake_pipeline, tmp_path):
    """The dock after one successful run on the S1/S2 pair (fake pipeline): ``(dock, reference layer)``."""
    from hsscl.plugin.dock import HSSCLDock

    from .conftest import add_raster, wait_for

    reference, target = add_raster(s1s2_pair[0], "S2"), add_raster(s1s2_pair[1], "S1")
    dock = HSSCLDock(qgis_iface)
    try:
        dock.referenceCombo.setLayer(reference)
        dock.targetCombo.setLayer(target)
        dock.outputFolder.setFilePath(str(tmp_path))
        done = []
        dock.finished.connect(lambda ok, res: done.append(ok))
        assert dock.run()
        assert wait_for(lambda: bool(done), 120) and done == [True]
        yield dock, reference
    finally:
        dock.cleanup()
        dock.deleteLater()


def test_dock_opens_the_table_after_a_run(ran_dock):
    dock, _ = ran_dock
    assert dock.residuals is not None and dock.residuals.layer is dock.last_layers["TIEPOINTS"]
    assert dock.residuals.table.rowCount() == dock.last_layers["TIEPOINTS"].featureCount()


# ---- interactive matching ----------------------------------------------------------------------------------------
def test_match_point_finds_the_partner_around_a_wrong_model(s1s2_pair):
    """Real data (S1 onto S2, patch 11): with a model 3.6 px off, the local search still finds the partner where
    the correct model (a -0.23, -0.24 px shift from a full run) puts it."""
    from hsscl.engine.geometry.transforms import Shift
    from hsscl.plugin.pointmatch import match_point

    ref, tgt = s1s2_pair
    right = match_point(ref, tgt, (120.5, 300.5), Shift((-0.23, -0.24)))
    wrong = match_point(ref, tgt, (120.5, 300.5), Shift((3.0, -2.0)))
    assert right.score > 0.2 and right.shift_px < 1.5
    assert abs(wrong.tgt_xy[0] - right.tgt_xy[0]) < 0.5 and abs(wrong.tgt_xy[1] - right.tgt_xy[1]) < 0.5
    assert wrong.shift_px > 3


def test_add_tie_point_tool_adds_a_point_and_refits(qgis_canvas, ran_dock):
    from qgis.core import QgsPointXY

    from .conftest import wait_for

    dock, reference = ran_dock
    ties = dock.last_layers["TIEPOINTS"]
    before = ties.featureCount()
    dock.addPointButton.setChecked(True)
    assert qgis_canvas.mapTool() is dock.point_tool
    ext = reference.extent()
    point = QgsPointXY(ext.xMinimum() + 0.27 * ext.width(), ext.yMaximum() - 0.67 * ext.height())
    dock.point_tool.clicked.emit(point, reference.crs())
    assert wait_for(lambda: dock.point_task is None, 120)
    assert "Tie point added" in dock.statusLabel.text(), dock.statusLabel.text()
    assert ties.featureCount() == before + 1
    assert dock.residuals.table.rowCount() == before + 1  # the table re-fitted with the new point
    ties.rollBack()


def test_drag_either_end_refits(qgis_canvas, ran_dock):
    """Both ends of a tie point can be dragged: the reference end moves the point (geometry and ref_x/ref_y),
    the target end its tgt_x/tgt_y; the residual table re-fits each time."""
    from qgis.core import QgsPointXY

    dock, reference = ran_dock
    ties = dock.last_layers["TIEPOINTS"]
    qgis_canvas.setDestinationCrs(reference.crs())
    qgis_canvas.setExtent(reference.extent())
    dock.addPointButton.setChecked(True)
    ends = dock.tiepoint_ends()
    assert {e for _, e, _ in ends} == {"reference", "target"}
    used = {f.id() for f in ties.getFeatures() if f["inlier"] and not f["check"]}  # a point in the fit
    fid, _, start = next(e for e in ends if e[1] == "target" and e[0] in used)
    assert dock.point_tool.nearest_end(start)[:2] in ((fid, "target"), (fid, "reference"))
    before = ties.getFeature(fid)
    rmse_before = dock.residuals.last.rmse_fit_px
    # drag the target end 5 map units (0.5 px at 10 m) east: tgt_x grows, the fit changes
    assert dock.move_end(fid, "target", QgsPointXY(start.x() + 50, start.y()), reference.crs())
    after = ties.getFeature(fid)
    assert after["tgt_x"] == pytest.approx(before["tgt_x"] + 50 / reference.rasterUnitsPerPixelX(), abs=1e-6)
    assert after["ref_x"] == before["ref_x"]
    assert dock.residuals.last.rmse_fit_px != rmse_before
    assert "RMSE of the fit now" in dock.statusLabel.text()
    # the reference end moves the point itself
    ref_end = next(e for e in dock.tiepoint_ends() if e[0] == fid and e[1] == "reference")[2]
    assert dock.move_end(fid, "reference", QgsPointXY(ref_end.x(), ref_end.y() - 30), reference.crs())
    moved = ties.getFeature(fid)
    assert moved["ref_y"] == pytest.approx(before["ref_y"] + 30 / reference.rasterUnitsPerPixelY(), abs=1e-6)
    assert moved.geometry().asPoint().y() == pytest.approx(ref_end.y() - 30)
    ties.rollBack()


def test_tool_press_drag_release_emits_moved_and_click_emits_clicked(qgis_canvas):
    from qgis.core import QgsPointXY, QgsRectangle
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt

    from hsscl.plugin.pointmatch import AddTiePointTool

    qgis_canvas.resize(400, 400)
    qgis_canvas.setExtent(QgsRectangle(0, 0, 400, 400))
    tool = AddTiePointTool(qgis_canvas)
    end_xy = qgis_canvas.getCoordinateTransform().toMapCoordinates(100, 100)
    tool.ends_fn = lambda: [(7, "target", QgsPointXY(end_xy))]
    moved, clicked = [], []
    tool.moved.connect(lambda fid, end, p, crs: moved.append((fid, end)))
    tool.clicked.connect(lambda p, crs: clicked.append(p))

    def event(kind, x, y):
        return QgsMapMouseEvent(qgis_canvas, kind, QPoint(x, y), Qt.MouseButton.LeftButton,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)

    tool.canvasPressEvent(event(QEvent.Type.MouseButtonPress, 102, 101))   # within 8 px of the end
    tool.canvasMoveEvent(event(QEvent.Type.MouseMove, 130, 120))
    tool.canvasReleaseEvent(event(QEvent.Type.MouseButtonRelease, 140, 120))
    assert moved == [(7, "target")] and not clicked
    tool.canvasPressEvent(event(QEvent.Type.MouseButtonPress, 300, 300))   # far from any end: a click
    tool.canvasReleaseEvent(event(QEvent.Type.MouseButtonRelease, 300, 300))
    assert len(clicked) == 1 and moved == [(7, "target")]
    tool.remove()
