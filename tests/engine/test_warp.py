"""Applying a Correction with GDAL, checked against evaluating the model directly (scipy), on real rasters."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from osgeo import gdal
from scipy.ndimage import map_coordinates

from hsscl.engine.correction import Correction
from hsscl.engine.errors import CancelledError, InputError, OutputError, OutputExistsError
from hsscl.engine.geometry.transforms import Affine, Shift, Similarity, Transform, fit_model
from hsscl.engine.io.raster import RasterGrid, Window, open_raster_info, read_bands
from hsscl.engine.progress import Monitor
from hsscl.engine.warp import apply_correction

gdal.UseExceptions()

S2_PATCH = "gefolki_EvalGeFolki/S1S2/S2_patch11.tif"      # 448x448x3 Float32, EPSG:32631, 10 m
STEST_REF = "cfog_ye2019/data/Stest3_ref.tif"             # 628x618x3 Byte, EPSG:32633, 3.5 m
OSM_PNG = "osmnet_osdataset_samples/opt1.png"             # 256x256 Byte, no georeferencing
BEN_B02 = ("bigearthnet_example/BigEarthNet-S2-Example/S2A_MSIL2A_20170613T101031_87_48/"
           "S2A_MSIL2A_20170613T101031_87_48_B02.tif")      # 120x120 UInt16, EPSG:32633, no nodata

AFFINE = Affine.from_similarity(1.02, 3.0, 15.2, 8.4, center=(200.0, 190.0))


def models() -> dict[str, Transform]:
    """Known models (reference pixel -> target pixel), fitted from a smooth synthetic distortion."""
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 400, (200, 2))
    wave = np.stack([3 * np.sin(q[:, 0] / 80), 2 * np.cos(q[:, 1] / 60)], 1)
    return {"shift": Shift((12.3, 9.7)), "affine": AFFINE,
            "similarity": Similarity.from_similarity(1.02, -3.0, 11.0, -6.5, center=(200.0, 190.0)),
            "poly2": fit_model("poly2", q, AFFINE(q) + 1e-4 * (q - 200) ** 2),
            "poly3": fit_model("poly3", q, AFFINE(q) + 1e-6 * (q - 200) ** 3),
            "tps": fit_model("tps", q, AFFINE(q) + wave)}


def ref_grid_of(target: RasterGrid) -> RasterGrid:
    """A reference grid of another size inside the target's area (offset 20 and 15 pixels)."""
    gt = target.transform
    return RasterGrid(400, 380, (gt[0] + 20 * gt[1], gt[1], 0.0, gt[3] + 15 * gt[5], 0.0, gt[5]), target.crs_wkt)


def centres(grid: RasterGrid) -> np.ndarray:
    jj, ii = np.mgrid[0:grid.height, 0:grid.width]
    return np.stack([ii.ravel() + 0.5, jj.ravel() + 0.5], 1)


