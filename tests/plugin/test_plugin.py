"""Plugin lifecycle: load, unload (nothing left behind), reload; QGIS start-up stays light."""
from __future__ import annotations

import configparser
import subprocess
import sys

import pytest
from qgis.core import QgsApplication
from qgis.gui import QgsMapToolPan

from .conftest import ROOT


@pytest.fixture
def plugin(qgis_iface, qgis_processing):
    import hsscl

    plugin = hsscl.classFactory(qgis_iface)
    plugin.initGui()
    yield plugin
    plugin.unload()


def _registered() -> bool:
    return QgsApplication.processingRegistry().providerById("hsscl") is not None


def test_load_registers_provider_and_action(plugin, qgis_iface):
    assert _registered()
    assert plugin.action is not None and plugin.action.isCheckable()
    assert qgis_iface.mainWindow().findChild(type(plugin.action), "hssclShowDock") is plugin.action


def test_unload_leaves_nothing_behind(qgis_iface, qgis_processing, qgis_canvas):
    from qgis.PyQt.QtWidgets import QDockWidget

    import hsscl

    plugin = hsscl.classFactory(qgis_iface)
    plugin.initGui()
    dock = plugin.show_dock()
    dock.drawExtentButton.setChecked(True)  # our map tool active
    assert qgis_canvas.mapTool() is dock.extent_tool
    plugin.unload()
    QgsApplication.processEvents()
    assert not _registered()
    assert plugin.dock is None and plugin.action is None and plugin.provider is None
    assert qgis_canvas.mapTool() is None or isinstance(qgis_canvas.mapTool(), QgsMapToolPan)
    assert qgis_iface.mainWindow().findChild(QDockWidget, "HSSCLDock") is None
    from qgis.PyQt.QtWidgets import QAction

    assert qgis_iface.mainWindow().findChild(QAction, "hssclShowDock") is None


def test_reload(qgis_iface, qgis_processing):
    import hsscl

    for _ in range(3):
        plugin = hsscl.classFactory(qgis_iface)
        plugin.initGui()
        plugin.show_dock()
        assert _registered()
        plugin.unload()
        assert not _registered()


def test_processing_only_start_without_iface(qgis_processing):
    """qgis_process calls classFactory(None) and initProcessing() only."""
    import hsscl

    plugin = hsscl.classFactory(None)
    plugin.initProcessing()
    plugin.initGui()  # harmless without an interface
    assert _registered()
    plugin.unload()
    assert not _registered()


def test_start_up_imports_no_heavy_module():
    code = (f"import sys; sys.path.insert(0, {str(ROOT.parent)!r}); import hsscl, hsscl.plugin.main, hsscl.plugin.provider; "
            "heavy = [m for m in ('torch', 'torch_geometric', 'hsscl.engine.pipeline') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_metadata_complete():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    g = meta["general"]
    assert g["name"] == "HSSCL Co-register"
    assert g["version"] == "0.1.0"
    assert g["qgisMinimumVersion"] == "3.22"
    assert g["supportsQt6"] == "True"
    assert g["hasProcessingProvider"] == "yes"
    assert g["license"] == "GPL-2.0-or-later"
    for key in ("description", "about", "tracker", "repository", "homepage", "tags", "author", "email", "icon"):
        assert g.get(key), key
    assert (ROOT / g["icon"]).is_file()


def test_no_direct_pyqt_imports():
    """Qt6-ready: the plugin imports Qt only through qgis.PyQt."""
    offenders = [p for p in (ROOT / "plugin").rglob("*.py")
                 if "from PyQt5" in p.read_text() or "import PyQt5" in p.read_text()]
    assert not offenders


def test_own_toolbar_and_package_folder_on_sys_path(qgis_iface, qgis_processing, tmp_path, monkeypatch):
    """The button lives in the plugin's own toolbar (the Raster toolbar is hidden in a fresh profile); the
    package folder of the profile is on sys.path while the plugin is loaded, and removed on unload."""
    from qgis.PyQt.QtWidgets import QToolBar

    import hsscl
    from hsscl.plugin import deps

    folder = tmp_path / "pkgs"
    folder.mkdir()
    monkeypatch.setenv(deps.ENV_PACKAGES, str(folder))
    before = list(sys.path)
    plugin = hsscl.classFactory(qgis_iface)
    assert sys.path[-1] == str(folder) and sys.path[:-1] == before  # appended: QGIS's own packages first
    plugin.initGui()
    toolbar = qgis_iface.mainWindow().findChild(QToolBar, "HSSCLToolbar")
    assert toolbar is not None and plugin.action in toolbar.actions()
    assert plugin.install_action is not None
    plugin.unload()
    assert sys.path == before
