"""The dock: layers chosen, Run clicked, the background task finishes, results added with their styles;
dependency-missing state; cancel; extent tool; apply of edited tie points."""
from __future__ import annotations

import os

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle, QgsRuleBasedRenderer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest

from .conftest import add_raster, wait_for


@pytest.fixture
def dock(qgis_iface, provider, project):
    from hsscl.plugin.dock import HSSCLDock

    qgis_iface.messageBar().clear_messages()
    widget = HSSCLDock(qgis_iface)
    yield widget
    widget.cleanup()
    widget.deleteLater()


@pytest.fixture
def pair_layers(s1s2_pair, project):
    ref, tgt = s1s2_pair
    return add_raster(ref, "S2 optical"), add_raster(tgt, "S1 SAR")


def run_and_wait(dock, button=None, timeout=600):
    done = []
    dock.finished.connect(lambda ok, res: done.append((ok, res)))
    QTest.mouseClick(button or dock.runButton, Qt.MouseButton.LeftButton)
    assert dock.is_running(), dock.statusLabel.text()
    assert not dock.runButton.isEnabled() and dock.cancelButton.isEnabled()
    assert wait_for(lambda: bool(done), timeout), "the background task did not finish"
    return done[0]


def choose(dock, reference, target):
    dock.referenceCombo.setLayer(reference)
    dock.targetCombo.setLayer(target)


def test_hints_and_choices(dock, pair_layers):
    reference, target = pair_layers
    choose(dock, reference, target)
    assert dock.referenceHint.text() == "optical"
    assert dock.targetHint.text() == "SAR"
    assert dock.applyRasterCombo.currentLayer() is target
    params = dock.coregister_parameters()
    assert params["REFERENCE"] == reference.id() and params["TARGET"] == target.id()
    assert params["ADAPT"] is False and params["EXTENT"] is None


def _check_results(dock, qgis_iface, reference, ok, results, target=None):
    from hsscl.plugin.layers import style_path

    assert ok, dock.statusLabel.text()
    layers = dock.last_layers
    assert set(layers) == {"OUTPUT", "TIEPOINTS", "MATCHES"}
    for layer in layers.values():
        assert layer.isValid() and QgsProject.instance().mapLayer(layer.id()) is layer
    # co-registered raster right above the original target, which is hidden: the map shows the result
    root = QgsProject.instance().layerTreeRoot()
    order = [n.layerId() for n in root.findLayers()]
    target = target or dock.targetCombo.currentLayer()
    assert order.index(layers["OUTPUT"].id()) == order.index(target.id()) - 1
    assert not root.findLayer(target.id()).itemVisibilityChecked()
    assert root.findLayer(layers["OUTPUT"].id()).itemVisibilityChecked()
    # bundled styles
    assert isinstance(layers["TIEPOINTS"].renderer(), QgsRuleBasedRenderer)
    assert isinstance(layers["MATCHES"].renderer(), QgsRuleBasedRenderer)
    assert os.path.isfile(style_path("tiepoints")) and os.path.isfile(style_path("matches"))
    assert dock.tiePointsCombo.currentLayer() is layers["TIEPOINTS"]
    success = qgis_iface.messageBar().get_messages(3) + [dock.message_texts[0]]  # Qgis.MessageLevel.Success
    assert any("RMSE" in m and "tie points" in m for m in success), success
    assert dock.progressBar.value() == 100


