"""Tie points as a GeoPackage (OGR): inspect them in QGIS, edit them, and re-fit from the edited layer.

Two layers with the same fields:

* ``tiepoints``: a Point at each reference position, in the reference CRS;
* ``matches``: a LineString from where the target pixel lies *before* correction (target pixel through
  the target's own georeferencing, in the reference CRS) to the reference position.

Fields: ``ref_x, ref_y, tgt_x, tgt_y`` (pixel coordinates in each raster's own grid, x = column,
y = row, (0, 0) = top-left corner), ``score``, ``residual_px`` (real), ``inlier``, ``check`` (0/1;
``check`` marks held-out check points). The attributes, not the geometries, are what
:func:`read_tiepoints_gpkg` returns.

Pixel-space pairs (no CRS): geometries are in reference pixel coordinates as ``(x, -y)`` so that they
display upright over an image without georeferencing in QGIS; the layers have no CRS (GeoPackage
``srs_id`` -1, "undefined Cartesian SRS").
"""
from __future__ import annotations

import math
import os
import traceback

import numpy as np
from osgeo import ogr, osr

from ..errors import InputError, OutputError, OutputExistsError
from .gdal_env import gdal_exceptions
from .output import atomic_path, gdal_close_checked
from .raster import RasterGrid, check_georeferencing, transform_points

REAL_FIELDS = ("ref_x", "ref_y", "tgt_x", "tgt_y", "score", "residual_px")
INT_FIELDS = ("inlier", "check")
FIELDS = REAL_FIELDS + INT_FIELDS
LAYERS = ("tiepoints", "matches")


