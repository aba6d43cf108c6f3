"""Coarse-to-fine matching of two single-channel images: coarse search, verification, refinement.

1. coarse: global rotation x scale x shift search on reduced descriptor fields (several candidates);
2. pass 1: templates on a grid matched within a wide radius under each candidate; the candidate whose
   matches agree best with one affine transform (robust fit) wins, or the run fails clearly;
3. pass 2: templates matched again under that affine within a small radius, to sub-pixel precision.
Output positions are in the two images' own pixel coordinates.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import NotEnoughMatchesError
from ..geometry.robust import magsac
from .coarse import coarse_search
from .fine import FineMatches, fine_match, grid_centres


@dataclass(frozen=True)
class MatchSettings:
    max_shift_px: float = 100.0
    max_rotation_deg: float = 5.0
    max_scale: float = 0.05
    coarse_size: int = 256
    max_template: int = 96
    min_template: int = 32
    max_points_pass1: int = 128
    max_points_pass2: int = 400
    min_inliers: int = 6
    min_inlier_ratio: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class MatchResult:
    matches: FineMatches          # final pass-2 matches (reference px, moving px)
    inlier: np.ndarray            # (N,) bool, consistent with the affine of pass 2
    affine_rmse: float
    template: int
    diagnostics: dict = field(default_factory=dict)


def template_size(height: int, width: int, settings: MatchSettings) -> int:
    t = int(round(min(height, width) / 5 / 8) * 8)
    return int(np.clip(t, settings.min_template, settings.max_template))


def _spacing(height: int, width: int, template: int, max_points: int, min_spacing: float) -> float:
    area = max(height - template, 1) * max(width - template, 1)
    return max(min_spacing, math.sqrt(area / max_points))


def match_pair(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
               descriptor, settings: MatchSettings, monitor=None) -> MatchResult:
    """Match ``mov`` to ``ref``. Shapes: (1, 1, H, W) float images and bool masks (may differ in size)."""
    H, W = ref.shape[-2:]
    diag: dict = {}
    t0 = time.perf_counter()
    tpl = template_size(H, W, settings)
    if min(H, W) < settings.min_template or min(mov.shape[-2:]) < settings.min_template:
        from ..errors import InputError

        raise InputError(f"The images are too small to match ({W}x{H} and {mov.shape[-1]}x{mov.shape[-2]} px).",
                         f"Both must be at least {settings.min_template} px on each side.")
    ctx = monitor.stage(0.0, 0.3, "coarse search") if monitor else _null()
    with ctx as mon:
        coarse = coarse_search(ref, ref_valid, mov, mov_valid, descriptor, settings.max_shift_px,
                               settings.max_rotation_deg, settings.max_scale, settings.coarse_size,
                               n_candidates=3, monitor=mon)
    diag["coarse"] = [dict(rotation_deg=round(c.rotation_deg, 2), scale=round(c.scale, 4),
                           shift_px=[round(v, 2) for v in c.shift_px], score=round(c.score, 3),
                           distinctiveness=round(c.distinctiveness, 3)) for c in coarse.candidates]
    diag["coarse_factor"] = round(coarse.factor, 3)
    t1 = time.perf_counter()
    ref_desc = descriptor(ref, ref_valid)
    radius1 = int(np.clip(math.ceil(2.5 * coarse.factor) + 6, 8, 20))
    sp1 = _spacing(H, W, tpl, settings.max_points_pass1, tpl / 3)
    centres1 = grid_centres(W, H, tpl, sp1)
    best = None
    ctx = monitor.stage(0.3, 0.7, "verifying candidates") if monitor else _null()
    with ctx as mon:
        for k, cand in enumerate(coarse.candidates):
            fm = fine_match(ref_desc, ref_valid, mov, mov_valid, cand.model, centres1, tpl, radius1, descriptor)
            try:
                fit = magsac(fm.ref_xy, fm.mov_xy, "affine", max_threshold=3.0, prior=np.clip(fm.score, 0.05, 1),
                             seed=settings.seed)
            except NotEnoughMatchesError:
                continue
            ratio = fit.n_inliers / max(len(fm), 1)
            key = (fit.n_inliers, ratio)
            if best is None or key > best[0]:
                best = (key, fit, fm, k)
            if mon:
                mon.report((k + 1) / len(coarse.candidates), "verifying candidates")
            if fit.n_inliers >= 12 and ratio >= 0.5:
                break  # convincing: no need to look at the runners-up
    if best is None or best[0][0] < settings.min_inliers or best[0][1] < settings.min_inlier_ratio:
        n_in = 0 if best is None else best[0][0]
        n_all = 0 if best is None else len(best[2])
        raise NotEnoughMatchesError(
            f"No consistent alignment found: {n_in} of {n_all} tie point candidates agree.",
            "The images may not show the same ground, the misregistration may exceed the search range "
            f"(±{settings.max_shift_px:.0f} px, ±{settings.max_rotation_deg:g}°), or the images may be too different; "
            "try a larger search range, other bands, or an extent where both images have clear structure.")
    (n1, r1), fit1, fm1, kbest = best
    diag["pass1"] = dict(candidate=kbest, template=tpl, radius=radius1, points=len(fm1), inliers=int(n1),
                         inlier_ratio=round(float(r1), 3), affine_rmse=round(fit1.rmse, 3))
    t2 = time.perf_counter()
    tpl2 = min(tpl, 64)  # refinement under a good model: smaller windows, more local, cheaper
    sp2 = _spacing(H, W, tpl2, settings.max_points_pass2, max(8.0, tpl2 / 3))
    centres2 = grid_centres(W, H, tpl2, sp2)
    ctx = monitor.stage(0.7, 1.0, "sub-pixel refinement") if monitor else _null()
    with ctx as mon:
        fm2 = fine_match(ref_desc, ref_valid, mov, mov_valid, fit1.model, centres2, tpl2, 6, descriptor,
                         monitor=mon)
    fit2 = magsac(fm2.ref_xy, fm2.mov_xy, "affine", max_threshold=2.5, prior=np.clip(fm2.score, 0.05, 1),
                  seed=settings.seed)
    ratio2 = fit2.n_inliers / max(len(fm2), 1)
    diag["pass2"] = dict(template=tpl2, radius=6, points=len(fm2), inliers=fit2.n_inliers,
                         inlier_ratio=round(ratio2, 3), affine_rmse=round(fit2.rmse, 3))
    if fit2.n_inliers < settings.min_inliers or ratio2 < settings.min_inlier_ratio * 0.8:
        raise NotEnoughMatchesError(
            f"Refinement found too few consistent tie points ({fit2.n_inliers} of {len(fm2)}).",
            "The images may be too different in this area; try other bands or a larger extent.")
    diag["seconds"] = dict(coarse=round(t1 - t0, 3), verify=round(t2 - t1, 3), refine=round(time.perf_counter() - t2, 3))
    return MatchResult(fm2, fit2.inlier, fit2.rmse, tpl, diag)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
