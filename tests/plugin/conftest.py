"""Test set-up of the plugin tests (pytest-qgis, offscreen, real data).

Run: ``QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/plugin -q``. pytest-qgis starts QGIS before
this file is read, so the platform must come from the environment; it is set here too for sub-processes.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
PROCESSING_PLUGINS = "/usr/share/qgis/python/plugins"
if PROCESSING_PLUGINS not in sys.path:
    sys.path.append(PROCESSING_PLUGINS)

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("HSSCL_DATA") or os.environ.get("HSSCL_SHARED_DATA") or _REPO.parent / "shared" / "data")
S1S2 = DATA / "gefolki_EvalGeFolki" / "S1S2"
BEN = DATA / "bigearthnet_example"


def _ben_pair(suffix: str) -> tuple[Path, Path] | None:
    # S2 B08 (near infrared) onto B04 (red): the 120 px S1/S2 pairs are too small for a reliable answer
    s1 = sorted(BEN.glob(f"BigEarthNet-S2-Example/*_{suffix}/*_B08.tif"))
    s2 = sorted(BEN.glob(f"BigEarthNet-S2-Example/*_{suffix}/*_B04.tif"))
    return (s2[0], s1[0]) if s1 and s2 else None


@pytest.fixture(scope="session")
def s1s2_pair() -> tuple[str, str]:
    """(reference = Sentinel-2 optical, target = Sentinel-1 SAR), 448 x 448, EPSG:32631."""
    ref, tgt = S1S2 / "S2_patch11.tif", S1S2 / "S1_patch11.tif"
    if not (ref.is_file() and tgt.is_file()):
        pytest.skip(f"shared data not found: {S1S2} (set HSSCL_DATA)")
    return str(ref), str(tgt)


@pytest.fixture(scope="session")
def ben_pairs() -> list[tuple[str, str]]:
    """Two BigEarthNet pairs (S2 B04 reference, S2 B08 target), 120 x 120."""
    pairs = [p for p in (_ben_pair("87_48"), _ben_pair("4_55")) if p]
    if len(pairs) < 2:
        pytest.skip(f"shared data not found: {BEN} (set HSSCL_DATA)")
    return [(str(a), str(b)) for a, b in pairs]


@pytest.fixture(scope="session")
def ben_sar_pair(tmp_path_factory):
    """BigEarthNet 36_85: (S2 B04 reference, S1 VV target misregistered by 0.5°, -1 %, (-12, -3) px, the true
    correction reference px -> target px), 120 x 120. CFOG alone is below the confidence threshold on this
    pair (measured); CFOG on the learned pre-filter, the default's second opinion, registers it."""
    import numpy as np
    from osgeo import gdal
    from scipy.ndimage import map_coordinates

    from hsscl.engine.geometry.transforms import Affine

    s2 = sorted(BEN.glob("BigEarthNet-S2-Example/*_36_85/*_B04.tif"))
    s1 = sorted(BEN.glob("BigEarthNet-S1-Example/*_36_85/*_VV.tif"))
    if not (s1 and s2):
        pytest.skip(f"BigEarthNet patch 36_85 not found under {BEN}")
    S = Affine.from_similarity(0.99, 0.5, -12.0, -3.0, center=(60.0, 60.0))  # target px p shows reference S(p)
    src = gdal.Open(str(s1[0]))
    yy, xx = np.mgrid[0:120, 0:120] + 0.5
    s = S(np.stack([xx.ravel(), yy.ravel()], 1))
    a = src.GetRasterBand(1).ReadAsArray().astype(np.float64)
    r = map_coordinates(a, [s[:, 1] - 0.5, s[:, 0] - 0.5], order=3, mode="constant", cval=np.nan)
    out = str(tmp_path_factory.mktemp("ben_sar") / "s1_vv_misregistered.tif")
    o = gdal.GetDriverByName("GTiff").Create(out, 120, 120, 1, gdal.GDT_Float32)
    o.SetGeoTransform(src.GetGeoTransform())
    o.SetProjection(src.GetProjection())
    o.GetRasterBand(1).SetNoDataValue(float("nan"))
    o.GetRasterBand(1).WriteArray(r.reshape(120, 120).astype(np.float32))
    o = src = None
    return str(s2[0]), out, S.inverse()


def pipeline_available() -> bool:
    return importlib.util.find_spec("hsscl.engine.pipeline") is not None


@pytest.fixture
def real_pipeline():
    if not pipeline_available():
        pytest.skip("hsscl.engine.pipeline is not in this checkout yet")
    from hsscl.engine import pipeline

    return pipeline


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Replace the engine pipeline by tests/plugin/fake_pipeline.py (documented API, instant results)."""
    import hsscl.engine

    from . import fake_pipeline as fake

    fake.behaviour.fail, fake.behaviour.delay, fake.behaviour.steps = None, 0.0, 5
    monkeypatch.setitem(sys.modules, "hsscl.engine.pipeline", fake)
    monkeypatch.setattr(hsscl.engine, "pipeline", fake, raising=False)
    return fake


@pytest.fixture
def provider(qgis_processing):
    """The HSSCL provider registered for the test (removed afterwards)."""
    from hsscl.plugin.provider import HSSCLProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("hsscl")
    if existing is not None:
        yield existing
        return
    prov = HSSCLProvider()
    assert registry.addProvider(prov)
    yield prov
    registry.removeProvider(prov)


@pytest.fixture
def project(qgis_new_project) -> QgsProject:
    return QgsProject.instance()


def add_raster(path: str, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name, "gdal")
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def wait_for(predicate, timeout: float = 300.0) -> bool:
    """Process Qt events until ``predicate()`` is true (tasks report back through the event loop)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        QgsApplication.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def engine(request):
    """Each Processing test runs with the stand-in pipeline (plumbing) and with the real engine."""
    return request.getfixturevalue("fake_pipeline" if request.param == "fake" else "real_pipeline")


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch):
    """A modal message box (e.g. the batch dialog reporting a failed row) would wait forever offscreen:
    answer it at once and record it, so a failing run fails the test instead of hanging the session."""
    from qgis.PyQt.QtWidgets import QMessageBox

    shown: list[str] = []

    def answer(*args, **kwargs):
        shown.append(" | ".join(str(a) for a in args[1:3]))
        return QMessageBox.Ok

    for name in ("critical", "warning", "information", "question"):
        monkeypatch.setattr(QMessageBox, name, staticmethod(answer))
    monkeypatch.setattr(QMessageBox, "exec_", lambda self: QMessageBox.Ok)
    return shown
