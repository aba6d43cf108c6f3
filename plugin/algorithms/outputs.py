"""Deliver the engine's fixed-name outputs to the destinations chosen in Processing."""
from __future__ import annotations

import os
import shutil

from qgis.core import QgsProcessingException, QgsRasterFileWriter, QgsVectorFileWriter


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def _remove(path: str) -> None:
    for suffix in ("", ".aux.xml", "-wal", "-shm"):
        if os.path.isfile(path + suffix):
            os.remove(path + suffix)


def deliver_raster(src: str, dest: str) -> str:
    """Move (GeoTIFF) or convert the raster ``src`` to ``dest``."""
    from osgeo import gdal

    os.makedirs(os.path.dirname(os.path.abspath(dest)) or ".", exist_ok=True)
    _remove(dest)
    if _ext(dest) in ("tif", "tiff"):
        shutil.move(src, dest)
        return dest
    driver = QgsRasterFileWriter.driverForExtension(_ext(dest)) or "GTiff"
    out = gdal.Translate(dest, src, format=driver)
    if out is None:
        raise QgsProcessingException(f"Could not write the raster '{dest}' with the {driver} driver.")
    out = None
    return dest


def deliver_vector(src_gpkg: str, layer: str, dest: str) -> str:
    """Copy one layer of the engine's GeoPackage to ``dest`` (any OGR format chosen by extension)."""
    from osgeo import gdal

    os.makedirs(os.path.dirname(os.path.abspath(dest)) or ".", exist_ok=True)
    _remove(dest)
    driver = QgsVectorFileWriter.driverForExtension(_ext(dest)) or "GPKG"
    out = gdal.VectorTranslate(dest, src_gpkg, format=driver, layers=[layer], layerName=layer)
    if out is None:
        raise QgsProcessingException(f"Could not write the layer '{layer}' to '{dest}'.")
    out = None
    return dest


def deliver_file(src: str, dest: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(dest)) or ".", exist_ok=True)
    shutil.copyfile(src, dest)
    return dest

