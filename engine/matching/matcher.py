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
from ..geometry.transforms import Affine
from .coarse import coarse_search
from .fine import FineMatches, fine_match, grid_centres
from .sampling import downsample


@dataclass(frozen=True)
class MatchSettings:
    max_shift_px: float = 100.0
    max_rotation_deg: float = 5.0
    max_scale: float = 0.05
    coarse_size: int = 256
    max_template: int = 96
    min_template: int = 32
    max_points_pass1: int = 128
    max_points_pass2: int = 300
    min_inliers: int = 6
    min_inlier_ratio: float = 0.15
    decoy_factor: float = 2.0
    min_evidence: int = 20         # agreeing windows needed unless they are a clear majority (>= 60 %)
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


def stage_descriptors(descriptor) -> tuple:
    """(coarse search, verification, refinement) descriptors: one with a ``stages`` mapping names one per
    stage (:class:`~..descriptors.staged.StagedDescriptor`: the network's levels coarse to fine); any other
    descriptor serves all three."""
    stages = getattr(descriptor, "stages", None)
    if not stages:
        return descriptor, descriptor, descriptor
    return stages["coarse"], stages["verify"], stages["refine"]


def match_pair(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
               descriptor, settings: MatchSettings, monitor=None) -> MatchResult:
    """Match ``mov`` to ``ref``. Shapes: (1, 1, H, W) float images and bool masks (may differ in size).
    ``descriptor`` may name one descriptor per stage (:func:`stage_descriptors`)."""
    d_coarse, d_verify, d_refine = stage_descriptors(descriptor)
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
        coarse = coarse_search(ref, ref_valid, mov, mov_valid, d_coarse, settings.max_shift_px,
                               settings.max_rotation_deg, settings.max_scale, settings.coarse_size,
                               n_candidates=3, monitor=mon)
    diag["coarse"] = [dict(rotation_deg=round(c.rotation_deg, 2), scale=round(c.scale, 4),
                           shift_px=[round(v, 2) for v in c.shift_px], score=round(c.score, 3),
                           distinctiveness=round(c.distinctiveness, 3)) for c in coarse.candidates]
    diag["coarse_factor"] = round(coarse.factor, 3)
    t1 = time.perf_counter()
    # pass 1 (verification) runs at half resolution on larger images: it needs ~1 px, not sub-pixel
    lv = 2.0 if min(H, W) >= 384 else 1.0
    ref1, rv1 = downsample(ref, lv), downsample(ref_valid.float(), lv) > 0.99
    mov1, mv1 = downsample(mov, lv), downsample(mov_valid.float(), lv) > 0.99
    h1, w1 = ref1.shape[-2:]
    sx, sy = W / w1, H / h1
    scale1 = np.array([sx, sy])
    ref_desc1 = d_verify(ref1, rv1)
    tpl1 = max(settings.min_template, int(round(tpl / lv / 8) * 8))
    radius1 = int(np.clip(math.ceil((2.5 * coarse.factor + 6) / lv), 6, 20))
    sp1 = _spacing(h1, w1, tpl1, settings.max_points_pass1, tpl1 / 3)
    centres1 = grid_centres(w1, h1, tpl1, sp1)
    mscale = np.array([mov.shape[-1] / mov1.shape[-1], mov.shape[-2] / mov1.shape[-2]])
    best = None
    most_windows = 0
    ctx = monitor.stage(0.3, 0.7, "verifying candidates") if monitor else _null()
    with ctx as mon:
        for k, cand in enumerate(coarse.candidates):
            model1 = _scaled(cand.model, scale1, mscale)
            fm = fine_match(ref_desc1, rv1, mov1, mv1, model1, centres1, tpl1, radius1, d_verify)
            fm = FineMatches(fm.ref_xy * scale1, fm.mov_xy * mscale, fm.score, fm.distinct, fm.n_windows)
            most_windows = max(most_windows, fm.n_windows)
            try:
                fit = magsac(fm.ref_xy, fm.mov_xy, "affine", max_threshold=3.0, prior=np.clip(fm.score, 0.05, 1),
                             seed=settings.seed)
            except NotEnoughMatchesError:
                continue
            ratio = fit.n_inliers / max(fm.n_windows, 1)  # share of evaluated windows, not of surviving peaks
            key = (fit.n_inliers, ratio)
            if best is None or key > best[0]:
                best = (key, fit, fm, k)
            if mon:
                mon.report((k + 1) / len(coarse.candidates), "verifying candidates")
            if fit.n_inliers >= 12 and ratio >= 0.4:
                break  # convincing: no need to look at the runners-up
    if most_windows < settings.min_inliers and min(H, W) < 3 * (tpl1 + 2 * radius1) * lv:
        # too few windows fit to ever give the evidence needed (else: say what the evidence was)
        from ..errors import InputError

        need = int(math.ceil(2 * (tpl1 + 2 * radius1) * lv))
        raise InputError(
            f"The images are too small to match ({W}x{H} px): {most_windows} matching window(s) (template "
            f"{tpl1 * lv:.0f} px searched ±{radius1 * lv:.0f} px) fit inside the overlap of the two images, "
            f"and at least {settings.min_inliers} must agree.",
            f"Both images need at least about {need} px of common ground on each side; match a larger extent "
            "or larger images.")
    if best is None or best[0][0] < settings.min_inliers or best[0][1] < settings.min_inlier_ratio:
        n_in = 0 if best is None else best[0][0]
        n_all = most_windows if best is None else best[2].n_windows
        raise NotEnoughMatchesError(
            f"No consistent alignment found: {n_in} of {n_all} matching windows agree.",
            "The images may not show the same ground, the misregistration may exceed the search range "
            f"(±{settings.max_shift_px:.0f} px, ±{settings.max_rotation_deg:g}°), or the images may be too different; "
            "try a larger search range, other bands, or an extent where both images have clear structure.")
    (n1, r1), fit1, fm1, kbest = best
    # Control: the same test under a decoy model, shifted well outside the search radius. Matches that
    # "agree" there come from the images' texture, not from the alignment (smooth or repetitive images,
    # noise); the winner must beat the decoy clearly.
    off = 2.5 * radius1 * float(scale1.mean())  # far outside the search window: no true match can be found
    rd = 0.0
    base = coarse.candidates[kbest].model
    for sx_, sy_ in ((1, -1), (-1, 1)):
        decoy = base.compose(Affine.from_array(np.array([[1, 0, sx_ * off], [0, 1, sy_ * off]], float)))
        fmd = fine_match(ref_desc1, rv1, mov1, mv1, _scaled(decoy, scale1, mscale), centres1, tpl1, radius1,
                         d_verify)
        fmd = FineMatches(fmd.ref_xy * scale1, fmd.mov_xy * mscale, fmd.score, fmd.distinct, fmd.n_windows)
        try:
            fitd = magsac(fmd.ref_xy, fmd.mov_xy, "affine", max_threshold=3.0, prior=np.clip(fmd.score, 0.05, 1),
                          seed=settings.seed)
            rd = max(rd, fitd.n_inliers / max(fmd.n_windows, 1))
        except NotEnoughMatchesError:
            pass
    diag["decoy_inlier_ratio"] = round(rd, 3)
    if r1 < settings.decoy_factor * rd + 0.05 or (n1 < settings.min_evidence and r1 < 0.6):
        raise NotEnoughMatchesError(
            f"No reliable alignment found: the best candidate ({n1} of {fm1.n_windows} windows agree) is not "
            f"clearly better than a deliberately wrong alignment ({rd:.0%} agree).",
            "The images may not show the same ground, may lack distinct structure (flat, noisy or repetitive), "
            "or the misregistration may exceed the search range; try other bands or an area with clear features.")
    diag["pass1"] = dict(candidate=kbest, level=lv, template=tpl1, radius=radius1, points=len(fm1), inliers=int(n1),
                         inlier_ratio=round(float(r1), 3), affine_rmse=round(fit1.rmse, 3))
    t2 = time.perf_counter()
    ref_desc = d_refine(ref, ref_valid)
    tpl2 = min(tpl, 64)  # refinement under a good model: smaller windows, more local, cheaper
    sp2 = _spacing(H, W, tpl2, settings.max_points_pass2, max(8.0, tpl2 / 3))
    centres2 = grid_centres(W, H, tpl2, sp2)
    ctx = monitor.stage(0.7, 1.0, "sub-pixel refinement") if monitor else _null()
    with ctx as mon:
        fm2 = fine_match(ref_desc, ref_valid, mov, mov_valid, fit1.model, centres2, tpl2, 6, d_refine,
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


def _scaled(model, ref_scale: np.ndarray, mov_scale: np.ndarray):
    """The model between reduced images: reduced ref px -> full ref -> full mov -> reduced mov px."""
    return lambda xy: model(np.asarray(xy) * ref_scale) / mov_scale


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
