"""Add result layers to the project with the bundled styles, placed sensibly in the layer tree."""
from __future__ import annotations

import os

from qgis.core import (
    QgsMapLayer,
    QgsProcessingLayerPostProcessorInterface,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

STYLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "styles")


def style_path(name: str) -> str:
    return os.path.join(STYLES, f"{name}.qml")


def _apply_style(layer: QgsMapLayer, name: str) -> None:
    path = style_path(name)
    if os.path.isfile(path):
        layer.loadNamedStyle(path)
        layer.triggerRepaint()


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Applies a bundled style to an output when Processing loads it (dialog, batch, models)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS API name)
        _apply_style(layer, self.style)


# Processing keeps only a C++ pointer to the post-processor: the Python objects must outlive the run. One per
# style, created on first use and kept for the session (a handful of small objects).
_POST_PROCESSORS: dict[str, StylePostProcessor] = {}


def style_post_processor(style: str) -> StylePostProcessor:
    if style not in _POST_PROCESSORS:
        _POST_PROCESSORS[style] = StylePostProcessor(style)
    return _POST_PROCESSORS[style]


def add_above(layer: QgsMapLayer, anchor: QgsMapLayer | None, project: QgsProject | None = None) -> QgsMapLayer:
    """Add ``layer`` to the project right above ``anchor`` in the layer tree (on top without anchor)."""
    project = project or QgsProject.instance()
    project.addMapLayer(layer, False)
    root = project.layerTreeRoot()
    node = root.findLayer(anchor.id()) if anchor is not None else None
    if node is not None:
        parent = node.parent()
        parent.insertLayer(parent.children().index(node), layer)
    else:
        root.insertLayer(0, layer)
    return layer


def add_raster(path: str, name: str, anchor: QgsMapLayer | None = None,
               project: QgsProject | None = None) -> QgsRasterLayer | None:
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        return None
    _apply_style(layer, "coregistered")
    return add_above(layer, anchor, project)


def add_vector(path: str, name: str, style: str, layername: str | None = None,
               project: QgsProject | None = None) -> QgsVectorLayer | None:
    uri = f"{path}|layername={layername}" if layername and path.lower().endswith(".gpkg") else path
    layer = QgsVectorLayer(uri, name, "ogr")
    if not layer.isValid():
        layer = QgsVectorLayer(path, name, "ogr")
    if not layer.isValid():
        return None
    _apply_style(layer, style)
    (project or QgsProject.instance()).addMapLayer(layer)
    return layer


def set_visible(layer: QgsMapLayer, visible: bool, project: QgsProject | None = None) -> None:
    """Tick or untick ``layer`` in the layer tree (the map follows)."""
    node = (project or QgsProject.instance()).layerTreeRoot().findLayer(layer.id())
    if node is not None:
        node.setItemVisibilityChecked(visible)


def add_results(results: dict, anchor: QgsMapLayer | None, target_name: str,
                project: QgsProject | None = None, hide_anchor: bool = False) -> dict[str, QgsMapLayer]:
    """Add the outputs of ``hsscl:coregister`` / ``hsscl:match``: the raster right above ``anchor`` (the
    original target: the map then shows the corrected image; ``hide_anchor`` unticks the original), the tie
    points and match lines on top, each with its style."""
    added: dict[str, QgsMapLayer] = {}
    if results.get("OUTPUT"):
        layer = add_raster(results["OUTPUT"], f"{target_name} co-registered", anchor, project)
        if layer is not None:
            added["OUTPUT"] = layer
            if hide_anchor and anchor is not None:
                set_visible(anchor, False, project)
    # tie points first, the match lines (arrows) last: on top, so the arrows read above the points
    if results.get("TIEPOINTS"):
        layer = add_vector(results["TIEPOINTS"], f"{target_name} tie points", "tiepoints", "tiepoints", project)
        if layer is not None:
            added["TIEPOINTS"] = layer
    if results.get("MATCHES"):
        layer = add_vector(results["MATCHES"], f"{target_name} match lines", "matches", "matches", project)
        if layer is not None:
            added["MATCHES"] = layer
    return added
