"""The strong sets (``bench/strong.py``): wider seeded draws, a smooth local distortion of at most 3 px, and a truth
raster that still measures exactly."""
from __future__ import annotations

import numpy as np
import pytest

from bench import cases as C
from bench import strong as ST
from bench import truth as T

SIZES = [(100, 100), (256, 256), (628, 618), (1000, 600), (120, 90)]
IDS = [f"case_{k}" for k in range(60)]


def test_strong_draws_stay_in_their_ranges_and_use_them():
    rots, scales, shifts, amps = [], [], [], []
    for k, cid in enumerate(IDS):
        W, H = SIZES[k % len(SIZES)]
        p = C.draw_transform(cid, W, H, ST.SEED, ST.STRONG_DRAWS)
        cap = min(80.0, 0.15 * min(W, H))
        assert np.hypot(p["dx"], p["dy"]) <= cap + 1e-9
        assert abs(p["rot_deg"]) <= 10 and abs(p["scale"] - 1) <= 0.10
        d = T.Distortion.from_json(p["distortion"])
        assert 0 <= d.amp <= 3.0
        rots.append(abs(p["rot_deg"]))
        scales.append(abs(p["scale"] - 1))
        shifts.append(np.hypot(p["dx"], p["dy"]) / cap)
        amps.append(d.amp)
    # the ranges are really wider than the dev set's (4 deg, 5 %, 40 px)
    assert max(rots) > 8 and max(scales) > 0.08 and max(shifts) > 0.9 and max(amps) > 2.5
    big = C.draw_transform("big", 2000, 2000, ST.SEED, ST.STRONG_DRAWS)
    assert np.hypot(big["dx"], big["dy"]) <= 80


def test_strong_draws_are_seeded_and_leave_the_dev_draws_alone():
    a = C.draw_transform("x", 300, 200, ST.SEED, ST.STRONG_DRAWS)
    assert a == C.draw_transform("x", 300, 200, ST.SEED, ST.STRONG_DRAWS)
    assert a != C.draw_transform("x", 300, 200, ST.HELDOUT_SEED, ST.STRONG_DRAWS)
    assert len({ST.SEED, ST.HELDOUT_SEED, C.SEED, C.SEED + 1}) == 4
    dev = C.draw_transform("x", 300, 200, C.SEED)
    assert set(dev) == {"dx", "dy", "rot_deg", "scale"}           # no distortion on the dev ranges
    assert dev == C.draw_transform("x", 300, 200, C.SEED, C.DEV_DRAWS)
    assert C.DEV_DRAWS.key() is None and ST.STRONG_DRAWS.key()["max_distortion"] == 3.0


@pytest.mark.parametrize("size", [(100, 100), (256, 256), (628, 618)])
def test_distortion_is_smooth_and_at_most_3_px(size):
    W, H = size
    for cid in IDS[:15]:
        d = T.Distortion.from_json(C.draw_transform(cid, W, H, ST.SEED, ST.STRONG_DRAWS)["distortion"])
        f = d(T.pixel_centres(W, H)).reshape(H, W, 2)
        mag = np.linalg.norm(f, axis=2)
        assert mag.max() == pytest.approx(d.amp, abs=1e-9) and mag.max() <= 3.0
        # smooth: neighbouring pixels move apart by at most a few tenths of a pixel, curvature far smaller
        assert np.abs(np.diff(f, axis=0)).max() <= d.jacobian_bound() + 1e-12 < 0.5
        assert np.abs(np.diff(f, axis=1)).max() <= d.jacobian_bound() + 1e-12
        assert max(np.abs(np.diff(f, axis=0)).max(), np.abs(np.diff(f, axis=1)).max()) < 0.25
        curv = max(np.abs(np.diff(f, 2, axis=1)).max(), np.abs(np.diff(f, 2, axis=0)).max())
        assert curv < 0.03 and curv / 8 <= d.bilinear_bound()
        assert d.bilinear_bound() < 0.005
        # nothing like a constant shift: the field varies across the image
        if d.amp > 0.5:
            assert np.ptp(f[..., 0]) + np.ptp(f[..., 1]) > 0.3 * d.amp


def test_mapping_inverse_undoes_forward():
    W, H = 256, 256
    p = C.draw_transform("inv", W, H, ST.SEED, ST.STRONG_DRAWS)
    M = T.similarity(W, H, p["dx"], p["dy"], p["rot_deg"], p["scale"])
    mp = T.Mapping(M, T.Distortion.from_json(p["distortion"]))
    q = np.random.default_rng(0).uniform(-20, 280, (500, 2))
    assert np.abs(mp.forward(mp.inverse(q)) - q).max() < 1e-8


