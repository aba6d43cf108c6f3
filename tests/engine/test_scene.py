"""Whole scenes in bounded memory (engine/scene.py): tiled matching under a decimated prior.

The scenes are mosaics of real Sentinel-2 blocks (shared/data/arosics_INTER1_S2A_S2A, see bench/scale.py)
and their targets the mosaic resampled through a known similarity, built in tmp_path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from bench import scale as S
from hsscl.engine import pipeline, scene
from hsscl.engine.config import CoregConfig
from hsscl.engine.errors import CancelledError
from hsscl.engine.io.raster import Window
from hsscl.engine.progress import Monitor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def arosics(data_file) -> Path:
    """The shared-data root, when the real Sentinel-2 scenes the mosaics are cut from are there."""
    for name, _, _ in S.SOURCE_BLOCKS:
        data_file(f"{S.AROSICS}/{name}")
    return Path(data_file(f"{S.AROSICS}/{S.SOURCE_BLOCKS[0][0]}")).parents[1]


def _pair(tmp: Path, size: int, shared: Path) -> tuple[Path, Path]:
    return S.make_pair(tmp, size, shared)


@pytest.fixture()
def small_tiles(monkeypatch):
    """Tiny thresholds so that a 1024 px pair goes through the tiled path quickly (4 x 4 tiles)."""
    monkeypatch.setattr(scene, "TILED_ABOVE_PX", 512)
    monkeypatch.setattr(scene, "OVERVIEW_PX", 512)
    monkeypatch.setattr(scene, "TILE_PX", 256)
    monkeypatch.setattr(scene, "MIN_SPACING_PX", 64)


def test_small_windows_keep_the_whole_image_path():
    assert not scene.needs_tiling(Window(0, 0, 2048, 2048))
    assert scene.needs_tiling(Window(0, 0, 2049, 300))


def test_tiles_partition_the_window_and_centres_are_not_duplicated():
    from hsscl.engine.io.raster import RasterGrid, RasterInfo

    grid = RasterGrid(5000, 3000)
    info = RasterInfo("x", grid, 1, ("UInt16",), (None,), ("",), False, False)
    plan = scene.ScenePlan(info, info, Window(0, 0, 5000, 3000), grid)
    cores = plan.tiles()
    area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in cores)
    assert area == 5000 * 3000 and len(cores) == 5 * 3
    c = plan.centres()
    owners = [sum(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in cores) for x, y in c]
    assert set(owners) == {1}


def test_tiled_path_on_a_small_pair(tmp_path, arosics, small_tiles):
    """Same pipeline, tiled: per-tile progress, diagnostics, sub-pixel true error."""
    ref, tgt = _pair(tmp_path, 1024, arosics)
    msgs: list[str] = []
    est = pipeline.estimate(ref, tgt, CoregConfig(threads=1), Monitor(lambda f, m: msgs.append(m)))
    m = est.report["matching"]
    assert m["mode"] == "tiled" and m["tiles"]["count"] == 16 and m["tiles"]["matched"] >= 12
    assert [f"tile {k}/16" for k in range(1, 17)] == [x for x in dict.fromkeys(msgs) if x.startswith("tile ")]
    est.correction.save(tmp_path / "c.json")
    err = S.true_error(tmp_path / "c.json", 1024)
    assert err["rmse_px"] < 0.5 and err["max_px"] < 1.0, err


def test_tiled_path_in_pixel_space(tmp_path, arosics, small_tiles):
    """Rasters without georeferencing: the moving frame is the target's own pixel grid."""
    ref, tgt = _pair(tmp_path, 1024, arosics)
    plain = []
    for p in (ref, tgt):
        a = gdal.Open(str(p)).ReadAsArray()
        out = tmp_path / f"plain_{p.name}"
        ds = gdal.GetDriverByName("GTiff").Create(str(out), a.shape[1], a.shape[0], 1, gdal.GDT_UInt16)
        ds.GetRasterBand(1).WriteArray(a)
        ds.GetRasterBand(1).SetNoDataValue(0)
        ds = None
        plain.append(out)
    est = pipeline.estimate(plain[0], plain[1], CoregConfig(threads=1))
    assert est.report["matching"]["mode"] == "tiled"
    est.correction.save(tmp_path / "c.json")
    assert S.true_error(tmp_path / "c.json", 1024)["max_px"] < 1.0


def test_cancel_between_tiles_leaves_no_output(tmp_path, arosics, small_tiles):
    ref, tgt = _pair(tmp_path / "in", 1024, arosics)
    state: dict = {}

    def report(f, msg):
        if msg.startswith("tile 3/") and "asked" not in state:
            state["asked"] = time.perf_counter()

    with pytest.raises(CancelledError):
        pipeline.coregister(ref, tgt, tmp_path / "out", CoregConfig(threads=1),
                            Monitor(report, lambda: "asked" in state))
    assert time.perf_counter() - state["asked"] < 3.0
    left = os.listdir(tmp_path / "out") if (tmp_path / "out").exists() else []
    assert not set(left) & set(pipeline.OUTPUT_NAMES.values()), left


_CHILD = """
import json, sys
from hsscl.engine import pipeline
from hsscl.engine.config import CoregConfig
from hsscl.engine.progress import Monitor
msgs = []
res = pipeline.coregister(sys.argv[1], sys.argv[2], sys.argv[3], CoregConfig(threads=1),
                          Monitor(lambda f, m: msgs.append(m)))
# this process's own high-water mark: wait4's ru_maxrss would also count the parent's (pytest's) at exec time
hwm_kb = int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1])
json.dump({"messages": msgs, "peak_mb": hwm_kb / 1024}, open(sys.argv[4], "w"))
"""


@pytest.mark.slow
def test_large_scene_tiled_bounded_memory(tmp_path, arosics):
    """A 4096 px real-data scene: tiled path, true error < 1 px, peak RSS of the child bounded."""
    ref, tgt = _pair(tmp_path / "in", 4096, arosics)
    out, log = tmp_path / "out", tmp_path / "progress.json"
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(ref), str(tgt), str(out), str(log)], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    _, stderr = p.communicate()
    assert p.returncode == 0, stderr.decode()[-3000:]
    child = json.loads(log.read_text())
    peak_mb, msgs = child["peak_mb"], child["messages"]
    # the whole-image path needs about 1.8 GB at 2048 px and grows with the area (~7 GB at 4096 px);
    # the tiled path measured 0.76 GB here (torch and GDAL imported: 0.27 GB)
    assert peak_mb < 1200, f"peak RSS {peak_mb:.0f} MB"
    tiles = [m for m in dict.fromkeys(msgs) if m.startswith("tile ")]
    assert tiles == [f"tile {k}/16" for k in range(1, 17)]
    report = json.loads((out / "report.json").read_text())
    assert report["matching"]["mode"] == "tiled" and report["matching"]["tiles"]["matched"] >= 14
    err = S.true_error(out / "correction.json", 4096)
    assert err["max_px"] < 1.0, err
    assert gdal.Open(str(out / "coregistered.tif")).RasterXSize == 4096
    np.testing.assert_allclose(report["matched_window"]["width"], 4096)
