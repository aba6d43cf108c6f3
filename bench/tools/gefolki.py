"""GeFolki 1.1.0 (GEFolki: rank + CLAHE dense flow for SAR-optical), flow turned into tie points.

Compatibility fix (shared/PEERS.md): with scikit-image >= 0.19 ``rescale_intensity`` returns floats where
GeFolki's CLAHE expects integers; the wrapper rounds that call's output back to integers.
Flow convention: ``I_ref(x) ~ I_tgt(x + flow(x))``, so a tie point is (x, x + flow(x)), taken every 8 px
where both images have data. Pyramid levels are chosen so that the coarsest level sees shifts of 40 px;
window radii 32 down to 8 in steps of 4, rank 4, 2 iterations (the package's own GEFolki demo settings).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools.common import gray8, main


def _patch_skimage() -> None:
    import gefolki.adapthist as ah
    from skimage.exposure import rescale_intensity as ri

    def rescale_intensity(image, in_range="image", out_range="dtype"):
        out = ri(image, in_range=in_range, out_range=out_range)
        if isinstance(out_range, tuple) and all(isinstance(v, int) for v in out_range):
            return np.round(out).astype(np.int64)
        return out

    ah.rescale_intensity = rescale_intensity


def run(case: dict, workdir: Path) -> dict:
    _patch_skimage()
    from gefolki import GEFolki

    ref, rv = gray8(case["reference"])
    tgt, tv = gray8(case["target"])
    # GeFolki needs equal shapes (always true for these cases: target on the reference grid)
    n = min(ref.shape)
    levels = int(np.clip(np.floor(np.log2(n / 24)), 1, 6))
    u, v = GEFolki(ref.astype(np.float32), tgt.astype(np.float32), iteration=2,
                   radius=list(range(32, 4, -4)), rank=4, levels=levels)
    step = 8
    ys, xs = np.mgrid[step // 2:ref.shape[0]:step, step // 2:ref.shape[1]:step]
    xs, ys = xs.ravel(), ys.ravel()
    uu, vv = u[ys, xs], v[ys, xs]
    tx, ty = xs + uu, ys + vv
    h, w = tgt.shape
    ok = rv[ys, xs] & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    ok[ok] &= tv[np.round(ty[ok]).astype(int), np.round(tx[ok]).astype(int)]
    a = np.c_[xs[ok], ys[ok]] + 0.5
    b = np.c_[tx[ok], ty[ok]] + 0.5
    return {"model": None, "ref_xy": a, "tgt_xy": b, "n_raw": int(ok.sum()), "levels": levels,
            "fit": "robust-affine"}


if __name__ == "__main__":
    main(run)
