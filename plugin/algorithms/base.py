"""Shared base of the HSSCL Processing algorithms: parameter definitions, conversion of parameter values to a
:class:`CoregConfig`, progress/cancel through the feedback object, and error conversion.

The engine is imported late (inside ``processAlgorithm``) so that loading the provider never imports torch.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qgis.core import (
    Qgis,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from .. import deps
from ..compat import ALG_CAN_CANCEL, NUMBER_INTEGER, PARAM_ADVANCED
from ..settings import PluginSettings

_NUMBER_TYPES = getattr(Qgis, "ProcessingNumberParameterType", None)
NUMBER_DOUBLE = (_NUMBER_TYPES.Double if _NUMBER_TYPES is not None and hasattr(_NUMBER_TYPES, "Double")
                 else QgsProcessingParameterNumber.Type.Double)

ICON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "resources", "icon.svg")

# (engine value, label) pairs; the index is the Processing enum value (documented in docs/plugin.md)
MODALITIES = (("auto", "Automatic (detect)"), ("sar", "SAR"), ("optical", "Optical"),
              ("multispectral", "Multispectral"))
TRANSFORMS = (("auto", "Automatic (best model by check points)"), ("shift", "Shift"), ("affine", "Affine"),
              ("poly2", "Polynomial, 2nd order"), ("poly3", "Polynomial, 3rd order"),
              ("tps", "Thin plate spline"),
              ("similarity", "Similarity (Helmert: shift, rotation, one scale)"))  # appended: saved models keep their numbers
GRIDS = (("reference", "Reference grid (resample the target onto the reference)"),
         ("target", "Target grid (keep the target's pixels, correct its georeferencing)"))
DEVICES = (("auto", "Automatic (CUDA if available)"), ("cpu", "CPU"), ("cuda", "CUDA GPU"))
DESCRIPTORS = (("auto", "Automatic (engine default)"), ("cfog", "CFOG (weight-free gradient features)"),
               ("hsscl", "HSSCL network (experimental)"),
               ("hybrid", "CFOG + HSSCL network fine level (hybrid)"),
               ("learned-cfog", "CFOG on the learned pre-filter"))
GRAPH_MODES = (("auto", "Automatic (off for now: no clear gain measured)"), ("on", "On"), ("off", "Off"))


def _values(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [v for v, _ in pairs]


def _labels(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [label for _, label in pairs]


def _advanced(param: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    param.setFlags(param.flags() | PARAM_ADVANCED)
    return param


def _help(param: QgsProcessingParameterDefinition, text: str) -> QgsProcessingParameterDefinition:
    param.setHelp(text)
    return param


class ProgressRelay:
    """The engine Monitor's ``report_fn`` for a Processing feedback: progress as percent, and a stage text only
    when it differs from the last one (the warper reports the same text at every block; the log shows it once)."""

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self.last = ""

    def __call__(self, fraction: float, message: str) -> None:
        self.feedback.setProgress(100.0 * fraction)
        if message and message != self.last:
            self.last = message
            self.feedback.setProgressText(message)


class HSSCLAlgorithm(QgsProcessingAlgorithm):
    """Base class; subclasses define ``name``, ``displayName``, ``initAlgorithm`` and ``run``."""

    REFERENCE = "REFERENCE"
    REFERENCE_BANDS = "REFERENCE_BANDS"
    REFERENCE_MODALITY = "REFERENCE_MODALITY"
    TARGET = "TARGET"
    TARGET_BANDS = "TARGET_BANDS"
    TARGET_MODALITY = "TARGET_MODALITY"
    TRANSFORM = "TRANSFORM"
    GRID = "GRID"
    DEVICE = "DEVICE"
    ADAPT = "ADAPT"
    ADAPT_BUDGET = "ADAPT_BUDGET"
    DESCRIPTOR = "DESCRIPTOR"
    GRAPH = "GRAPH"
    EXTENT = "EXTENT"
    DENOISE = "DENOISE"
    THREADS = "THREADS"
    WEIGHTS = "WEIGHTS"
    SEED = "SEED"
    MAX_ROTATION = "MAX_ROTATION"
    MAX_SCALE = "MAX_SCALE"
    ANY_ROTATION = "ANY_ROTATION"
    MIN_CONFIDENCE = "MIN_CONFIDENCE"
    KEEP_BEST_GUESS = "KEEP_BEST_GUESS"

    _HELP: str = ""

    # ---- QgsProcessingAlgorithm boilerplate -------------------------------------------------------------
    def createInstance(self):  # noqa: N802
        return type(self)()

    def group(self) -> str:
        return self.tr(self._group_name)

    def groupId(self) -> str:  # noqa: N802
        return self._group_id

    _group_name = "Co-registration"
    _group_id = "coregistration"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def tr(self, text: str) -> str:
        return text

    def shortHelpString(self) -> str:  # noqa: N802
        return self._HELP

    def helpUrl(self) -> str:  # noqa: N802
        return "https://github.com/hsscl/hsscl-coregister/blob/main/docs/plugin.md"

    def flags(self):
        return super().flags() | ALG_CAN_CANCEL

    # ---- styles of the outputs wherever they are loaded (Processing dialog, batch, models) ----------------
    def style_on_load(self, path: str, style: str) -> None:
        """Give the output ``path`` the bundled style ``style`` (resources/styles/<style>.qml) when Processing
        loads it into the project (called from ``processAlgorithm``; set in ``postProcessAlgorithm``)."""
        if path:
            self.__dict__.setdefault("_styles", {})[path] = style

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        from ..layers import style_post_processor

        for path, style in self.__dict__.pop("_styles", {}).items():
            if context.willLoadLayerOnCompletion(path):
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(style_post_processor(style))
        return {}

    def canExecute(self) -> tuple[bool, str]:  # noqa: N802
        status = deps.check()
        if status.ok:
            return True, ""
        return False, f"{status.message} {status.install_command}".strip()

    # ---- shared parameter definitions -------------------------------------------------------------------
    def add_pair_parameters(self, ref_label: str = "Reference raster", tgt_label: str = "Target raster") -> None:
        self.addParameter(_help(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr(ref_label)),
                                "The raster whose geometry is trusted (e.g. an orthorectified optical image)."))
        self.addParameter(_help(QgsProcessingParameterBand(
            self.REFERENCE_BANDS, self.tr(f"{ref_label}: bands used for matching"), None, self.REFERENCE,
            optional=True, allowMultiple=True),
            "Bands of the reference used to find tie points. Empty: chosen automatically from the modality."))
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.REFERENCE_MODALITY, self.tr(f"{ref_label}: modality"), _labels(MODALITIES), defaultValue=0),
            "What the reference shows: SAR backscatter, an optical image or a multispectral stack. "
            "Automatic detection looks at band count, data type and band descriptions."))
        self.addParameter(_help(QgsProcessingParameterRasterLayer(self.TARGET, self.tr(tgt_label)),
                                "The raster to be corrected so that it lines up with the reference."))
        self.addParameter(_help(QgsProcessingParameterBand(
            self.TARGET_BANDS, self.tr(f"{tgt_label}: bands used for matching"), None, self.TARGET,
            optional=True, allowMultiple=True),
            "Bands of the target used to find tie points. Empty: chosen automatically. All bands are "
            "corrected in the output, whatever is chosen here."))
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.TARGET_MODALITY, self.tr(f"{tgt_label}: modality"), _labels(MODALITIES), defaultValue=0),
            "What the target shows (see the reference's modality)."))

    def add_transform_parameter(self) -> None:
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.TRANSFORM, self.tr("Transform model"), _labels(TRANSFORMS), defaultValue=0),
            "Geometric model fitted to the tie points. Automatic picks the simplest model that is not "
            "beaten on independent check points. Shift suits well-orthorectified pairs; polynomial and "
            "thin plate spline models follow local distortions but need many well-spread tie points."))

    def add_grid_parameter(self) -> None:
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.GRID, self.tr("Output grid"), _labels(GRIDS), defaultValue=0),
            "Reference: the output has the reference's pixel grid, extent and CRS. Target: the output keeps "
            "the target's own grid and the correction is applied by resampling within it."))

    def add_matching_parameters(self, settings: PluginSettings | None = None) -> None:
        settings = settings or PluginSettings.load()
        device_index = _values(DEVICES).index(settings.device) if settings.device in _values(DEVICES) else 0
        self.addParameter(_help(QgsProcessingParameterEnum(
            self.DEVICE, self.tr("Compute device"), _labels(DEVICES), defaultValue=device_index),
            "Where the descriptors are computed. Automatic uses a CUDA GPU when PyTorch sees one. The default "
            "comes from the plugin settings."))
        self.addParameter(_help(QgsProcessingParameterBoolean(
            self.ADAPT, self.tr("Adapt the network to this pair on the fly (slower)"), defaultValue=False),
            "Matches once, fine-tunes a copy of the descriptor network briefly on the pair (from the verified "
            "matches), matches again, and keeps the adapted result only when its verified-match evidence is "
            "better; the report says which was kept and why. Takes longer. Off by default."))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.ADAPT_BUDGET, self.tr("Adaptation time budget (seconds)"), NUMBER_DOUBLE, defaultValue=30.0,
            minValue=0.1, maxValue=3600.0),
            "Upper bound on the extra time of on-the-fly adaptation (statistics, training steps and the second "
            "match). Only used when adaptation is on.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterEnum(
            self.DESCRIPTOR, self.tr("Descriptor"), _labels(DESCRIPTORS), defaultValue=0),
            "Dense descriptor used for matching. Automatic is the engine default (CFOG); the HSSCL network is "
            "experimental.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterEnum(
            self.GRAPH, self.tr("Graph refinement of matches"), _labels(GRAPH_MODES), defaultValue=0),
            "Refine tie points with the match graph (a GNN over the matches). Automatic leaves it off for now."
            + (" Not available here: " + deps.check().graph_note if deps.check().graph_note else ""))))
        self.addParameter(_help(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Restrict matching to this extent"), optional=True),
            "Only look for tie points inside this rectangle (any CRS; it is reprojected to the reference). "
            "The correction is still applied to the whole target."))
        self.addParameter(_advanced(_help(QgsProcessingParameterBoolean(
            self.DENOISE, self.tr("Denoise before matching"), defaultValue=True),
            "Block-wise adaptive denoising (speckle reduction for SAR) before computing descriptors.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (0 = automatic)"), NUMBER_INTEGER,
            defaultValue=settings.threads, minValue=0, maxValue=1024),
            "Number of CPU threads for PyTorch and GDAL. 0 uses the plugin setting or all cores.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterFile(
            self.WEIGHTS, self.tr("Network weights (.safetensors)"), extension="safetensors",
            defaultValue=settings.weights or None, optional=True),
            "Other weights for the descriptor network. Empty: the weights that ship with the plugin.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed"), NUMBER_INTEGER, defaultValue=0,
            minValue=0),
            "Seed of the robust fitting, so that a run can be repeated exactly.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.MAX_ROTATION, self.tr("Largest rotation searched (degrees)"), NUMBER_DOUBLE, defaultValue=10.0,
            minValue=0.5, maxValue=180.0),
            "Rotations between the images up to this angle are searched (default 10). When nothing is found "
            "confidently, a wider second search follows.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.MAX_SCALE, self.tr("Largest scale change searched (fraction)"), NUMBER_DOUBLE, defaultValue=0.10,
            minValue=0.01, maxValue=0.9),
            "Scale differences up to this fraction are searched (0.10 = ±10 %, the default).")))
        self.addParameter(_advanced(_help(QgsProcessingParameterBoolean(
            self.ANY_ROTATION, self.tr("Search any rotation (turned images)"), defaultValue=False),
            "Also search images turned by any angle (90°, 180°, ...). Always done for images without "
            "georeferencing when the first search is not confident.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterNumber(
            self.MIN_CONFIDENCE, self.tr("Minimum confidence (0-1; empty = default)"), NUMBER_DOUBLE,
            optional=True, minValue=0.0, maxValue=1.0),
            "An alignment is accepted when its confidence (the probability that it is within 3 px, from the "
            "verifier) reaches this value. Empty: the shipped verifier's threshold.")))
        self.addParameter(_advanced(_help(QgsProcessingParameterBoolean(
            self.KEEP_BEST_GUESS, self.tr("Keep the best guess below the confidence threshold"),
            defaultValue=False),
            "Write the outputs even when no alignment reaches the minimum confidence; they are marked "
            "low-confidence (report, tie points) so that the tie points can be reviewed.")))

    # ---- parameter conversion ---------------------------------------------------------------------------
    def raster_path(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
                    ) -> tuple[QgsRasterLayer, str]:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.tr(f"The raster given as '{self.parameterDefinition(name).description()}' "
                                                 "cannot be opened."))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(self.tr(
                f"'{layer.name()}' is a {layer.providerType()} layer; co-registration needs a raster file "
                "that GDAL can read (save the layer as GeoTIFF first)."))
        return layer, layer.source()

    def enum_value(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext,
                   pairs: tuple[tuple[str, str], ...]) -> str:
        index = self.parameterAsEnum(parameters, name, context)
        return pairs[index][0] if 0 <= index < len(pairs) else pairs[0][0]

    def bands(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext
              ) -> tuple[int, ...] | None:
        if parameters.get(name) in (None, "", []):
            return None
        values = tuple(int(b) for b in self.parameterAsInts(parameters, name, context) if int(b) > 0)
        return values or None

    def build_config(self, parameters: dict[str, Any], context: QgsProcessingContext,
                     reference: QgsRasterLayer, *, with_grid: bool = True, overwrite: bool = True):
        """Convert parameter values to the engine's :class:`CoregConfig`."""
        from ...engine.config import CoregConfig
        from ...engine.errors import HSSCLError

        settings = PluginSettings.load()
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, reference.crs())
            if rect is not None and not rect.isNull() and not rect.isEmpty():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        threads = self.parameterAsInt(parameters, self.THREADS, context) or settings.threads or None
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context) or settings.weights or None
        options: dict[str, Any] = dict(
            transform=self.enum_value(parameters, self.TRANSFORM, context, TRANSFORMS),
            device=self.enum_value(parameters, self.DEVICE, context, DEVICES),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            denoise=self.parameterAsBoolean(parameters, self.DENOISE, context),
            weights=weights,
            ref_bands=self.bands(parameters, self.REFERENCE_BANDS, context),
            tgt_bands=self.bands(parameters, self.TARGET_BANDS, context),
            ref_modality=self.enum_value(parameters, self.REFERENCE_MODALITY, context, MODALITIES),
            tgt_modality=self.enum_value(parameters, self.TARGET_MODALITY, context, MODALITIES),
            extent=extent,
            adapt=self.parameterAsBoolean(parameters, self.ADAPT, context),
            adapt_budget_s=self.parameterAsDouble(parameters, self.ADAPT_BUDGET, context) or 30.0,
            descriptor=self.enum_value(parameters, self.DESCRIPTOR, context, DESCRIPTORS),
            graph=self.enum_value(parameters, self.GRAPH, context, GRAPH_MODES),
            max_rotation_deg=self.parameterAsDouble(parameters, self.MAX_ROTATION, context) or 10.0,
            max_scale_change=self.parameterAsDouble(parameters, self.MAX_SCALE, context) or 0.10,
            any_rotation=self.parameterAsBoolean(parameters, self.ANY_ROTATION, context),
            min_confidence=(None if parameters.get(self.MIN_CONFIDENCE) in (None, "")
                            else self.parameterAsDouble(parameters, self.MIN_CONFIDENCE, context)),
            keep_best_guess=self.parameterAsBoolean(parameters, self.KEEP_BEST_GUESS, context),
            overwrite=overwrite,
            threads=threads,
        )
        if with_grid:
            options["grid"] = self.enum_value(parameters, self.GRID, context, GRIDS)
        try:
            return CoregConfig.from_overrides(**options)
        except HSSCLError as err:
            raise QgsProcessingException(str(err)) from err

    # ---- running the engine -----------------------------------------------------------------------------
    def require_dependencies(self) -> None:
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)

    @staticmethod
    def monitor(feedback: QgsProcessingFeedback | None):
        from ...engine.progress import Monitor

        if feedback is None:
            return Monitor()

        return Monitor(report_fn=ProgressRelay(feedback), cancel_fn=feedback.isCanceled)

    @contextmanager
    def engine_errors(self, feedback: QgsProcessingFeedback | None) -> Iterator[None]:
        """Turn engine errors into :class:`QgsProcessingException` with the user message."""
        from ...engine.errors import CancelledError, HSSCLError

        try:
            yield
        except CancelledError as err:
            raise QgsProcessingException(self.tr("Cancelled: no output was written.")) from err
        except HSSCLError as err:
            if feedback is not None and err.details:
                feedback.pushDebugInfo(err.details)
            raise QgsProcessingException(str(err)) from err
        except MemoryError as err:
            raise QgsProcessingException(self.tr(
                "Not enough memory. Restrict matching to a smaller extent or use fewer bands.")) from err

    @staticmethod
    @contextmanager
    def work_folder() -> Iterator[str]:
        """A fresh folder for the engine's outputs; removed when the run ends in any way.

        It is ``<temp>/hsscl-work/<run id>/out`` (not Processing's own session folder), and the run holds the
        lock of ``<temp>/hsscl-work/<run id>`` throughout: a run killed outright (SIGKILL, a crash) leaves it
        behind and the next run removes it (the lock, released with the dead process, proves nobody uses it).
        SIGTERM, when the algorithm runs on the main thread (qgis_process), ends the run like a cancel.
        """
        from ...engine.batch import TerminatedBySignal, terminate_on_sigterm
        from ...engine.io.lock import FolderLock, new_run_id

        base = os.path.join(tempfile.gettempdir(), "hsscl-work")
        os.makedirs(base, exist_ok=True)
        _remove_dead_work_folders(base)
        path = os.path.join(base, new_run_id())
        lock = FolderLock(path).acquire()
        try:
            out = os.path.join(path, "out")
            os.makedirs(out)
            with terminate_on_sigterm():
                yield out
        except TerminatedBySignal as err:
            raise QgsProcessingException("Stopped (SIGTERM): no output was written.") from err
        finally:
            lock.release()
            shutil.rmtree(path, ignore_errors=True)


def _remove_dead_work_folders(base: str, min_age_s: float = 60.0) -> None:
    """Remove work folders of runs that were killed outright: their lock is free and they are not brand new."""
    import re
    import time

    from ...engine.errors import OutputError
    from ...engine.io.lock import FolderLock

    for name in os.listdir(base):
        path = os.path.join(base, name)
        if not re.fullmatch(r"\d{8}T\d{6}-\d+-[0-9a-f]{8}", name) or not os.path.isdir(path):
            continue
        if time.time() - os.path.getmtime(path) < min_age_s:
            continue
        try:
            with FolderLock(path):
                shutil.rmtree(path, ignore_errors=True)
        except (OutputError, OSError):
            continue  # in use by a live run
