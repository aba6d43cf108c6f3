"""The plain CFOG reference peer (``bench/tools/plain_cfog.py``): its descriptor, and a real pair registered through
the same command line and result.json the harness uses."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from bench import cases as C

pytest.importorskip("cv2")
pytest.importorskip("osgeo.gdal")

from bench.tools import plain_cfog as P  # noqa: E402


def test_cfog_is_normalised_and_ignores_contrast_reversal():
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(np.random.default_rng(0).uniform(0, 255, (80, 90)), 2).astype(np.float32)
    valid = np.ones(img.shape, bool)
    valid[:, :10] = False
    d = P.cfog(img, valid)
    assert d.shape == (P.N_BINS, 80, 90)
    norms = np.linalg.norm(d, axis=0)
    assert np.allclose(norms[10:-10, 20:-10], 1, atol=1e-3)       # unit length where valid
    assert (d[:, :, :10] == 0).all()                               # nothing where invalid
    assert np.allclose(d, P.cfog(255 - img, valid), atol=1e-4)     # multimodal: |gradient| per orientation


def test_global_search_finds_a_rotation_and_scale_within_its_range():
    """A synthetic similarity of 7 deg, 8 %, (-12, 9) px: the global stage lands within a few pixels, the local
    templates and RANSAC within half a pixel."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    ref = gaussian_filter(rng.uniform(0, 255, (240, 260)), 3).astype(np.float32)
    H = P._sim(7.0, 1.08, np.array([130.0, 120.0]), np.array([130.0, 120.0])) @ P._shift(np.array([-12.0, 9.0]))
    Hr = np.linalg.inv(H)                                          # target pixel -> reference pixel
    tgt, tv = P._warp_into(ref, np.ones(ref.shape, bool), Hr, (260, 240))
    res = P.register(ref, np.ones(ref.shape, bool), tgt, tv)
    assert "error" not in res, res
    assert abs(res["rot_deg"] - 7.0) <= P.ROT_STEP / 2 and abs(res["scale"] - 1.08) <= P.SCALE_STEP / 2
    q = np.array([[60.0, 60.0], [200.0, 60.0], [60.0, 180.0], [200.0, 180.0]])
    err = np.linalg.norm((q @ res["model"][:2, :2].T + res["model"][:2, 2]) - (q @ H[:2, :2].T + H[:2, 2]), axis=1)
    assert err.max() < 0.5 and res["n_inliers"] >= P.MIN_INLIERS


@pytest.mark.skipif(not (C.DATA / "SOURCES.md").exists(), reason=f"shared data not found at {C.DATA}")
def test_plain_cfog_registers_a_dev_optical_infrared_pair(tmp_path):
    """cfog_visible_infrared (dev case, 512 px): run as the harness runs it, scored on the truth raster: within 3 px."""
    from bench.run import evaluate
    from bench.tools.registry import TOOLS

    src = next((s for s in C.sources() if s.name == "cfog_visible_infrared"), None)
    if src is None:
        pytest.skip("cfog_visible_infrared not in this copy of shared data")
    case = C.build_case(src, out_root=tmp_path / "cases")
    case["_json"] = str(tmp_path / "cases" / src.name / "case.json")
    tool = TOOLS["plain_cfog"]
    assert tool.available() is None
    wd = tmp_path / "run"
    (cmd,) = tool.timed(case, wd)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"BENCH_THREADS": "1",
                                                                               "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((wd / "result.json").read_text())
    assert res["ok"] and len(res["ref_xy"]) >= P.MIN_INLIERS
    ev = evaluate(case, tool.collect(case, wd))
    assert not ev["failed"] and ev["rmse"] <= 3.0, ev
    assert ev["correct3"] >= P.MIN_INLIERS
