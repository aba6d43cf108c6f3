"""From tie point candidates to the final model: robust fit, model choice, check points."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NotEnoughMatchesError
from .geometry.robust import choose_model, robust_fit
from .geometry.transforms import Transform, fit_model, min_points

CHECK_FRACTION = 0.2
MIN_INLIERS = 8
MIN_INLIER_RATIO = 0.2


@dataclass(frozen=True)
class FitOutcome:
    model: Transform
    kind: str
    reason: str
    inlier: np.ndarray
    check: np.ndarray
    residual_px: np.ndarray      # reference pixels
    rmse_fit_px: float           # over inliers used in the fit
    rmse_check_px: float | None  # over held-out check points (None when too few points)
    cv_rmse: dict


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(v ** 2))) if len(v) else float("nan")


def fit_correction(ref_xy: np.ndarray, tgt_xy: np.ndarray, score: np.ndarray, kind: str = "auto",
                   px_scale: float = 1.0, seed: int = 0, robust: bool = True) -> FitOutcome:
    """Fit ``kind`` (or choose it when ``auto``) mapping reference pixels to target pixels.

    ``px_scale`` is the size of a reference pixel in target pixels (residuals are reported in
    reference pixels). With ``robust`` the inliers come from :func:`~.geometry.robust.robust_fit`: OpenCV's
    USAC with MAGSAC++ scoring, then a weighted (MAGSAC++ IRLS) polish of the requested model; without (tie
    points curated by a user), every point is used.
    """
    n = len(ref_xy)
    thr = 2.5 * px_scale
    if robust:
        fit = robust_fit(ref_xy, tgt_xy, "affine", max_threshold=thr, prior=np.clip(score, 0.05, 1), seed=seed)
        inl = fit.inlier
    else:
        inl = np.ones(n, bool)
    if kind == "auto":
        choice = choose_model(ref_xy[inl], tgt_xy[inl], seed=seed, px_scale=px_scale)
        kind, reason, cv = choice.kind, choice.reason, choice.cv_rmse
    else:
        reason, cv = "chosen by the user", {}
    if inl.sum() < min_points(kind) + 1:
        raise NotEnoughMatchesError(
            f"Only {int(inl.sum())} reliable tie points: not enough for a '{kind}' transform.",
            "Use a simpler transform (shift or affine) or a larger area.")
    if robust and kind != "affine":
        fit = robust_fit(ref_xy, tgt_xy, kind, max_threshold=thr, prior=np.clip(score, 0.05, 1), seed=seed)
        inl = fit.inlier
    n_in = int(inl.sum())
    if robust and (n_in < max(MIN_INLIERS, min_points(kind) + 3) or n_in < MIN_INLIER_RATIO * n):
        raise NotEnoughMatchesError(
            f"Too few consistent tie points: {n_in} of {n} agree with one geometry.",
            "The images may be too different or show too little common structure; try other bands, "
            "a larger area, or check that they show the same ground.")
    # hold out check points (seeded), only when enough inliers remain for a stable fit
    check = np.zeros(n, bool)
    idx = np.flatnonzero(inl)
    n_check = int(round(CHECK_FRACTION * len(idx)))
    if len(idx) - n_check >= 2 * min_points(kind) + 3 and n_check >= 3:
        rng = np.random.default_rng(seed)
        check[rng.choice(idx, n_check, replace=False)] = True
    use = inl & ~check
    model = fit_model(kind, ref_xy[use], tgt_xy[use])
    residual = model.residuals(ref_xy, tgt_xy) / px_scale
    rmse_check = _rms(residual[check]) if check.any() else None
    return FitOutcome(model, kind, reason, inl, check, residual, _rms(residual[use]), rmse_check, cv)
