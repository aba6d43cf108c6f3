"""Matching on real images: masked ZNCC, sub-pixel fine matching, coarse similarity search."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from osgeo import gdal
from scipy.ndimage import map_coordinates

from hsscl.engine.descriptors import get_descriptor
from hsscl.engine.geometry.transforms import Affine
from hsscl.engine.io.raster import open_raster_info, read_bands
from hsscl.engine.matching.coarse import coarse_search
from hsscl.engine.matching.fine import fine_match, grid_centres
from hsscl.engine.matching.ncc import masked_zncc, subpixel_peak
from hsscl.engine.preprocess import prepare

gdal.UseExceptions()

OPT_PNG = "osmnet_osdataset_samples/opt1.png"          # 256x256 Byte, optical (Google Earth)
S2_PATCH = "gefolki_EvalGeFolki/S1S2/S2_patch11.tif"   # 448x448x3 Float32, EPSG:32631
S1_PATCH = "gefolki_EvalGeFolki/S1S2/S1_patch11.tif"   # 448x448x2 Float32, same grid


def read_gray(path: str) -> np.ndarray:
    ds = gdal.Open(path)  # keep the dataset alive while reading (GDAL bindings)
    a = ds.ReadAsArray().astype(np.float64)
    return a if a.ndim == 2 else a.mean(0)


def resample(img: np.ndarray, model, shape: tuple[int, int]) -> np.ndarray:
    """``out(p) = img(model(p))`` at pixel centres ``p`` (corner convention), cubic, NaN outside."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    s = model(np.stack([xx.ravel(), yy.ravel()], 1))
    return map_coordinates(img, [s[:, 1] - 0.5, s[:, 0] - 0.5], order=3, mode="constant",
                           cval=np.nan).reshape(h, w)


def prepared(data: np.ndarray, valid: np.ndarray, dtype: str = "Float32", role: str = "reference"):
    p = prepare(data.astype(np.float32), valid, dtype, [], role, "test")
    return torch.from_numpy(p.image)[None, None], torch.from_numpy(p.valid)[None, None]


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


# ------------------------------------------------------------------------------------------ ZNCC

@pytest.mark.parametrize("shift", [(0, 0), (7, -4), (-11, 9)])
def test_masked_zncc_finds_known_integer_shift_of_a_real_image(data_file, shift):
    img = read_gray(data_file(OPT_PNG))
    dx, dy = shift
    moved = np.roll(img, (dy, dx), axis=(0, 1))  # moved[y, x] = img[y - dy, x - dx]
    x0, y0, n = 96, 100, 48                       # template: img[y0:y0+n, x0:x0+n]
    sx0, sy0, m = 76, 80, 88                      # search window in ``moved``
    tpl = t(img[y0:y0 + n, x0:x0 + n])
    srch = t(moved[sy0:sy0 + m, sx0:sx0 + m])
    z, overlap = masked_zncc(tpl, torch.ones_like(tpl, dtype=torch.bool), srch,
                             torch.ones_like(srch, dtype=torch.bool))
    assert z.shape == (1, m - n + 1, m - n + 1)
    off, peak, second = subpixel_peak(z)
    expect = (x0 + dx - sx0, y0 + dy - sy0)
    iy, ix = divmod(int(torch.argmax(z[0])), z.shape[-1])
    assert (ix, iy) == expect
    np.testing.assert_allclose(off[0].numpy(), expect, atol=0.05)
    assert float(peak[0]) > 0.999 and float(peak[0] - second[0]) > 0.1
    assert float(overlap[0, iy, ix]) == n * n


def test_masked_zncc_ignores_masked_pixels(data_file):
    img = read_gray(data_file(OPT_PNG))
    moved = np.roll(img, (5, -6), axis=(0, 1))
    n = 48
    tpl = img[100:100 + n, 96:96 + n].copy()
    tmask = np.ones_like(tpl, bool)
    tpl[:, :16] = 255.0                  # a third of the template is garbage (e.g. a cloud) ...
    tmask[:, :16] = False                # ... and masked out
    srch = moved[80:168, 76:164].copy()
    smask = np.ones_like(srch, bool)
    srch[60:, 60:] = 0.0                 # nodata corner in the search window, masked
    smask[60:, 60:] = False
    z, _ = masked_zncc(t(tpl), torch.from_numpy(tmask)[None, None], t(srch), torch.from_numpy(smask)[None, None])
    iy, ix = divmod(int(torch.argmax(z[0])), z.shape[-1])
    assert (ix, iy) == (96 - 6 - 76, 100 + 5 - 80)
    assert float(z[0, iy, ix]) > 0.999


# ------------------------------------------------------------------------------------------ fine