def sample(data: np.ndarray, xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear sampling of (B, H, W) ``data`` at pixel positions ``xy`` (corner convention)."""
    return np.stack([map_coordinates(b.astype(np.float64), [xy[:, 1] - 0.5, xy[:, 0] - 0.5], order=1,
                                     mode="constant", cval=np.nan) for b in data]).reshape(-1, *shape)


def interior(xy: np.ndarray, grid: RasterGrid, shape: tuple[int, int], margin: float = 1.0) -> np.ndarray:
    ok = (xy[:, 0] > margin) & (xy[:, 0] < grid.width - margin) & (xy[:, 1] > margin) & \
         (xy[:, 1] < grid.height - margin)
    return ok.reshape(shape)


def ramp(path: str, grid: RasterGrid) -> str:
    """A two-band raster on ``grid`` whose values are its own pixel-centre coordinates."""
    ds = gdal.GetDriverByName("GTiff").Create(path, grid.width, grid.height, 2, gdal.GDT_Float64)
    ds.SetGeoTransform(grid.transform)
    if grid.crs_wkt:
        ds.SetProjection(grid.crs_wkt)
    xy = centres(grid)
    ds.GetRasterBand(1).WriteArray(xy[:, 0].reshape(grid.shape))
    ds.GetRasterBand(2).WriteArray(xy[:, 1].reshape(grid.shape))
    ds = None
    return path


@pytest.fixture
def s2(data_file):
    path = data_file(S2_PATCH)
    return path, open_raster_info(path).grid


# --------------------------------------------------------------------------------- onto the reference

def test_affine_onto_reference_equals_model_evaluation(tmp_path, s2):
    path, tgt = s2
    ref = ref_grid_of(tgt)
    out = apply_correction(Correction(ref, tgt, AFFINE, "reference"), path, str(tmp_path / "out.tif"))
    ds = gdal.Open(out)
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (ref.width, ref.height, 3)
    assert ds.GetGeoTransform() == ref.transform
    assert open_raster_info(out).grid == RasterGrid(ref.width, ref.height, ref.transform, ds.GetProjection())
    from osgeo import osr
    assert osr.SpatialReference(wkt=ds.GetProjection()).IsSame(osr.SpatialReference(wkt=ref.crs_wkt))
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    assert ds.GetRasterBand(1).GetBlockSize()[1] > 1  # tiled
    got = ds.ReadAsArray().astype(np.float64)
    src, _ = read_bands(path)
    s = AFFINE(centres(ref))
    expected = sample(src, s, ref.shape)
    inner = interior(s, tgt, ref.shape)
    assert inner.mean() > 0.8
    err = np.abs(got - expected)[:, inner]
    assert err.max() < 1e-3 * np.abs(expected[:, inner]).max(), err.max()
    assert np.isnan(got[:, ~interior(s, tgt, ref.shape, -1.0)]).all()  # no source: nodata (NaN)


@pytest.mark.parametrize("kind", ["shift", "similarity", "affine", "poly2", "poly3", "tps"])
@pytest.mark.parametrize("grid", ["reference", "target"])
def test_geometry_accuracy_with_coordinate_ramp(tmp_path, s2, kind, grid):
    """Warp a raster holding its own pixel coordinates: the output tells where each pixel came from."""
    _, tgt = s2
    ref = ref_grid_of(tgt)
    model = models()[kind]
    src = ramp(str(tmp_path / "ramp.tif"), tgt)
    out = apply_correction(Correction(ref, tgt, model, grid), src, str(tmp_path / "out.tif"))
    got, valid = read_bands(out)
    og = open_raster_info(out).grid
    if grid == "reference":
        assert og == ref
        s = model(centres(ref))
    else:
        assert og.crs_wkt == tgt.crs_wkt
        s = model(ref.map_to_pixel(og.pixel_to_map(centres(og))))
        if kind in ("shift", "similarity", "affine"):  # only re-georeferenced (pixel size follows the model's scale)
            assert og.shape == tgt.shape and og.transform != tgt.transform
        else:  # resampled onto a north-up grid of the target's pixel size
            assert og.resolution == pytest.approx(tgt.resolution)
    inner = interior(s, tgt, og.shape)
    err = np.hypot(got[0] - s[:, 0].reshape(og.shape), got[1] - s[:, 1].reshape(og.shape))[inner]
    assert valid[inner].all() and inner.mean() > 0.5
    assert err.max() < 0.05, (kind, grid, err.max())


@pytest.mark.slow
def test_wiggly_tps_densifies_gcps_until_accurate(tmp_path, s2):
    """A spline with 500 controls and ~130 px waves needs more than the first 24x24 GCPs."""
    _, tgt = s2
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 448, (500, 2))
    model = fit_model("tps", q, q + np.stack([1.5 * np.sin(q[:, 0] / 25), 1.5 * np.cos(q[:, 1] / 20)], 1))
    src = ramp(str(tmp_path / "ramp.tif"), tgt)
    log: list[str] = []
    monitor = Monitor(report_fn=lambda f, m: log.append(m))
    out = apply_correction(Correction(tgt, tgt, model, "reference"), src, str(tmp_path / "o.tif"), monitor=monitor)
    got, _ = read_bands(out)
    s = model(centres(tgt))
    inner = interior(s, tgt, tgt.shape)
    err = np.hypot(got[0] - s[:, 0].reshape(tgt.shape), got[1] - s[:, 1].reshape(tgt.shape))[inner]
    assert err.max() < 0.05, err.max()
    assert any("GCP transformer" in m and "24x24" not in m for m in log)


def test_target_grid_affine_moves_pixels_to_reference_positions(tmp_path, s2):
    path, tgt = s2
    ref = ref_grid_of(tgt)
    out = apply_correction(Correction(ref, tgt, AFFINE, "target"), path, str(tmp_path / "t.tif"))
    og = open_raster_info(out).grid
    p = np.array([[0.0, 0.0], [448.0, 0.0], [123.5, 321.25]])
    expected = ref.pixel_to_map(AFFINE.inverse()(p))
    np.testing.assert_allclose(og.pixel_to_map(p), expected, atol=1e-6)
    np.testing.assert_array_equal(read_bands(out)[0], read_bands(path)[0])  # pixels untouched


def test_dtype_nan_nodata_and_descriptions_kept(tmp_path, s2):
    path, tgt = s2
    a = gdal.Open(path).ReadAsArray()
    a[:, 200:240, 150:190] = np.nan
    p = str(tmp_path / "nan.tif")
    ds = gdal.GetDriverByName("GTiff").Create(p, tgt.width, tgt.height, 3, gdal.GDT_Float32)
    ds.SetGeoTransform(tgt.transform)
    ds.SetProjection(tgt.crs_wkt)
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(a[i])
        ds.GetRasterBand(i + 1).SetNoDataValue(float("nan"))
        ds.GetRasterBand(i + 1).SetDescription(["B4", "B3", "B2"][i])
    ds = None
    ref = ref_grid_of(tgt)
    out = apply_correction(Correction(ref, tgt, Shift((10.0, 5.0)), "reference"), p, str(tmp_path / "o.tif"))
    o = gdal.Open(out)
    assert o.GetRasterBand(1).DataType == gdal.GDT_Float32
    assert all(math.isnan(o.GetRasterBand(i + 1).GetNoDataValue()) for i in range(3))
    assert [o.GetRasterBand(i + 1).GetDescription() for i in range(3)] == ["B4", "B3", "B2"]
    got = o.ReadAsArray()
    # target rows 200..240, cols 150..190 -> reference rows 195..235, cols 140..180
    assert np.isnan(got[:, 196:234, 141:179]).all()
    assert np.isfinite(got[:, 100:180, 100:300]).all()
    np.testing.assert_array_equal(got[:, 100:180, 100:300], a[:, 105:185, 110:310])  # integer shift: exact


def test_integer_raster_without_nodata_gets_zero(tmp_path, data_file):
    path = data_file(BEN_B02)
    tgt = open_raster_info(path).grid
    out = apply_correction(Correction(tgt, tgt, Shift((30.0, 0.0)), "reference"), path, str(tmp_path / "u.tif"))
    o = gdal.Open(out)
    assert o.GetRasterBand(1).DataType == gdal.GDT_UInt16 and o.GetRasterBand(1).GetNoDataValue() == 0
    got = o.ReadAsArray()
    assert (got[:, 91:] == 0).all() and (got[:, :89] > 0).all()
    np.testing.assert_array_equal(got[:, :89], gdal.Open(path).ReadAsArray()[:, 30:119])


def test_multiband_byte_and_pixel_space_reference(tmp_path, data_file):
    path = data_file(STEST_REF)
    tgt = open_raster_info(path).grid
    ref = RasterGrid(300, 200)  # a plain image's pixel grid: no CRS
    plain_tgt = RasterGrid(tgt.width, tgt.height)
    model = Affine.from_similarity(0.99, -2.0, 40.0, 60.0, center=(150.0, 100.0))
    out = apply_correction(Correction(ref, plain_tgt, model, "reference"), path, str(tmp_path / "p.tif"))
    o = gdal.Open(out)
    assert (o.RasterXSize, o.RasterYSize, o.RasterCount) == (300, 200, 3)
    assert o.GetProjection() == "" and o.GetGeoTransform(can_return_null=True) is None
    assert o.GetRasterBand(1).DataType == gdal.GDT_Byte
    got = o.ReadAsArray().astype(np.float64)
    src, _ = read_bands(path)
    s = model(centres(ref))
    expected = sample(src, s, ref.shape)
    inner = interior(s, tgt, ref.shape)
    assert inner.all()
    assert np.abs(got - expected)[:, inner].max() <= 1.0  # Byte rounding


def test_pixel_space_png_target_grid_nonlinear(tmp_path, data_file):
    path = data_file(OSM_PNG)
    grid = open_raster_info(path).grid
    rng = np.random.default_rng(3)
    q = rng.uniform(0, 256, (60, 2))
    model = fit_model("tps", q, q + [5.0, -3.0] + np.stack([np.sin(q[:, 1] / 40), 0 * q[:, 0]], 1))
    out = apply_correction(Correction(grid, grid, model, "target"), path, str(tmp_path / "t.tif"))
    o = gdal.Open(out)
    assert o.GetProjection() == ""
    gt = o.GetGeoTransform()
    assert gt[1] == 1.0 and gt[5] == -1.0  # shown at (x, -y) reference pixels, as QGIS shows plain images
    assert abs(gt[0] - -5.0) < 3 and abs(-gt[3] - 3.0) < 3


def test_overwrite_refused_then_allowed(tmp_path, s2):
    path, tgt = s2
    c = Correction(tgt, tgt, Shift((1.0, 1.0)), "reference")
    out = str(tmp_path / "o.tif")
    apply_correction(c, path, out)
    with pytest.raises(OutputExistsError) as e:
        apply_correction(c, path, out)
    assert "--overwrite" in e.value.hint
    apply_correction(c, path, out, overwrite=True)
    with pytest.raises(OutputError):
        apply_correction(c, path, str(tmp_path / "no" / "such" / "folder.tif"))


def test_cancel_leaves_no_file(tmp_path, s2):
    path, tgt = s2
    calls: list[float] = []
    monitor = Monitor(report_fn=lambda f, m: calls.append(f), cancel_fn=lambda: len(calls) >= 2)
    out = tmp_path / "cancelled.tif"
    with pytest.raises(CancelledError):
        apply_correction(Correction(tgt, tgt, models()["tps"], "reference"), path, str(out), monitor=monitor)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_progress_reported(tmp_path, s2):
    path, tgt = s2
    seen: list[float] = []
    apply_correction(Correction(tgt, tgt, AFFINE, "reference"), path, str(tmp_path / "o.tif"),
                     monitor=Monitor(report_fn=lambda f, m: seen.append(f)))
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


def test_raster_not_on_target_grid(tmp_path, s2, data_file):
    path, tgt = s2
    with pytest.raises(InputError, match="target's grid"):
        apply_correction(Correction(tgt, tgt, AFFINE, "reference"), data_file(OSM_PNG), str(tmp_path / "x.tif"))


def test_other_raster_on_target_grid_and_cropped_reference(tmp_path, s2, data_file):
    """A second raster of the target's grid (S1 of the same patch) is corrected the same way."""
    path, tgt = s2
    s1 = data_file("gefolki_EvalGeFolki/S1S2/S1_patch11.tif")
    ref = tgt.subgrid(Window(50, 60, 200, 150))
    out = apply_correction(Correction(ref, tgt, Shift((50.0, 60.0)), "reference"), s1, str(tmp_path / "s1.tif"))
    np.testing.assert_array_equal(gdal.Open(out).ReadAsArray(), gdal.Open(s1).ReadAsArray()[:, 60:210, 50:250])
