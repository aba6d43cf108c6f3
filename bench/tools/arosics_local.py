"""AROSICS COREG_LOCAL: a grid of about 20 x 20 tie points (phase correlation in 128 px windows, 64 px on
images under 200 px), AROSICS's own three outlier filters; its GCP list becomes the tie points."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools import arosics_compat as ac
from bench.tools.common import main, threads


def run(case: dict, workdir: Path) -> dict:
    ac.install()
    from arosics import COREG_LOCAL

    ref, tgt, (h, w) = ac.prepare(case, workdir)
    ws = 64 if min(h, w) < 200 else 128
    grid = max(4, int(round(min(h, w) / 20)))
    CRL = COREG_LOCAL(ref, tgt, grid_res=grid, window_size=(ws, ws), max_shift=min(60, ws // 2 - 2),
                      nodata=(0, 0), q=True, CPUs=threads(), min_reliability=30)
    CRL.calculate_spatial_shifts()
    gcps = CRL.tiepoint_grid.GCPList or []
    if len(gcps) < 3:
        return {"ok": False, "error": "fewer than 3 tie points pass AROSICS's reliability and outlier filters",
                "n_raw": len(gcps), "grid_res": grid}
    ref_xy = ac.map_to_px(np.array([[g.GCPX, g.GCPY] for g in gcps]))
    tgt_xy = np.array([[g.GCPPixel, g.GCPLine] for g in gcps])
    return {"model": None, "ref_xy": ref_xy, "tgt_xy": tgt_xy, "n_raw": len(gcps), "fit": "affine",
            "grid_res": grid, "ws": ws}


if __name__ == "__main__":
    main(run)
