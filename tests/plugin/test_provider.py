"""The provider, its algorithms, parameter conversion and error handling (fake pipeline: plumbing only)."""
from __future__ import annotations

import os

import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

ALGS = ("hsscl:coregister", "hsscl:match", "hsscl:apply")


def test_three_algorithms_registered(provider):
    registry = QgsApplication.processingRegistry()
    assert registry.providerById("hsscl") is not None
    assert provider.name() == "HSSCL"
    assert not provider.icon().isNull()
    for alg_id in ALGS:
        alg = registry.algorithmById(alg_id)
        assert alg is not None, alg_id
        assert alg.group() and alg.groupId()
        assert alg.shortHelpString()
        assert not alg.icon().isNull()
        for param in alg.parameterDefinitions():
            assert param.help(), f"{alg_id}: parameter {param.name()} has no help text"
        assert alg.flags() & alg.FlagCanCancel
        assert alg.flags() & alg.FlagSupportsBatch


def test_coregister_parameters(provider):
    alg = QgsApplication.processingRegistry().algorithmById("hsscl:coregister")
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"REFERENCE", "TARGET", "REFERENCE_BANDS", "TARGET_BANDS", "REFERENCE_MODALITY", "TARGET_MODALITY",
            "TRANSFORM", "GRID", "DEVICE", "ADAPT", "EXTENT", "OUTPUT", "TIEPOINTS", "MATCHES",
            "REPORT"} <= names
    assert alg.parameterDefinition("ADAPT").defaultValue() is False
    assert alg.parameterDefinition("TRANSFORM").options()[0].startswith("Automatic")
    options = alg.parameterDefinition("TRANSFORM").options()
    # numbers saved in graphical models and batch files keep their meaning: the similarity was appended
    assert len(options) == 7 and options[1] == "Shift" and options[2] == "Affine"
    assert options[6].startswith("Similarity")
    assert alg.parameterDefinition("EXTENT").flags() & alg.parameterDefinition("EXTENT").FlagOptional


def test_config_conversion(provider, s1s2_pair, project):
    """Processing values -> CoregConfig, including extent reprojection to the reference CRS."""
    from hsscl.plugin.algorithms.coregister import CoregisterAlgorithm

    ref, tgt = s1s2_pair
    alg = CoregisterAlgorithm()
    alg.initAlgorithm()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    reference = QgsRasterLayer(ref, "ref")
    params = {"REFERENCE": ref, "TARGET": tgt, "REFERENCE_BANDS": [1, 3], "TARGET_MODALITY": 1,
              "TRANSFORM": 2, "GRID": 1, "DEVICE": 1, "ADAPT": True, "THREADS": 3, "SEED": 7,
              "EXTENT": "400500,401500,5096000,5099000 [EPSG:32631]"}
    assert alg.build_config({**params, "TRANSFORM": 6}, context, reference).transform == "similarity"
    config = alg.build_config(params, context, reference)
    assert config.transform == "affine" and config.grid == "target" and config.device == "cpu"
    assert config.adapt is True and config.threads == 3 and config.seed == 7
    assert config.ref_bands == (1, 3) and config.tgt_bands is None
    assert config.tgt_modality == "sar" and config.ref_modality == "auto"
    assert config.extent == pytest.approx((400500, 5096000, 401500, 5099000))
    # an extent given in another CRS is reprojected into the reference CRS
    params["EXTENT"] = "2.9,2.91,46.0,46.01 [EPSG:4326]"
    xmin, ymin, xmax, ymax = alg.build_config(params, context, reference).extent
    assert 300000 < xmin < xmax < 700000 and 5000000 < ymin < ymax < 5200000


