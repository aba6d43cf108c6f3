"""``processing.run`` of the three algorithms on real pairs, batch, the example model, qgis_process.

Each test runs twice: with the stand-in pipeline (``[fake]``: Processing plumbing only) and with the real
engine (``[real]``; skipped, with the reason shown, while engine/pipeline.py is absent)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingModelAlgorithm,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .conftest import ROOT, pipeline_available

MODEL = ROOT / "resources" / "models" / "coregister_keep_inliers.model3"


def _valid_raster(path, like=None):
    layer = QgsRasterLayer(str(path), "r")
    assert layer.isValid(), path
    if like is not None:
        assert layer.bandCount() == QgsRasterLayer(like, "t").bandCount()
    return layer


def _tiepoints(path, minimum=1):
    layer = QgsVectorLayer(str(path), "t", "ogr")
    assert layer.isValid(), path
    assert {"ref_x", "ref_y", "tgt_x", "tgt_y", "score", "residual_px", "inlier", "check"} <= set(layer.fields().names())
    assert layer.featureCount() >= minimum
    return layer


def test_coregister(provider, engine, s1s2_pair, tmp_path):
    import processing

    ref, tgt = s1s2_pair
    res = processing.run("hsscl:coregister", {
        "REFERENCE": ref, "TARGET": tgt, "TRANSFORM": 0, "DEVICE": 1,
        "OUTPUT": str(tmp_path / "co.tif"), "TIEPOINTS": str(tmp_path / "ties.gpkg"),
        "MATCHES": str(tmp_path / "lines.gpkg"), "REPORT": str(tmp_path / "report.html")})
    co = _valid_raster(res["OUTPUT"], like=tgt)
    assert co.crs() == QgsRasterLayer(ref, "r").crs()
    ties = _tiepoints(res["TIEPOINTS"], minimum=3)
    assert ties.crs() == co.crs()
    assert QgsVectorLayer(res["MATCHES"], "m", "ogr").featureCount() == ties.featureCount()
    html = open(res["REPORT"], encoding="utf-8").read()
    assert "<svg" in html and "data:image/png;base64" in html and "After" in html
    with open(res["REPORT_JSON"], encoding="utf-8") as f:
        assert isinstance(json.load(f), dict)
    assert res["N_TIEPOINTS"] >= res["N_INLIERS"] >= 3
    assert 0 <= res["RMSE_PX"] < 5


def test_second_opinion_is_logged_in_processing(provider, ben_sar_pair, real_pipeline, tmp_path):
    """BigEarthNet 36_85, Sentinel-1 VV onto Sentinel-2 B04 misregistered by 0.5°, -1 %, (-12, -3) px (120 px):
    CFOG alone is below the confidence threshold on this pair (measured), CFOG on the learned pre-filter is
    confident; the Processing log says which descriptor gave the result and with what confidence, and the
    correction undoes the misregistration within the S1/S2 grids' 1-2 px agreement."""
    import processing
    from qgis.core import QgsProcessingFeedback

    from hsscl.engine.correction import Correction

    class Log(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.info: list[str] = []

        def pushInfo(self, text):  # noqa: N802 (Qt name)
            self.info.append(text)
            super().pushInfo(text)

    log = Log()
    res = processing.run("hsscl:coregister", {"REFERENCE": ben_sar_pair[0], "TARGET": ben_sar_pair[1],
                                              "OUTPUT": str(tmp_path / "co.tif"),
                                              "TIEPOINTS": str(tmp_path / "ties.gpkg")}, feedback=log)
    assert any("cfog alone was below the confidence threshold" in t and "learned-cfog (second opinion)" in t
               for t in log.info), log.info
    assert any(t.startswith("Confidence ") and "within 3 px" in t for t in log.info), log.info
    with open(res["REPORT_JSON"], encoding="utf-8") as f:
        report = json.load(f)
    assert report["second_opinion"]["used"] and report["descriptor"] == "learned-cfog"
    assert res["DESCRIPTOR"] == "learned-cfog (second opinion)"
    # the correction undoes the known misregistration within the S1/S2 grids' agreement
    corners = np.array([[0.0, 0.0], [120.0, 0.0], [0.0, 120.0], [120.0, 120.0], [60.0, 60.0]])
    truth = ben_sar_pair[2]
    moved = np.hypot(*(Correction.load(res["CORRECTION"]).model(corners) - truth(corners)).T).max()
    assert report["model"]["kind"] in ("shift", "similarity", "affine") and moved < 3.0, report["model"]


def test_match_then_apply_edited(provider, engine, s1s2_pair, tmp_path, project):
    import processing

    ref, tgt = s1s2_pair
    res = processing.run("hsscl:match", {"REFERENCE": ref, "TARGET": tgt, "TRANSFORM": 1,
                                         "TIEPOINTS": str(tmp_path / "ties.gpkg"),
                                         "MATCHES": str(tmp_path / "lines.gpkg")})
    ties = _tiepoints(res["TIEPOINTS"], minimum=3)
    assert not (tmp_path / "co.tif").exists()
    # the user deletes the worst point and applies with the rest, to the target (all bands)
    QgsProject.instance().addMapLayer(ties)
    worst = max(ties.getFeatures(), key=lambda f: f["residual_px"] if f["residual_px"] is not None else -1)
    ties.startEditing()
    ties.deleteFeature(worst.id())
    ties.selectAll()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    out = processing.run("hsscl:apply", {
        "TIEPOINTS": QgsProcessingFeatureSourceDefinition(ties.id(), True), "REFERENCE": ref,
        "RASTER": tgt, "TRANSFORM": 1, "OUTPUT": str(tmp_path / "applied.tif")}, context=context)
    kept = sum(bool(f["inlier"]) for f in ties.getFeatures())
    ties.rollBack()
    _valid_raster(out["OUTPUT"], like=tgt)
    assert out["N_TIEPOINTS"] == kept  # the engine ignores points with inlier = false


def test_apply_rejects_layer_without_tiepoint_fields(provider, engine, s1s2_pair, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    ref, tgt = s1s2_pair
    layer = QgsVectorLayer("Point?crs=EPSG:32631&field=name:string", "pts", "memory")
    with pytest.raises(QgsProcessingException, match="ref_x"):
        processing.run("hsscl:apply", {"TIEPOINTS": layer, "REFERENCE": ref, "RASTER": tgt,
                                       "OUTPUT": str(tmp_path / "x.tif")})


def test_batch_of_two_pairs(provider, engine, ben_pairs, tmp_path, qgis_iface):
    """The batch dialog: two rows (two real pairs) filled in and run."""
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from processing.tools import dataobjects
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().createAlgorithmById("hsscl:coregister")
    dialog = BatchAlgorithmDialog(alg, parent=qgis_iface.mainWindow())
    panel = dialog.mainWidget()
    while panel.batchRowCount() < 2:
        panel.addRow()
    while panel.batchRowCount() > 2:
        panel.tblParameters.removeRow(panel.tblParameters.rowCount() - 1)
        panel.wrappers.pop()
    context = dataobjects.createContext()
    col = panel.parameter_to_column
    for row, (ref, tgt) in enumerate(ben_pairs):
        panel.wrappers[row][col["REFERENCE"]].setParameterValue(ref, context)
        panel.wrappers[row][col["TARGET"]].setParameterValue(tgt, context)
        panel.wrappers[row][col["TRANSFORM"]].setParameterValue(1, context)
        for name, file in (("OUTPUT", "co.tif"), ("TIEPOINTS", "ties.gpkg"), ("MATCHES", "lines.gpkg"),
                           ("REPORT", "report.html")):
            panel.tblParameters.cellWidget(row + 1, col[name]).setValue(str(tmp_path / f"{row}_{file}"))
    rows = [panel.parametersForRow(r, warnOnInvalid=True) for r in range(panel.batchRowCount())]
    assert all(ok for _, ok in rows), rows
    dialog.runAlgorithm()
    for row in range(2):
        _valid_raster(tmp_path / f"{row}_co.tif")
        _tiepoints(tmp_path / f"{row}_ties.gpkg")
        assert (tmp_path / f"{row}_report.html").is_file()
    dialog.deleteLater()


def test_example_model(provider, engine, s1s2_pair, tmp_path):
    import processing

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(MODEL))
    algs = {c.algorithmId() for c in model.childAlgorithms().values()}
    assert "hsscl:coregister" in algs and any(a.startswith("native:") for a in algs)
    ref, tgt = s1s2_pair
    res = processing.run(model, {
        "reference": ref, "target": tgt, "transform": 1,
        "coregister:Co-registered raster": str(tmp_path / "co.tif"),
        "coregister:Report": str(tmp_path / "report.html"),
        "inliers:Inlier tie points": str(tmp_path / "inliers.gpkg")})
    _valid_raster(res["coregister:Co-registered raster"], like=tgt)
    inliers = QgsVectorLayer(res["inliers:Inlier tie points"], "i", "ogr")
    assert inliers.isValid() and inliers.featureCount() >= 1
    assert all(bool(f["inlier"]) for f in inliers.getFeatures())


# ---- qgis_process, with the plugin installed from hsscl.zip into a temporary profile -------------------------
QGIS_PROCESS = "/usr/bin/qgis_process.bin"


@pytest.fixture(scope="module")
def installed_profile(tmp_path_factory):
    if not os.path.exists(QGIS_PROCESS):
        pytest.skip("qgis_process is not installed")
    base = tmp_path_factory.mktemp("qgis_profile")
    zip_path = base / "hsscl.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "-o", str(zip_path)], check=True,
                   capture_output=True, timeout=120)
    plugins = base / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert all(n.startswith("hsscl/") for n in names)
        assert not any("/tests/" in n or n.startswith("hsscl/bench/") or n.startswith("hsscl/scripts/")
                       or "__pycache__" in n or n.startswith("hsscl/.") for n in names), names
        for needed in ("hsscl/__init__.py", "hsscl/metadata.txt", "hsscl/LICENSE", "hsscl/plugin/main.py",
                       "hsscl/ui/dock.ui",
                       "hsscl/resources/icon.svg", "hsscl/resources/styles/tiepoints.qml",
                       "hsscl/resources/models/coregister_keep_inliers.model3"):
            assert needed in names, needed
        zf.extractall(plugins)
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(base), QT_QPA_PLATFORM="offscreen", HOME=str(base))
    # the Python of qgis_process is the system one: give it the packages of this environment (torch & co.)
    site = [p for p in sys.path if p.endswith("site-packages") and ".venv" in p]
    env["PYTHONPATH"] = os.pathsep.join(site + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    out = subprocess.run([QGIS_PROCESS, "plugins", "enable", "hsscl"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return base, env


def test_packaged_plugin_loads_in_qgis_process(installed_profile):
    base, env = installed_profile
    out = subprocess.run([QGIS_PROCESS, "list"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for alg in ("hsscl:coregister", "hsscl:match", "hsscl:apply"):
        assert alg in out.stdout
    out = subprocess.run([QGIS_PROCESS, "help", "hsscl:coregister"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "REFERENCE" in out.stdout and "TRANSFORM" in out.stdout
    for tag in ("<br", "<b>", "<i>", "<p>", "</"):
        assert tag not in out.stdout, tag


@pytest.mark.slow
def test_qgis_process_run(installed_profile, s1s2_pair, tmp_path):
    if not pipeline_available():
        pytest.skip("hsscl.engine.pipeline is not in this checkout yet")
    base, env = installed_profile
    ref, tgt = s1s2_pair
    cmd = [QGIS_PROCESS, "--json", "run", "hsscl:coregister", "--", f"REFERENCE={ref}", f"TARGET={tgt}",
           "TRANSFORM=1", "DEVICE=1", f"OUTPUT={tmp_path / 'co.tif'}", f"TIEPOINTS={tmp_path / 'ties.gpkg'}",
           f"MATCHES={tmp_path / 'lines.gpkg'}", f"REPORT={tmp_path / 'report.html'}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads(out.stdout[out.stdout.index("{"):])["results"]
    _valid_raster(results["OUTPUT"], like=tgt)
    _tiepoints(results["TIEPOINTS"])
    assert results["N_TIEPOINTS"] >= 3


# ---- issue 18: Processing polish ------------------------------------------------------------------------------
def test_apply_refuses_a_line_layer(provider, fake_pipeline, s1s2_pair, tmp_path):
    """The match lines carry the tie point fields too; hsscl:apply takes only the point layer."""
    import processing
    from qgis.core import QgsProcessingException

    ref, tgt = s1s2_pair
    res = processing.run("hsscl:match", {"REFERENCE": ref, "TARGET": tgt, "TRANSFORM": 1,
                                         "TIEPOINTS": str(tmp_path / "ties.gpkg"),
                                         "MATCHES": str(tmp_path / "lines.gpkg")})
    with pytest.raises(QgsProcessingException, match="point layer"):
        processing.run("hsscl:apply", {"TIEPOINTS": res["MATCHES"], "REFERENCE": ref, "RASTER": tgt,
                                       "OUTPUT": str(tmp_path / "x.tif")})


def test_progress_text_not_repeated():
    """The warper reports the same stage text at every block: the log shows it once per change."""
    from qgis.core import QgsProcessingFeedback

    from hsscl.plugin.algorithms.base import ProgressRelay

    class Log(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.texts: list[str] = []

        def setProgressText(self, text):  # noqa: N802 (Qt name)
            self.texts.append(text)

    log = Log()
    relay = ProgressRelay(log)
    for i in range(94):
        relay(i / 94, "Writing the corrected raster")
    relay(1.0, "done")
    assert log.texts == ["Writing the corrected raster", "done"]
    assert log.progress() == 100


def test_help_is_plain_text(provider):
    """qgis_process prints the help as it is: no HTML tags; the dialog turns its line breaks into paragraphs."""
    import re

    from qgis.core import QgsApplication

    for alg_id in ("hsscl:coregister", "hsscl:match", "hsscl:apply"):
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        texts = [alg.shortHelpString()] + [p.help() for p in alg.parameterDefinitions()] + \
            [o.description() for o in alg.outputDefinitions()]
        assert not [t for t in texts if re.search(r"</?[a-z]+[^>]*>", t)], alg_id
    coregister = QgsApplication.processingRegistry().algorithmById("hsscl:coregister")
    assert "check point" in coregister.outputDefinition("RMSE_PX").description()
    assert "uncorrected target" in coregister.parameterDefinition("MATCHES").help()


def test_outputs_styled_when_processing_loads_them(provider, fake_pipeline, s1s2_pair, tmp_path, project):
    """Outputs that Processing loads (dialog, batch, models) get the bundled styles through the post-processor."""
    import processing
    from qgis.core import QgsProcessingOutputLayerDefinition, QgsRuleBasedRenderer

    ref, tgt = s1s2_pair
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    outputs = {}
    for key in ("OUTPUT", "TIEPOINTS", "MATCHES"):
        definition = QgsProcessingOutputLayerDefinition(str(tmp_path / f"{key.lower()}.{'tif' if key == 'OUTPUT' else 'gpkg'}"),
                                                        QgsProject.instance())
        outputs[key] = definition
    processing.run("hsscl:coregister", {"REFERENCE": ref, "TARGET": tgt, **outputs}, context=context)
    details = {path: context.layerToLoadOnCompletionDetails(path) for path in context.layersToLoadOnCompletion()}
    posts = {os.path.basename(path): d.postProcessor() for path, d in details.items()}
    assert posts["tiepoints.gpkg"] is not None and posts["matches.gpkg"] is not None
    layer = QgsVectorLayer(str(tmp_path / "tiepoints.gpkg"), "t", "ogr")
    posts["tiepoints.gpkg"].postProcessLayer(layer, context, None)
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer)


def test_html_report_names_the_users_files(provider, fake_pipeline, s1s2_pair, tmp_path):
    import processing

    ref, tgt = s1s2_pair
    res = processing.run("hsscl:coregister", {
        "REFERENCE": ref, "TARGET": tgt, "OUTPUT": str(tmp_path / "co.tif"),
        "TIEPOINTS": str(tmp_path / "ties.gpkg"), "REPORT": str(tmp_path / "report.html")})
    text = open(res["REPORT"], encoding="utf-8").read()
    assert str(tmp_path / "co.tif") in text and str(tmp_path / "ties.gpkg") in text
    assert "hsscl_" not in text.split("All details")[0]  # no work-folder path before the folded details
    assert text.index("RMSE") < text.index("Before / after") < text.index("All details")
