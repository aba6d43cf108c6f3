"""Modality detection, band reduction and normalisation on real rasters from the shared data set."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from hsscl.engine.errors import InputError
from hsscl.engine.modality import ModalityInfo, detect_modality, is_constant, normalise, reduce_bands

gdal = pytest.importorskip("osgeo.gdal")
gdal.UseExceptions()

TM = "more_s1s2/terramind_terramesh_examples"
BEN_S1 = "bigearthnet_example/BigEarthNet-S1-Example/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
BEN_S2 = "bigearthnet_example/BigEarthNet-S2-Example/S2A_MSIL2A_20170613T101031_87_48"
SSL_S1 = ("more_s1s2/ssl4eo_s12_via_rico_hdl/SSL4EO-S12/s1/0000200/"
          "S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457")
FLOODS = "more_s1s2/sen1floods11_cloudtostreet"


def shared_data() -> Path:
    """The shared real-data folder: $HSSCL_SHARED_DATA, else <repo>/../shared/data; skip when absent."""
    env = os.environ.get("HSSCL_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"shared real data not found at {root} (set HSSCL_SHARED_DATA)")
    return root


def read(rel: str) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """(data float32 (B, H, W), valid (H, W), GDAL dtype name, band descriptions) of a shared file."""
    path = shared_data() / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not in this copy of the shared data")
    ds = gdal.Open(str(path))
    data = ds.ReadAsArray().astype(np.float32)
    if data.ndim == 2:
        data = data[None]
    valid = np.all(np.isfinite(data), axis=0)
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    if nodata is not None and np.isfinite(nodata):
        valid &= data[0] != nodata
    band = ds.GetRasterBand(1)
    dtype = gdal.GetDataTypeName(band.DataType)
    descriptions = [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)]
    return data, valid, dtype, descriptions


def detect(rel: str) -> tuple[ModalityInfo, np.ndarray, np.ndarray]:
    data, valid, dtype, desc = read(rel)
    return detect_modality(data, valid, dtype, desc), data, valid


CASES = [
    # Sentinel-1, calibrated
    ("gefolki_EvalGeFolki/S1S2/S1_patch11.tif", "sar", "linear"),
    (f"{BEN_S1}/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif", "sar", "db"),
    (f"{BEN_S1}/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VH.tif", "sar", "db"),
    (f"{TM}/S1RTC/282D_485L_3_3.tif", "sar", "db"),
    (f"{TM}/S1RTC/637U_59R_1_3.tif", "sar", "db"),
    (f"{SSL_S1}/VV.tif", "sar", "db"),
    (f"{FLOODS}/S1/Spain_7370579_S1Hand.tif", "sar", "db"),
    # 8-bit SAR exports: found by their speckle
    ("cfog_ye2019/data/SAR_sen.png", "sar", None),
    ("cfog_ye2019/data/Stest3_sen.tif", "sar", None),
    ("osmnet_osdataset_samples/sar1.png", "sar", None),
    ("osmnet_osdataset_samples/sar2.png", "sar", None),
    ("3mos_montage_samples/split/SEN_city_00_sar.png", "sar", None),
    ("3mos_montage_samples/split/SEN_city_05_sar.png", "sar", None),
    # optical
    ("gefolki_EvalGeFolki/S1S2/S2_patch11.tif", "optical", None),
    (f"{BEN_S2}/S2A_MSIL2A_20170613T101031_87_48_B04.tif", "optical", None),
    (f"{TM}/S2RGB/282D_485L_3_3.tif", "optical", None),
    ("cfog_ye2019/data/optical_ref.png", "optical", None),
    ("cfog_ye2019/data/optical1_sen.png", "optical", None),
    ("cfog_ye2019/data/Stest3_ref.tif", "optical", None),
    ("cfog_ye2019/data/infrared_sen.tif", "optical", None),
    ("cfog_ye2019/data/LidarDepth_ref.png", "optical", None),
    ("osmnet_osdataset_samples/opt1.png", "optical", None),
    ("osmnet_osdataset_samples/opt2.png", "optical", None),
    ("3mos_montage_samples/split/SEN_city_00_opt.png", "optical", None),
    # multispectral
    (f"{TM}/S2L2A/282D_485L_3_3.tif", "multispectral", None),
    (f"{TM}/S2L1C/637U_59R_1_3.tif", "multispectral", None),
    (f"{FLOODS}/S2/Spain_7370579_S2Hand.tif", "multispectral", None),
]


@pytest.mark.parametrize(("rel", "modality", "scale"), CASES, ids=[Path(c[0]).name for c in CASES])
def test_detect_modality_on_real_files(rel: str, modality: str, scale: str | None) -> None:
    info, _, _ = detect(rel)
    assert (info.modality, info.sar_scale) == (modality, scale), info.reason
    assert info.reason and isinstance(info.stats, dict)


@pytest.mark.parametrize("rel", [c[0] for c in CASES], ids=[Path(c[0]).name for c in CASES])
def test_reduce_bands_gives_one_finite_channel(rel: str) -> None:
    info, data, valid = detect(rel)
    before = data.copy()
    out = reduce_bands(data, valid, info)
    assert out.shape == data.shape[1:] and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not is_constant(out, valid)
    np.testing.assert_array_equal(data, before)  # inputs untouched


def test_despeckled_8bit_sar_is_reported_as_optical_with_a_hint() -> None:
    # 3MOS GF-3 crops are despeckled/log-stretched: speckle statistics cannot see them (known limit).
    info, _, _ = detect("3mos_montage_samples/split/GF3_city_00_sar.png")
    assert info.modality == "optical"
    assert "despeckled" in info.reason and "explicitly" in info.reason


def test_linear_sar_is_reduced_to_db() -> None:
    info, data, valid = detect("gefolki_EvalGeFolki/S1S2/S1_patch11.tif")
    out = reduce_bands(data, valid, info)
    np.testing.assert_allclose(out, 10 * np.log10(data[0]), atol=1e-4)
    assert -15 < float(np.median(out)) < 0


def test_sar_reduction_picks_vv_by_description() -> None:
    info, data, valid = detect(f"{FLOODS}/S1/Spain_7370579_S1Hand.tif")
    assert info.stats["band_descriptions"] == ["VV", "VH"]
    out = reduce_bands(data, valid, info)
    np.testing.assert_array_equal(out[valid], data[0][valid])
    swapped = reduce_bands(data[::-1], valid, info, band_descriptions=["VH", "VV"])
    np.testing.assert_array_equal(swapped[valid], data[0][valid])


@pytest.mark.parametrize("scene", ["282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1", "609U_541L_3_0", "637U_59R_1_3"])
def test_multispectral_reduction_matches_the_rgb_product(scene: str) -> None:
    """The 10 m band mean of S2 L2A/L1C looks like the luminance of the S2 RGB product of the same scene."""
    rgb_info, rgb, rgb_valid = detect(f"{TM}/S2RGB/{scene}.tif")
    lum = reduce_bands(rgb, rgb_valid, rgb_info)
    for product in ("S2L2A", "S2L1C"):
        info, data, valid = detect(f"{TM}/{product}/{scene}.tif")
        out = reduce_bands(data, valid, info)
        assert np.corrcoef(out.ravel(), lum.ravel())[0, 1] > 0.9


def test_explicit_bands_override() -> None:
    info, data, valid = detect(f"{TM}/S2L2A/282D_485L_3_3.tif")
    np.testing.assert_array_equal(reduce_bands(data, valid, info, bands=(4,)), data[3])
    two = reduce_bands(data, valid, info, bands=(2, 8))
    expected = (normalise(data[1], valid, "optical") + normalise(data[7], valid, "optical")) / 2
    np.testing.assert_allclose(two, expected, atol=1e-5)
    with pytest.raises(InputError, match="out of range"):
        reduce_bands(data, valid, info, bands=(13,))
    sar, s1, s1_valid = detect(f"{TM}/S1RTC/282D_485L_3_3.tif")
    np.testing.assert_allclose(reduce_bands(s1, s1_valid, sar, bands=(1, 2)), s1.mean(axis=0), atol=1e-5)


def test_invalid_pixels_do_not_change_the_decision_and_are_filled() -> None:
    data, valid, dtype, desc = read(f"{FLOODS}/S1/Spain_7370579_S1Hand.tif")
    holed = data.copy()
    holed[:, 100:300, 50:250] = np.nan
    info = detect_modality(holed, valid, dtype, [""] * len(desc))  # no descriptions: values alone
    assert (info.modality, info.sar_scale) == ("sar", "db")
    out = reduce_bands(holed, valid, info)
    assert np.isfinite(out).all()
    inside = np.isnan(holed[0])
    assert np.allclose(out[inside], np.median(out[~inside]))


def test_normalise_is_robust_zero_mean_unit_scale() -> None:
    info, data, valid = detect(f"{TM}/S2RGB/282D_485L_3_3.tif")
    lum = reduce_bands(data, valid, info)
    mask = valid.copy()
    mask[:20] = False
    for modality in ("optical", "sar", "multispectral"):
        out = normalise(lum, mask, modality)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert np.all(out[~mask] == 0)
        assert abs(float(np.median(out[mask]))) < 0.5
        assert 0.5 < float(np.std(out[mask])) < 3
        assert np.abs(out).max() < 50


def test_constant_and_empty_images() -> None:
    flat = np.full((64, 64), 7.0, np.float32)
    valid = np.ones((64, 64), bool)
    assert is_constant(flat, valid)
    assert np.all(normalise(flat, valid, "sar") == 0)
    assert is_constant(flat, np.zeros((64, 64), bool))
    with_nan = flat.copy()
    with_nan[0, 0] = np.nan
    assert is_constant(with_nan, valid)
    info = detect_modality(flat[None], np.zeros((64, 64), bool), "Byte", [""])
    assert info.modality == "optical" and "No valid pixel" in info.reason


def test_modality_info_is_frozen_and_checked() -> None:
    info, _, _ = detect(f"{BEN_S1}/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.modality = "optical"  # type: ignore[misc]
    with pytest.raises(ValueError):
        ModalityInfo("optical", "db", "inconsistent")
    with pytest.raises(InputError):
        detect_modality(np.zeros((1, 8, 8), np.float32), np.ones((4, 4), bool), "Byte", [""])
