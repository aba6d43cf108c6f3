"""A cheap guess of a raster layer's modality (SAR / optical / multispectral) for the dock's hints.

Band count, data type, band descriptions and the file name are looked at; for 3-4 bands of integers a small
overview (at most 256 px) is read to tell a colour composite of SAR channels (Pauli RGB, dual-pol) from an
optical RGB image by the engine's statistics (engine/modality.py, rule 6). The engine makes its own decision
when the modality is "auto"; this is a hint for the user, who can set the modality in the panel.
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
OVERVIEW_PX = 256
_COMPOSITE_CACHE: dict[str, bool] = {}


def sar_composite(path: str, bands: int) -> bool:
    """Whether the raster at ``path`` looks like a colour composite of SAR channels (small overview read)."""
    if path in _COMPOSITE_CACHE:
        return _COMPOSITE_CACHE[path]
    result = False
    try:
        import numpy as np
        from osgeo import gdal

        from ..engine.modality import COMPOSITE_HP_CORR, COMPOSITE_MAX_FLAT, composite_statistics

        ds = gdal.OpenEx(path, gdal.OF_RASTER)
        if ds is not None and ds.RasterCount >= 3:
            scale = min(1.0, OVERVIEW_PX / max(ds.RasterXSize, ds.RasterYSize))
            w, h = max(1, round(ds.RasterXSize * scale)), max(1, round(ds.RasterYSize * scale))
            data = np.stack([ds.GetRasterBand(b).ReadAsArray(buf_xsize=w, buf_ysize=h).astype(np.float32)
                             for b in range(1, min(3, bands) + 1)])
            if min(w, h) >= 48:
                corr, flat = composite_statistics(data, np.ones(data.shape[1:], bool))
                result = bool(corr < COMPOSITE_HP_CORR and flat < COMPOSITE_MAX_FLAT)
        ds = None
    except Exception:  # a hint must never break the panel (unreadable file, missing scipy...)
        result = False
    _COMPOSITE_CACHE[path] = result
    return result


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
    source = layer.source().split("|")[0]
    if 3 <= bands <= 4 and dtype not in FLOAT_TYPES and layer.providerType() == "gdal" and \
            sar_composite(source, bands):
        return "sar", f"{bands} bands whose fine detail differs between bands: a colour composite of SAR channels"
    return "optical", f"{bands} band(s) of integers" if dtype not in FLOAT_TYPES else f"{bands} bands"


def hint_text(layer: QgsRasterLayer | None) -> tuple[str, str]:
    """Short label and tooltip for the dock."""
    modality, reason = guess_modality(layer)
    if modality is None:
        return "", ""
    return LABELS[modality], f"Looks {LABELS[modality]}: {reason}. The engine detects it again when modality is 'auto'."
