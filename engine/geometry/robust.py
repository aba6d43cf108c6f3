"""Robust model fitting (MAGSAC++-style), automatic model choice, and check-point RMSE.

Hypotheses come from seeded minimal samples; each is scored by a quality marginalised over noise
scales (a truncated quadratic loss averaged over thresholds ``sigma_k`` in (0, max_threshold]), the
core idea of MAGSAC: no single inlier threshold has to be guessed. The best hypothesis is polished by
iteratively re-weighted least squares with the same marginalised weights (the MAGSAC++ step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import NotEnoughMatchesError
from .transforms import Transform, fit_model, min_points

MODEL_ORDER = ("shift", "affine", "poly2", "poly3", "tps")


@dataclass(frozen=True)
class RobustFit:
    model: Transform
    kind: str
    inlier: np.ndarray          # (N,) bool
    weights: np.ndarray         # (N,) MAGSAC++ weights in [0, 1]
    residual: np.ndarray        # (N,) px
    iterations: int
    threshold: float

    @property
    def n_inliers(self) -> int:
        return int(self.inlier.sum())

    @property
    def rmse(self) -> float:
        r = self.residual[self.inlier]
        return float(np.sqrt(np.mean(r ** 2))) if len(r) else float("nan")


def marginal_weights(res: np.ndarray, max_threshold: float, levels: int = 10) -> np.ndarray:
    """Weight of each residual averaged over thresholds in (0, max_threshold] (truncated quadratic)."""
    taus = max_threshold * np.arange(1, levels + 1) / levels
    r2 = (res[:, None] / taus[None]) ** 2
    return np.where(r2 < 1.0, 1.0 - r2, 0.0).mean(1)


def magsac(src: np.ndarray, dst: np.ndarray, kind: str = "affine", max_threshold: float = 3.0,
           prior: np.ndarray | None = None, max_iter: int = 2000, confidence: float = 0.999,
           seed: int = 0) -> RobustFit:
    """Robustly fit ``kind`` mapping ``src`` to ``dst``.

    ``prior`` (N,) in (0, 1] biases sampling towards good matches (PROSAC-like). Raises
    :class:`NotEnoughMatchesError` when there are fewer points than the model needs.
    """
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    n = len(src)
    sample_kind = "affine" if kind in ("poly2", "poly3", "tps") else kind
    k = min_points(sample_kind)
    if n < max(k + 1, 3 if kind == "shift" else k + 2):
        raise NotEnoughMatchesError(
            f"Only {n} candidate tie points were found; at least {max(k + 2, 3)} are needed.",
            "Check that the images overlap and show the same ground; try a larger extent.")
    rng = np.random.default_rng(seed)
    p = None
    if prior is not None:
        p = np.clip(np.asarray(prior, float), 1e-3, None)
        p = p / p.sum()
    best_q, best_model, it = -1.0, None, 0
    needed = max_iter
    while it < min(max_iter, needed):
        it += 1
        idx = rng.choice(n, size=k, replace=False, p=p)
        s = src[idx]
        if k == 3:
            u, v = s[1] - s[0], s[2] - s[0]
            area = abs(u[0] * v[1] - u[1] * v[0])
            if area < 1.0:
                continue
        try:
            m = fit_model(sample_kind, s, dst[idx])
        except (np.linalg.LinAlgError, NotEnoughMatchesError):
            continue
        res = m.residuals(src, dst)
        q = marginal_weights(res, max_threshold).sum()
        if q > best_q:
            best_q, best_model = q, m
            inl = (res < max_threshold).mean()
            if inl > 0:
                denom = np.log(max(1e-12, 1 - inl ** k))
                needed = int(np.ceil(np.log(1 - confidence) / denom)) if denom < 0 else 1
                needed = max(needed, 50)
    if best_model is None:
        raise NotEnoughMatchesError("No consistent geometry could be found among the tie points.",
                                    "The images may not overlap or may be too different.")
    model = best_model
    w = marginal_weights(model.residuals(src, dst), max_threshold)
    for _ in range(10):  # MAGSAC++ IRLS polish, then the requested model
        if (w > 0).sum() < min_points(kind) + 1:
            break
        try:
            model = fit_model(kind, src, dst, w)
        except (np.linalg.LinAlgError, NotEnoughMatchesError):
            break
        w_new = marginal_weights(model.residuals(src, dst), max_threshold)
        if np.allclose(w_new, w, atol=1e-4):
            w = w_new
            break
        w = w_new
    res = model.residuals(src, dst)
    return RobustFit(model, kind, res < max_threshold * 0.75, w, res, it, max_threshold)


def spatial_folds(src: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index of each point, by spatial blocks (a 4 x 4 grid over the points' extent, blocks dealt
    to folds at random): a model must predict whole areas it has not seen, so over-fitting shows."""
    lo, hi = src.min(0), src.max(0)
    cell = np.clip(((src - lo) / np.maximum(hi - lo, 1e-9) * 4).astype(int), 0, 3)
    block = cell[:, 1] * 4 + cell[:, 0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(16)
    return perm[block] % folds


def cross_validated_rmse(kind: str, src: np.ndarray, dst: np.ndarray, folds: int = 5, seed: int = 0,
                         px_scale: float = 1.0) -> float:
    """Spatially blocked K-fold cross-validated RMSE of fitting ``kind`` on ``src -> dst``, in ``src`` pixels
    (``px_scale``: the size of a ``src`` pixel in ``dst`` pixels)."""
    n = len(src)
    if n < min_points(kind) + 2:
        return float("inf")
    fold = spatial_folds(src, folds, seed)
    errs = []
    for f in range(folds):
        test = fold == f
        train = ~test
        if not test.any():
            continue
        if train.sum() < min_points(kind) + 1:
            return float("inf")
        try:
            m = fit_model(kind, src[train], dst[train])
        except (np.linalg.LinAlgError, NotEnoughMatchesError):
            return float("inf")
        errs.append(m.residuals(src[test], dst[test]) / px_scale)
    if not errs:
        return float("inf")
    e = np.concatenate(errs)
    return float(np.sqrt(np.mean(e ** 2)))


@dataclass(frozen=True)
class ModelChoice:
    kind: str
    reason: str
    cv_rmse: dict[str, float] = field(default_factory=dict)


def choose_model(src: np.ndarray, dst: np.ndarray, seed: int = 0,
                 candidates: tuple[str, ...] = ("shift", "affine", "poly2", "poly3"),
                 px_scale: float = 1.0) -> ModelChoice:
    """Pick the simplest model whose cross-validated RMSE is within 10 % (+0.1 px) of the best.

    The models are fitted to the points as they are and their errors measured in ``src`` pixels
    (``px_scale``: the size of a ``src`` pixel in ``dst`` pixels). Rescaling ``dst`` instead would take away
    the scale difference between the images, which a shift cannot represent, and let a shift win
    where the images differ in scale. A model is only considered with at least 3 points per parameter
    pair, so that its CV error is meaningful; the reason names the figures.
    """
    need = {"shift": 3, "affine": 8, "poly2": 24, "poly3": 40, "tps": 60}
    cv = {k: cross_validated_rmse(k, src, dst, seed=seed, px_scale=px_scale) for k in candidates
          if len(src) >= need[k]}
    if not cv:
        return ModelChoice("shift" if len(src) < 8 else "affine", "too few tie points to compare models", {})
    best = min(cv.values())
    for k in MODEL_ORDER:
        if k in cv and cv[k] <= best * 1.10 + 0.1:
            others = ", ".join(f"{m} {v:.2f}" for m, v in cv.items())
            why = (f"{k}: simplest model within 10 % (+0.1 px) of the best spatially cross-validated RMSE "
                   f"(CV RMSE px: {others}; n={len(src)})")
            return ModelChoice(k, why, cv)
    raise AssertionError("unreachable")  # pragma: no cover
