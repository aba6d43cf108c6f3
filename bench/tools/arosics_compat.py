"""Run AROSICS 1.13 (geoarray 0.19, py_tools_ds 0.24) on Debian 12's GDAL 3.6 Python bindings.

Those packages declare GDAL >= 3.8 and use three of its Python APIs (shared/PEERS.md); equivalents are
supplied here before arosics is imported:
- ``gdal.config_options(**opts)`` as a context manager;
- raster and vector datasets as context managers (``with gdal.Open(p) as ds``), flushed on exit;
- ``Dataset.Close()``.
AROSICS needs georeferenced input: pixel-space images are wrapped into GeoTIFFs with a fake projected
geotransform ``(0, 1, 0, 0, 0, -1)`` in EPSG:32631, so 1 map unit = 1 pixel and (col, row) = (X, -Y).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

FAKE_GT = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def install() -> None:
    os.environ.setdefault("PROJ_DATA", "/usr/share/proj")
    os.environ.setdefault("PROJ_LIB", "/usr/share/proj")
    from osgeo import gdal

    gdal.UseExceptions()
    if not hasattr(gdal, "config_options"):
        @contextlib.contextmanager
        def config_options(options=None, thread_local=True, **kw):
            opts = dict(options or {}, **kw)
            old = {k: gdal.GetConfigOption(k) for k in opts}
            for k, v in opts.items():
                gdal.SetConfigOption(k, None if v is None else str(v))
            try:
                yield
            finally:
                for k, v in old.items():
                    gdal.SetConfigOption(k, v)
        gdal.config_options = config_options
    from osgeo import ogr

    if not hasattr(gdal.Dataset, "__enter__"):
        gdal.Dataset.__enter__ = lambda self: self
        gdal.Dataset.__exit__ = lambda self, *exc: (self.FlushCache(), False)[1]
    if not hasattr(ogr.DataSource, "__enter__"):   # closing finalises e.g. a GeoJSON in /vsimem
        ogr.DataSource.__enter__ = lambda self: self
        ogr.DataSource.__exit__ = lambda self, *exc: (self.Destroy(), False)[1]
    if not hasattr(gdal.Dataset, "Close"):
        gdal.Dataset.Close = lambda self: self.FlushCache()


def wrap_gray(gray: np.ndarray, path: Path) -> str:
    """Write a uint8 gray image as a GeoTIFF on the fake grid (0 = nodata)."""
    from osgeo import gdal, osr

    h, w = gray.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(FAKE_GT)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32631)
    ds.SetProjection(srs.ExportToWkt())
    b = ds.GetRasterBand(1)
    b.SetNoDataValue(0)
    b.WriteArray(gray.astype(np.uint8))
    ds.FlushCache()
    ds = None
    return str(path)


def prepare(case: dict, workdir: Path) -> tuple[str, str, tuple[int, int]]:
    from bench.tools.common import gray8

    ref, rv = gray8(case["reference"])
    tgt, tv = gray8(case["target"])
    ref = np.where(rv, np.maximum(ref, 1), 0).astype(np.uint8)
    tgt = np.where(tv, np.maximum(tgt, 1), 0).astype(np.uint8)
    return wrap_gray(ref, workdir / "ref_fake.tif"), wrap_gray(tgt, workdir / "tgt_fake.tif"), ref.shape


def map_to_px(xy: np.ndarray) -> np.ndarray:
    """Fake-grid map coordinates -> pixel corner coordinates."""
    xy = np.asarray(xy, np.float64)
    return np.c_[xy[:, 0], -xy[:, 1]]
