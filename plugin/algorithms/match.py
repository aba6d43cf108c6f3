"""``hsscl:match``: tie points only (no resampling)."""
from __future__ import annotations

import os
from typing import Any

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingParameterVectorDestination,
)

from ..compat import VECTOR_LINE, VECTOR_POINT
from .base import HSSCLAlgorithm, _help
from .coregister import _number, rmse_of, sidecar
from .outputs import deliver_file, deliver_vector


class MatchAlgorithm(HSSCLAlgorithm):
    TIEPOINTS = "TIEPOINTS"
    MATCHES = "MATCHES"
    CORRECTION = "CORRECTION"
    N_TIEPOINTS = "N_TIEPOINTS"
    N_INLIERS = "N_INLIERS"
    RMSE_PX = "RMSE_PX"

    _group_name = "Tie points"
    _group_id = "tiepoints"

    _HELP = (
        "Finds tie points between a reference and a target raster of any modality, without resampling "
        "anything. The tie points are filtered with the chosen transform model: the 'inlier' field tells "
        "which ones agree with it, 'residual_px' how far each is from it.\n\n"
        "Review them on the map, delete or deselect bad ones, then run 'Apply tie points to a raster'."
    )

    def name(self) -> str:
        return "match"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Find tie points")

    def tags(self) -> list[str]:
        return ["tie points", "matching", "GCP", "control points", "SAR", "optical", "multimodal"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_pair_parameters()
        self.add_transform_parameter()
        self.add_matching_parameters()
        self.addParameter(_help(QgsProcessingParameterVectorDestination(
            self.TIEPOINTS, self.tr("Tie points"), VECTOR_POINT),
            "Points at the reference position with fields ref_x, ref_y, tgt_x, tgt_y (pixels), score, "
            "residual_px, inlier and check."))
        self.addParameter(_help(QgsProcessingParameterVectorDestination(
            self.MATCHES, self.tr("Match lines"), VECTOR_LINE, optional=True,
            createByDefault=True),
            "Lines from where each tie point lies in the uncorrected target to its reference position "
            "(the direction of the correction)."))
        self.addOutput(QgsProcessingOutputFile(self.CORRECTION, self.tr("Correction (JSON)")))
        self.addOutput(QgsProcessingOutputNumber(self.RMSE_PX, self.tr(
            "RMSE on the check points (reference pixels; of the fit when there are no check points)")))
        self.addOutput(QgsProcessingOutputNumber(self.N_TIEPOINTS, self.tr("Number of tie points")))
        self.addOutput(QgsProcessingOutputNumber(self.N_INLIERS, self.tr("Number of inliers")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_dependencies()
        reference, ref_path = self.raster_path(parameters, self.REFERENCE, context)
        _target, tgt_path = self.raster_path(parameters, self.TARGET, context)
        config = self.build_config(parameters, context, reference, with_grid=False)
        out_ties = self.parameterAsOutputLayer(parameters, self.TIEPOINTS, context)
        out_matches = self.parameterAsOutputLayer(parameters, self.MATCHES, context) \
            if parameters.get(self.MATCHES) is not None else ""

        from ...engine import pipeline

        results: dict[str, Any] = {}
        with self.work_folder() as folder:
            with self.engine_errors(feedback):
                estimate = pipeline.match(ref_path, tgt_path, config, self.monitor(feedback))
                ties, correction = write_estimate(estimate, folder)
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Cancelled: no output was written."))
            self.style_on_load(out_ties, "tiepoints")
            self.style_on_load(out_matches, "matches")
            results[self.TIEPOINTS] = deliver_vector(ties, "tiepoints", out_ties)
            if out_matches:
                results[self.MATCHES] = deliver_vector(ties, "matches", out_matches)
            results[self.CORRECTION] = deliver_file(correction, sidecar(out_ties, ".correction.json")) \
                if os.path.isfile(correction) else ""
        results[self.RMSE_PX] = _number(rmse_of(dict(estimate.report or {})))
        results[self.N_TIEPOINTS] = float(len(estimate.tiepoints))
        results[self.N_INLIERS] = float(estimate.tiepoints.n_inliers)
        feedback.pushInfo(self.tr(f"{results[self.N_TIEPOINTS]:.0f} tie points, {results[self.N_INLIERS]:.0f} "
                                  f"inliers, RMSE {results[self.RMSE_PX]:.3f} px."))
        return results


def write_estimate(estimate: Any, folder: str) -> tuple[str, str]:
    """Write the tie points (layers 'tiepoints' and 'matches') and the correction of an engine Estimate."""
    from ...engine.io.vector import write_tiepoints_gpkg

    ties = os.path.join(folder, "tiepoints.gpkg")
    correction = os.path.join(folder, "correction.json")
    write_tiepoints_gpkg(ties, estimate.tiepoints.as_table(), estimate.correction.reference,
                         estimate.correction.target)
    estimate.correction.save(correction)
    return ties, correction
