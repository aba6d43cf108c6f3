"""Enum values that moved between QGIS 3.22 and QGIS 4 (Qt6), in scoped form.

QGIS 3.22 has them as scoped members of the classes (``QgsProcessing.SourceType.TypeVectorPoint``); later
versions moved them to ``Qgis`` (``Qgis.ProcessingSourceType.VectorPoint``) and Qt6 builds drop the old names.
"""
from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsMapLayerProxyModel,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsVectorFileWriter,
    QgsWkbTypes,
)


def _pick(new_owner: str, new_name: str, old):
    owner = getattr(Qgis, new_owner, None)
    return getattr(owner, new_name) if owner is not None and hasattr(owner, new_name) else old


VECTOR_POINT = _pick("ProcessingSourceType", "VectorPoint", QgsProcessing.SourceType.TypeVectorPoint)
VECTOR_LINE = _pick("ProcessingSourceType", "VectorLine", QgsProcessing.SourceType.TypeVectorLine)
NUMBER_INTEGER = _pick("ProcessingNumberParameterType", "Integer", QgsProcessingParameterNumber.Type.Integer)
PARAM_ADVANCED = _pick("ProcessingParameterFlag", "Advanced", QgsProcessingParameterDefinition.Flag.FlagAdvanced)
ALG_CAN_CANCEL = _pick("ProcessingAlgorithmFlag", "CanCancel", QgsProcessingAlgorithm.Flag.FlagCanCancel)
RASTER_LAYERS = _pick("LayerFilter", "RasterLayer", QgsMapLayerProxyModel.Filter.RasterLayer)
POINT_LAYERS = _pick("LayerFilter", "PointLayer", QgsMapLayerProxyModel.Filter.PointLayer)
POLYGON = _pick("GeometryType", "Polygon", QgsWkbTypes.GeometryType.PolygonGeometry)
POINT = _pick("GeometryType", "Point", QgsWkbTypes.GeometryType.PointGeometry)
LINE = _pick("GeometryType", "Line", QgsWkbTypes.GeometryType.LineGeometry)
WRITER_NO_ERROR = _pick("VectorFileWriterError", "NoError", QgsVectorFileWriter.WriterError.NoError)
