"""HSSCLPlugin: registers the Processing provider and the dock; leaves nothing behind on unload."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from . import deps
from .algorithms.base import ICON
from .provider import HSSCLProvider

MENU = "&HSSCL Co-register"


class HSSCLPlugin:
    """QGIS plugin object returned by ``classFactory``. ``iface`` is None under ``qgis_process``."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: HSSCLProvider | None = None
        self.action: QAction | None = None
        self.install_action: QAction | None = None
        self.toolbar: QToolBar | None = None
        self.dock = None
        # packages installed by the plugin (Install… in the panel) live in its folder of the QGIS profile;
        # appended to sys.path (after QGIS's own), removed again on unload
        deps.activate()

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
        # the plugin's own toolbar: the Raster toolbar is hidden in a fresh profile
        toolbar = self.iface.addToolBar("HSSCL Co-register")
        toolbar.setObjectName("HSSCLToolbar")
        toolbar.addAction(self.action)
        self.toolbar = toolbar
        self.iface.addPluginToRasterMenu(MENU, self.action)
        self.install_action = QAction("Install Python packages…", self.iface.mainWindow())
        self.install_action.setObjectName("hssclInstallPackages")
        self.install_action.triggered.connect(self.show_install_dialog)
        self.iface.addPluginToRasterMenu(MENU, self.install_action)

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

    def show_install_dialog(self) -> None:
        from .install import InstallDialog

        InstallDialog(deps.check(), parent=self.iface.mainWindow()).exec_()
        if self.dock is not None:
            self.dock.update_dependency_state()

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
        if self.install_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.install_action)
            self.install_action.deleteLater()
            self.install_action = None
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU, self.action)
            if self.toolbar is not None:
                self.toolbar.removeAction(self.action)
            self.action.setParent(None)
            self.action.deleteLater()
            self.action = None
        if self.toolbar is not None:
            window = self.iface.mainWindow()
            if hasattr(window, "removeToolBar"):
                window.removeToolBar(self.toolbar)
            self.toolbar.setParent(None)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        deps.deactivate()