def _synthetic_source(name: str = "synthetic") -> C.Source:
    """A 140 x 110 smooth random image as both reference and original target, identity ground truth."""
    from osgeo import gdal
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    a = gaussian_filter(rng.uniform(0, 255, (110, 140)), 3)
    a = ((a - a.min()) / np.ptp(a) * 200 + 20).astype(np.float32)
    img = C.Img(a[None], gdal.GDT_Byte)
    return C.Source(name, "SAR-optical", "test", lambda: img, lambda: img, C._g_identity)


def test_a_strong_case_truth_raster_holds_the_true_mapping_exactly(tmp_path):
    """Built from a known image with the identity ground truth: the truth raster is M(p) + d(p) at every target
    pixel centre, the target shows the reference at that position, the exact non-affine correction measures ~0,
    the similarity alone measures the distortion, and doing nothing measures the case's initial RMSE."""
    from bench.run import evaluate

    pytest.importorskip("osgeo.gdal")
    src = _synthetic_source()
    case = C.build_case(src, out_root=tmp_path, seed=ST.SEED, draws=ST.STRONG_DRAWS)
    W, H = case["width"], case["height"]
    mp = T.case_mapping(case)
    assert mp.distortion is not None and case["draws"] == ST.STRONG_DRAWS.key()
    p = case["transform"]
    assert np.allclose(mp.M, T.similarity(W, H, p["dx"], p["dy"], p["rot_deg"], p["scale"]))
    truth = T.read_raster(case["truth"])
    exact = mp.forward(T.pixel_centres(W, H)).T.reshape(2, H, W)
    assert np.abs(truth - exact).max() < 1e-4                       # float32 rounding only
    # the written target is the reference resampled at the true mapping (PNG: 8-bit rounding)
    ref = src.ref().data
    expect = C._resample(ref, exact)[0]
    tgt = T.read_raster(case["target"])[0]
    ok = np.isfinite(expect) & (tgt > 0)
    assert ok.mean() > 0.5 and np.abs(np.round(expect[ok]) - tgt[ok]).max() <= 1
    mask = np.load(case["eval_mask"])
    perfect = T.score(T.warp_with_model(truth, mp.inverse, W, H), mask)
    assert perfect.rmse < 1e-3 and perfect.coverage > 0.99
    similarity_only = evaluate(case, {"ok": True, "model": np.linalg.inv(mp.M).tolist()})
    d = np.linalg.norm(mp.distortion(T.pixel_centres(W, H)), axis=1)
    assert 0.3 * np.sqrt(np.mean(d ** 2)) < similarity_only["rmse"] <= mp.distortion.amp * 1.2 + 0.05
    none = evaluate(case, {"ok": True, "model": np.eye(3).tolist()})
    assert none["rmse"] == pytest.approx(case["initial_rmse"], rel=1e-3)
    # exact tie points of the non-affine mapping are all "correct" at 3 px
    q = np.random.default_rng(1).uniform(30, 80, (40, 2))
    tp = evaluate(case, {"ok": True, "ref_xy": q.tolist(), "tgt_xy": mp.inverse(q).tolist()})
    assert tp["correct3"] == 40


def test_strong_cases_cache_by_their_ranges(tmp_path):
    """A strong case folder is served from the cache; the same folder under the dev ranges is rebuilt."""
    pytest.importorskip("osgeo.gdal")
    src = _synthetic_source()
    a = C.build_case(src, out_root=tmp_path, seed=ST.SEED, draws=ST.STRONG_DRAWS)
    meta = tmp_path / src.name / "case.json"
    stamp = meta.stat().st_mtime_ns
    assert C.build_case(src, out_root=tmp_path, seed=ST.SEED, draws=ST.STRONG_DRAWS) == {**a}
    assert meta.stat().st_mtime_ns == stamp
    dev = C.build_case(src, out_root=tmp_path, seed=ST.SEED)
    assert "draws" not in dev and "distortion" not in dev["transform"]


def test_strong_sets_are_the_dev_and_heldout_sources_in_folders_of_their_own():
    from bench import heldout as HO
    from bench import run

    dirs = {s[2] for s in run.SETS.values()}
    assert len(dirs) == 4 and ST.CASES_DIR.name == "cases_strong"
    assert ST.HELDOUT_CASES_DIR.name == "cases_heldout_strong"
    assert run.SETS["strong"][1] == C.SEED + 2 and run.SETS["heldout-strong"][1] == C.SEED + 3
    assert run.SETS["dev"][5] == C.DEV_DRAWS and run.SETS["strong"][5] == ST.STRONG_DRAWS
    if (C.DATA / "SOURCES.md").exists():
        assert [s.name for s in ST.select()] == [s.name for s in C.sources()]
        assert [s.name for s in ST.select_heldout()] == [s.name for s in HO.sources()]
