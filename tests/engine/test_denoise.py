"""Block-wise adaptive denoising measured on real Sentinel-1 speckle and real optical imagery."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from hsscl.engine.denoise import DenoiseResult, denoise
from hsscl.engine.errors import InputError
from hsscl.engine.modality import detect_modality, reduce_bands

gdal = pytest.importorskip("osgeo.gdal")
gdal.UseExceptions()

S1_FILES = [
    "more_s1s2/sen1floods11_cloudtostreet/S1/Spain_7370579_S1Hand.tif",
    "more_s1s2/terramind_terramesh_examples/S1RTC/282D_485L_3_3.tif",
    "more_s1s2/terramind_terramesh_examples/S1RTC/433D_629L_3_1.tif",
    "more_s1s2/ssl4eo_s12_via_rico_hdl/SSL4EO-S12/s1/0000200/"
    "S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457/VV.tif",
    "bigearthnet_example/BigEarthNet-S1-Example/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48/"
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_VV.tif",
]
CLEAN_OPTICAL = [
    "more_s1s2/terramind_terramesh_examples/S2RGB/282D_485L_3_3.tif",
    "more_s1s2/terramind_terramesh_examples/S2L2A/637U_59R_1_3.tif",
    "bigearthnet_example/BigEarthNet-S2-Example/S2A_MSIL2A_20170613T101031_87_48/S2A_MSIL2A_20170613T101031_87_48_B04.tif",
    "cfog_ye2019/data/optical1_sen.png",
    "osmnet_osdataset_samples/opt1.png",
]


def shared_data() -> Path:
    """The shared real-data folder: $HSSCL_SHARED_DATA, else <repo>/../shared/data; skip when absent."""
    env = os.environ.get("HSSCL_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not root.is_dir():
        pytest.skip(f"shared real data not found at {root} (set HSSCL_SHARED_DATA)")
    return root


def reduced(rel: str) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """A shared raster read with GDAL and reduced to one channel: (image, valid, modality, sar_scale)."""
    path = shared_data() / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not in this copy of the shared data")
    ds = gdal.Open(str(path))
    data = ds.ReadAsArray().astype(np.float32)
    data = data[None] if data.ndim == 2 else data
    valid = np.all(np.isfinite(data), axis=0)
    desc = [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)]
    info = detect_modality(data, valid, gdal.GetDataTypeName(ds.GetRasterBand(1).DataType), desc)
    image = reduce_bands(data, valid, info)
    scale = "db" if info.sar_scale in ("db", "linear") else None  # reduce_bands gives dB for calibrated SAR
    return image, valid, info.modality, scale


def homogeneous_enl(before_lin: np.ndarray, after_lin: np.ndarray, n: int = 30, w: int = 11) -> tuple[float, float]:
    """Median ENL (mean^2/var) over the ``n`` most homogeneous w x w windows of the *original* image."""
    m = ndi.uniform_filter(before_lin, w)
    cv = np.sqrt(np.maximum(ndi.uniform_filter(before_lin**2, w) - m * m, 0)) / m
    h = w // 2
    cv[:h], cv[-h:], cv[:, :h], cv[:, -h:] = np.inf, np.inf, np.inf, np.inf
    centres: list[tuple[int, int]] = []
    for i in np.argsort(cv, axis=None)[: n * 200]:
        y, x = divmod(int(i), cv.shape[1])
        if all(abs(y - a) >= w or abs(x - b) >= w for a, b in centres):
            centres.append((y, x))
        if len(centres) == n:
            break

    def enl(img: np.ndarray) -> float:
        patches = [img[y - h:y + h + 1, x - h:x + h + 1] for y, x in centres]
        return float(np.median([p.mean() ** 2 / p.var() for p in patches]))

    return enl(before_lin), enl(after_lin)


def edge_gradient_ratio(before: np.ndarray, after: np.ndarray, sigma: float = 2.0) -> float:
    """Mean gradient magnitude after/before at the strongest 1 % edges (found on the smoothed original)."""
    g = ndi.gaussian_gradient_magnitude(before.astype(np.float64), 3.0)
    edges = g >= np.percentile(g, 99)
    grad = [ndi.gaussian_gradient_magnitude(im.astype(np.float64), sigma)[edges].mean() for im in (before, after)]
    return grad[1] / grad[0]


@pytest.mark.parametrize("rel", S1_FILES, ids=[Path(f).parent.name[-12:] + "/" + Path(f).name for f in S1_FILES])
def test_enl_of_homogeneous_areas_increases_on_real_s1(rel: str) -> None:
    image, valid, modality, scale = reduced(rel)
    assert (modality, scale) == ("sar", "db")
    res = denoise(image, valid, modality, sar_scale=scale)
    enl_before, enl_after = homogeneous_enl(10 ** (image / 10), 10 ** (res.image / 10))
    assert enl_after > 3.0 * enl_before, (enl_before, enl_after)
    assert res.stats["method"] == "refined_lee" and res.stats["noise_measure"] == "enl"
    assert res.stats["after"] > 3.0 * res.stats["before"]
    assert 2.0 < res.stats["before"] < 20.0  # Sentinel-1 GRD/RTC: a few looks
    assert res.stats["fraction_filtered"] > 0.9


@pytest.mark.parametrize("rel", S1_FILES[:4], ids=[Path(f).name for f in S1_FILES[:4]])
def test_strong_edges_are_preserved_on_real_s1(rel: str) -> None:
    image, valid, modality, scale = reduced(rel)
    res = denoise(image, valid, modality, sar_scale=scale)
    # speckle itself adds gradient energy, so "before" is an upper bound; allow at most 15 % loss
    assert edge_gradient_ratio(image, res.image) > 0.85


def test_step_edge_stays_sharp() -> None:
    """Control: a 10 dB step under 4-look gamma speckle keeps its sharpness, flat areas are smoothed."""
    rng = np.random.default_rng(0)
    truth = np.where(np.arange(256)[None, :] < 128, 0.05, 0.5) * np.ones((256, 1))
    db = (10 * np.log10(truth * rng.gamma(4.0, 0.25, truth.shape))).astype(np.float32)
    out = denoise(db, None, "sar", sar_scale="db").image
    profile = out.mean(axis=0)
    assert profile[125] < -12.0 and profile[126] < -12.0  # the dark side next to the edge stays dark
    assert profile[128] > -4.5 and profile[129] > -4.5
    lin = 10 ** (out[:, 10:100] / 10)
    assert lin.mean() ** 2 / lin.var() > 20  # 4 looks -> more than 20


def test_8bit_sar_export_is_despeckled() -> None:
    image, valid, modality, scale = reduced("cfog_ye2019/data/SAR_sen.png")
    assert (modality, scale) == ("sar", None)
    res = denoise(image, valid, modality, sar_scale=scale)
    before, after = homogeneous_enl(image.astype(np.float64) + 1e-3, res.image.astype(np.float64) + 1e-3)
    assert after > 2.0 * before
    assert 0.0 <= res.image.min() and res.image.max() <= 255.0


@pytest.mark.parametrize("rel", CLEAN_OPTICAL, ids=[Path(f).name for f in CLEAN_OPTICAL])
def test_clean_optical_is_nearly_unchanged(rel: str) -> None:
    image, valid, modality, _ = reduced(rel)
    assert modality in ("optical", "multispectral")
    res = denoise(image, valid, modality)
    lo, hi = np.percentile(image[valid], [1, 99])
    assert res.stats["noise_measure"] == "sigma"
    assert res.stats["fraction_filtered"] <= 0.1
    assert float(np.mean(np.abs(res.image - image))) < 0.002 * (hi - lo)


def test_noisy_optical_is_filtered_towards_the_clean_image() -> None:
    clean, valid, modality, _ = reduced("more_s1s2/terramind_terramesh_examples/S2RGB/637U_59R_1_3.tif")
    lo, hi = np.percentile(clean, [1, 99])
    noisy = clean + np.random.default_rng(1).normal(0, 0.05 * (hi - lo), clean.shape).astype(np.float32)
    res = denoise(noisy, valid, modality)
    assert res.stats["method"] == "wiener" and res.stats["fraction_filtered"] > 0.9
    assert 0.03 * (hi - lo) < res.stats["before"] < 0.08 * (hi - lo)  # sigma estimate near the truth (5 %)
    rmse_before = np.sqrt(np.mean((noisy - clean) ** 2))
    rmse_after = np.sqrt(np.mean((res.image - clean) ** 2))
    assert rmse_after < 0.7 * rmse_before
    assert edge_gradient_ratio(clean, res.image, sigma=1.5) > 0.8


def test_no_block_seams() -> None:
    image, valid, modality, scale = reduced(S1_FILES[0])
    out = denoise(image, valid, modality, block=64, sar_scale=scale).image
    step = np.abs(np.diff(out, axis=1)).mean(axis=0)  # mean |difference| between neighbouring columns
    at_borders = step[63::64].mean()
    assert at_borders < 1.2 * np.median(step)


def test_invalid_pixels_are_kept_and_do_not_leak() -> None:
    image, valid, modality, scale = reduced(S1_FILES[0])
    holed = image.copy()
    holed[100:260, 300:512] = np.nan  # a no-data corner (right edge) and the blocks around it
    mask = np.isfinite(holed)
    before = holed.copy()
    res = denoise(holed, mask, modality, sar_scale=scale)
    np.testing.assert_array_equal(holed, before)  # NaN-aware: the input is untouched
    assert np.isnan(res.image[~mask]).all()
    assert np.isfinite(res.image[mask]).all()
    assert res.noise_map.shape == (8, 8) and res.filtered_blocks.shape == (8, 8)
    # pixels far from the hole are filtered exactly as without it
    full = denoise(image, valid, modality, sar_scale=scale).image
    far = np.zeros_like(mask)
    far[:, :200] = True
    assert np.median(np.abs(res.image[far] - full[far])) < 0.05


def test_all_invalid_and_bad_arguments() -> None:
    img = np.zeros((64, 64), np.float32)
    res = denoise(img, np.zeros((64, 64), bool), "optical")
    assert isinstance(res, DenoiseResult) and res.stats["method"] == "none"
    with pytest.raises(InputError):
        denoise(np.zeros((2, 8, 8), np.float32), None, "sar")
    with pytest.raises(InputError):
        denoise(img, None, "lidar")
    with pytest.raises(InputError):
        denoise(img, None, "sar", block=8)


def test_input_is_not_modified() -> None:
    image, valid, modality, scale = reduced(S1_FILES[1])
    copy = image.copy()
    denoise(image, valid, modality, sar_scale=scale)
    np.testing.assert_array_equal(image, copy)


def test_speed_1024_square() -> None:
    image, valid, modality, scale = reduced(S1_FILES[0])  # 512 x 512 real S1, mirrored to 1024 x 1024
    big = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    mask = np.ones(big.shape, bool)
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        res = denoise(big, mask, modality, sar_scale=scale)
        timings.append(time.perf_counter() - t0)
    assert res.image.shape == (1024, 1024)
    assert min(timings) < 2.0, timings
    optical = np.tile(reduced(CLEAN_OPTICAL[0])[0], (5, 5))[:1024, :1024]
    t0 = time.perf_counter()
    denoise(optical, mask, "optical")
    assert time.perf_counter() - t0 < 2.0
