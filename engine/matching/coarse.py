"""Coarse search: the global similarity (rotation, scale, shift) that best aligns the two images.

Both images are reduced so that the larger side is about ``coarse_size`` pixels, described with the
dense descriptor, and for every candidate rotation/scale the moving descriptor field is resampled into
the reference frame; a masked ZNCC over all shifts (by FFT) finds the best translation. The winner
and the runners-up (distinct candidates) are returned so that fine matching can verify them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.transforms import Affine
from .ncc import masked_zncc, subpixel_peak
from .sampling import downsample, pixel_grid, sample


@dataclass(frozen=True)
class CoarseCandidate:
    model: Affine            # reference pixel -> moving pixel (full resolution)
    score: float             # ZNCC of the descriptor fields at the peak
    distinctiveness: float   # peak minus best other peak (same candidate)
    rotation_deg: float
    scale: float
    shift_px: tuple[float, float]


@dataclass(frozen=True)
class CoarseResult:
    candidates: tuple[CoarseCandidate, ...]  # best first
    factor: float
    seconds: float = 0.0

    @property
    def best(self) -> CoarseCandidate:
        return self.candidates[0]


def _steps(max_value: float, step: float) -> list[float]:
    n = int(math.ceil(max_value / step - 1e-9))
    return [i * step for i in range(-n, n + 1)] if n > 0 else [0.0]


def coarse_search(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
                  descriptor, max_shift_px: float, max_rotation_deg: float = 5.0, max_scale: float = 0.05,
                  coarse_size: int = 256, n_candidates: int = 3, monitor=None) -> CoarseResult:
    """Search rotation x scale x shift. Shapes: ref (1,1,H,W), mov (1,1,H2,W2), masks alike (bool)."""
    import time

    t0 = time.perf_counter()
    H, W = ref.shape[-2:]
    factor = max(1.0, max(H, W) / coarse_size)
    r_c = downsample(ref, factor)
    m_c = downsample(mov, factor)
    rv_c = downsample(ref_valid.float(), factor) > 0.99
    mv_c = downsample(mov_valid.float(), factor) > 0.99
    d_r = descriptor(r_c, rv_c)
    d_m = descriptor(m_c, mv_c)
    h, w = r_c.shape[-2:]
    fy, fx = H / h, W / w
    m = int(math.ceil(max_shift_px / min(fx, fy))) + 1
    center = np.array([W / 2.0, H / 2.0])
    # 2-degree / 2.5 % steps: the residual (<= 1 degree, 1.25 %) is absorbed by the fine search radius
    rots = _steps(max_rotation_deg - 1.0, 2.0) if max_rotation_deg > 1.0 else [0.0]
    scales = [1.0 + s for s in _steps(max(max_scale - 0.025, 0.0), 0.025)]
    cands = [(r, s) for s in scales for r in rots]
    # canvas: reference frame extended by m coarse pixels on each side
    grid = pixel_grid(h + 2 * m, w + 2 * m, device=ref.device) - m  # coarse ref coords
    grid_full = grid * torch.tensor([fx, fy], device=ref.device)
    hm, wm = m_c.shape[-2:]
    fmy, fmx = mov.shape[-2] / hm, mov.shape[-1] / wm
    results = []
    chunk = 8
    for i in range(0, len(cands), chunk):
        batch = cands[i:i + chunk]
        mats = [Affine.from_similarity(s, r, 0.0, 0.0, tuple(center)).A for r, s in batch]
        a = torch.tensor(np.stack(mats), dtype=torch.float32, device=ref.device)  # (n, 2, 3)
        xy = torch.einsum("nij,hwj->nhwi", a[:, :, :2], grid_full) + a[:, None, None, :, 2]
        xy_c = xy / torch.tensor([fmx, fmy], device=ref.device)
        warped = sample(d_m, xy_c)
        wvalid = sample(mv_c.float(), xy_c) > 0.99
        n = len(batch)
        z, cnt = masked_zncc(d_r.expand(n, -1, -1, -1), rv_c.expand(n, -1, -1, -1), warped, wvalid,
                             min_overlap=0.3)
        # rank by significance: the spread of ZNCC between unrelated images shrinks as 1/sqrt(overlap),
        # so a peak over a small overlap must be higher to count as much
        full = rv_c.float().sum().clamp(min=1.0)
        z = torch.where(z > -1.0, z * torch.sqrt(cnt / full), z)
        off, peak, second = subpixel_peak(z, exclusion=2)
        for k, (r, s) in enumerate(batch):
            results.append((float(peak[k]), float(peak[k] - second[k]), r, s, off[k].tolist()))
        if monitor is not None:
            monitor.report((i + n) / len(cands), "coarse search")
    results.sort(key=lambda t: -t[0])
    chosen: list[CoarseCandidate] = []
    for score, dist, r, s, (ox, oy) in results:
        tx, ty = (ox - m) * fx, (oy - m) * fy  # shift in reference pixels
        base = Affine.from_similarity(s, r, 0.0, 0.0, tuple(center))
        model = base.compose(Affine.from_array(np.array([[1, 0, tx], [0, 1, ty]], dtype=float)))
        # distinct from those already chosen?
        probe = np.array([[W * 0.25, H * 0.25], [W * 0.75, H * 0.75], [W * 0.25, H * 0.75]])
        if any(np.abs(c.model(probe) - model(probe)).max() < 3 * max(fx, fy) for c in chosen):
            continue
        chosen.append(CoarseCandidate(model, score, dist, r, s, (tx, ty)))
        if len(chosen) >= n_candidates:
            break
    return CoarseResult(tuple(chosen), factor, time.perf_counter() - t0)
