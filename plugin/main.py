"""HSSCLPlugin: registers the Processing provider and the dock; leaves nothing behind on unload."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .algorithms.base import ICON
from .provider import HSSCLProvider

MENU = "&HSSCL Co-register"


class HSSCLPlugin:
    """QGIS plugin object returned by ``classFactory``. ``iface`` is None under ``qgis_process``."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: HSSCLProvider | None = None
        self.action: QAction | None = None
        self.dock = None

    # Processing (also called by qgis_process, which never calls initGui)
    def initProcessing(self) -> None:  # noqa: N802
        if self.provider is None:
            self.provider = HSSCLProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        self.action = QAction(QIcon(ICON), "HSSCL Co-register", self.iface.mainWindow())
        self.action.setObjectName("hssclShowDock")
        self.action.setCheckable(True)
        self.action.setToolTip("Show the HSSCL Co-register panel (multimodal raster co-registration)")
        self.action.toggled.connect(self._toggle_dock)
        self.iface.addRasterToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)

    def show_dock(self):
        """Create the dock on first use (keeps QGIS start-up light) and show it."""
        if self.dock is None:
            from .dock import HSSCLDock

            self.dock = HSSCLDock(self.iface, parent=self.iface.mainWindow())
            self.dock.setObjectName("HSSCLDock")
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self._dock_visibility)
        self.dock.show()
        self.dock.raise_()
        return self.dock

    def _toggle_dock(self, checked: bool) -> None:
        if checked:
            self.show_dock()
        elif self.dock is not None:
            self.dock.hide()

    def _dock_visibility(self, visible: bool) -> None:
        if self.action is not None and self.action.isChecked() != visible:
            self.action.blockSignals(True)
            self.action.setChecked(visible)
            self.action.blockSignals(False)

    def unload(self) -> None:
        if self.dock is not None:
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.setParent(None)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removeRasterToolBarIcon(self.action)
            self.iface.removePluginRasterMenu(MENU, self.action)
            self.action.setParent(None)
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
