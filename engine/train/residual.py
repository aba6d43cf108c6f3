"""Residual misregistration of the training pairs, mined from the pairs themselves.

"Co-registered" Sentinel-1 / Sentinel-2 products are not registered to the pixel: on the cached pairs the
structural descriptor finds consistent offsets of 1-5 px between the SAR image and its optical partner
(TerraMesh 1.5-3 px, SSL4EO about 5.4 px, as SOURCES.md's own gradient check also saw), while the
same-sensor band pairs agree within 0.2 px. Training on the nominal pairing would teach the descriptor
that the right place is a few pixels off. So each pair's residual translation is estimated once (CFOG,
masked ZNCC of the whole image over +-``radius`` px, sub-pixel peak) and kept only when it is verified:

* the peak stands out from the best peak farther than 2 px (``min_margin``) and is not on the border of
  the search, and
* pairs of the same location (``key``) that show the same SAR image agree on it (within ``tol_px`` of
  their median), or the pair is the only one of its location.

Verified pairs are trained on with the offset added to the known pairing; unverified cross-sensor pairs
are left out (a wrong label is worse than no label). Shapes: shifts (N, 2) as (dx, dy) px of ``b``
relative to ``a`` (``a`` at ``x`` shows the ground of ``b`` at ``x + s``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..descriptors.cfog import CFOG
from ..matching.ncc import masked_zncc, subpixel_peak


@dataclass(frozen=True)
class ResidualSettings:
    radius: int = 6
    min_margin: float = 0.01
    tol_px: float = 1.0


@torch.no_grad()
def pair_shift(a: torch.Tensor, va: torch.Tensor, b: torch.Tensor, vb: torch.Tensor, radius: int
               ) -> tuple[np.ndarray, float, bool]:
    """Residual translation of ``b`` relative to ``a`` (both (1, 1, H, W) on one grid): shift (2,), peak
    margin over the best peak farther than 2 px, and whether the peak is inside the search (not on its edge)."""
    cfog = CFOG()
    da, db = cfog(a.float(), va), cfog(b.float(), vb)
    r = radius
    z, _ = masked_zncc(da[..., r:-r, r:-r], va[..., r:-r, r:-r], db, vb)
    off, peak, second = subpixel_peak(z, exclusion=2)
    s = off[0].cpu().numpy().astype(float) - r
    inside = bool(np.all(np.abs(s) < r - 0.5))
    return s, float(peak[0] - second[0]), inside


def mine_pair_shifts(cache, settings: ResidualSettings = ResidualSettings()) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Verified residual shifts of every pair of a :class:`.data.PairCache` -> (shifts (N, 2), ok (N,), records)."""
    n = len(cache.pairs)
    shifts = np.zeros((n, 2))
    raw_ok = np.zeros(n, bool)
    recs: list[dict] = []
    for k in range(n):
        ia, ib = (int(v) for v in cache.pairs[k])
        a, b = cache.images[ia][0:1][None], cache.images[ib][0:1][None]
        va, vb = cache.valid[ia][None] > 0, cache.valid[ib][None] > 0
        rec: dict[str, Any] = {"key": str(cache.keys[k]), "kind": str(cache.kinds[k])}
        if a.shape != b.shape or min(a.shape[-2:]) <= 4 * settings.radius:
            rec["why"] = "shapes differ or too small"
            recs.append(rec)
            continue
        s, margin, inside = pair_shift(a, va, b, vb, settings.radius)
        shifts[k] = s
        raw_ok[k] = inside and margin >= settings.min_margin
        rec.update(shift=[round(float(v), 2) for v in s], margin=round(margin, 3), inside=inside)
        recs.append(rec)
    # agreement within a location: pairs of one key and kind share their images' registration
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k in range(n):
        if raw_ok[k]:
            groups[(str(cache.keys[k]), str(cache.kinds[k]))].append(k)
    ok = np.zeros(n, bool)
    for members in groups.values():
        med = np.median(shifts[members], axis=0)
        for k in members:
            ok[k] = len(members) == 1 or bool(np.hypot(*(shifts[k] - med)) <= settings.tol_px)
    for k, rec in enumerate(recs):
        rec["verified"] = bool(ok[k])
    return shifts, ok, recs
