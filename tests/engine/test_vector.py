"""Tie point GeoPackage: layers, fields, geometries, CRS, round trip and editing, on real raster grids."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from hsscl.engine.errors import GeoreferencingError, InputError, OutputExistsError
from hsscl.engine.io.raster import RasterGrid, open_raster_info, transform_points
from hsscl.engine.io.vector import read_tiepoints_gpkg, write_tiepoints_gpkg

ogr.UseExceptions()
gdal.UseExceptions()

STEST_REF = "cfog_ye2019/data/Stest3_ref.tif"             # 628x618x3 Byte, EPSG:32633, 3.5 m
STEST_SEN = "cfog_ye2019/data/Stest3_sen.tif"             # same grid
STEST_GCP = "cfog_ye2019/data/Stest3gcp.pts"              # x1 y1 x2 y2 (MATLAB, 1-based)
OSM_PNG = "osmnet_osdataset_samples/opt1.png"
S2_PATCH = "gefolki_EvalGeFolki/S1S2/S2_patch11.tif"


def table(n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, 600, (n, 2))
    tgt = ref + [4.8, 1.3] + rng.normal(0, 0.3, (n, 2))
    res = rng.uniform(0, 2, n)
    res[3] = np.nan
    return {"ref_x": ref[:, 0], "ref_y": ref[:, 1], "tgt_x": tgt[:, 0], "tgt_y": tgt[:, 1],
            "score": rng.uniform(0, 1, n), "residual_px": res, "inlier": res < 1.5,
            "check": np.arange(n) % 5 == 0}


def stest_table(data_file) -> dict[str, np.ndarray]:
    """The CFOG Stest3 ground-truth tie points (MATLAB 1-based pixel centres -> corner convention)."""
    pts = np.loadtxt(data_file(STEST_GCP))
    n = len(pts)
    return {"ref_x": pts[:, 0] - 0.5, "ref_y": pts[:, 1] - 0.5, "tgt_x": pts[:, 2] - 0.5, "tgt_y": pts[:, 3] - 0.5,
            "score": np.ones(n), "residual_px": np.zeros(n), "inlier": np.ones(n, bool), "check": np.zeros(n, bool)}


@pytest.fixture
def grids(data_file):
    return open_raster_info(data_file(STEST_REF)).grid, open_raster_info(data_file(STEST_SEN)).grid


def test_round_trip_and_layers(tmp_path, grids):
    ref, tgt = grids
    t = table()
    path = write_tiepoints_gpkg(str(tmp_path / "tiepoints.gpkg"), t, ref, tgt)
    for layer in ("tiepoints", "matches"):
        back = read_tiepoints_gpkg(path, layer)
        for k in ("ref_x", "ref_y", "tgt_x", "tgt_y", "score", "residual_px"):
            np.testing.assert_array_equal(back[k], t[k])  # NaN residual -> NULL -> NaN
        np.testing.assert_array_equal(back["inlier"], t["inlier"])
        np.testing.assert_array_equal(back["check"], t["check"])
    ds = ogr.Open(path)
    assert sorted(ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())) == ["matches", "tiepoints"]
    pts, lines = ds.GetLayerByName("tiepoints"), ds.GetLayerByName("matches")
    assert pts.GetGeomType() == ogr.wkbPoint and lines.GetGeomType() == ogr.wkbLineString
    defn = pts.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    assert types["ref_x"] == ogr.OFTReal and types["inlier"] == ogr.OFTInteger and types["check"] == ogr.OFTInteger
    assert pts.GetSpatialRef().IsSame(osr.SpatialReference(wkt=ref.crs_wkt))
    assert [p for p in os.listdir(tmp_path)] == ["tiepoints.gpkg"]  # no temporary or journal left


def test_geometries_on_real_ground_truth(tmp_path, grids, data_file):
    ref, tgt = grids
    t = stest_table(data_file)
    path = write_tiepoints_gpkg(str(tmp_path / "t.gpkg"), t, ref, tgt)
    ds = ogr.Open(path)
    pts = [f.GetGeometryRef().GetPoint_2D() for f in ds.GetLayerByName("tiepoints")]
    lines = [f.GetGeometryRef().GetPoints() for f in ds.GetLayerByName("matches")]
    ref_map = ref.pixel_to_map(np.stack([t["ref_x"], t["ref_y"]], 1))
    tgt_map = tgt.pixel_to_map(np.stack([t["tgt_x"], t["tgt_y"]], 1))
    np.testing.assert_allclose(np.array(pts), ref_map, atol=1e-6)
    np.testing.assert_allclose(np.array([ln[0] for ln in lines]), tgt_map, atol=1e-6)
    np.testing.assert_allclose(np.array([ln[1] for ln in lines]), ref_map, atol=1e-6)
    # the lines show the ground-truth offsets: pixel offsets times the 3.5 m pixel size
    length = np.hypot(*(np.array([ln[0] for ln in lines]) - np.array(pts)).T)
    offset_px = np.hypot(t["tgt_x"] - t["ref_x"], t["tgt_y"] - t["ref_y"])
    np.testing.assert_allclose(length, 3.5 * offset_px, rtol=1e-9, atol=1e-6)
    assert 0.5 < np.median(offset_px) < 10.0


def test_target_in_other_crs_goes_into_reference_crs(tmp_path, data_file):
    src = data_file(S2_PATCH)
    ref = open_raster_info(src).grid
    reproj = str(tmp_path / "tgt_4326.tif")
    gdal.Warp(reproj, src, dstSRS="EPSG:4326")
    tgt = open_raster_info(reproj).grid
    p_ref = np.array([[100.5, 200.5], [300.0, 50.0]])
    tgt_px = tgt.map_to_pixel(transform_points(ref.pixel_to_map(p_ref), ref.crs_wkt, tgt.crs_wkt))
    t = {"ref_x": p_ref[:, 0], "ref_y": p_ref[:, 1], "tgt_x": tgt_px[:, 0], "tgt_y": tgt_px[:, 1]}
    path = write_tiepoints_gpkg(str(tmp_path / "t.gpkg"), t, ref, tgt)
    ds = ogr.Open(path)
    lines = [f.GetGeometryRef().GetPoints() for f in ds.GetLayerByName("matches")]
    for ln in lines:  # same ground: zero-length lines in the reference CRS
        assert math.dist(ln[0], ln[1]) < 1e-3
    back = read_tiepoints_gpkg(path)
    assert back["inlier"].all() and not back["check"].any() and np.isnan(back["score"]).all()


def test_pixel_space_geometries_upright_without_crs(tmp_path, data_file):
    grid = open_raster_info(data_file(OSM_PNG)).grid
    t = table(10)
    path = write_tiepoints_gpkg(str(tmp_path / "p.gpkg"), t, grid, grid)
    ds = ogr.Open(path)
    lyr = ds.GetLayerByName("tiepoints")
    srs = lyr.GetSpatialRef()  # GeoPackage "undefined Cartesian SRS" (srs_id -1), not lon/lat
    assert srs is None or (srs.IsLocal() and not srs.IsGeographic())
    pts = np.array([f.GetGeometryRef().GetPoint_2D() for f in lyr])
    np.testing.assert_allclose(pts, np.stack([t["ref_x"], -t["ref_y"]], 1))
    start = np.array([f.GetGeometryRef().GetPoints()[0] for f in ds.GetLayerByName("matches")])
    np.testing.assert_allclose(start, np.stack([t["tgt_x"], -t["tgt_y"]], 1))


def test_errors_and_overwrite(tmp_path, grids, data_file):
    ref, tgt = grids
    path = str(tmp_path / "t.gpkg")
    write_tiepoints_gpkg(path, table(), ref, tgt)
    with pytest.raises(OutputExistsError):
        write_tiepoints_gpkg(path, table(), ref, tgt, overwrite=False)
    write_tiepoints_gpkg(path, table(5), ref, tgt)
    assert len(read_tiepoints_gpkg(path)["ref_x"]) == 5
    with pytest.raises(GeoreferencingError):
        write_tiepoints_gpkg(str(tmp_path / "x.gpkg"), table(), ref, RasterGrid(10, 10))
    with pytest.raises(InputError, match="not found"):
        read_tiepoints_gpkg(tmp_path / "none.gpkg")
    with pytest.raises(InputError, match="no layer"):
        read_tiepoints_gpkg(path, "other")
    with pytest.raises(InputError):
        read_tiepoints_gpkg(data_file(STEST_REF))


def test_read_edited_layer(tmp_path, grids):
    """Deleting features and a field other than the coordinates (as a QGIS user might) still reads."""
    ref, tgt = grids
    t = table(20)
    path = str(tmp_path / "t.gpkg")
    write_tiepoints_gpkg(path, t, ref, tgt)
    ds = ogr.Open(path, update=1)
    lyr = ds.GetLayerByName("tiepoints")
    fids = [f.GetFID() for f in lyr][:4]
    for fid in fids:
        lyr.DeleteFeature(fid)
    lyr.DeleteField(lyr.GetLayerDefn().GetFieldIndex("score"))
    ds = None
    back = read_tiepoints_gpkg(path)
    assert len(back["ref_x"]) == 16 and np.isnan(back["score"]).all()
    np.testing.assert_array_equal(back["tgt_y"], t["tgt_y"][4:])
    # a layer without the pixel coordinates cannot be used
    ds = ogr.Open(path, update=1)
    lyr = ds.GetLayerByName("matches")
    lyr.DeleteField(lyr.GetLayerDefn().GetFieldIndex("tgt_x"))
    ds = None
    with pytest.raises(InputError, match="tgt_x"):
        read_tiepoints_gpkg(path, "matches")