def test_coregister_delivers_outputs(provider, fake_pipeline, s1s2_pair, tmp_path):
    import processing

    ref, tgt = s1s2_pair
    out = {k: str(tmp_path / v) for k, v in (("OUTPUT", "co.tif"), ("TIEPOINTS", "ties.gpkg"),
                                             ("MATCHES", "lines.shp"), ("REPORT", "report.html"))}
    res = processing.run("hsscl:coregister", {"REFERENCE": ref, "TARGET": tgt, **out})
    assert QgsRasterLayer(res["OUTPUT"], "r").isValid()
    ties = QgsVectorLayer(res["TIEPOINTS"], "t", "ogr")
    assert ties.isValid() and ties.featureCount() == 12 and "residual_px" in ties.fields().names()
    lines = QgsVectorLayer(res["MATCHES"], "m", "ogr")
    assert lines.isValid() and lines.geometryType() == 1  # lines
    assert os.path.isfile(res["REPORT"]) and "<svg" in open(res["REPORT"], encoding="utf-8").read()
    assert res["REPORT_JSON"].endswith("report.json") and os.path.isfile(res["REPORT_JSON"])
    assert os.path.isfile(res["CORRECTION"])
    assert res["RMSE_PX"] == pytest.approx(0.42) and res["N_TIEPOINTS"] == 12 and res["N_INLIERS"] == 10


def test_engine_error_becomes_processing_exception(provider, fake_pipeline, s1s2_pair, tmp_path):
    import processing

    from hsscl.engine.errors import NotEnoughMatchesError

    fake_pipeline.behaviour.fail = NotEnoughMatchesError("Only 3 reliable tie points were found.",
                                                         "Try the shift model or a larger extent.")
    ref, tgt = s1s2_pair
    with pytest.raises(QgsProcessingException, match="Only 3 reliable tie points.*shift model"):
        processing.run("hsscl:coregister", {"REFERENCE": ref, "TARGET": tgt, "OUTPUT": str(tmp_path / "o.tif"),
                                            "TIEPOINTS": str(tmp_path / "t.gpkg")})
    assert not any(tmp_path.iterdir()), "a failed run must leave no output"


def test_unusable_input_raises_clear_message(provider, fake_pipeline, tmp_path):
    import processing

    bad = tmp_path / "not_a_raster.tif"
    bad.write_text("hello")
    with pytest.raises(QgsProcessingException):
        processing.run("hsscl:coregister", {"REFERENCE": str(bad), "TARGET": str(bad),
                                            "OUTPUT": str(tmp_path / "o.tif"), "TIEPOINTS": str(tmp_path / "t.gpkg")})


class CancelAfter(QgsProcessingFeedback):
    def __init__(self, percent: float) -> None:
        super().__init__()
        self.percent = percent
        self.progressChanged.connect(self._maybe_cancel)

    def _maybe_cancel(self, value: float) -> None:
        if value >= self.percent:
            self.cancel()


def test_cancel_leaves_no_output(provider, fake_pipeline, s1s2_pair, tmp_path):
    import processing

    ref, tgt = s1s2_pair
    fake_pipeline.behaviour.steps = 20
    feedback = CancelAfter(30)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("hsscl:coregister", {"REFERENCE": ref, "TARGET": tgt, "OUTPUT": str(tmp_path / "o.tif"),
                                            "TIEPOINTS": str(tmp_path / "t.gpkg"),
                                            "REPORT": str(tmp_path / "r.html")}, feedback=feedback)
    assert not any(tmp_path.iterdir())


def test_missing_dependencies_block_execution(provider, monkeypatch, s1s2_pair, tmp_path):
    import processing

    from hsscl.plugin import deps

    monkeypatch.setattr(deps, "check", lambda: deps.DependencyStatus(("torch",), "/usr/bin/python3", "/p/pkgs"))
    alg = QgsApplication.processingRegistry().algorithmById("hsscl:coregister")
    ok, message = alg.canExecute()
    assert not ok and "torch" in message and '"/usr/bin/python3" -m pip install' in message
    assert "--target /p/pkgs" in message and message.endswith("torch==2.13.0")
    ref, tgt = s1s2_pair
    with pytest.raises(QgsProcessingException, match="pip install"):
        processing.run("hsscl:coregister", {"REFERENCE": ref, "TARGET": tgt, "OUTPUT": str(tmp_path / "o.tif"),
                                            "TIEPOINTS": str(tmp_path / "t.gpkg")})
