"""Robust model fitting (OpenCV's USAC with MAGSAC++ scoring), automatic model choice, and check-point RMSE.

Hypotheses come from OpenCV's USAC (``cv2.estimateAffine2D`` with :class:`cv2.UsacParams`): PROSAC
sampling on the points sorted by their match score when a prior is given (uniform otherwise), MAGSAC++
scoring (a quality marginalised over noise scales in (0, max_threshold], so no single inlier threshold
has to be guessed), sigma-consensus local optimisation, and the seed as ``randomGeneratorState``, so the
same seed gives the same fit. The affine it returns is then polished by iteratively re-weighted least
squares with the same marginalised weights (the MAGSAC++ step), fitting the requested model (affine,
poly2, poly3 or tps). A shift has no OpenCV estimator: every point's displacement is a hypothesis,
scored by the same marginalised quality.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import NotEnoughMatchesError
from .transforms import Affine, Shift, Transform, fit_model, min_points

MODEL_ORDER = ("shift", "similarity", "affine", "poly2", "poly3", "tps")
SHIFT_HYPOTHESES = 2000   # most point displacements tried as shift hypotheses (the best-scored first)


@dataclass(frozen=True)
class RobustFit:
    model: Transform
    kind: str
    inlier: np.ndarray          # (N,) bool
    weights: np.ndarray         # (N,) MAGSAC++ weights in [0, 1]
    residual: np.ndarray        # (N,) px
    iterations: int             # IRLS polish iterations run on the requested model
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
    r2 = (res[..., None] / taus) ** 2
    return np.where(r2 < 1.0, 1.0 - r2, 0.0).mean(-1)


def _no_geometry() -> NotEnoughMatchesError:
    return NotEnoughMatchesError("No consistent geometry could be found among the tie points.",
                                 "The images may not overlap or may be too different.")


def _usac_affine(src: np.ndarray, dst: np.ndarray, prior: np.ndarray | None, max_threshold: float,
                 max_iter: int, confidence: float, seed: int) -> Affine:
    """Affine hypothesis from OpenCV's USAC: PROSAC on score-sorted points (uniform without a prior),
    MAGSAC++ score, sigma-consensus local optimisation; deterministic for a given ``seed``."""
    import cv2  # opencv-python-headless; imported here so that QGIS start-up does not load it

    order = np.argsort(-prior, kind="stable") if prior is not None else np.arange(len(src))
    p = cv2.UsacParams()
    p.sampler = cv2.SAMPLING_PROSAC if prior is not None else cv2.SAMPLING_UNIFORM
    p.score = cv2.SCORE_METHOD_MAGSAC
    p.loMethod = cv2.LOCAL_OPTIM_SIGMA
    p.loIterations = 10
    p.loSampleSize = 14
    p.final_polisher = cv2.NONE_POLISHER  # the MAGSAC++ polish below fits the requested model
    p.threshold = float(max_threshold)
    p.confidence = float(confidence)
    p.maxIterations = int(max_iter)
    p.randomGeneratorState = int(seed) & 0x7FFFFFFF
    p.isParallel = False
    a, _ = cv2.estimateAffine2D(np.ascontiguousarray(src[order]), np.ascontiguousarray(dst[order]), params=p)
    if a is None or not np.isfinite(a).all():
        raise _no_geometry()
    return Affine.from_array(a)


def _shift_hypothesis(src: np.ndarray, dst: np.ndarray, prior: np.ndarray | None, max_threshold: float,
                      seed: int) -> Shift:
    """The point displacement with the best marginalised quality (the best-scored points are tried first)."""
    d = dst - src
    n = len(d)
    if n > SHIFT_HYPOTHESES:
        cand = (np.argsort(-prior, kind="stable") if prior is not None
                else np.random.default_rng(seed).permutation(n))[:SHIFT_HYPOTHESES]
    else:
        cand = np.arange(n)
    best_q, best = -1.0, cand[0]
    for s in range(0, len(cand), 256):  # bounded memory: 256 hypotheses x N residuals at a time
        c = cand[s:s + 256]
        res = np.linalg.norm(d[None, :, :] - d[c, None, :], axis=2)
        q = marginal_weights(res, max_threshold).sum(1)
        i = int(np.argmax(q))
        if q[i] > best_q:
            best_q, best = float(q[i]), c[i]
    return Shift((float(d[best, 0]), float(d[best, 1])))


def robust_fit(src: np.ndarray, dst: np.ndarray, kind: str = "affine", max_threshold: float = 3.0,
               prior: np.ndarray | None = None, max_iter: int = 100_000, confidence: float = 0.999,
               seed: int = 0) -> RobustFit:
    """Robustly fit ``kind`` (shift, similarity, affine, poly2, poly3, tps) mapping ``src`` (N, 2) to ``dst`` (N, 2).

    ``prior`` (N,) in (0, 1] (match scores) orders the points for PROSAC sampling. The hypothesis is
    an affine (a shift for ``kind="shift"``) from OpenCV's USAC; the MAGSAC++ re-weighted polish then
    fits ``kind``. Inliers: residual below 0.75 ``max_threshold`` after the polish. Same ``seed``, same
    result. Raises :class:`NotEnoughMatchesError` when there are fewer points than the model needs or no
    consistent geometry is found.
    """
    src = np.asarray(src, float).reshape(-1, 2)
    dst = np.asarray(dst, float).reshape(-1, 2)
    if len(src) != len(dst):
        raise ValueError(f"src and dst must have the same number of points, got {len(src)} and {len(dst)}")
    n = len(src)
    sample_kind = "shift" if kind == "shift" else "affine"
    k = min_points(sample_kind)
    if n < max(k + 1, 3 if kind == "shift" else k + 2):
        raise NotEnoughMatchesError(
            f"Only {n} candidate tie points were found; at least {max(k + 2, 3)} are needed.",
            "Check that the images overlap and show the same ground; try a larger extent.")
    p = None if prior is None else np.clip(np.asarray(prior, float).reshape(-1), 1e-3, None)
    if p is not None and len(p) != n:
        raise ValueError(f"prior must have one value per point ({n}), got {len(p)}")
    model: Transform
    if kind == "shift":
        model = _shift_hypothesis(src, dst, p, max_threshold, seed)
    else:
        model = _usac_affine(src, dst, p, max_threshold, max_iter, confidence, seed)
    w = marginal_weights(model.residuals(src, dst), max_threshold)
    it = 0
    for _ in range(10):  # MAGSAC++ IRLS polish, on the requested model
        if (w > 0).sum() < min_points(kind) + 1:
            break
        try:
            model = fit_model(kind, src, dst, w)
        except (np.linalg.LinAlgError, NotEnoughMatchesError):
            break
        it += 1
        w_new = marginal_weights(model.residuals(src, dst), max_threshold)
        if np.allclose(w_new, w, atol=1e-4):
            w = w_new
            break
        w = w_new
    res = model.residuals(src, dst)
    return RobustFit(model, kind, res < max_threshold * 0.75, w, res, it, max_threshold)


magsac = robust_fit
"""The former name (same signature and result): the matcher, the scene tiler and the graph features call it."""


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
                 candidates: tuple[str, ...] = ("shift", "similarity", "affine", "poly2", "poly3"),
                 px_scale: float = 1.0) -> ModelChoice:
    """Pick the simplest model whose cross-validated RMSE is within 10 % (+0.1 px) of the best.

    The models are fitted to the points as they are and their errors measured in ``src`` pixels
    (``px_scale``: the size of a ``src`` pixel in ``dst`` pixels). Rescaling ``dst`` instead would take away
    the scale difference between the images, which a shift cannot represent, and let a shift win
    where the images differ in scale. A model is only considered with at least 3 points per parameter
    pair, so that its CV error is meaningful; the reason names the figures.
    """
    need = {"shift": 3, "similarity": 6, "affine": 8, "poly2": 24, "poly3": 40, "tps": 60}
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