@pytest.mark.parametrize("offset", [(2.3, -1.6), (-0.5, 0.5), (4.75, 3.2)])
def test_fine_match_subpixel_accuracy_on_a_real_image(data_file, offset):
    img = read_gray(data_file(S2_PATCH))
    h = w = 256
    m0 = 96
    # reference: a crop; moving: the same ground sampled ``offset`` further: mov(p) = ref(p + offset)
    ref = img[m0:m0 + h, m0:m0 + w]
    mov = resample(img, lambda p: p + [m0 + offset[0], m0 + offset[1]], (h, w))
    rv = np.ones((h, w), bool)
    mv = np.isfinite(mov)
    R, RV = prepared(ref[None], rv)
    M, MV = prepared(np.nan_to_num(mov)[None], mv, role="target")
    desc = get_descriptor("cfog")
    centres = grid_centres(w, h, 48, 24)
    fm = fine_match(desc(R, RV), RV, M, MV, Affine(), centres, 48, 6, desc)
    assert len(fm) >= 0.8 * len(centres)
    # truth: reference position q is moving position q - offset
    err = fm.mov_xy - (fm.ref_xy - np.asarray(offset))
    e = np.linalg.norm(err, axis=1)
    good = fm.score > 0.5
    assert good.sum() >= 0.8 * len(fm)
    med, bias = float(np.median(e[good])), float(np.linalg.norm(err[good].mean(0)))
    assert med < 0.15, f"median error {med:.3f} px"
    assert bias < 0.15, f"mean error {bias:.3f} px"


def test_fine_match_with_shared_template_spectra_gives_the_same_matches(data_file):
    """The verify stage matches the same reference templates under many hypotheses: with a bank the templates'
    spectra are computed once; the matches (windows cut by the target's edge left out, partly masked templates
    on the masked path) are those of the plain computation."""
    img = read_gray(data_file(S2_PATCH))
    h = w = 256
    ref = img[96:96 + h, 96:96 + w]
    rv = np.ones((h, w), bool)
    rv[:40, :70] = False                      # partly masked templates take the masked path
    R, RV = prepared(ref[None], rv)
    desc = get_descriptor("cfog")
    d_ref = desc(R, RV)
    centres = grid_centres(w, h, 48, 20)
    bank: dict = {}
    for off in ((3.2, -2.1), (-30.0, 25.0), (1.0, 40.0)):   # the last two cut many windows at the edge
        mov = resample(img, lambda p, o=off: p + [96 + o[0], 96 + o[1]], (h, w))
        M, MV = prepared(np.nan_to_num(mov)[None], np.isfinite(mov), role="target")
        plain = fine_match(d_ref, RV, M, MV, Affine(), centres, 48, 9, desc)
        shared = fine_match(d_ref, RV, M, MV, Affine(), centres, 48, 9, desc, bank=bank)
        assert len(plain) > 10 and plain.n_windows == shared.n_windows
        np.testing.assert_allclose(shared.mov_xy, plain.mov_xy, atol=1e-3)
        np.testing.assert_allclose(shared.score, plain.score, atol=1e-4)
    assert len(bank) == 1


# ------------------------------------------------------------------------------------------ coarse

def test_coarse_search_finds_known_rotation_and_shift_on_a_real_sar_optical_pair(data_file):
    ref_path, s1_path = data_file(S2_PATCH), data_file(S1_PATCH)
    grid = open_raster_info(ref_path).grid
    h, w = grid.height, grid.width
    s1 = read_gray(s1_path)  # both S1 bands are identical
    # target pixel p shows what the (aligned) S1 shows at S(p): the truth ref px -> target px is S^-1
    S = Affine.from_similarity(1.01, 3.0, 14.3, -9.6, center=(w / 2, h / 2))
    mov = resample(s1, S, (h, w))
    truth = S.inverse()
    ref_data, ref_valid = read_bands(ref_path)
    R, RV = prepared(ref_data, ref_valid)
    M, MV = prepared(np.nan_to_num(mov)[None], np.isfinite(mov), role="target")
    desc = get_descriptor("cfog")
    res = coarse_search(R, RV, M, MV, desc, max_shift_px=50.0, max_rotation_deg=5.0, max_scale=0.05)
    best = res.best
    probe = np.stack(np.meshgrid(np.arange(16, w, 32.0), np.arange(16, h, 32.0)), -1).reshape(-1, 2)
    err = np.linalg.norm(best.model(probe) - truth(probe), axis=1).max()
    # 2-degree / 2.5 % steps leave up to 1 degree and 1.25 % (~6-8 px at the corners of 448 px);
    # the fine matcher's first-pass radius (see matching/matcher.py) must cover the remaining error
    radius1 = int(np.clip(math.ceil(2.5 * res.factor) + 6, 8, 20))
    assert err < radius1, f"coarse error {err:.2f} px > fine radius {radius1}"
    assert abs(best.rotation_deg - (-3.0)) <= 1.0 + 1e-9
