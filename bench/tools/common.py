"""Helpers shared by the peer adapters (run inside the peers' venv: numpy + GDAL only here).

An adapter is run as ``python -m bench.tools.<name> CASE_JSON WORKDIR`` and writes WORKDIR/result.json:
``{"model": 3x3 reference->target (pixel corners) or null, "ref_xy": [[x, y], ...], "tgt_xy": [...],
"n_raw": int, "note": str}``. Tie points are the tool's kept matches (inliers); the harness fits a model
from them when the tool gives none, with the same code for every peer.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np


def threads() -> int:
    """Threads the harness gives this tool (BENCH_THREADS; the same for every tool in a run)."""
    import os

    return max(1, int(os.environ.get("BENCH_THREADS", "1")))


def read_bands(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) float32 and a (H, W) validity mask (nodata / NaN / all-zero PNG borders are invalid)."""
    from osgeo import gdal

    ds = gdal.Open(path)
    arrs, valid = [], None
    for b in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(b)
        a = band.ReadAsArray().astype(np.float32)
        nd = band.GetNoDataValue()
        v = np.isfinite(a)
        if nd is not None and not np.isnan(nd):
            v &= a != nd
        valid = v if valid is None else valid & v
        arrs.append(np.where(v, a, np.nan))
    data = np.stack(arrs)
    if path.endswith(".png"):  # pixel-space cases: black (0 in all bands) = outside the image
        valid &= ~(np.nan_to_num(data) == 0).all(axis=0)
    return data, valid


def gray8(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 gray image (mean of 2-98 % stretched bands; dB-like SAR stays as is) and its valid mask."""
    data, valid = read_bands(path)
    out = np.zeros(data.shape[1:], np.float32)
    for b in data:
        v = b[valid]
        if v.size == 0:
            continue
        lo, hi = np.percentile(v, [2, 98])
        out += np.clip((np.nan_to_num(b) - lo) / max(hi - lo, 1e-6), 0, 1)
    out /= len(data)
    g = np.round(out * 255).astype(np.uint8)
    g[~valid] = 0
    return g, valid


def main(run: Callable[[dict, Path], dict]) -> None:
    case_json, workdir = sys.argv[1], Path(sys.argv[2])
    workdir.mkdir(parents=True, exist_ok=True)
    case = json.loads(Path(case_json).read_text())
    t0 = time.perf_counter()
    try:
        res = run(case, workdir)
        res.setdefault("ok", True)
    except Exception as e:  # noqa: BLE001 - a failing peer is a result, recorded as such
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["inner_s"] = time.perf_counter() - t0
    for k in ("ref_xy", "tgt_xy"):
        if k in res:
            res[k] = np.asarray(res[k], np.float64).reshape(-1, 2).round(3).tolist()
    if res.get("model") is not None:
        res["model"] = np.asarray(res["model"], np.float64).tolist()
    (workdir / "result.json").write_text(json.dumps(res))
    sys.exit(0 if res["ok"] else 3)
