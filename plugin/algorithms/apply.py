"""``hsscl:apply``: re-fit the correction from a (possibly edited) tie point layer and warp any raster on the
target's grid with it."""
from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsVectorFileWriter,
    QgsWkbTypes,
)

from ..compat import POINT, VECTOR_POINT, WRITER_NO_ERROR
from .base import GRIDS, TRANSFORMS, HSSCLAlgorithm, _help, _labels
from .coregister import _number
from .outputs import deliver_raster

REQUIRED_FIELDS = ("ref_x", "ref_y", "tgt_x", "tgt_y")


class ApplyAlgorithm(HSSCLAlgorithm):
    TIEPOINTS = "TIEPOINTS"
    RASTER = "RASTER"
    OUTPUT = "OUTPUT"
    RMSE_PX = "RMSE_PX"
    N_TIEPOINTS = "N_TIEPOINTS"

    _HELP = (
        "Fits the transform model again to a tie point layer written by 'HSSCL Co-register' or "
        "'Find tie points' (after you deleted bad points, or with only the selected points) and warps "
        "a raster with it.\n\n"
        "The raster must be on the target's pixel grid (the target itself, another band of the same scene, "
        "or a product derived from it). This is how one correction reaches other bands and products."
    )

    def name(self) -> str:
        return "apply"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Apply tie points to a raster")

    def tags(self) -> list[str]:
        return ["tie points", "warp", "apply", "correction", "co-registration", "GCP"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(_help(QgsProcessingParameterFeatureSource(
            self.TIEPOINTS, self.tr("Tie points"), [VECTOR_POINT]),
            "A tie point layer from HSSCL (fields ref_x, ref_y, tgt_x, tgt_y). Only the selected points are "
            "used when 'Selected features only' is ticked; deleted points are gone; points whose 'inlier' "
            "field is 0 (false) are ignored, so set it to 1 to bring an outlier back."))
        self.addParameter(_help(QgsProcessingParameterRasterLayer(
            self.REFERENCE, self.tr("Reference raster")),
            "The reference the tie points were found against (defines the output grid when the correction "
            "is resampled onto the reference)."))
        self.addParameter(_help(QgsProcessingParameterRasterLayer(
            self.RASTER, self.tr("Raster to correct (on the target's grid)")),
            "Any raster with the same pixel grid as the target: the target, other bands, derived products."))
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.TRANSFORM, self.tr("Transform model"), _labels(TRANSFORMS), defaultValue=0),
            "Model fitted to the tie points. Automatic picks the simplest model not beaten on check points."))
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.GRID, self.tr("Output grid"), _labels(GRIDS), defaultValue=0),
            "Reference: the output has the reference's pixel grid. Target: the raster keeps its own grid."))
        self.addParameter(_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Corrected raster")), "The raster, corrected."))
        self.addOutput(QgsProcessingOutputNumber(self.RMSE_PX, self.tr(
            "RMSE on the check points (reference pixels; of the fit when there are no check points)")))
        self.addOutput(QgsProcessingOutputNumber(self.N_TIEPOINTS, self.tr("Number of tie points used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_dependencies()
        source = self.parameterAsSource(parameters, self.TIEPOINTS, context)
        if source is None:
            raise QgsProcessingException(self.tr("The tie point layer cannot be opened."))
        if QgsWkbTypes.geometryType(source.wkbType()) != POINT:
            raise QgsProcessingException(self.tr(
                "The tie point layer must be a point layer (layer 'tiepoints' of the tie point file written by "
                "HSSCL Co-register or Find tie points); the match lines cannot be applied."))
        names = set(source.fields().names())
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise QgsProcessingException(self.tr(
                f"The tie point layer lacks the field(s) {', '.join(missing)}: use a layer written by "
                "HSSCL Co-register or Find tie points."))
        if source.featureCount() == 0:
            raise QgsProcessingException(self.tr("The tie point layer has no points (or none selected)."))
        _reference, ref_path = self.raster_path(parameters, self.REFERENCE, context)
        _raster, raster_path = self.raster_path(parameters, self.RASTER, context)
        transform = self.enum_value(parameters, self.TRANSFORM, context, TRANSFORMS)
        grid = self.enum_value(parameters, self.GRID, context, GRIDS)
        out_raster = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)

        from ...engine import pipeline

        with self.work_folder() as folder:
            ties = self._write_tiepoints(source, f"{folder}/tiepoints.gpkg", context, feedback)
            with self.engine_errors(feedback):
                produced, report = pipeline.apply_tiepoints(
                    ties, ref_path, raster_path, f"{folder}/corrected.tif", transform=transform, grid=grid,
                    overwrite=True, monitor=self.monitor(feedback))
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Cancelled: no output was written."))
            results: dict[str, Any] = {self.OUTPUT: deliver_raster(str(produced), out_raster)}
        rmse = report.get("rmse_check_px")
        results[self.RMSE_PX] = _number(rmse if rmse is not None else report.get("rmse_fit_px"))
        results[self.N_TIEPOINTS] = _number(report.get("points"))
        feedback.pushInfo(self.tr(f"Model {report.get('model')} fitted to {results[self.N_TIEPOINTS]:.0f} tie "
                                  f"points ({report.get('reason', '')}); RMSE {results[self.RMSE_PX]:.3f} px."))
        return results

    def _write_tiepoints(self, source, path: str, context, feedback) -> str:
        """Copy the features of ``source`` (selection and edits included) to a GeoPackage layer 'tiepoints'."""
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = "tiepoints"
        writer = QgsVectorFileWriter.create(path, source.fields(), source.wkbType(), source.sourceCrs(),
                                            context.transformContext(), options)
        if writer.hasError() != WRITER_NO_ERROR:
            raise QgsProcessingException(f"Could not write the tie points: {writer.errorMessage()}")
        for feature in source.getFeatures(QgsFeatureRequest()):
            if feedback.isCanceled():
                break
            writer.addFeature(feature)
        del writer
        return path
