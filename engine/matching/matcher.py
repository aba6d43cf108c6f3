"""Coarse-to-fine matching of two single-channel images: coarse search, verification, refinement.

1. hypotheses: global rotation x scale x shift search on reduced descriptor fields (several candidates);
2. verify (pass 1): templates on a grid matched within a wide radius under each candidate; each candidate's
   evidence (agreement with one affine, spread, peaks, chance level, a-contrario NFA) is judged by the
   verify stage (:mod:`.verify`) on one scale, the most confident wins;
3. refine (pass 2): templates matched again under that affine within a small radius, to sub-pixel
   precision; the verify stage judges the result once more (its confidence). Deciding is not done here.
Output positions are in the two images' own pixel coordinates.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import NotEnoughMatchesError
from ..geometry.robust import robust_fit
from ..geometry.transforms import Affine
from .coarse import coarse_search
from .fine import FineMatches, fine_match, grid_centres
from .sampling import downsample
from .verify import Evidence, Verdict, coverage, judge, log_nfa, network_margin


@dataclass(frozen=True)
class MatchSettings:
    max_shift_px: float = 100.0
    max_rotation_deg: float = 10.0
    max_scale: float = 0.10
    rotation_centres: tuple[float, ...] = (0.0,)   # rotations searched around (degrees; see .orientation)
    coarse_size: int = 256
    max_template: int = 96
    min_template: int = 32
    max_points_pass1: int = 128
    max_points_pass2: int = 300
    min_inliers: int = 6
    n_candidates: int = 4           # hypotheses of the coarse search that the verify stage judges
    stop_confidence: float = 0.9    # a hypothesis this sure ends the judging of the runners-up
    network_verify: bool = True     # the network's look at the result is part of the verify stage's evidence
    seed: int = 0


@dataclass(frozen=True)
class MatchResult:
    matches: FineMatches          # final pass-2 matches (reference px, moving px)
    inlier: np.ndarray            # (N,) bool, consistent with the affine of pass 2
    affine_rmse: float
    template: int
    diagnostics: dict = field(default_factory=dict)
    verdict: Verdict | None = None   # the verify stage's judgement of this alignment
    judged: tuple = ()               # (Verdict, pass-1 affine) of every hypothesis judged, in search order

    @property
    def confidence(self) -> float:
        return self.verdict.confidence if self.verdict is not None else 0.0


def template_size(height: int, width: int, settings: MatchSettings) -> int:
    t = int(round(min(height, width) / 5 / 8) * 8)
    return int(np.clip(t, settings.min_template, settings.max_template))


def _spacing(height: int, width: int, template: int, max_points: int, min_spacing: float) -> float:
    area = max(height - template, 1) * max(width - template, 1)
    return max(min_spacing, math.sqrt(area / max_points))


def match_pair(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
               descriptor, settings: MatchSettings, monitor=None, verifier=None) -> MatchResult:
    """Match ``mov`` to ``ref``: hypotheses (coarse search), each judged by the verify stage
    (:mod:`.verify`), the most confident refined to sub-pixel and judged again. Shapes: (1, 1, H, W) float
    images and bool masks (may differ in size). ``descriptor`` serves all three stages.

    Returns the best hypothesis with its confidence (``result.confidence``); it does not decide: the
    decision is :mod:`engine.decision`'s. Raises :class:`NotEnoughMatchesError` only when no hypothesis
    could be judged at all (no consistent set of matches anywhere), :class:`InputError` when the images
    are too small to match."""
    from ..errors import InputError

    H, W = ref.shape[-2:]
    diag: dict = {}
    t0 = time.perf_counter()
    tpl = template_size(H, W, settings)
    if min(H, W) < settings.min_template or min(mov.shape[-2:]) < settings.min_template:
        raise InputError(f"The images are too small to match ({W}x{H} and {mov.shape[-1]}x{mov.shape[-2]} px).",
                         f"Both must be at least {settings.min_template} px on each side.")
    ctx = monitor.stage(0.0, 0.3, "coarse search") if monitor else _null()
    with ctx as mon:
        coarse = coarse_search(ref, ref_valid, mov, mov_valid, descriptor, settings.max_shift_px,
                               settings.max_rotation_deg, settings.max_scale, settings.coarse_size,
                               n_candidates=settings.n_candidates, monitor=mon,
                               rotation_centres=settings.rotation_centres)
    diag["coarse"] = [dict(rotation_deg=round(c.rotation_deg, 2), scale=round(c.scale, 4),
                           shift_px=[round(v, 2) for v in c.shift_px], score=round(c.score, 3),
                           distinctiveness=round(c.distinctiveness, 3)) for c in coarse.candidates]
    diag["coarse_factor"] = round(coarse.factor, 3)
    diag["search"] = dict(max_shift_px=round(settings.max_shift_px, 1), max_rotation_deg=settings.max_rotation_deg,
                          max_scale=settings.max_scale, rotation_centres=list(settings.rotation_centres))
    t1 = time.perf_counter()
    # pass 1 (verification) runs at half resolution on larger images: it needs ~1 px, not sub-pixel
    lv = 2.0 if min(H, W) >= 384 else 1.0
    ref1, rv1 = downsample(ref, lv), downsample(ref_valid.float(), lv) > 0.99
    mov1, mv1 = downsample(mov, lv), downsample(mov_valid.float(), lv) > 0.99
    h1, w1 = ref1.shape[-2:]
    sx, sy = W / w1, H / h1
    scale1 = np.array([sx, sy])
    ref_desc1 = descriptor(ref1, rv1)
    tpl1 = max(settings.min_template, int(round(tpl / lv / 8) * 8))
    radius1 = int(np.clip(math.ceil((2.5 * coarse.factor + 6) / lv), 6, 20))
    sp1 = _spacing(h1, w1, tpl1, settings.max_points_pass1, tpl1 / 3)
    centres1 = grid_centres(w1, h1, tpl1, sp1)
    mscale = np.array([mov.shape[-1] / mov1.shape[-1], mov.shape[-2] / mov1.shape[-2]])

    bank: dict = {}  # the reference templates' spectra, shared by every hypothesis and decoy

    def verify_under(model):
        fm = fine_match(ref_desc1, rv1, mov1, mv1, _scaled(model, scale1, mscale), centres1, tpl1, radius1,
                        descriptor, bank=bank)
        fm = FineMatches(fm.ref_xy * scale1, fm.mov_xy * mscale, fm.score, fm.distinct, fm.n_windows)
        try:
            fit = robust_fit(fm.ref_xy, fm.mov_xy, "affine", max_threshold=3.0, prior=np.clip(fm.score, 0.05, 1),
                         seed=settings.seed)
        except NotEnoughMatchesError:
            fit = None
        return fm, fit

    ctx = monitor.stage(0.3, 0.7, "verifying candidates") if monitor else _null()
    with ctx as mon:
        # the images' own chance level: agreement under deliberately wrong alignments, shifted well outside
        # the search radius from the leading hypothesis (smooth, repetitive or noisy images agree by chance)
        off = 2.5 * radius1 * float(scale1.mean())
        rd = 0.0
        base = coarse.candidates[0].model
        for sx_, sy_ in ((1, -1), (-1, 1)):
            decoy = base.compose(Affine.from_array(np.array([[1, 0, sx_ * off], [0, 1, sy_ * off]], float)))
            fmd, fitd = verify_under(decoy)
            if fitd is not None:
                rd = max(rd, fitd.n_inliers / max(fmd.n_windows, 1))
        diag["decoy_inlier_ratio"] = round(rd, 3)
        n_tests = len(coarse.candidates)
        judged: list[tuple[Verdict, object, FineMatches, int]] = []
        most_windows = 0
        for k, cand in enumerate(coarse.candidates):
            fm, fit = verify_under(cand.model)
            most_windows = max(most_windows, fm.n_windows)
            if fit is None:
                continue
            ev = pass1_evidence(fm, fit, rd, W, H, radius1 * lv, n_tests, cand.score)
            v = judge(ev, "candidate", verifier)
            judged.append((v, fit, fm, k))
            if mon:
                mon.report((k + 1) / len(coarse.candidates), "verifying candidates")
            if v.confidence >= settings.stop_confidence:
                break  # convincing: no need to look at the runners-up
    diag["candidates"] = [dict(candidate=k, confidence=round(v.confidence, 4), inliers=v.evidence.n_inliers,
                               windows=v.evidence.n_windows) for v, _, _, k in judged]
    if not judged:
        if most_windows < settings.min_inliers and min(H, W) < 3 * (tpl1 + 2 * radius1) * lv:
            need = int(math.ceil(2 * (tpl1 + 2 * radius1) * lv))
            raise InputError(
                f"The images are too small to match ({W}x{H} px): {most_windows} matching window(s) (template "
                f"{tpl1 * lv:.0f} px searched ±{radius1 * lv:.0f} px) fit inside the overlap of the two images, "
                f"and at least {settings.min_inliers} must agree.",
                f"Both images need at least about {need} px of common ground on each side; match a larger extent "
                "or larger images.")
        raise NotEnoughMatchesError(
            f"No consistent alignment found: no set of matching windows agrees ({most_windows} evaluated).",
            "The images may not show the same ground, the misregistration may exceed the search range "
            f"(±{settings.max_shift_px:.0f} px, ±{settings.max_rotation_deg:g}°, ±{settings.max_scale:.0%}), or the "
            "images may be too different; try a larger search range, other bands, or an extent where both images "
            "have clear structure.")
    v1, fit1, fm1, kbest = max(judged, key=lambda t: t[0].confidence)
    diag["pass1"] = dict(candidate=kbest, level=lv, template=tpl1, radius=radius1, points=len(fm1),
                         inliers=int(fit1.n_inliers), inlier_ratio=round(fit1.n_inliers / max(fm1.n_windows, 1), 3),
                         affine_rmse=round(fit1.rmse, 3), confidence=round(v1.confidence, 4))
    t2 = time.perf_counter()
    ref_desc = descriptor(ref, ref_valid)
    tpl2 = min(tpl, 64)  # refinement under a good model: smaller windows, more local, cheaper
    sp2 = _spacing(H, W, tpl2, settings.max_points_pass2, max(8.0, tpl2 / 3))
    centres2 = grid_centres(W, H, tpl2, sp2)
    ctx = monitor.stage(0.7, 1.0, "sub-pixel refinement") if monitor else _null()
    with ctx as mon:
        fm2 = fine_match(ref_desc, ref_valid, mov, mov_valid, fit1.model, centres2, tpl2, 6, descriptor,
                         monitor=mon)
    try:
        fit2 = robust_fit(fm2.ref_xy, fm2.mov_xy, "affine", max_threshold=2.5, prior=np.clip(fm2.score, 0.05, 1),
                      seed=settings.seed)
    except NotEnoughMatchesError as err:
        raise NotEnoughMatchesError(
            f"Refinement found too few tie points ({len(fm2)}).",
            "The images may be too different in this area; try other bands or a larger extent.") from err
    ratio2 = fit2.n_inliers / max(len(fm2), 1)
    diag["pass2"] = dict(template=tpl2, radius=6, points=len(fm2), inliers=fit2.n_inliers,
                         inlier_ratio=round(ratio2, 3), affine_rmse=round(fit2.rmse, 3))
    net = network_margin(ref, ref_valid, mov, mov_valid, fit2.model) if settings.network_verify else 0.0
    ev = replace(v1.evidence, ratio2=float(ratio2), n_inliers2=int(fit2.n_inliers), rmse2=float(fit2.rmse),
                 net_margin=float(net))
    verdict = judge(ev, "final", verifier)
    diag["verify"] = verdict.to_dict()
    diag["seconds"] = dict(coarse=round(t1 - t0, 3), verify=round(t2 - t1, 3), refine=round(time.perf_counter() - t2, 3))
    return MatchResult(fm2, fit2.inlier, fit2.rmse, tpl, diag, verdict,
                       tuple((v, fit.model) for v, fit, _, _ in judged))


def pass1_evidence(fm: FineMatches, fit, decoy_ratio: float, width: float, height: float, radius_px: float,
                   n_tests: int, coarse_score: float = 0.0) -> Evidence:
    """The verify stage's evidence for one hypothesis from its pass-1 matches and robust affine."""
    inl = fit.inlier
    n = max(fm.n_windows, 1)
    return Evidence(
        n_windows=int(fm.n_windows), n_inliers=int(fit.n_inliers), inlier_ratio=float(fit.n_inliers / n),
        decoy_ratio=float(decoy_ratio), coverage=coverage(fm.ref_xy, inl, width, height),
        log_nfa=log_nfa(fm.n_windows, fit.n_inliers, radius_px, n_tests),
        peak=float(np.median(fm.score[inl])) if inl.any() else 0.0,
        distinct=float(np.median(fm.distinct[inl])) if inl.any() else 0.0,
        affine_rmse=float(fit.rmse) if inl.any() else float("nan"), coarse_score=float(coarse_score))


def _scaled(model, ref_scale: np.ndarray, mov_scale: np.ndarray):
    """The model between reduced images: reduced ref px -> full ref -> full mov -> reduced mov px."""
    return lambda xy: model(np.asarray(xy) * ref_scale) / mov_scale


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
