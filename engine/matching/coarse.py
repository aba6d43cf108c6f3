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


def _scan(ref, ref_valid, mov, mov_valid, descriptor, max_shift_px: float, size: int,
          cands: list[tuple[float, float]], chunk: int, monitor=None, lo: float = 0.0, hi: float = 1.0):
    """Evaluate rotation/scale hypotheses ``cands`` at a reduction where the larger side is about ``size`` px:
    each one's best shift (masked ZNCC over all shifts by FFT, ``chunk`` hypotheses per batch, the
    reference side transformed once). Returns (results sorted best first as (score, distinctiveness,
    rotation, scale, shift in reference px), reduction factor)."""
    H, W = ref.shape[-2:]
    factor = max(1.0, max(H, W) / size)
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
    # canvas: reference frame extended by m coarse pixels on each side
    grid = pixel_grid(h + 2 * m, w + 2 * m, device=ref.device) - m  # coarse ref coords
    grid_full = grid * torch.tensor([fx, fy], device=ref.device)
    hm, wm = m_c.shape[-2:]
    fmy, fmx = mov.shape[-2] / hm, mov.shape[-1] / wm
    full = rv_c.float().sum().clamp(min=1.0)
    results = []
    for i in range(0, len(cands), chunk):
        batch = cands[i:i + chunk]
        mats = [Affine.from_similarity(s, r, 0.0, 0.0, tuple(center)).A for r, s in batch]
        a = torch.tensor(np.stack(mats), dtype=torch.float32, device=ref.device)  # (n, 2, 3)
        xy = torch.einsum("nij,hwj->nhwi", a[:, :, :2], grid_full) + a[:, None, None, :, 2]
        xy_c = xy / torch.tensor([fmx, fmy], device=ref.device)
        warped = sample(d_m, xy_c)
        wvalid = sample(mv_c.float(), xy_c) > 0.99
        n = len(batch)
        z, cnt = masked_zncc(d_r, rv_c, warped, wvalid, min_overlap=0.3)  # reference broadcast over the batch
        # rank by significance: the spread of ZNCC between unrelated images shrinks as 1/sqrt(overlap),
        # so a peak over a small overlap must be higher to count as much
        z = torch.where(z > -1.0, z * torch.sqrt(cnt / full), z)
        off, peak, second = subpixel_peak(z, exclusion=2)
        for k, (r, s) in enumerate(batch):
            ox, oy = off[k].tolist()
            results.append((float(peak[k]), float(peak[k] - second[k]), r, s, ((ox - m) * fx, (oy - m) * fy)))
        if monitor is not None:
            monitor.report(lo + (hi - lo) * (i + n) / len(cands), "coarse search")
    results.sort(key=lambda t: -t[0])
    return results, factor


def coarse_search(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
                  descriptor, max_shift_px: float, max_rotation_deg: float = 5.0, max_scale: float = 0.05,
                  coarse_size: int = 256, n_candidates: int = 3, monitor=None,
                  rotation_centres: tuple[float, ...] = (0.0,), chunk: int = 16, screen_size: int = 96,
                  screen_keep: int = 8) -> CoarseResult:
    """Search rotation x scale x shift. Shapes: ref (1,1,H,W), mov (1,1,H2,W2), masks alike (bool).

    Rotations within ``max_rotation_deg`` are searched in 2-degree steps, scales in 2.5 % steps. When there
    are more than ``chunk`` such hypotheses they are first screened at a small reduction (``screen_size``
    px), and only the ``screen_keep`` best rotation/scale pairs are searched again at ``coarse_size`` px.
    ``rotation_centres`` (degrees; e.g. the dominant-orientation estimates of :mod:`.orientation` for images
    that may be turned by any angle): the moving image is first turned by each centre (an image resampling,
    so that orientation-sensitive descriptors such as CFOG see it upright) and searched around it."""
    import time

    from .fine import warp_to_reference

    t0 = time.perf_counter()
    H, W = ref.shape[-2:]
    centre = (W / 2.0, H / 2.0)
    runs: list[tuple[list, float, Affine]] = []   # (results, factor, pre-turn: search frame -> moving px)
    turns = [c for c in rotation_centres if abs(c) > 1e-9] if rotation_centres != (0.0,) else []
    if not turns or any(abs(c) <= 1e-9 for c in rotation_centres):
        turns = [0.0] + turns
    for j, c in enumerate(turns):
        lo, hi = j / len(turns), (j + 1) / len(turns)
        if c == 0.0:
            m_img, m_val, pre = mov, mov_valid, Affine.from_array(np.array([[1.0, 0, 0], [0, 1, 0]]))
        else:  # the moving image turned by c about the centres, resampled onto the reference frame
            mc = (mov.shape[-1] / 2.0, mov.shape[-2] / 2.0)
            pre = Affine.from_similarity(1.0, c, mc[0] - centre[0], mc[1] - centre[1], centre)
            m_img, m_val = warp_to_reference(mov, mov_valid, pre, H, W, 0)
        res, factor = _search(ref, ref_valid, m_img, m_val, descriptor, max_shift_px, max_rotation_deg, max_scale,
                              coarse_size, chunk, screen_size, screen_keep, monitor, lo, hi)
        runs.append((res, factor, pre))
    factor = runs[0][1]
    merged = sorted(((r, pre) for res, _, pre in runs for r in res), key=lambda t: -t[0][0])
    chosen: list[CoarseCandidate] = []
    probe = np.array([[W * 0.25, H * 0.25], [W * 0.75, H * 0.75], [W * 0.25, H * 0.75]])
    for (score, dist, r, s, (tx, ty)), pre in merged:
        base = Affine.from_similarity(s, r, 0.0, 0.0, centre)
        model = pre.compose(base.compose(Affine.from_array(np.array([[1, 0, tx], [0, 1, ty]], dtype=float))))
        # distinct from those already chosen?
        if any(np.abs(c.model(probe) - model(probe)).max() < 3 * factor for c in chosen):
            continue
        a = model.A[:, :2]
        rot = float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))
        chosen.append(CoarseCandidate(model, score, dist, rot, s, (tx, ty)))
        if len(chosen) >= n_candidates:
            break
    return CoarseResult(tuple(chosen), factor, time.perf_counter() - t0)


def _search(ref, ref_valid, mov, mov_valid, descriptor, max_shift_px, max_rotation_deg, max_scale, coarse_size,
            chunk, screen_size, screen_keep, monitor, lo, hi):
    """Rotation x scale grid around no turn, screened at ``screen_size`` px when large, then scanned."""
    H, W = ref.shape[-2:]
    # 2-degree / 2.5 % steps: the residual (<= 1 degree, 1.25 %) is absorbed by the fine search radius
    rots = _steps(max_rotation_deg - 1.0, 2.0) if max_rotation_deg > 1.0 else [0.0]
    scales = [1.0 + s for s in _steps(max(max_scale - 0.025, 0.0), 0.025)]
    cands = [(r, s) for s in scales for r in rots]
    mid = lo
    if len(cands) > chunk and max(H, W) > 1.5 * screen_size:
        mid = lo + 0.5 * (hi - lo)
        screened, _ = _scan(ref, ref_valid, mov, mov_valid, descriptor, max_shift_px, screen_size, cands, 32,
                            monitor, lo, mid)
        keep: list[tuple[float, float]] = []
        for _, _, r, s, _ in screened:
            if (r, s) not in keep:
                keep.append((r, s))
            if len(keep) >= screen_keep:
                break
        cands = keep
    return _scan(ref, ref_valid, mov, mov_valid, descriptor, max_shift_px, coarse_size, cands, chunk, monitor, mid, hi)
