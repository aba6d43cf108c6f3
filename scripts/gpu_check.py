"""GPU inference check (runs on the device machine without GDAL): same results on CUDA as on CPU,
and timings, for the CFOG and HSSCL descriptors on real pairs prepared beforehand.

    python3 scripts/gpu_check.py .traincache/gpu_check.npz [WEIGHTS.safetensors] > $OUT/gpu_check.json
Prepare the .npz here with:  .venv/bin/python scripts/gpu_check.py --prepare .traincache/gpu_check.npz
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def prepare(path: str) -> None:
    from hsscl.engine.io.raster import open_raster_info, read_bands
    from hsscl.engine.preprocess import prepare as prep

    pairs = {"sample_448": ("resources/sample/s2_reference.tif", "resources/sample/s1_target_misregistered.tif")}
    big = "../shared/data/arosics_INTER1_S2A_S2A/"
    import glob
    jp2 = sorted(glob.glob(big + "*.jp2"))
    out = {}
    for name, (r, t) in pairs.items():
        ri, ti = open_raster_info(r), open_raster_info(t)
        rd, rv = read_bands(r)
        td, tv = read_bands(t, out_grid=ri.grid)
        pr = prep(rd, rv, ri.dtypes[0], ri.descriptions, "reference", r)
        pt = prep(td, tv, ti.dtypes[0], ti.descriptions, "target", t)
        out[name + "_ref"], out[name + "_refv"] = pr.image, pr.valid
        out[name + "_mov"], out[name + "_movv"] = pt.image, pt.valid
    if len(jp2) >= 2:  # a 1024 x 1024 optical pair (Sentinel-2, 10 days apart), target shifted by (13, -7) px
        ri = open_raster_info(jp2[0])
        from hsscl.engine.io.raster import Window
        rd, rv = read_bands(jp2[0], window=Window(600, 800, 1024, 1024))
        td, tv = read_bands(jp2[0], window=Window(613, 793, 1024, 1024))
        pr = prep(rd, rv, ri.dtypes[0], ri.descriptions, "reference", jp2[0])
        pt = prep(td, tv, ri.dtypes[0], ri.descriptions, "target", jp2[0])
        out["s2_1024_ref"], out["s2_1024_refv"], out["s2_1024_mov"], out["s2_1024_movv"] = pr.image, pr.valid, pt.image, pt.valid
    np.savez_compressed(path, **out)
    print("wrote", path, list(out))


def run(npz: str, weights: str | None) -> dict:
    from hsscl.engine.descriptors.cfog import CFOG
    from hsscl.engine.matching.matcher import MatchSettings, match_pair

    data = np.load(npz)
    names = sorted({k.rsplit("_", 1)[0] for k in data.files})
    res: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                 "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "pairs": {}}
    descs = {"cfog": lambda dev: CFOG()}
    if weights:
        from hsscl.engine.descriptors.hsscl import HSSCLDescriptor
        descs["hsscl"] = lambda dev: HSSCLDescriptor.from_weights(weights, dev)
    for name in names:
        for dname, make in descs.items():
            row = {}
            for dev in ("cpu", "cuda"):
                if dev == "cuda" and not torch.cuda.is_available():
                    continue
                t = lambda k: torch.from_numpy(data[f"{name}_{k}"])[None, None].to(dev)  # noqa: E731, B023
                args = (t("ref"), t("refv"), t("mov"), t("movv"))
                d = make(dev)
                s = MatchSettings(max_shift_px=60)
                match_pair(*args, d, s)  # warm-up
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                r = match_pair(*args, d, s)
                if dev == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                m = r.matches.subset(r.inlier)
                row[dev] = {"seconds": round(dt, 3), "inliers": int(r.inlier.sum()), "matches": len(r.matches),
                            "ref": m.ref_xy, "mov": m.mov_xy}
            if "cuda" in row:
                a, b = row["cpu"], row["cuda"]
                common = {tuple(p) for p in np.round(a["ref"], 3)} & {tuple(p) for p in np.round(b["ref"], 3)}
                ia = {tuple(p): q for p, q in zip(np.round(a["ref"], 3), a["mov"])}
                ib = {tuple(p): q for p, q in zip(np.round(b["ref"], 3), b["mov"])}
                diffs = [np.linalg.norm(ia[k] - ib[k]) for k in common]
                row["common_inliers"] = len(common)
                row["max_diff_px"] = float(max(diffs)) if diffs else None
                row["median_diff_px"] = float(np.median(diffs)) if diffs else None
            for dev in ("cpu", "cuda"):
                if dev in row:
                    row[dev].pop("ref"), row[dev].pop("mov")
            res["pairs"][f"{name}/{dname}"] = row
    return res


if __name__ == "__main__":
    if sys.argv[1] == "--prepare":
        prepare(sys.argv[2])
    else:
        print(json.dumps(run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), indent=1, default=str))
