"""Fixtures of the engine tests: the shared real-data folder and small helpers around it."""
from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

import pytest


def shared_root() -> Path:
    """$HSSCL_SHARED_DATA, else ``<repo>/../shared/data``."""
    env = os.environ.get("HSSCL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_root()
    if not root.is_dir():
        pytest.skip(f"../shared/data not found: {root} (set HSSCL_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def data_file(shared_data: Path) -> Callable[[str], str]:
    """``data_file(rel)``: absolute path of a shared file, skipping the test when it is absent."""
    def get(rel: str) -> str:
        p = shared_data / rel
        if not p.is_file():
            pytest.skip(f"../shared/data not found: {rel} is not in this copy of the shared data")
        return str(p)
    return get



BEN = "bigearthnet_example/BigEarthNet-S{}-Example/*_{}/*_{}.tif"


@pytest.fixture(scope="module")
def ben(shared_data: Path) -> dict[str, str]:
    """Real 120 x 120 BigEarthNet rasters: S2 B04 / B08 (UInt16) and S1 VV (Float32) of patch 36_85
    (EPSG:32629), S1 VV of patch 87_48 (EPSG:32633)."""
    def one(sensor: int, patch: str, band: str) -> str:
        hits = glob.glob(str(shared_data / BEN.format(sensor, patch, band)))
        if not hits:
            pytest.skip(f"BigEarthNet patch {patch} is not in this copy of the shared data")
        return hits[0]
    return {"b04": one(2, "36_85", "B04"), "b08": one(2, "36_85", "B08"), "vv": one(1, "36_85", "VV"),
            "vv_zone33": one(1, "87_48", "VV")}


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory, shared_data):
    """A training cache of the BigEarthNet example (real S1 / S2 pairs), built once per session."""
    pytest.importorskip("osgeo")
    from hsscl.engine.train.cache import CacheBuilder, add_bigearthnet

    if not (shared_data / "bigearthnet_example").is_dir():
        pytest.skip("BigEarthNet example not in this copy of the shared data")
    cb = CacheBuilder(shared_data)
    add_bigearthnet(cb)
    out = tmp_path_factory.mktemp("cache") / "mini.npz"
    cb.save(out)
    return out


@pytest.fixture(scope="session")
def b_on_a() -> Callable:
    """For a sampled training batch: crop ``b`` resampled onto crop ``a``'s pixel grid through the batch's
    known warp (pixel q of a reads b at H q), written out here independently of the engine's own
    ``warp_to_a``, and where that is valid (inside b's valid pixels and a's). Returns ``(bw, ok)``."""
    import torch
    import torch.nn.functional as F

    def resample(b):
        s = b.a.shape[-1]
        ys, xs = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
        q = torch.stack([xs, ys, torch.ones_like(xs)], -1)
        p = torch.einsum("bij,hwj->bhwi", b.H, q)
        grid = torch.stack([2 * p[..., 0] / s - 1, 2 * p[..., 1] / s - 1], -1)
        bw = F.grid_sample(b.b, grid, align_corners=False)
        ok = (F.grid_sample(b.vb.float(), grid, align_corners=False) > 0.99) & b.va
        return bw, ok
    return resample
