"""Self-consistency: does the matcher find the same alignment again when the target is moved by a known amount?

A right alignment is reproducible: warp the target by a known small similarity, match again, undo the known
warp, and the two alignments agree to about a pixel. A wrong one usually comes from a chance peak that does
not survive the change (on the issue's held-out probe, answers within 3 px moved by at most 3 px between two
differently warped runs, answers more than 5 px off moved by 3.5-60 px).

It costs one more match, so the pipeline asks for it only where the verify stage is unsure (the final
confidence inside :data:`BAND`); the verifier's *consistency* head (:mod:`.verify`) turns the final
confidence, the distance between the two alignments and the re-match's own confidence into the confidence
that the decision uses. Shapes as :func:`.matcher.match_pair`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..geometry.transforms import Affine

BAND = (0.2, 0.9)      # final confidences for which the check runs (outside it, the verdict is clear)
NO_MATCH_PX = 50.0     # the distance recorded when the re-match finds nothing at all


@dataclass(frozen=True)
class Consistency:
    distance_px: float     # RMS distance between the two alignments over the overlap (reference px)
    confidence2: float     # the re-match's own final confidence (0 when it found nothing)
    warp: tuple            # the known similarity (scale, rotation deg, shift x, shift y)
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def in_band(confidence: float) -> bool:
    return BAND[0] <= confidence < BAND[1]


def known_warp(width: int, height: int, seed: int) -> Affine:
    """A similarity well inside the default search ranges and different from the identity in every part:
    rotation 1.5-3°, scale 1.5-3 %, shift 3-6 % of the image, signs drawn from ``seed``."""
    rng = np.random.default_rng(1_000_003 + seed)
    sign = rng.choice([-1.0, 1.0], size=4)
    rot = sign[0] * rng.uniform(1.5, 3.0)
    scale = 1.0 + sign[1] * rng.uniform(0.015, 0.03)
    tx = sign[2] * rng.uniform(0.03, 0.06) * width
    ty = sign[3] * rng.uniform(0.03, 0.06) * height
    return Affine.from_similarity(scale, rot, tx, ty, (width / 2.0, height / 2.0))


def alignment(result) -> Affine:
    """The affine of a :class:`~.matcher.MatchResult`'s sub-pixel inliers (reference px -> moving px)."""
    ok = result.inlier
    return Affine.fit(result.matches.ref_xy[ok], result.matches.mov_xy[ok])


def distance(a: Affine, b: Affine, width: int, height: int, mov_shape: tuple[int, int]) -> float:
    """RMS distance (reference px) between ``a`` and ``b`` over the reference positions that ``a`` maps into
    the moving image (an 11 x 11 grid)."""
    u = np.linspace(0.05, 0.95, 11)
    q = np.stack(np.meshgrid(u * width, u * height), -1).reshape(-1, 2)
    pa, pb = a(q), b(q)
    h2, w2 = mov_shape
    inside = (pa[:, 0] >= 0) & (pa[:, 0] <= w2) & (pa[:, 1] >= 0) & (pa[:, 1] <= h2)
    if inside.sum() < 4:
        inside[:] = True
    px = math.sqrt(abs(np.linalg.det(a.A[:, :2]))) or 1.0   # moving px per reference px
    return float(np.sqrt(np.mean(np.sum((pa[inside] - pb[inside]) ** 2, 1)))) / px


def self_consistency(ref, ref_valid, mov, mov_valid, result, descriptor, settings, seed: int = 0,
                     verifier=None) -> Consistency:
    """Warp ``mov`` by :func:`known_warp`, match it to ``ref`` again with the same descriptor and settings, and
    compare the re-found alignment (known warp undone) with ``result``'s."""
    from ..errors import HSSCLError
    from .fine import warp_to_reference
    from .matcher import match_pair

    t0 = time.perf_counter()
    h2, w2 = mov.shape[-2:]
    T = known_warp(w2, h2, seed)
    moved, moved_valid = warp_to_reference(mov, mov_valid, T, h2, w2, 0)   # moved(p) = mov(T(p))
    a1 = alignment(result)
    try:
        res2 = match_pair(ref, ref_valid, moved, moved_valid, descriptor, settings, verifier=verifier)
        d = distance(a1, T.compose(alignment(res2)), ref.shape[-1], ref.shape[-2], (h2, w2))
        c2 = res2.confidence
    except (HSSCLError, np.linalg.LinAlgError):
        d, c2 = NO_MATCH_PX, 0.0
    s, rot = math.sqrt(abs(np.linalg.det(T.A[:, :2]))), math.degrees(math.atan2(T.A[1, 0], T.A[0, 0]))
    return Consistency(min(d, NO_MATCH_PX), float(c2), (round(s, 4), round(rot, 3), round(T.A[0, 2], 2),
                                                        round(T.A[1, 2], 2)), time.perf_counter() - t0)


def consistency_features(confidence: float, c: Consistency) -> dict[str, float]:
    """The consistency head's inputs: the final confidence and the re-match's (as logits), and the distance."""
    def logit(p: float) -> float:
        p = min(max(p, 1e-3), 1 - 1e-3)
        return math.log(p / (1 - p))

    return {"logit_confidence": logit(confidence), "logit_confidence2": logit(c.confidence2),
            "log_distance": math.log1p(c.distance_px)}