def test_run_adds_styled_results(dock, pair_layers, fake_pipeline, qgis_iface, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    ok, results = run_and_wait(dock)
    _check_results(dock, qgis_iface, reference, ok, results)
    assert os.path.dirname(results["OUTPUT"]) == str(tmp_path)


@pytest.mark.slow
def test_run_real_pipeline(dock, pair_layers, real_pipeline, qgis_iface):
    """The same through the real engine (temporary outputs)."""
    reference, target = pair_layers
    choose(dock, reference, target)
    ok, results = run_and_wait(dock)
    _check_results(dock, qgis_iface, reference, ok, results)


def test_second_opinion_shown_in_the_status(dock, project, ben_sar_pair, real_pipeline, qgis_iface):
    """Real engine, BigEarthNet 36_85 Sentinel-1 VV onto Sentinel-2 B04, misregistered (CFOG alone is below the
    confidence threshold, CFOG on the learned pre-filter is confident): the status line says which descriptor
    gave the result."""
    reference, target = add_raster(ben_sar_pair[0], "S2 B04"), add_raster(ben_sar_pair[1], "S1 VV")
    choose(dock, reference, target)
    ok, results = run_and_wait(dock)
    assert ok, dock.statusLabel.text()
    assert results["DESCRIPTOR"] == "learned-cfog (second opinion)"
    assert "descriptor learned-cfog (second opinion): CFOG alone was below the confidence threshold" in \
        dock.statusLabel.text()


def test_apply_edited_tiepoints(dock, pair_layers, fake_pipeline, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    ok, _ = run_and_wait(dock)
    assert ok
    ties = dock.last_layers["TIEPOINTS"]
    # delete one bad point and select the others but one
    ties.startEditing()
    ties.deleteFeature(next(ties.getFeatures()).id())
    features = list(ties.getFeatures())
    ties.selectByIds([f.id() for f in features[:-1]])
    assert dock.apply_parameters()["TIEPOINTS"].selectedFeaturesOnly
    ok, results = run_and_wait(dock, dock.applyButton)
    assert ok, dock.statusLabel.text()
    # points marked inlier = false are ignored by the engine
    assert results["N_TIEPOINTS"] == sum(bool(f["inlier"]) for f in features[:-1])
    assert dock.last_layers["OUTPUT"].isValid()
    ties.rollBack()


def test_failure_shows_message_with_details(dock, pair_layers, fake_pipeline, qgis_iface):
    from hsscl.engine.errors import NoOverlapError

    fake_pipeline.behaviour.fail = NoOverlapError("The reference and the target do not overlap.",
                                                  "Check the CRS of both rasters.")
    reference, target = pair_layers
    choose(dock, reference, target)
    ok, _ = run_and_wait(dock)
    assert not ok
    assert "do not overlap" in dock.statusLabel.text()
    critical = qgis_iface.messageBar().get_messages(2)
    assert any("do not overlap" in m for m in critical), critical
    assert dock.runButton.isEnabled() and not dock.cancelButton.isEnabled()


def test_cancel_stops_and_leaves_no_output(dock, pair_layers, fake_pipeline, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    fake_pipeline.behaviour.steps, fake_pipeline.behaviour.delay = 200, 0.05
    done = []
    dock.finished.connect(lambda ok, res: done.append(ok))
    dock.runButton.click()
    assert wait_for(lambda: dock.progressBar.value() > 0, 60)
    dock.cancelButton.click()
    assert wait_for(lambda: bool(done), 60)
    assert done == [False]
    assert "Cancelled" in dock.statusLabel.text()
    assert list(tmp_path.iterdir()) == []
    assert not dock.last_layers


@pytest.mark.slow
def test_cancel_real_pipeline(dock, pair_layers, real_pipeline, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    done = []
    dock.finished.connect(lambda ok, res: done.append(ok))
    dock.runButton.click()
    dock.cancelButton.click()
    assert wait_for(lambda: bool(done), 300)
    assert done == [False] and list(tmp_path.iterdir()) == []


def test_dependencies_missing(qgis_iface, provider, project, monkeypatch):
    from hsscl.plugin import deps
    from hsscl.plugin.dock import HSSCLDock

    monkeypatch.setattr(deps, "check", lambda: deps.DependencyStatus(("torch", "cv2"), "/opt/qgis/bin/python3",
                                                                     "/home/u/.local/share/QGIS/hsscl_packages"))
    dock = HSSCLDock(qgis_iface)
    try:
        assert not dock.depsFrame.isHidden()
        assert "torch" in dock.depsLabel.text()
        command = dock.depsCommand.toPlainText()  # in full, not cut to one line
        assert command.startswith('"/opt/qgis/bin/python3" -m pip install')
        assert "--target /home/u/.local/share/QGIS/hsscl_packages" in command
        assert "torch==2.13.0" in command and "opencv-python-headless" in command
        assert "whl/cpu" in command and "torch-geometric" not in command
        assert not dock.installButton.isHidden()
        assert not dock.runButton.isEnabled() and not dock.applyButton.isEnabled()
        assert dock.run() is False
    finally:
        dock.cleanup()
        dock.deleteLater()


def test_dependencies_present_hides_message(dock):
    assert dock.depsFrame.isHidden()
    assert dock.runButton.isEnabled()


def test_extent_tool(dock, pair_layers, qgis_canvas):
    dock.drawExtentButton.setChecked(True)
    assert qgis_canvas.mapTool() is dock.extent_tool
    dock.extent_tool.extentDrawn.emit(QgsRectangle(400500, 5096000, 401500, 5099000),
                                      QgsCoordinateReferenceSystem("EPSG:32631"))
    assert not dock.drawExtentButton.isChecked()
    assert dock.extent_parameter() == "400500.0,401500.0,5096000.0,5099000.0 [EPSG:32631]"
    assert "EPSG:32631" in dock.extentLabel.text()
    dock.clear_extent()
    assert dock.extent_parameter() is None


def test_settings_roundtrip(dock):
    from hsscl.plugin.settings import PluginSettings

    dock.defaultDeviceCombo.setCurrentIndex(dock.defaultDeviceCombo.findData("cpu"))
    dock.threadsSpin.setValue(4)
    s = PluginSettings.load()
    assert s.device == "cpu" and s.threads == 4
    PluginSettings().save()


def test_output_names_do_not_clobber(dock, pair_layers, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    first = dock.coregister_parameters()["OUTPUT"]
    assert first == str(tmp_path / "S1_SAR_coregistered.tif")
    open(first, "w").close()
    assert dock.coregister_parameters()["OUTPUT"] == str(tmp_path / "S1_SAR_coregistered_2.tif")


# ---- issue 18: a result you can see, sensible defaults ----------------------------------------------------------
def test_defaults_pick_different_rasters_by_modality(qgis_iface, provider, project, s1s2_pair):
    from hsscl.plugin.dock import HSSCLDock

    ref, tgt = s1s2_pair
    sar, optical = add_raster(tgt, "S1 SAR"), add_raster(ref, "S2 optical")  # SAR first in the project
    dock = HSSCLDock(qgis_iface)
    try:
        assert dock.referenceCombo.currentLayer() is optical
        assert dock.targetCombo.currentLayer() is sar
        assert dock.referenceModalityCombo.count() == 4 and dock.targetModalityCombo.currentIndex() == 0
        assert dock.targetHint.text() == "SAR" and dock.targetModalityCombo.currentText() == "Automatic"
        dock.targetModalityCombo.setCurrentIndex(dock.targetModalityCombo.findData("optical"))
        assert dock.coregister_parameters()["TARGET_MODALITY"] == 2  # the user's correction reaches Processing
    finally:
        dock.cleanup()
        dock.deleteLater()


def test_dock_fits_350_px(dock, pair_layers):
    dock.resize(350, 900)
    assert dock.widget().minimumSizeHint().width() <= 350
    assert dock.gridCombo.currentText() == "Reference grid"  # short text, the whole label as tooltip
    assert "resample" in dock.gridCombo.itemData(0, Qt.ItemDataRole.ToolTipRole)


def test_stage_in_status_and_before_after_toggle(dock, pair_layers, fake_pipeline, qgis_iface, tmp_path):
    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    fake_pipeline.behaviour.steps, fake_pipeline.behaviour.delay = 40, 0.05
    stages = []
    dock.progressBar.valueChanged.connect(lambda _v: stages.append(dock.statusLabel.text()))
    ok, results = run_and_wait(dock)
    assert ok
    assert any(s.startswith("Co-registering: step ") and "%" in s for s in stages), stages[:5]
    # result above the hidden original; the toggle shows one or the other
    root = QgsProject.instance().layerTreeRoot()
    corrected = dock.last_layers["OUTPUT"]
    assert dock.compareButton.isEnabled()
    dock.compareButton.setChecked(True)
    assert root.findLayer(target.id()).itemVisibilityChecked()
    assert not root.findLayer(corrected.id()).itemVisibilityChecked()
    dock.compareButton.setChecked(False)
    assert not root.findLayer(target.id()).itemVisibilityChecked()
    assert root.findLayer(corrected.id()).itemVisibilityChecked()
    # the report is linked from the dock and the message bar
    assert "Open the report" in dock.reportLabel.text() and dock.report_path == results["REPORT"]
    text, button = dock.message_texts
    assert "RMSE" in text and button == "Open report"


def test_confidence_shown_when_the_report_has_it(dock, pair_layers, fake_pipeline, tmp_path, monkeypatch):
    import json

    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    real = fake_pipeline.coregister

    def with_confidence(*args, **kwargs):
        res = real(*args, **kwargs)
        res.report["confidence"] = 0.87
        with open(res.outputs["report"], "w") as f:
            json.dump(res.report, f)
        return res

    monkeypatch.setattr(fake_pipeline, "coregister", with_confidence)
    ok, _ = run_and_wait(dock)
    assert ok and "confidence 87 %" in dock.statusLabel.text()


def test_low_confidence_best_guess_is_a_warning_that_invites_review(dock, pair_layers, fake_pipeline, tmp_path,
                                                                     monkeypatch):
    """The dock asks for the best guess when its box is ticked, and a result kept below the confidence threshold
    is shown as a warning that invites reviewing the tie points (not as a success)."""
    import json

    reference, target = pair_layers
    choose(dock, reference, target)
    dock.outputFolder.setFilePath(str(tmp_path))
    assert dock.coregister_parameters()["KEEP_BEST_GUESS"] is False
    dock.guessCheck.setChecked(True)
    assert dock.coregister_parameters()["KEEP_BEST_GUESS"] is True
    real = fake_pipeline.coregister
    seen = {}

    def low(*args, **kwargs):
        seen["keep"] = args[3].keep_best_guess
        res = real(*args, **kwargs)
        res.report.update(confidence=0.41, decision={"accepted": False, "low_confidence": True, "threshold": 0.64,
                                                     "why": "cfog has the highest confidence (41%)"})
        with open(res.outputs["report"], "w") as f:
            json.dump(res.report, f)
        return res

    monkeypatch.setattr(fake_pipeline, "coregister", low)
    ok, results = run_and_wait(dock)
    assert ok and seen["keep"] is True
    assert results["LOW_CONFIDENCE"] == 1.0
    assert dock.statusLabel.text().startswith("LOW CONFIDENCE") and "residual table" in dock.statusLabel.text()


def test_sar_colour_composite_hint(dock, project, tmp_path):
    """A dual-pol colour composite (3 bands of Byte) is hinted as SAR, an optical RGB image as optical."""
    import glob

    import numpy as np
    from osgeo import gdal

    from .conftest import BEN, DATA

    vv = sorted(glob.glob(str(BEN / "BigEarthNet-S1-Example" / "*_87_48" / "*_VV.tif")))
    rgb = DATA / "mmim_jiang2021_RemoteSensing" / "SAR_Optical" / "SO1a.png"
    if not vv or not rgb.is_file():
        pytest.skip("shared data not found")
    a = gdal.Open(vv[0]).ReadAsArray().astype(float)
    b = gdal.Open(vv[0].replace("_VV.tif", "_VH.tif")).ReadAsArray().astype(float)
    path = str(tmp_path / "dualpol_rgb.tif")
    ds = gdal.GetDriverByName("GTiff").Create(path, a.shape[1], a.shape[0], 3, gdal.GDT_Byte)
    for i, band in enumerate(((a + 25) / 25, (b + 30) / 25, (a - b) / 15)):
        ds.GetRasterBand(i + 1).WriteArray(np.clip(band * 255, 0, 255).astype(np.uint8))
    ds = None
    composite, optical = add_raster(path, "composite"), add_raster(str(rgb), "rgb")
    choose(dock, optical, composite)
    assert dock.targetHint.text() == "SAR" and "composite" in dock.targetHint.toolTip()
    assert dock.referenceHint.text() == "optical"
