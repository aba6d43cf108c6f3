"""The "HSSCL Co-register" dock: builds the parameters of ``hsscl:coregister`` / ``hsscl:apply`` and runs
them in the background with :class:`QgsProcessingAlgRunnerTask`. It never computes anything itself."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRectangle,
)
from qgis.gui import QgsDockWidget, QgsFileWidget, QgsMessageBarItem
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, QTimer, QUrl, pyqtSignal, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QApplication, QCheckBox, QComboBox, QPushButton

from . import deps
from .algorithms.base import DEVICES, GRIDS, MODALITIES, TRANSFORMS
from .compat import POINT_LAYERS, RASTER_LAYERS
from .hints import guess_modality, hint_text
from .layers import add_raster, add_results, set_visible
from .settings import PluginSettings

if TYPE_CHECKING:
    from .install import InstallDialog
    from .maptool import MatchExtentTool
    from .pointmatch import AddTiePointTool, PointMatchTask
    from .residuals import ResidualTable

UI_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "ui", "dock.ui")
FORM_CLASS, _ = uic.loadUiType(UI_FILE)
TITLE = "HSSCL Co-register"


class RecordingFeedback(QgsProcessingFeedback):
    """Feedback that remembers reported errors (QgsProcessingAlgRunnerTask reports the exception there) and the
    current stage text (read by the dock's status line; written from the worker thread, a plain str)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []
        self.stage = ""

    def setProgressText(self, text: str) -> None:  # noqa: N802 (Qt name)
        self.stage = text
        super().setProgressText(text)

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
        self.errors.append(error)
        super().reportError(error, fatalError)


class HSSCLDock(QgsDockWidget, FORM_CLASS):  # type: ignore[valid-type, misc]  # uic.loadUiType: no stubs
    """Dock widget. ``finished(ok, results)`` is emitted when a background run ends (for tests/scripts)."""

    finished = pyqtSignal(bool, dict)

    def __init__(self, iface, parent=None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.iface = iface
        self.canvas = iface.mapCanvas() if iface is not None else None
        self.task: QgsProcessingAlgRunnerTask | None = None
        self.context: QgsProcessingContext | None = None
        self.feedback: RecordingFeedback | None = None
        self._run_info: dict[str, Any] = {}
        self.extent: tuple[QgsRectangle, QgsCoordinateReferenceSystem] | None = None
        self.extent_tool: MatchExtentTool | None = None
        self.last_results: dict = {}
        self.last_layers: dict = {}
        self.last_target: QgsMapLayer | None = None
        self.report_path = ""
        self.message_texts: tuple[str, str] = ("", "")
        self.install_dialog: InstallDialog | None = None
        self.residuals: ResidualTable | None = None  # the residual table dock, created on first results

        for combo in (self.referenceModalityCombo, self.targetModalityCombo):
            for value, label in MODALITIES:
                combo.addItem(label.split(" (")[0], value)
        self.graphCheck = QCheckBox("Graph refinement (optional)", self)
        self.graphCheck.setObjectName("graphCheck")
        row, _role = self.optionsLayout.getWidgetPosition(self.adaptCheck)
        self.optionsLayout.insertRow(row + 1, self.graphCheck)
        self.guessCheck = QCheckBox("Keep best guess", self)
        self.guessCheck.setObjectName("guessCheck")
        self.guessCheck.setToolTip("When no alignment reaches the confidence threshold, write the best candidate "
                                   "anyway, marked low-confidence, so that its tie points can be reviewed")
        self.optionsLayout.insertRow(row + 2, self.guessCheck)
        self.adaptCheck.setToolTip("Fine-tune a copy of the descriptor network on this pair before matching "
                                   "again; the adapted result is kept only when it is more confident")
        self.residualsButton = QPushButton("Residual table", self)
        self.residualsButton.setObjectName("residualsButton")
        self.residualsButton.setToolTip("Tie points with their residuals beside the map: sort, select, delete or "
                                        "switch points off; the fit and RMSE update as you edit")
        row, _role = self.reviewLayout.getWidgetPosition(self.applyButton)
        self.reviewLayout.insertRow(row, self.residualsButton)
        self.residualsButton.clicked.connect(lambda: self.show_residuals())
        self.addPointButton = QPushButton("Add tie point…", self)
        self.addPointButton.setObjectName("addPointButton")
        self.addPointButton.setCheckable(True)
        self.addPointButton.setToolTip("Click a point on the reference: its partner in the target is searched around "
                                       "the current model and added as a tie point (the fit updates)")
        self.reviewLayout.insertRow(row + 1, self.addPointButton)
        self.addPointButton.toggled.connect(self._add_point_mode)
        self.point_tool: AddTiePointTool | None = None
        self.point_task: PointMatchTask | None = None
        self.tiePointsCombo.layerChanged.connect(self._review_layer_changed)
        for form in (self.optionsLayout, self.reviewLayout, self.settingsLayout):  # fits a 350 px dock
            form.setRowWrapPolicy(form.RowWrapPolicy.WrapLongRows)

        for combo in (self.referenceCombo, self.targetCombo, self.applyRasterCombo):
            combo.setFilters(RASTER_LAYERS)
        self.tiePointsCombo.setFilters(POINT_LAYERS)
        self.tiePointsCombo.setAllowEmptyLayer(True)
        for combo, pairs in ((self.transformCombo, TRANSFORMS), (self.gridCombo, GRIDS),
                             (self.deviceCombo, DEVICES), (self.defaultDeviceCombo, DEVICES)):
            for value, label in pairs:  # short text (fits a 350 px dock), the whole label as tooltip
                combo.addItem(label.split(" (")[0], value)
                combo.setItemData(combo.count() - 1, label, Qt.ItemDataRole.ToolTipRole)
        for combo in (self.referenceCombo, self.targetCombo, self.applyRasterCombo, self.tiePointsCombo,
                      self.transformCombo, self.gridCombo, self.deviceCombo, self.defaultDeviceCombo,
                      self.referenceModalityCombo, self.targetModalityCombo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.outputFolder.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.outputFolder.lineEdit().setPlaceholderText("temporary folder")
        self.weightsWidget.setFilter("Weights (*.safetensors)")
        self.weightsWidget.lineEdit().setPlaceholderText("bundled weights")
        self._load_settings()

        self.referenceCombo.layerChanged.connect(self._update_hints)
        self.targetCombo.layerChanged.connect(self._update_hints)
        self.targetCombo.layerChanged.connect(self._default_apply_raster)
        self.runButton.clicked.connect(self.run)
        self.cancelButton.clicked.connect(self.cancel)
        self.applyButton.clicked.connect(self.apply_tiepoints)
        self.drawExtentButton.toggled.connect(self._draw_extent)
        self.clearExtentButton.clicked.connect(self.clear_extent)
        self.copyCommandButton.clicked.connect(self._copy_command)
        self.installButton.clicked.connect(self.show_install_dialog)
        self.compareButton.toggled.connect(self.show_original)
        QgsProject.instance().layersAdded.connect(self._choose_defaults)
        self.defaultDeviceCombo.currentIndexChanged.connect(self._save_settings)
        self.threadsSpin.valueChanged.connect(self._save_settings)
        self.weightsWidget.fileChanged.connect(self._save_settings)

        self._choose_defaults()
        self._default_apply_raster()
        self._update_hints()
        self.update_dependency_state()

    # ---- state --------------------------------------------------------------------------------------------
    def update_dependency_state(self) -> deps.DependencyStatus:
        """Show what to install when torch & co. are missing, and disable Run/Apply."""
        status = deps.check()
        self.dependencies = status
        self.depsFrame.setVisible(not status.ok)
        self.depsLabel.setText(status.message)
        self.depsCommand.setPlainText(status.install_command)
        self.depsCommand.setVisible(bool(status.install_command))
        self.copyCommandButton.setVisible(bool(status.install_command))
        self.installButton.setVisible(bool(status.install_command))
        graph_ok = not status.graph_note
        self.graphCheck.setEnabled(graph_ok)
        if not graph_ok:
            self.graphCheck.setChecked(False)
        self.graphCheck.setToolTip("Prune and refine the tie points with the match graph network before the fit "
                                   "(no clear gain measured yet)." if graph_ok else status.graph_note)
        self._set_running(self.is_running())
        return status

    def show_install_dialog(self):
        """The install dialog (pip in a background task); the panel re-checks the packages when it ends."""
        from .install import InstallDialog

        if self.install_dialog is None:
            self.install_dialog = InstallDialog(self.dependencies if hasattr(self, "dependencies")
                                                else deps.check(), parent=self)
            self.install_dialog.finished_install.connect(lambda _ok: self.update_dependency_state())
        self.install_dialog.show()
        self.install_dialog.raise_()
        return self.install_dialog

    def _choose_defaults(self, *_args) -> None:
        """Reference and target different, chosen by modality where possible (SAR as the target, an optical or
        multispectral raster as the reference); a choice the user made (two different layers) is kept."""
        reference, target = self.referenceCombo.currentLayer(), self.targetCombo.currentLayer()
        if reference is not None and target is not None and reference.id() != target.id():
            return
        root = QgsProject.instance().layerTreeRoot()
        rasters = [n.layer() for n in root.findLayers()
                   if n.layer() is not None and n.layer().type() == QgsMapLayer.LayerType.RasterLayer]
        if len(rasters) < 2:
            return
        kinds = {layer.id(): guess_modality(layer)[0] for layer in rasters}
        sar = [layer for layer in rasters if kinds[layer.id()] == "sar"]
        other = [layer for layer in rasters if kinds[layer.id()] != "sar"]
        if sar and other:
            reference, target = other[0], sar[0]
        else:
            reference = reference or rasters[0]
            target = next(layer for layer in rasters if layer.id() != reference.id())
        self.referenceCombo.setLayer(reference)
        self.targetCombo.setLayer(target)

    def is_running(self) -> bool:
        return self.task is not None

    def _set_running(self, running: bool) -> None:
        ok = getattr(self, "dependencies", None) is None or self.dependencies.ok
        self.runButton.setEnabled(ok and not running)
        self.applyButton.setEnabled(ok and not running)
        self.cancelButton.setEnabled(running)
        if not ok:
            self.runButton.setToolTip("Install the missing Python packages first (see above).")
        else:
            self.runButton.setToolTip("Run HSSCL Co-register in the background")

    def _update_hints(self, *_args) -> None:
        for combo, label in ((self.referenceCombo, self.referenceHint), (self.targetCombo, self.targetHint)):
            text, tip = hint_text(combo.currentLayer())
            label.setText(text)
            label.setToolTip(tip)

    def _default_apply_raster(self, *_args) -> None:
        if self.targetCombo.currentLayer() is not None:
            self.applyRasterCombo.setLayer(self.targetCombo.currentLayer())

    def _copy_command(self) -> None:
        QApplication.clipboard().setText(self.depsCommand.toPlainText())

    # ---- settings -----------------------------------------------------------------------------------------
    def _load_settings(self) -> None:
        s = PluginSettings.load()
        for combo in (self.defaultDeviceCombo, self.deviceCombo):
            combo.setCurrentIndex(max(0, combo.findData(s.device)))
        self.threadsSpin.setValue(s.threads)
        self.weightsWidget.setFilePath(s.weights)

    def _save_settings(self, *_args) -> None:
        PluginSettings(device=self.defaultDeviceCombo.currentData() or "auto",
                       threads=self.threadsSpin.value(),
                       weights=self.weightsWidget.filePath() or "").save()

    # ---- extent tool --------------------------------------------------------------------------------------
    def _draw_extent(self, checked: bool) -> None:
        if self.canvas is None:
            return
        if self.extent_tool is None:
            from .maptool import MatchExtentTool

            self.extent_tool = MatchExtentTool(self.canvas)
            self.extent_tool.extentDrawn.connect(self.set_extent)
            self.extent_tool.deactivated.connect(lambda: self.drawExtentButton.setChecked(False))
        if checked:
            self.canvas.setMapTool(self.extent_tool)
        elif self.canvas.mapTool() is self.extent_tool:
            self.canvas.unsetMapTool(self.extent_tool)

    @pyqtSlot(QgsRectangle, QgsCoordinateReferenceSystem)
    def set_extent(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        self.extent = (QgsRectangle(rect), QgsCoordinateReferenceSystem(crs))
        unit = f" ({crs.authid()})" if crs.isValid() else ""
        self.extentLabel.setText(f"{rect.xMinimum():.6g}, {rect.yMinimum():.6g} – "
                                 f"{rect.xMaximum():.6g}, {rect.yMaximum():.6g}{unit}")
        if self.extent_tool is not None:
            self.extent_tool.show_extent(rect)
        self.drawExtentButton.setChecked(False)

    def clear_extent(self) -> None:
        self.extent = None
        self.extentLabel.setText("whole overlap")
        if self.extent_tool is not None:
            self.extent_tool.show_extent(None)

    def extent_parameter(self) -> str | None:
        if self.extent is None:
            return None
        rect, crs = self.extent
        suffix = f" [{crs.authid()}]" if crs.isValid() and crs.authid() else ""
        return f"{rect.xMinimum()},{rect.xMaximum()},{rect.yMinimum()},{rect.yMaximum()}{suffix}"

    # ---- parameters ---------------------------------------------------------------------------------------
    def _output(self, name: str) -> str:
        folder = self.outputFolder.filePath().strip()
        if not folder:
            return QgsProcessing.TEMPORARY_OUTPUT
        os.makedirs(folder, exist_ok=True)
        return _unused_path(os.path.join(folder, name))

    def coregister_parameters(self) -> dict[str, Any]:
        reference, target = self.referenceCombo.currentLayer(), self.targetCombo.currentLayer()
        if reference is None or target is None:
            raise ValueError("Choose a reference and a target raster.")
        if reference.id() == target.id():
            raise ValueError("Reference and target are the same layer.")
        stem = _safe(target.name())
        return {
            "REFERENCE": reference.id(),
            "TARGET": target.id(),
            "REFERENCE_MODALITY": max(0, self.referenceModalityCombo.currentIndex()),
            "TARGET_MODALITY": max(0, self.targetModalityCombo.currentIndex()),
            "GRAPH": 1 if self.graphCheck.isChecked() else 0,
            "TRANSFORM": self.transformCombo.currentIndex(),
            "GRID": self.gridCombo.currentIndex(),
            "DEVICE": self.deviceCombo.currentIndex(),
            "ADAPT": self.adaptCheck.isChecked(),
            "KEEP_BEST_GUESS": self.guessCheck.isChecked(),
            "EXTENT": self.extent_parameter(),
            "THREADS": self.threadsSpin.value(),
            "WEIGHTS": self.weightsWidget.filePath() or None,
            "OUTPUT": self._output(f"{stem}_coregistered.tif"),
            "TIEPOINTS": self._output(f"{stem}_tiepoints.gpkg"),
            "MATCHES": self._output(f"{stem}_matches.gpkg"),
            "REPORT": self._output(f"{stem}_report.html"),
        }

    def apply_parameters(self) -> dict[str, Any]:
        ties, raster = self.tiePointsCombo.currentLayer(), self.applyRasterCombo.currentLayer()
        reference = self.referenceCombo.currentLayer()
        if ties is None or raster is None or reference is None:
            raise ValueError("Choose a tie point layer, the reference and the raster to correct.")
        selected = ties.selectedFeatureCount() > 0
        return {
            "TIEPOINTS": QgsProcessingFeatureSourceDefinition(ties.id(), selected),
            "REFERENCE": reference.id(),
            "RASTER": raster.id(),
            "TRANSFORM": self.transformCombo.currentIndex(),
            "OUTPUT": self._output(f"{_safe(raster.name())}_corrected.tif"),
        }

    # ---- running ------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Start ``hsscl:coregister`` in the background. Returns False when it could not start."""
        try:
            params = self.coregister_parameters()
        except (ValueError, OSError) as err:
            self._message(str(err), Qgis.MessageLevel.Warning)
            return False
        return self._start("hsscl:coregister", params, kind="coregister")

    def apply_tiepoints(self) -> bool:
        """Start ``hsscl:apply`` with the (edited / selected) tie points in the background."""
        try:
            params = self.apply_parameters()
        except (ValueError, OSError) as err:
            self._message(str(err), Qgis.MessageLevel.Warning)
            return False
        return self._start("hsscl:apply", params, kind="apply")

    def _start(self, alg_id: str, params: dict[str, Any], kind: str) -> bool:
        if self.is_running() or not self.update_dependency_state().ok:
            return False
        alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
        if alg is None:
            self._message(f"The Processing algorithm {alg_id} is not registered.", Qgis.MessageLevel.Critical)
            return False
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = RecordingFeedback()
        self._run_info = {
            "kind": kind,
            "reference": self.referenceCombo.currentLayer(),
            "target": self.targetCombo.currentLayer(),
            "target_name": self.targetCombo.currentLayer().name() if self.targetCombo.currentLayer() else "",
            "raster": self.applyRasterCombo.currentLayer(),
        }
        self.task = QgsProcessingAlgRunnerTask(alg, params, self.context, self.feedback)
        self.task.executed.connect(self._on_executed)
        self.task.progressChanged.connect(self._on_progress)
        self.progressBar.setValue(0)
        self._run_info["title"] = "Co-registering" if kind == "coregister" else "Applying the tie points"
        self.statusLabel.setText(self._run_info["title"] + "…")
        self._set_running(True)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def cancel(self) -> None:
        if self.task is not None:
            self.statusLabel.setText("Cancelling…")
            self.task.cancel()

    @pyqtSlot(float)
    def _on_progress(self, value: float) -> None:
        self.progressBar.setValue(int(value))
        stage = self.feedback.stage if self.feedback is not None else ""
        if self.task is not None and not (self.feedback is not None and self.feedback.isCanceled()):
            title = self._run_info.get("title", "Running")
            self.statusLabel.setText(f"{title}: {stage} ({value:.0f} %)" if stage else f"{title}… ({value:.0f} %)")

    @pyqtSlot(bool, "QVariantMap")
    def _on_executed(self, ok: bool, results: dict) -> None:
        feedback, info = self.feedback, self._run_info
        cancelled = feedback is not None and feedback.isCanceled()
        self.task = None
        self._set_running(False)
        if ok and not cancelled:
            self.progressBar.setValue(100)
            self._add_results(info, results)
        elif cancelled:
            self.progressBar.setValue(0)
            self.statusLabel.setText("Cancelled: nothing was written.")
            self._message("Cancelled: nothing was written.", Qgis.MessageLevel.Info)
        else:
            errors = feedback.errors if feedback is not None else []
            short = errors[-1] if errors else "The run failed."
            details = feedback.textLog() if feedback is not None else ""
            self.statusLabel.setText(short)
            self._message(short, Qgis.MessageLevel.Critical, details)
        self.finished.emit(bool(ok and not cancelled), dict(results or {}))

    def _add_results(self, info: dict, results: dict) -> None:
        self.last_results = dict(results)
        if info["kind"] == "apply":
            raster = info.get("raster")
            name = f"{raster.name() if raster else 'raster'} corrected"
            layer = add_raster(results.get("OUTPUT", ""), name, info.get("reference"))
            self.last_layers = {"OUTPUT": layer} if layer is not None else {}
            text = f"Applied {results.get('N_TIEPOINTS', 0):.0f} tie points"
            rmse = results.get("RMSE_PX")
            if rmse is not None and rmse == rmse:
                text += f" (RMSE {rmse:.2f} px)"
        else:
            target = info.get("target")
            self.last_layers = add_results(results, target or info.get("reference"), info.get("target_name", ""),
                                           hide_anchor=target is not None)
            self.last_target = target
            if "TIEPOINTS" in self.last_layers:
                self.tiePointsCombo.setLayer(self.last_layers["TIEPOINTS"])
                self.show_residuals(self.last_layers["TIEPOINTS"], _report_value(results, "model"))
            text = (f"RMSE {results.get('RMSE_PX', float('nan')):.2f} px, "
                    f"{results.get('N_TIEPOINTS', 0):.0f} tie points "
                    f"({results.get('N_INLIERS', 0):.0f} inliers)")
            confidence = _confidence(results)
            if confidence is not None:
                text += f", confidence {100 * confidence:.0f} %"
            if "second opinion" in str(results.get("DESCRIPTOR", "")):
                text += f"; descriptor {results['DESCRIPTOR']}: CFOG alone was below the confidence threshold"
            if results.get("LOW_CONFIDENCE"):
                text = ("LOW CONFIDENCE: no alignment reached the threshold; the best guess was kept. Review its tie "
                        f"points in the residual table before using it. {text}")
            self.compareButton.setEnabled("OUTPUT" in self.last_layers and target is not None)
            self.compareButton.blockSignals(True)
            self.compareButton.setChecked(False)
            self.compareButton.blockSignals(False)
        self.report_path = str(results.get("REPORT") or "")
        if self.report_path and os.path.isfile(self.report_path):
            url = QUrl.fromLocalFile(self.report_path).toString()
            self.reportLabel.setText(f'<a href="{url}">Open the report</a>')
            self.reportLabel.setToolTip(self.report_path)
        else:
            self.reportLabel.setText("")
        self.statusLabel.setText(text)
        # pushed a moment later: QGIS's own "Task complete" notice arrives after the task's result and would
        # otherwise cover ours ("1 more")
        self.message_texts = (text, "Open report" if self.report_path else "")
        report = self.report_path
        level = Qgis.MessageLevel.Warning if results.get("LOW_CONFIDENCE") else Qgis.MessageLevel.Success
        QTimer.singleShot(300, lambda: self._message(text, level, report=report))

    def show_residuals(self, layer=None, model: Any = None):
        """The residual table docked beside the map, for ``layer`` (default: the review's tie point layer); the
        model re-fitted live is the engine's choice (``model`` from report.json) or the panel's transform."""
        from .residuals import ResidualTable

        layer = layer or self.tiePointsCombo.currentLayer()
        kind = model.get("kind") if isinstance(model, dict) else None
        kind = kind or self.transformCombo.currentData() or "affine"
        if self.residuals is None:
            self.residuals = ResidualTable(self.iface.mainWindow() if self.iface is not None else None)
            if self.iface is not None:
                self.iface.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.residuals)
        self.residuals.set_layer(layer, kind)
        self.residuals.show()
        return self.residuals

    # ---- interactive matching -----------------------------------------------------------------------------
    def _add_point_mode(self, checked: bool) -> None:
        if self.canvas is None:
            return
        if self.point_tool is None:
            from .pointmatch import AddTiePointTool

            self.point_tool = AddTiePointTool(self.canvas)
            self.point_tool.clicked.connect(self.match_at)
            self.point_tool.moved.connect(self.move_end)
            self.point_tool.ends_fn = self.tiepoint_ends
            self.point_tool.deactivated.connect(lambda: self.addPointButton.setChecked(False))
        if checked:
            self.canvas.setMapTool(self.point_tool)
        elif self.canvas.mapTool() is self.point_tool:
            self.canvas.unsetMapTool(self.point_tool)

    def _grid(self, layer):
        """The engine's pixel grid of a raster layer (cached by source)."""
        from ..engine.io.raster import open_raster_info

        cache = self.__dict__.setdefault("_grids", {})
        path = layer.source().split("|")[0]
        if path not in cache:
            cache[path] = open_raster_info(path).grid
        return cache[path]

    def _review_layers(self):
        reference, ties = self.referenceCombo.currentLayer(), self.tiePointsCombo.currentLayer()
        target = self.last_target or self.targetCombo.currentLayer()
        return reference, target, ties

    def tiepoint_ends(self) -> list:
        """Draggable ends of the review's tie points in the canvas CRS: (fid, "reference" | "target", point)."""
        from qgis.core import QgsCoordinateTransform, QgsPointXY

        reference, target, ties = self._review_layers()
        if reference is None or target is None or ties is None or self.canvas is None:
            return []
        project, dest = QgsProject.instance(), self.canvas.mapSettings().destinationCrs()
        from_layer = QgsCoordinateTransform(ties.crs(), dest, project)
        from_tgt = QgsCoordinateTransform(target.crs(), dest, project)
        grid = self._grid(target)
        ends = []
        for f in ties.getFeatures():
            if not f.hasGeometry():
                continue
            ends.append((f.id(), "reference", from_layer.transform(f.geometry().asPoint())))
            try:
                xy = grid.pixel_to_map([[float(f["tgt_x"]), float(f["tgt_y"])]])[0]
            except (TypeError, ValueError, KeyError):
                continue
            ends.append((f.id(), "target", from_tgt.transform(QgsPointXY(float(xy[0]), float(xy[1])))))
        return ends

    def move_end(self, fid: int, end: str, point, crs) -> bool:
        """Move one end of a tie point to ``point`` (``crs``): the reference position (geometry, ref_x/ref_y) or
        the target position (tgt_x/tgt_y); the residual table re-fits."""
        from qgis.core import QgsCoordinateTransform, QgsGeometry

        reference, target, ties = self._review_layers()
        if reference is None or target is None or ties is None or not (ties.isEditable() or ties.startEditing()):
            return False
        layer = reference if end == "reference" else target
        project = QgsProject.instance()
        local = QgsCoordinateTransform(crs, layer.crs(), project).transform(point) if crs.isValid() else point
        px = self._grid(layer).map_to_pixel([[local.x(), local.y()]])[0]
        names = ("ref_x", "ref_y") if end == "reference" else ("tgt_x", "tgt_y")
        ties.beginEditCommand(f"Move the {end} end of a tie point")
        for name, value in zip(names, px):
            ties.changeAttributeValue(fid, ties.fields().indexOf(name), float(value))
        if end == "reference":
            geometry = QgsGeometry.fromPointXY(QgsCoordinateTransform(crs, ties.crs(), project).transform(point)
                                               if crs.isValid() else point)
            ties.changeGeometry(fid, geometry)
        ties.endEditCommand()
        last = self.residuals.last if self.residuals is not None else None
        rmse = f"; RMSE of the fit now {last.rmse_fit_px:.2f} px" if last is not None and not last.error else ""
        self.statusLabel.setText(f"Moved the {end} end of tie point {fid}{rmse}.")
        return True

    def current_model(self):
        """The model re-fitted to the review's tie points (the residual table's), or None."""
        ties = self.tiePointsCombo.currentLayer()
        if ties is None:
            return None
        if self.residuals is None or self.residuals.layer is not ties:
            self.show_residuals(ties)
        last = self.residuals.last if self.residuals is not None else None
        return last.model if last is not None else None

    def match_at(self, point, crs) -> bool:
        """Search the target partner of the reference position under ``point`` (canvas CRS) in the background."""
        from qgis.core import QgsCoordinateTransform

        from .pointmatch import PointMatchTask

        reference, ties = self.referenceCombo.currentLayer(), self.tiePointsCombo.currentLayer()
        target = self.last_target or self.targetCombo.currentLayer()
        model = self.current_model()
        if reference is None or target is None or ties is None or model is None or self.point_task is not None:
            self.statusLabel.setText("Adding a tie point needs the reference, the target and a tie point layer "
                                     "with enough points for the model (run first).")
            return False
        from ..engine.io.raster import open_raster_info

        ref_path, tgt_path = reference.source().split("|")[0], target.source().split("|")[0]
        ref_grid = open_raster_info(ref_path).grid
        if crs.isValid() and reference.crs().isValid() and crs != reference.crs():
            point = QgsCoordinateTransform(crs, reference.crs(), QgsProject.instance()).transform(point)
        px = ref_grid.map_to_pixel([[point.x(), point.y()]])[0]
        ref_xy = (float(px[0]), float(px[1]))
        self.point_task = PointMatchTask(ref_path, tgt_path, ref_xy, model)
        info = {"ref_grid": ref_grid, "tgt_path": tgt_path, "reference": reference, "ties": ties,
                "target_crs": target.crs()}
        self.point_task.taskCompleted.connect(lambda: self._point_matched(info))
        self.point_task.taskTerminated.connect(lambda: self._point_matched(info))
        self.statusLabel.setText("Searching the partner of the point in the target…")
        QgsApplication.taskManager().addTask(self.point_task)
        return True

    def _point_matched(self, info: dict) -> None:
        from qgis.core import QgsCoordinateTransform, QgsPointXY

        from ..engine.io.raster import open_raster_info
        from .pointmatch import add_tiepoint

        task, self.point_task = self.point_task, None
        if task is None or task.result is None:
            self.statusLabel.setText(task.error if task is not None and task.error else "No partner found.")
            return
        match = task.result
        fid = add_tiepoint(info["ties"], match, info["ref_grid"], info["reference"].crs())
        if fid is None:
            self.statusLabel.setText("The tie point layer cannot be edited.")
            return
        if self.point_tool is not None and self.canvas is not None:
            tgt_xy = open_raster_info(info["tgt_path"]).grid.pixel_to_map([list(match.tgt_xy)])[0]
            ref_xy = info["ref_grid"].pixel_to_map([list(match.ref_xy)])[0]
            dest, project = self.canvas.mapSettings().destinationCrs(), QgsProject.instance()
            from_ref = QgsCoordinateTransform(info["reference"].crs(), dest, project)
            from_tgt = QgsCoordinateTransform(info["target_crs"], dest, project)
            self.point_tool.show_pair(from_tgt.transform(QgsPointXY(*tgt_xy)), from_ref.transform(QgsPointXY(*ref_xy)))
        rmse = self.residuals.last.rmse_fit_px if self.residuals is not None and self.residuals.last else float("nan")
        self.statusLabel.setText(f"Tie point added: score {match.score:.2f}, {match.shift_px:.1f} px from the model's "
                                 f"prediction; RMSE of the fit now {rmse:.2f} px.")

    def _review_layer_changed(self, layer) -> None:
        if self.residuals is not None and self.residuals.layer is not layer:
            self.residuals.set_layer(layer, self.residuals.kind)

    def show_original(self, original: bool) -> None:
        """Before/after: show the uncorrected target (``original``) or the co-registered raster, not both."""
        corrected = self.last_layers.get("OUTPUT")
        if corrected is None or self.last_target is None:
            return
        set_visible(self.last_target, original)
        set_visible(corrected, not original)
        self.compareButton.setText("Show corrected" if original else "Show original")

    def open_report(self) -> bool:
        if not self.report_path:
            return False
        return QDesktopServices.openUrl(QUrl.fromLocalFile(self.report_path))

    def _message(self, text: str, level, details: str = "", report: str = "") -> None:
        if self.iface is None:
            return
        bar = self.iface.messageBar()
        if report and os.path.isfile(report):
            button = QPushButton("Open report")
            button.clicked.connect(self.open_report)
            item = QgsMessageBarItem(TITLE, text, button, level, 15)
            self.message_texts = (text, button.text())  # what was shown (the item belongs to the bar)
            bar.pushItem(item)
        elif details:
            bar.pushMessage(TITLE, text, details, level, 0)
        else:
            bar.pushMessage(TITLE, text, level, 10 if level != Qgis.MessageLevel.Critical else 0)

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Cancel a run, remove the map tool and its rubber band (called by the plugin's unload)."""
        if self.task is not None:
            try:
                self.task.executed.disconnect(self._on_executed)
                self.task.progressChanged.disconnect(self._on_progress)
            except TypeError:
                pass
            self.task.cancel()
            self.task.waitForFinished(60000)  # the task uses self.context / self.feedback until it ends
            self.task = None
        if self.extent_tool is not None:
            self.extent_tool.remove()
            self.extent_tool.deleteLater()
            self.extent_tool = None
        try:
            QgsProject.instance().layersAdded.disconnect(self._choose_defaults)
        except TypeError:
            pass
        if self.install_dialog is not None:
            self.install_dialog.reject()
            self.install_dialog.deleteLater()
            self.install_dialog = None
        if self.point_task is not None:
            self.point_task.cancel()
            self.point_task.waitForFinished(30000)
            self.point_task = None
        if self.point_tool is not None:
            self.point_tool.remove()
            self.point_tool.deleteLater()
            self.point_tool = None
        if self.residuals is not None:
            self.residuals.cleanup()
            if self.iface is not None:
                self.iface.removeDockWidget(self.residuals)
            self.residuals.setParent(None)
            self.residuals.deleteLater()
            self.residuals = None


def _report_value(results: dict, key: str) -> Any:
    """``key`` of the run's report.json (None when absent or unreadable)."""
    path = str(results.get("REPORT_JSON") or "")
    if not path or not os.path.isfile(path):
        return None
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _confidence(results: dict) -> float | None:
    """The engine's confidence (probability within 3 px): the CONFIDENCE output, else report.json's."""
    value = results.get("CONFIDENCE")
    if value is None:
        value = _report_value(results, "confidence")
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _unused_path(path: str) -> str:
    """``out.tif`` or, when it exists (perhaps loaded in the project), ``out_2.tif``, ``out_3.tif``..."""
    stem, ext = os.path.splitext(path)
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{stem}_{n}{ext}"
    return candidate


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "raster"
