#!/usr/bin/env python3
"""Screenshots for the README / docs/plugin.md: the HSSCL dock next to a map canvas with the results of a real
run (Sentinel-1 SAR co-registered to Sentinel-2 optical, GeFolki patch 11).

Run under a virtual display: ``xvfb-run -a .venv/bin/python scripts/screenshot.py [--data DIR] [--out docs/img]``.
Writes ``dock_and_canvas.png`` (main window: canvas, the dock at 350 px, the residual table below the map),
``canvas_results.png`` (map only), ``residual_table.png`` and ``install_dialog.png`` (the dialog that installs the
engine's packages, after a run of a stand-in pip that prints what pip prints).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append("/usr/share/qgis/python/plugins")


class MiniInterface:
    """The parts of QgisInterface the dock uses."""

    def __init__(self, window, canvas, bar) -> None:
        self._window, self._canvas, self._bar = window, canvas, bar

    def mainWindow(self):  # noqa: N802
        return self._window

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        return self._bar

    def addDockWidget(self, area, dock):  # noqa: N802
        self._window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self._window.removeDockWidget(dock)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HSSCL_DATA", "/work/shared/data")))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--size", default="1500x820")
    args = parser.parse_args()
    ref = args.data / "gefolki_EvalGeFolki" / "S1S2" / "S2_patch11.tif"
    tgt = args.data / "gefolki_EvalGeFolki" / "S1S2" / "S1_patch11.tif"
    if not ref.is_file():
        print(f"screenshot: data not found: {ref}", file=sys.stderr)
        return 2

    from qgis.core import (
        QgsApplication,
        QgsLayerTreeModel,
        QgsProject,
        QgsRasterLayer,
        QgsSingleBandGrayRenderer,
    )
    from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QMainWindow, QSplitter, QVBoxLayout, QWidget

    app = QgsApplication([], True)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    from hsscl.plugin.dock import HSSCLDock
    from hsscl.plugin.provider import HSSCLProvider

    provider = HSSCLProvider()
    QgsApplication.processingRegistry().addProvider(provider)

    width, height = (int(v) for v in args.size.split("x"))
    window = QMainWindow()
    window.setWindowTitle("QGIS – HSSCL Co-register")
    central = QWidget()
    layout = QVBoxLayout(central)
    layout.setContentsMargins(0, 0, 0, 0)
    bar = QgsMessageBar()
    canvas = QgsMapCanvas()
    canvas.setCanvasColor(Qt.GlobalColor.white)
    project = QgsProject.instance()
    bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), canvas)  # noqa: F841 (keeps layers in sync)
    tree = QgsLayerTreeView()
    tree_model = QgsLayerTreeModel(project.layerTreeRoot(), tree)
    tree.setModel(tree_model)
    splitter = QSplitter()
    splitter.addWidget(tree)
    splitter.addWidget(canvas)
    splitter.setSizes([320, width - 320])
    layout.addWidget(bar)
    layout.addWidget(splitter)
    window.setCentralWidget(central)
    iface = MiniInterface(window, canvas, bar)

    reference = QgsRasterLayer(str(ref), "S2 optical")
    target = QgsRasterLayer(str(tgt), "S1 SAR")
    project.addMapLayers([target, reference])
    project.layerTreeRoot().findLayer(target.id()).setItemVisibilityChecked(False)

    dock = HSSCLDock(iface, window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.resize(width, height)
    window.show()
    window.resizeDocks([dock], [350], Qt.Orientation.Horizontal)
    dock.referenceCombo.setLayer(reference)
    dock.targetCombo.setLayer(target)
    dock.deviceCombo.setCurrentIndex(dock.deviceCombo.findData("cpu"))
    canvas.setDestinationCrs(reference.crs())
    canvas.setExtent(reference.extent())

    done: list[bool] = []
    dock.finished.connect(lambda ok, res: done.append(ok))
    if not dock.run():
        print(f"screenshot: could not start: {dock.statusLabel.text()}", file=sys.stderr)
        return 1
    end = time.monotonic() + 900
    while not done and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    if not done or not done[0]:
        print(f"screenshot: the run failed: {dock.statusLabel.text()}", file=sys.stderr)
        return 1
    # show the SAR result over the optical reference, half transparent, and the tie points on top
    coreg = dock.last_layers.get("OUTPUT")
    if coreg is not None:
        gray = QgsSingleBandGrayRenderer(coreg.dataProvider(), 1)
        coreg.setRenderer(gray)
        coreg.setDefaultContrastEnhancement()
        coreg.renderer().setOpacity(0.5)
    tree.expandAll()
    if dock.residuals is not None:  # the residual table below the map, worst points first
        dock.residuals.setMinimumHeight(240)
        window.resizeDocks([dock.residuals], [240], Qt.Orientation.Vertical)
        dock.residuals.table.sortItems(1, Qt.SortOrder.DescendingOrder)
        dock.residuals.table.selectRow(0)
    canvas.setExtent(reference.extent())
    canvas.refreshAllLayers()
    for _ in range(200):
        app.processEvents()
        time.sleep(0.02)
    canvas.waitWhileRendering()
    app.processEvents()

    args.out.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(args.out / "dock_and_canvas.png"))
    canvas.grab().save(str(args.out / "canvas_results.png"))
    if dock.residuals is not None:
        dock.residuals.grab().save(str(args.out / "residual_table.png"))
    install_dialog(app, window, args.out / "install_dialog.png")
    print(f"screenshot: wrote {args.out / 'dock_and_canvas.png'}, canvas_results.png, residual_table.png, "
          "install_dialog.png")
    dock.cleanup()
    QgsApplication.processingRegistry().removeProvider(provider)
    sys.stdout.flush()
    os._exit(0)  # skip Qt/QGIS tear-down order issues at interpreter exit


def install_dialog(app, window, path: Path) -> None:
    """The install dialog as a user meets it with torch and OpenCV missing, after a stand-in pip run (no network)."""
    import tempfile

    from hsscl.plugin import deps
    from hsscl.plugin.install import InstallDialog

    status = deps.DependencyStatus(("cv2", "torch"), deps.python_executable(), deps.packages_dir())
    dialog = InstallDialog(status, window)
    fake = Path(tempfile.mkdtemp()) / "pip_standin.py"
    fake.write_text(
        "import time\n"
        "lines = ['Looking in indexes: https://download.pytorch.org/whl/cpu, https://pypi.org/simple',\n"
        "         'Collecting torch==2.13.0', '  Downloading torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl (190 MB)',\n"
        "         'Collecting opencv-python-headless', '  Downloading opencv_python_headless-4.12.0-cp37-abi3-"
        "manylinux_2_17_x86_64.whl (50 MB)', 'Collecting filelock (from torch==2.13.0)',\n"
        "         'Installing collected packages: filelock, opencv-python-headless, torch']\n"
        "for line in lines:\n    print(line, flush=True)\n    time.sleep(0.05)\n"
        "time.sleep(60)\n")  # still "installing" when the picture is taken; cancelled afterwards
    dialog.command_override = [sys.executable, str(fake)]
    dialog.show()
    dialog.install()
    end = time.monotonic() + 30
    while "Installing collected" not in dialog.logText.toPlainText() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    dialog.grab().save(str(path))
    dialog.reject()


if __name__ == "__main__":
    sys.exit(main())
