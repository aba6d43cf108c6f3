"""Validation on held-out pairs: the engine's fine-matching step, emulated, for the network and CFOG.

Held-out pairs (locations never trained on) are cropped at fixed random places with a known sub-pixel
shift ``t`` (|t| <= 5 px) between the two crops. Both crops are described (the network's dense map or
CFOG), templates of ``template`` px on a grid of the first crop are searched in the second with the
engine's masked ZNCC + sub-pixel peak (radius ``radius``), and the share of templates whose shift is
found within 1 px and 2 px (PCK@1, PCK@2) is reported, with the median error. This is what the engine's
pass 2 does after the coarse search, so it ranks descriptors for the engine. The InfoNCE loss on warped
held-out crops is reported too.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..matching.ncc import masked_zncc, subpixel_peak
from .data import PairCache


def fixed_shift_batches(cache: PairCache, n_batches: int, batch: int, size: int, seed: int = 1234) -> list[dict]:
    """Deterministic held-out crops with a known shift (crop b = crop a shifted by -t)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        items: dict[str, list[torch.Tensor]] = {"a": [], "va": [], "b": [], "vb": [], "t": [], "mod_a": [], "mod_b": []}
        idx = torch.randint(len(cache), (batch,), generator=g).tolist()
        for k in idx:
            ia, ib = (int(v) for v in cache.pairs[k])
            h, w = cache.images[ia].shape[-2:]
            zoom = max(1.0, 1.15 * size / min(h, w))
            span = size / zoom
            ox = float(torch.rand((), generator=g)) * max(w - span, 0)
            oy = float(torch.rand((), generator=g)) * max(h - span, 0)
            t = (torch.rand(2, generator=g) * 10 - 5).numpy()
            GA = np.array([[1 / zoom, 0, ox], [0, 1 / zoom, oy], [0, 0, 1]])
            sx, sy = cache.shift[k]   # the pair's residual offset (0 unless residuals are on)
            GB = np.array([[1.0, 0, sx], [0, 1.0, sy], [0, 0, 1]]) @ GA @ np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]])
            a, va = cache._crop(cache.images[ia][0:1], cache.valid[ia], GA, size)
            b, vb = cache._crop(cache.images[ib][0:1], cache.valid[ib], GB, size)
            for key, val in (("a", a), ("va", va), ("b", b), ("vb", vb)):
                items[key].append(val)
            items["t"].append(torch.tensor(t, dtype=torch.float32))
            items["mod_a"].append(cache.modality[ia])
            items["mod_b"].append(cache.modality[ib])
        out.append({k: torch.stack(v) for k, v in items.items()})
    return out


@torch.no_grad()
def shift_pck(describe, batches: list[dict], template: int = 32, radius: int = 8, spacing: int = 24,
              device: str | torch.device = "cpu") -> dict[str, float]:
    """PCK@1/2 px and median error of template shifts found with ``describe(img, valid)`` (B,1,S,S)->(B,C,S,S)."""
    errs = []
    for bt in batches:
        a, va, b, vb, t = (bt[k].to(device) for k in ("a", "va", "b", "vb", "t"))
        da, db = describe(a, va), describe(b, vb)
        S = a.shape[-1]
        starts = list(range(radius, S - template - radius + 1, spacing))
        for y0 in starts:
            for x0 in starts:
                tpl = da[:, :, y0:y0 + template, x0:x0 + template]
                tm = va[:, :, y0:y0 + template, x0:x0 + template]
                sr = db[:, :, y0 - radius:y0 + template + radius, x0 - radius:x0 + template + radius]
                sm = vb[:, :, y0 - radius:y0 + template + radius, x0 - radius:x0 + template + radius]
                ok = (tm.float().mean(dim=(1, 2, 3)) > 0.9) & (sm.float().mean(dim=(1, 2, 3)) > 0.9)
                if not bool(ok.any()):
                    continue
                z, _ = masked_zncc(tpl[ok].float(), tm[ok], sr[ok].float(), sm[ok], min_overlap=0.6)
                off, peak, _ = subpixel_peak(z, exclusion=2)
                est = off - radius                       # where a's template sits in b: -t
                e = torch.linalg.vector_norm(est + t[ok], dim=1)
                errs.append(torch.where(peak > -1, e, torch.full_like(e, math.inf)).cpu())
    e = torch.cat(errs) if errs else torch.zeros(0)
    if len(e) == 0:
        return {"pck1": float("nan"), "pck2": float("nan"), "median_px": float("nan"), "n": 0}
    return {"pck1": float((e <= 1).float().mean()), "pck2": float((e <= 2).float().mean()),
            "median_px": float(e.median()), "n": int(len(e))}
