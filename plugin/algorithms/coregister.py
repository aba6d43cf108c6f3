"""``hsscl:coregister``: estimate the correction of a target raster against a reference and apply it."""
from __future__ import annotations

import json
import os
from typing import Any

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterVectorDestination,
)

from ..compat import VECTOR_LINE, VECTOR_POINT
from .base import HSSCLAlgorithm, _help
from .outputs import deliver_file, deliver_raster, deliver_report, deliver_text, deliver_vector


def engine_output(res: Any, folder: str, key: str, filename: str) -> str:
    """Path of one engine output: from ``res.outputs`` when it names it, else the documented file name."""
    outputs = getattr(res, "outputs", None) or {}
    for name in (key, filename, os.path.splitext(filename)[0]):
        if name in outputs and outputs[name]:
            return str(outputs[name])
    return os.path.join(folder, filename)


def sidecar(path: str, suffix: str) -> str:
    """``/a/b/out.tif`` + ``.report.json`` -> ``/a/b/out.report.json``."""
    return os.path.splitext(path)[0] + suffix


class CoregisterAlgorithm(HSSCLAlgorithm):
    OUTPUT = "OUTPUT"
    TIEPOINTS = "TIEPOINTS"
    MATCHES = "MATCHES"
    REPORT = "REPORT"
    REPORT_JSON = "REPORT_JSON"
    CORRECTION = "CORRECTION"
    RMSE_PX = "RMSE_PX"
    N_TIEPOINTS = "N_TIEPOINTS"
    N_INLIERS = "N_INLIERS"
    DESCRIPTOR = "DESCRIPTOR"
    CONFIDENCE = "CONFIDENCE"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"

    _HELP = (
        "Co-registers a target raster to a reference raster of another modality (SAR, optical, "
        "multispectral): finds tie points with modality-independent descriptors, fits a geometric model "
        "robustly, and resamples all bands of the target.\n\n"
        "Outputs: the co-registered raster, the tie points (coloured by residual), the match lines from "
        "each point's uncorrected target position to its reference position, and a report (HTML with the "
        "RMSE, model, confidence and a before/after view, plus JSON). A '.correction.json' file next to "
        "the raster keeps the fitted model.\n\n"
        "To correct other bands or derived products with the same tie points (possibly edited), use "
        "'Apply tie points to a raster'."
    )

    def name(self) -> str:
        return "coregister"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("HSSCL Co-register")

    def tags(self) -> list[str]:
        return ["co-registration", "coregistration", "registration", "SAR", "optical", "multimodal",
                "tie points", "georeferencing", "alignment", "Sentinel-1", "Sentinel-2"]

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_pair_parameters()
        self.add_transform_parameter()
        self.add_grid_parameter()
        self.add_matching_parameters()
        self.addParameter(_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Co-registered raster")),
            "The target, corrected, with all its bands (GeoTIFF unless another extension is chosen)."))
        self.addParameter(_help(QgsProcessingParameterVectorDestination(
            self.TIEPOINTS, self.tr("Tie points"), VECTOR_POINT),
            "Points at the reference position with fields ref_x, ref_y, tgt_x, tgt_y (pixels), score, "
            "residual_px, inlier and check. Edit it and use 'Apply tie points to a raster' to re-warp."))
        self.addParameter(_help(QgsProcessingParameterVectorDestination(
            self.MATCHES, self.tr("Match lines"), VECTOR_LINE, optional=True,
            createByDefault=True),
            "Lines from where each tie point lies in the uncorrected target to its reference position "
            "(the direction of the correction)."))
        # The report is declared as a plain file output, not QgsProcessingOutputHtml: the batch dialog of
        # QGIS 3.22 fails after the runs when an algorithm has an HTML output (ProcessingResults.addResult()
        # is called without its 'timestamp' argument).
        self.addParameter(_help(QgsProcessingParameterFileDestination(
            self.REPORT, self.tr("Report (HTML)"), self.tr("HTML files (*.html)"), optional=True,
            createByDefault=True),
            "Summary, residual figures and a before/after view. A JSON report is written next to it."),
            createOutput=False)
        self.addOutput(QgsProcessingOutputFile(self.REPORT, self.tr("Report (HTML)")))
        self.addOutput(QgsProcessingOutputFile(self.REPORT_JSON, self.tr("Report (JSON)")))
        self.addOutput(QgsProcessingOutputFile(self.CORRECTION, self.tr("Correction (JSON)")))
        self.addOutput(QgsProcessingOutputNumber(self.RMSE_PX, self.tr(
            "RMSE on the check points (reference pixels; of the fit when there are no check points)")))
        self.addOutput(QgsProcessingOutputNumber(self.N_TIEPOINTS, self.tr("Number of tie points")))
        self.addOutput(QgsProcessingOutputNumber(self.N_INLIERS, self.tr("Number of inliers")))
        self.addOutput(QgsProcessingOutputNumber(self.CONFIDENCE, self.tr(
            "Confidence: probability that the alignment is within 3 px (0-1)")))
        self.addOutput(QgsProcessingOutputNumber(self.LOW_CONFIDENCE, self.tr(
            "1 when the result is a best guess kept below the confidence threshold, else 0")))
        self.addOutput(QgsProcessingOutputString(self.DESCRIPTOR, self.tr(
            "Descriptor that gave the result (with '(second opinion)' when the default's first was refused)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_dependencies()
        reference, ref_path = self.raster_path(parameters, self.REFERENCE, context)
        _target, tgt_path = self.raster_path(parameters, self.TARGET, context)
        config = self.build_config(parameters, context, reference)
        out_raster = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        out_ties = self.parameterAsOutputLayer(parameters, self.TIEPOINTS, context)
        out_matches = self.parameterAsOutputLayer(parameters, self.MATCHES, context) \
            if parameters.get(self.MATCHES) is not None else ""
        out_report = self.parameterAsFileOutput(parameters, self.REPORT, context) \
            if parameters.get(self.REPORT) is not None else ""

        from ...engine import pipeline

        with self.work_folder() as folder:
            with self.engine_errors(feedback):
                res = pipeline.coregister(ref_path, tgt_path, folder, config, self.monitor(feedback))
            if feedback.isCanceled():
                raise QgsProcessingException(self.tr("Cancelled: no output was written."))
            coregistered = engine_output(res, folder, "raster", "coregistered.tif")
            ties = engine_output(res, folder, "tiepoints", "tiepoints.gpkg")
            report_json = engine_output(res, folder, "report", "report.json")
            correction = engine_output(res, folder, "correction", "correction.json")
            report = dict(getattr(res, "report", None) or {})
            if not report and os.path.isfile(report_json):
                with open(report_json, encoding="utf-8") as f:
                    report = json.load(f)

            results: dict[str, Any] = {}
            # the reports name the user's files, not the work folder's (removed after the run)
            json_dest = sidecar(out_report, ".json") if out_report else sidecar(out_raster, ".report.json")
            user_files = {"raster": out_raster, "tiepoints": out_ties, "matches": out_matches,
                          "report": json_dest, "report_html": out_report,
                          "correction": sidecar(out_raster, ".correction.json") if os.path.isfile(correction) else ""}
            if out_report:
                from ..report_html import write_report_html

                feedback.setProgressText(self.tr("Writing the HTML report…"))
                try:
                    deliver_text(out_report, lambda tmp: write_report_html(
                        tmp, report, ties, ref_path, tgt_path, coregistered,
                        title=f"{os.path.basename(tgt_path)} → {os.path.basename(ref_path)}", outputs=user_files))
                except QgsProcessingException:  # a full disk: said as it is, nothing else written
                    raise
                except Exception as err:  # the figures are a convenience; never lose the run for them
                    feedback.reportError(f"The HTML report could not be completed: {err}", False)
                results[self.REPORT] = out_report
            self.style_on_load(out_ties, "tiepoints")
            self.style_on_load(out_matches, "matches")
            results[self.OUTPUT] = deliver_raster(coregistered, out_raster)
            results[self.TIEPOINTS] = deliver_vector(ties, "tiepoints", out_ties)
            if out_matches:
                results[self.MATCHES] = deliver_vector(ties, "matches", out_matches)
            results[self.CORRECTION] = deliver_file(correction, user_files["correction"]) \
                if os.path.isfile(correction) else ""
            # last: the report is the record of the set, naming the delivered files with their sha256
            results[self.REPORT_JSON] = deliver_report(report_json, json_dest, user_files) \
                if os.path.isfile(report_json) else ""

        results[self.RMSE_PX] = _number(getattr(res, "rmse_px", None))
        results[self.N_TIEPOINTS] = _number(getattr(res, "n_tiepoints", None))
        results[self.N_INLIERS] = _number(getattr(res, "n_inliers", None))
        rmse_info = report.get("rmse_px")
        rmse_kind = "check points" if isinstance(rmse_info, dict) and rmse_info.get("check") is not None else "fit"
        feedback.pushInfo(self.tr(
            f"RMSE {results[self.RMSE_PX]:.3f} px ({rmse_kind}); {results[self.N_INLIERS]:.0f} inliers of "
            f"{results[self.N_TIEPOINTS]:.0f} tie points."))
        decision = report.get("decision") or {}
        results[self.CONFIDENCE] = _number(report.get("confidence"))
        results[self.LOW_CONFIDENCE] = 1.0 if decision.get("low_confidence") else 0.0
        if report.get("confidence") is not None:
            feedback.pushInfo(self.tr(
                f"Confidence {report['confidence']:.1%} that the alignment is within 3 px (threshold "
                f"{decision.get('threshold', 0):.0%}): {decision.get('why', '')}."))
        if decision.get("low_confidence"):
            feedback.reportError(self.tr(
                "LOW CONFIDENCE: no alignment reached the threshold; the best guess was kept as asked. Review the "
                "tie points before using the result."), False)
        second = report.get("second_opinion") or {}
        results[self.DESCRIPTOR] = str(report.get("descriptor") or "") + (" (second opinion)" if second.get("used")
                                                                          else "")
        if second.get("used"):
            feedback.pushInfo(self.tr(
                f"{second.get('first_descriptor')} alone was below the confidence threshold; this result comes from "
                f"{report.get('descriptor')} (second opinion)."))
        return results


def rmse_of(report: dict[str, Any]) -> float | None:
    """RMSE in reference pixels from an engine report: on check points when there are some, else of the fit."""
    rmse = report.get("rmse_px")
    if isinstance(rmse, dict):
        return rmse.get("check") if rmse.get("check") is not None else rmse.get("fit")
    return rmse


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")
