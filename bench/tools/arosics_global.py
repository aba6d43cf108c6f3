"""AROSICS COREG: one global X/Y shift by phase correlation in the largest power-of-two window that fits."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools import arosics_compat as ac
from bench.tools.common import main, threads


def run(case: dict, workdir: Path) -> dict:
    ac.install()
    from arosics import COREG
    from py_tools_ds.geo.map_info import mapinfo2geotransform

    ref, tgt, (h, w) = ac.prepare(case, workdir)
    ws = int(2 ** np.floor(np.log2(0.9 * min(h, w))))
    CR = COREG(ref, tgt, ws=(ws, ws), max_shift=min(60, ws // 2 - 2), nodata=(0, 0), q=True,
               CPUs=threads(), path_out=None, ignore_errors=True)
    CR.calculate_spatial_shifts()
    if not CR.success:
        err = CR.tracked_errors[-1] if getattr(CR, "tracked_errors", None) else "no shift found"
        return {"ok": False, "error": f"COREG failed: {err}"}
    new_gt = mapinfo2geotransform(CR.coreg_info["updated map info"])
    # corrected target: pixel p -> map new_gt(p) = fake reference map coords -> reference pixel
    A_new = np.array([[new_gt[1], new_gt[2], new_gt[0]], [new_gt[4], new_gt[5], new_gt[3]], [0, 0, 1]])
    F = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1.0]])           # fake map -> pixel
    ref_from_tgt = F @ A_new
    return {"model": np.linalg.inv(ref_from_tgt), "ws": ws,
            "shift_px": [float(CR.x_shift_px), float(CR.y_shift_px)]}


if __name__ == "__main__":
    main(run)
