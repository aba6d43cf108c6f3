"""Raster input, grids, CRS helpers, output checks and the Correction file, on real shared rasters."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from hsscl.engine.correction import Correction
from hsscl.engine.errors import (
    CancelledError,
    GeoreferencingError,
    InputError,
    NoOverlapError,
    OutputError,
    OutputExistsError,
)
from hsscl.engine.geometry.transforms import Affine, Shift, fit_model
from hsscl.engine.io.output import atomic_path, prepare_outdir
from hsscl.engine.io.raster import (
    RasterGrid,
    Window,
    open_raster_info,
    overlap_window,
    read_bands,
    transform_points,
)

gdal.UseExceptions()

S2_PATCH = "gefolki_EvalGeFolki/S1S2/S2_patch11.tif"      # 448x448x3 Float32, EPSG:32631, 10 m
STEST_SEN = "cfog_ye2019/data/Stest3_sen.tif"             # 628x618x1 Byte, EPSG:32633, 3.5 m
OSM_PNG = "osmnet_osdataset_samples/opt1.png"             # 256x256 Byte, no georeferencing
BEN = "bigearthnet_example/BigEarthNet-S2-Example/"
BEN_B02_33 = BEN + "S2A_MSIL2A_20170613T101031_87_48/S2A_MSIL2A_20170613T101031_87_48_B02.tif"
BEN_B02_29 = BEN + "S2A_MSIL2A_20170617T113321_36_85/S2A_MSIL2A_20170617T113321_36_85_B02.tif"


def gdal_read(path: str) -> np.ndarray:
    a = gdal.Open(path).ReadAsArray().astype(np.float32)
    return a if a.ndim == 3 else a[None]


def write_like(path: str, src: str, arrays: np.ndarray, dtype: int, nodata: float | None = None) -> str:
    """Write ``arrays`` (B, H, W) with the georeferencing of ``src``."""
    s = gdal.Open(src)
    ds = gdal.GetDriverByName("GTiff").Create(path, s.RasterXSize, s.RasterYSize, len(arrays), dtype)
    ds.SetGeoTransform(s.GetGeoTransform())
    ds.SetProjection(s.GetProjection())
    for i, a in enumerate(arrays):
        ds.GetRasterBand(i + 1).WriteArray(a)
        if nodata is not None:
            ds.GetRasterBand(i + 1).SetNoDataValue(nodata)
    ds = None
    return path


# ---------------------------------------------------------------------------------------- RasterGrid

def test_grid_pixel_map_round_trip_rotated():
    g = RasterGrid(300, 200, (1000.0, 2.0, 0.5, 5000.0, 0.3, -2.0), "EPSG:32631")
    xy = np.array([[0.0, 0.0], [300.0, 200.0], [12.25, 7.5]])
    m = g.pixel_to_map(xy)
    np.testing.assert_allclose(m[0], [1000.0, 5000.0])
    np.testing.assert_allclose(m[2], [1000 + 12.25 * 2 + 7.5 * 0.5, 5000 + 12.25 * 0.3 - 7.5 * 2])
    np.testing.assert_allclose(g.map_to_pixel(m), xy, atol=1e-9)
    assert g.georeferenced and g.resolution == pytest.approx((np.hypot(2, 0.3), np.hypot(0.5, 2)))
    assert RasterGrid.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_grid_bounds_subgrid_and_window_for_bounds():
    g = RasterGrid(100, 50, (500.0, 10.0, 0.0, 2000.0, 0.0, -10.0), "EPSG:32633")
    assert g.bounds() == (500.0, 1500.0, 1500.0, 2000.0)
    sub = g.subgrid(Window(10, 5, 20, 10))
    assert sub.transform == (600.0, 10.0, 0.0, 1950.0, 0.0, -10.0) and sub.shape == (10, 20)
    assert g.window_for_bounds(sub.bounds()) == Window(10, 5, 20, 10)
    with pytest.raises(NoOverlapError):
        g.window_for_bounds((0.0, 0.0, 100.0, 100.0))
    plain = RasterGrid(256, 256)
    assert not plain.georeferenced and plain.transform == (0, 1, 0, 0, 0, 1)


# ------------------------------------------------------------------------------------ open_raster_info

def test_open_raster_info_georeferenced(data_file):
    info = open_raster_info(data_file(S2_PATCH))
    assert (info.width, info.height, info.count) == (448, 448, 3)
    assert info.dtypes == ("Float32",) * 3 and info.nodata == (None,) * 3
    assert info.grid.georeferenced and info.grid.transform == (399940.0, 10.0, 0.0, 5100020.0, 0.0, -10.0)
    srs = osr.SpatialReference(wkt=info.grid.crs_wkt)
    assert srs.GetAuthorityCode(None) == "32631"
    assert not info.is_complex and not info.has_mask


def test_open_raster_info_plain_png(data_file):
    info = open_raster_info(data_file(OSM_PNG))
    assert info.grid == RasterGrid(256, 256, (0.0, 1.0, 0.0, 0.0, 0.0, 1.0), None)
    assert not info.grid.georeferenced and info.dtypes == ("Byte",)


def test_open_raster_info_errors(tmp_path, data_file):
    with pytest.raises(InputError, match="not found"):
        open_raster_info(tmp_path / "missing.tif")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a raster\n" * 20)
    with pytest.raises(InputError, match="not a readable raster") as e:
        open_raster_info(text)
    assert e.value.hint
    # a shapefile: a vector dataset
    shp = str(tmp_path / "points.shp")
    ds = ogr.GetDriverByName("ESRI Shapefile").CreateDataSource(shp)
    lyr = ds.CreateLayer("points", None, ogr.wkbPoint)
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt("POINT (1 2)"))
    lyr.CreateFeature(f)
    ds = None
    with pytest.raises(InputError, match="vector dataset"):
        open_raster_info(shp)
    # a truncated copy of a real GeoTIFF
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(open(data_file(S2_PATCH), "rb").read()[:3000])
    with pytest.raises(InputError):
        open_raster_info(bad)
        read_bands(bad)


# ------------------------------------------------------------------------------------------ read_bands

def test_read_bands_matches_gdal_and_selects_bands(data_file):
    path = data_file(S2_PATCH)
    data, valid = read_bands(path)
    ref = gdal_read(path)
    assert data.dtype == np.float32 and data.shape == (3, 448, 448) and valid.all()
    np.testing.assert_array_equal(data, ref)
    d2, _ = read_bands(path, bands=[3, 1])
    np.testing.assert_array_equal(d2, ref[[2, 0]])
    dw, vw = read_bands(path, bands=[2], window=Window(100, 50, 30, 20))
    np.testing.assert_array_equal(dw[0], ref[1, 50:70, 100:130])
    with pytest.raises(InputError, match="do not exist"):
        read_bands(path, bands=[4])


def test_read_bands_nodata_nan_and_mask(tmp_path, data_file):
    src = data_file(S2_PATCH)
    a = gdal_read(src)
    a[:, 10:20, 30:50] = np.nan              # NaN without declared nodata
    a[1, 100:110, 100:110] = -9999.0         # nodata in one band only
    p = write_like(str(tmp_path / "nd.tif"), src, a, gdal.GDT_Float32, nodata=-9999.0)
    data, valid = read_bands(p)
    assert not valid[10:20, 30:50].any() and not valid[100:110, 100:110].any()
    assert valid.sum() == 448 * 448 - 200 - 100
    _, v1 = read_bands(p, bands=[1])
    assert v1[100:110, 100:110].all()        # band 1 is valid there
    # alpha band (per-dataset mask) on a real Byte raster
    sen = data_file(STEST_SEN)
    b = gdal_read(sen)[0]
    alpha = np.full(b.shape, 255, np.uint8)
    alpha[:, :40] = 0
    p2 = write_like(str(tmp_path / "alpha.tif"), sen, np.stack([b, alpha]), gdal.GDT_Byte)
    ds = gdal.Open(p2, gdal.GA_Update)
    ds.GetRasterBand(2).SetColorInterpretation(gdal.GCI_AlphaBand)
    ds = None
    assert open_raster_info(p2).has_mask
    data, valid = read_bands(p2, bands=[1])
    assert not valid[:, :40].any() and valid[:, 40:].all()
    np.testing.assert_array_equal(data[0], b)


def test_read_bands_complex_gives_amplitude(tmp_path, data_file):
    src = data_file(S2_PATCH)
    amp = gdal_read(src)[0]
    phase = np.linspace(0, 6, amp.size).reshape(amp.shape)
    p = write_like(str(tmp_path / "slc.tif"), src, (amp * np.exp(1j * phase))[None].astype(np.complex64),
                   gdal.GDT_CFloat32)
    assert open_raster_info(p).is_complex
    data, valid = read_bands(p)
    np.testing.assert_allclose(data[0], amp, rtol=1e-5)
    shifted = open_raster_info(p).grid.subgrid(Window(0, 0, 100, 100))
    shifted = RasterGrid(100, 100, (shifted.transform[0] + 5.0, *shifted.transform[1:]), shifted.crs_wkt)
    d2, v2 = read_bands(p, out_grid=shifted)  # half-pixel shift: mean of amplitudes, not of complex values
    np.testing.assert_allclose(d2[0, :, :99], 0.5 * (amp[:100, :99] + amp[:100, 1:100]), rtol=1e-4)
    # complex nodata (0): those pixels are invalid after resampling too (amplitude derived by GDAL, streamed)
    slc = (amp * np.exp(1j * phase)).astype(np.complex64)
    slc[:30, :30] = 0
    p0 = write_like(str(tmp_path / "slc_nodata.tif"), src, slc[None], gdal.GDT_CFloat32, nodata=0)
    d3, v3 = read_bands(p0, out_grid=shifted)
    assert not v3[:29, :29].any() and v3[40:, 40:99].all()
    np.testing.assert_allclose(d3[0, 40:, 40:99], d2[0, 40:, 40:99], rtol=1e-6)


def test_read_bands_out_grid_aligned_and_half_pixel(data_file):
    path = data_file(S2_PATCH)
    grid = open_raster_info(path).grid
    ref = gdal_read(path)
    d, v = read_bands(path, out_grid=grid)
    np.testing.assert_array_equal(d, ref)
    sub = grid.subgrid(Window(-10, 20, 100, 50))  # partly outside: invalid there
    d, v = read_bands(path, out_grid=sub)
    assert not v[:, :10].any() and v[:, 10:].all()
    np.testing.assert_array_equal(d[:, :, 10:], ref[:, 20:70, 0:90])
    half = RasterGrid(200, 200, (grid.transform[0] + 5.0, 10.0, 0.0, grid.transform[3], 0.0, -10.0), grid.crs_wkt)
    d, v = read_bands(path, out_grid=half)
    np.testing.assert_allclose(d[:, :, :199], 0.5 * (ref[:, :200, :199] + ref[:, :200, 1:200]), rtol=1e-5)
    coarse = RasterGrid(224, 224, (grid.transform[0], 20.0, 0.0, grid.transform[3], 0.0, -20.0), grid.crs_wkt)
    d, v = read_bands(path, out_grid=coarse)
    assert v[1:-1, 1:-1].all()
    block = ref[0].reshape(224, 2, 224, 2).mean(axis=(1, 3))  # 2x2 means: what a 20 m pixel sees
    assert np.corrcoef(d[0, 1:-1, 1:-1].ravel(), block[1:-1, 1:-1].ravel())[0, 1] > 0.97


def test_read_bands_pixel_space_out_grid(data_file):
    path = data_file(OSM_PNG)
    ref = gdal_read(path)
    g = RasterGrid(100, 80, (20.5, 1.0, 0.0, 30.0, 0.0, 1.0), None)  # in the PNG's own pixels
    d, v = read_bands(path, out_grid=g)
    assert v.all()
    np.testing.assert_allclose(d[0], 0.5 * (ref[0, 30:110, 20:120] + ref[0, 30:110, 21:121]), atol=1e-3)
    with pytest.raises(GeoreferencingError):
        read_bands(path, out_grid=RasterGrid(10, 10, (0, 1, 0, 0, 0, -1), "EPSG:4326"))


def test_read_bands_reprojected_copy_lines_up(tmp_path, data_file):
    """A copy reprojected to EPSG:4326 read back on the original UTM grid lines up with it."""
    src = data_file(S2_PATCH)
    grid = open_raster_info(src).grid
    jj, ii = np.mgrid[0:grid.height, 0:grid.width]
    ramp = write_like(str(tmp_path / "ramp.tif"), src, np.stack([ii + 0.5, jj + 0.5]), gdal.GDT_Float64)
    for name, path in (("ramp", ramp), ("image", src)):
        gdal.Warp(str(tmp_path / f"{name}_4326.tif"), path, dstSRS="EPSG:4326", resampleAlg="bilinear",
                  dstNodata=float("nan"), xRes=1.2e-4, yRes=8e-5, errorThreshold=0)
    d, v = read_bands(str(tmp_path / "ramp_4326.tif"), out_grid=grid)
    inner = np.zeros_like(v)
    inner[5:-5, 5:-5] = True
    assert v[inner].all()
    err = np.hypot(d[0] - (ii + 0.5), d[1] - (jj + 0.5))[inner]
    assert err.max() < 0.05, err.max()
    img, v2 = read_bands(str(tmp_path / "image_4326.tif"), out_grid=grid)
    orig = gdal_read(src)
    assert np.corrcoef(img[0][inner], orig[0][inner])[0, 1] > 0.95


# ---------------------------------------------------------------------------------------- CRS helpers

def test_transform_points_traditional_order_round_trip(data_file):
    wkt = open_raster_info(data_file(S2_PATCH)).grid.crs_wkt
    utm = np.array([[399940.0, 5100020.0], [404420.0, 5095540.0]])
    geo = transform_points(utm, wkt, "EPSG:4326")
    assert 1.0 < geo[0, 0] < 2.5 and 45.0 < geo[0, 1] < 47.0  # x = longitude, y = latitude (Toulouse area)
    np.testing.assert_allclose(transform_points(geo, "EPSG:4326", wkt), utm, atol=1e-6)


def test_overlap_window(data_file):
    grid = open_raster_info(data_file(S2_PATCH)).grid
    tgt = grid.subgrid(Window(300, -50, 400, 120))
    assert overlap_window(grid, tgt) == Window(300, 0, 148, 70)
    far = open_raster_info(data_file(BEN_B02_33)).grid
    with pytest.raises(NoOverlapError):
        overlap_window(grid, far)
    with pytest.raises(NoOverlapError):  # UTM 33 vs UTM 29 patches: other places
        overlap_window(far, open_raster_info(data_file(BEN_B02_29)).grid)
    plain = open_raster_info(data_file(OSM_PNG)).grid
    with pytest.raises(GeoreferencingError, match="gdal_edit"):
        overlap_window(grid, plain)
    assert overlap_window(plain, RasterGrid(500, 10)) == Window(0, 0, 256, 256)


def test_overlap_window_across_crs(tmp_path, data_file):
    src = data_file(S2_PATCH)
    grid = open_raster_info(src).grid
    part = str(tmp_path / "part_4326.tif")
    gdal.Warp(part, src, dstSRS="EPSG:4326", outputBounds=grid.subgrid(Window(100, 100, 200, 100)).bounds(),
              outputBoundsSRS=grid.crs_wkt)
    w = overlap_window(grid, open_raster_info(part).grid)
    # the lon/lat box of a UTM rectangle is a little larger (meridian convergence about 1 degree)
    assert 94 <= w.col_off <= 100 and 94 <= w.row_off <= 100
    assert 200 <= w.width <= 212 and 100 <= w.height <= 112


# --------------------------------------------------------------------------------------------- output

def test_prepare_outdir(tmp_path):
    out = prepare_outdir(tmp_path / "a" / "b", ["coregistered.tif", "report.json"])
    assert out.is_dir()
    (out / "report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="report.json") as e:
        prepare_outdir(out, ["coregistered.tif", "report.json"])
    assert "--overwrite" in e.value.hint
    assert prepare_outdir(out, ["report.json"], overwrite=True) == out
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        prepare_outdir(blocker / "sub", [])


def test_atomic_path(tmp_path):
    final = tmp_path / "x.json"
    with atomic_path(final) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".json")
        open(tmp, "w").write("1")
    assert final.read_text() == "1"
    with pytest.raises(CancelledError):
        with atomic_path(final) as tmp:
            open(tmp, "w").write("2")
            raise CancelledError()
    assert final.read_text() == "1" and os.listdir(tmp_path) == ["x.json"]


# ----------------------------------------------------------------------------------------- Correction

@pytest.mark.parametrize("kind", ["shift", "similarity", "affine", "poly2", "poly3", "tps"])
def test_correction_json_round_trip(tmp_path, data_file, kind):
    ref = open_raster_info(data_file(S2_PATCH)).grid
    tgt = open_raster_info(data_file(OSM_PNG)).grid
    rng = np.random.default_rng(1)
    q = rng.uniform(0, 448, (40, 2))
    model = fit_model(kind, q, Affine.from_similarity(1.01, 2.0, 3.0, -4.0)(q) + 1e-5 * q ** 2)
    c = Correction(ref, tgt, model, "target")
    p = c.save(tmp_path / "correction.json")
    back = Correction.load(p)
    assert back.reference == ref and back.target == tgt and back.grid == "target"
    assert type(back.model) is type(model)
    np.testing.assert_allclose(back.model(q), model(q), atol=1e-9)


def test_correction_load_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Correction.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a readable correction"):
        Correction.load(bad)
    bad.write_text(json.dumps({"format": "hsscl-correction", "reference": {"width": 3}}))
    with pytest.raises(InputError, match="incomplete or damaged"):
        Correction.load(bad)
    with pytest.raises(InputError):
        Correction(RasterGrid(2, 2), RasterGrid(2, 2), Shift(), "sideways")