def _table(tiepoints: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [k for k in ("ref_x", "ref_y", "tgt_x", "tgt_y") if k not in tiepoints]
    if missing:
        raise ValueError(f"tie point table lacks {missing}")
    n = len(np.asarray(tiepoints["ref_x"]).reshape(-1))
    out: dict[str, np.ndarray] = {}
    for k in FIELDS:
        default = 1 if k == "inlier" else (0 if k == "check" else np.nan)
        v = np.asarray(tiepoints.get(k, np.full(n, default)))
        v = v.reshape(-1) if v.ndim else np.full(n, v)
        if len(v) != n:
            raise ValueError(f"tie point column {k!r} has {len(v)} values, expected {n}")
        out[k] = v.astype(np.int64 if k in INT_FIELDS else np.float64)
    return out


def _positions(t: dict[str, np.ndarray], ref_grid: RasterGrid, tgt_grid: RasterGrid) -> tuple[np.ndarray, np.ndarray]:
    """Reference and (uncorrected) target positions in the layer's coordinates."""
    ref_px = np.stack([t["ref_x"], t["ref_y"]], 1)
    tgt_px = np.stack([t["tgt_x"], t["tgt_y"]], 1)
    if not ref_grid.georeferenced:
        return ref_px * [1.0, -1.0], tgt_px * [1.0, -1.0]
    tgt_map = transform_points(tgt_grid.pixel_to_map(tgt_px), tgt_grid.crs_wkt, ref_grid.crs_wkt)  # type: ignore[arg-type]
    return ref_grid.pixel_to_map(ref_px), tgt_map


def _create_layer(ds: ogr.DataSource, name: str, geom: int, srs: osr.SpatialReference | None) -> ogr.Layer:
    layer = ds.CreateLayer(name, srs, geom, options=["SPATIAL_INDEX=YES"])
    for k in REAL_FIELDS:
        layer.CreateField(ogr.FieldDefn(k, ogr.OFTReal))
    for k in INT_FIELDS:
        fd = ogr.FieldDefn(k, ogr.OFTInteger)
        fd.SetSubType(ogr.OFSTBoolean)
        layer.CreateField(fd)
    return layer


def _set_fields(feat: ogr.Feature, t: dict[str, np.ndarray], i: int) -> None:
    for k in REAL_FIELDS:
        v = float(t[k][i])
        if math.isfinite(v):
            feat.SetField(k, v)
        else:
            feat.SetFieldNull(k)
    for k in INT_FIELDS:
        feat.SetField(k, int(t[k][i] != 0))


def _fill(ds: ogr.DataSource, t: dict[str, np.ndarray], ref_pos: np.ndarray, tgt_pos: np.ndarray,
          srs: osr.SpatialReference | None) -> None:
    points = _create_layer(ds, "tiepoints", ogr.wkbPoint, srs)
    lines = _create_layer(ds, "matches", ogr.wkbLineString, srs)
    ds.StartTransaction()
    for i in range(len(t["ref_x"])):
        fp = ogr.Feature(points.GetLayerDefn())
        _set_fields(fp, t, i)
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(float(ref_pos[i, 0]), float(ref_pos[i, 1]))
        fp.SetGeometry(g)
        points.CreateFeature(fp)
        fl = ogr.Feature(lines.GetLayerDefn())
        _set_fields(fl, t, i)
        if np.isfinite(tgt_pos[i]).all():
            g = ogr.Geometry(ogr.wkbLineString)
            g.AddPoint_2D(float(tgt_pos[i, 0]), float(tgt_pos[i, 1]))
            g.AddPoint_2D(float(ref_pos[i, 0]), float(ref_pos[i, 1]))
            fl.SetGeometry(g)
        lines.CreateFeature(fl)
    ds.CommitTransaction()
    if srs is None:  # GeoPackage default (srs_id 0) is "undefined geographic": say "undefined Cartesian"
        names = ", ".join(f"'{n}'" for n in LAYERS)
        for table in ("gpkg_geometry_columns", "gpkg_contents"):
            ds.ExecuteSQL(f"UPDATE {table} SET srs_id = -1 WHERE table_name IN ({names})")


@gdal_exceptions()
def write_tiepoints_gpkg(path: str | os.PathLike, tiepoints: dict[str, np.ndarray], ref_grid: RasterGrid,
                         tgt_grid: RasterGrid, overwrite: bool = True, description: str | None = None) -> str:
    """Write layers ``tiepoints`` and ``matches`` to the GeoPackage ``path`` (atomically).

    ``tiepoints`` is a dict of equal-length arrays with keys ref_x, ref_y, tgt_x, tgt_y (required),
    score, residual_px (NaN -> NULL), inlier, check (default 1 and 0). An existing file is replaced
    unless ``overwrite`` is false (callers normally checked the output folder with ``prepare_outdir``).
    ``description``: the layers' description (GeoPackage ``gpkg_contents``), e.g. a low-confidence warning.
    """
    check_georeferencing(ref_grid, tgt_grid)
    t = _table(tiepoints)
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"The output '{os.fspath(path)}' already exists.", "Use --overwrite to replace it.")
    srs = None
    if ref_grid.georeferenced:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(ref_grid.crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    ref_pos, tgt_pos = _positions(t, ref_grid, tgt_grid)
    try:
        with atomic_path(path) as tmp:
            ds = ogr.GetDriverByName("GPKG").CreateDataSource(tmp)
            try:
                _fill(ds, t, ref_pos, tgt_pos, srs)
                if description:
                    for name in LAYERS:
                        ds.GetLayerByName(name).SetMetadataItem("DESCRIPTION", description)
            except BaseException as exc:
                traceback.clear_frames(exc.__traceback__)  # the frames below must not keep the dataset open
                with gdal_close_checked(tmp, quiet=True):  # the first error is the one to report
                    ds = None
                raise
            with gdal_close_checked(tmp):  # close before the rename; a failed close is an error, never ignored
                ds = None
    except RuntimeError as exc:
        raise OutputError(f"Cannot write the tie points '{os.fspath(path)}'.",
                          "Check that the folder is writable and the file is not open elsewhere.", str(exc)) from exc
    return os.fspath(path)


@gdal_exceptions()
def read_tiepoints_gpkg(path: str | os.PathLike, layer: str = "tiepoints") -> dict[str, np.ndarray]:
    """Read the tie point attributes of ``layer`` (e.g. after editing in QGIS) as a dict of arrays.

    Real fields come back as float64 (NULL -> NaN), ``inlier`` and ``check`` as bool. ``score``,
    ``residual_px``, ``inlier`` and ``check`` are optional in the file (defaults NaN, True, False).
    If ``layer`` is absent from a single-layer file, that one layer is read.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(f"Tie point file not found: '{p}'.", "Give the tiepoints.gpkg of a co-registration run.")
    try:
        ds = ogr.Open(p)
    except RuntimeError as exc:
        raise InputError(f"'{p}' is not a readable vector file.", "Give a GeoPackage of tie points.", str(exc)) from exc
    if ds is None:
        raise InputError(f"'{p}' is not a readable vector file.", "Give a GeoPackage of tie points.")
    lyr = ds.GetLayerByName(layer)
    if lyr is None and ds.GetLayerCount() == 1:
        lyr = ds.GetLayer(0)
    if lyr is None:
        raise InputError(f"'{p}' has no layer '{layer}'.", f"Layers in it: "
                         f"{', '.join(ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount()))}.")
    defn = lyr.GetLayerDefn()
    names = {defn.GetFieldDefn(i).GetName().lower(): defn.GetFieldDefn(i).GetName()
             for i in range(defn.GetFieldCount())}
    missing = [k for k in ("ref_x", "ref_y", "tgt_x", "tgt_y") if k not in names]
    if missing:
        raise InputError(f"The layer '{lyr.GetName()}' of '{p}' lacks the field(s) {', '.join(missing)}.",
                         "Keep the fields ref_x, ref_y, tgt_x, tgt_y when editing the tie points.")
    cols: dict[str, list] = {k: [] for k in FIELDS}
    for feat in lyr:
        for k in FIELDS:
            if k not in names or not feat.IsFieldSetAndNotNull(names[k]):
                cols[k].append({"inlier": 1, "check": 0}.get(k, np.nan))
            else:
                cols[k].append(feat.GetField(names[k]))
    out = {k: np.asarray(cols[k], dtype=np.float64) for k in REAL_FIELDS}
    out.update({k: np.asarray(cols[k], dtype=np.int64) != 0 for k in INT_FIELDS})
    return out
