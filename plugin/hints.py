"""A cheap guess of a raster layer's modality (SAR / optical / multispectral) for the dock's hints.

Only band count, data type, band descriptions and the file name are looked at; nothing is read. The engine
makes its own decision when the modality is "auto"; this is a hint for the user.
"""
from __future__ import annotations

import os
import re

from qgis.core import Qgis, QgsRasterLayer

SAR_WORDS = re.compile(r"(^|[^a-z])(vv|vh|hh|hv|sigma0?|gamma0?|beta0?|sar|s1[ab]?|backscatter|amplitude)([^a-z]|$)",
                       re.IGNORECASE)
FLOAT_TYPES = {Qgis.DataType.Float32, Qgis.DataType.Float64, Qgis.DataType.CFloat32, Qgis.DataType.CFloat64,
               Qgis.DataType.CInt16, Qgis.DataType.CInt32}

LABELS = {"sar": "SAR", "optical": "optical", "multispectral": "multispectral"}


def guess_modality(layer: QgsRasterLayer | None) -> tuple[str | None, str]:
    """Return ``(modality, reason)``; modality is "sar", "optical", "multispectral" or None."""
    if layer is None or not layer.isValid():
        return None, ""
    provider = layer.dataProvider()
    bands = layer.bandCount()
    # layer.bandName() is "Band 1: <description>" when the file describes its bands
    descriptions = " ".join(layer.bandName(b).split(":", 1)[-1] for b in range(1, bands + 1)
                            if ":" in layer.bandName(b))
    name = os.path.basename(layer.source().split("|")[0]) + " " + layer.name()
    dtype = provider.dataType(1) if provider is not None and bands else None
    if SAR_WORDS.search(descriptions) or SAR_WORDS.search(name):
        return "sar", "polarisation or SAR word in the band description or name"
    if bands >= 4:
        return "multispectral", f"{bands} bands"
    if dtype in FLOAT_TYPES and bands <= 2:
        return "sar", f"{bands} floating-point band(s)"
    return "optical", f"{bands} band(s) of integers" if dtype not in FLOAT_TYPES else f"{bands} bands"


def hint_text(layer: QgsRasterLayer | None) -> tuple[str, str]:
    """Short label and tooltip for the dock."""
    modality, reason = guess_modality(layer)
    if modality is None:
        return "", ""
    return LABELS[modality], f"Looks {LABELS[modality]}: {reason}. The engine detects it again when modality is 'auto'."
