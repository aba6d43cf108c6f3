"""The verify stage: one calibrated confidence for an alignment hypothesis.

Input: the evidence gathered for one hypothesis (:class:`Evidence`: how many template windows agree with
one affine, how they spread over the overlap, how distinct their correlation peaks are, how much agreement
a deliberately wrong alignment gets on the same images, an a-contrario number of false alarms, the sub-pixel
pass's agreement and precision). Output: :class:`Verdict`, the probability that the alignment is within
3 px of the truth.

The probability comes from a logistic model over those features, fitted self-supervised on the training
pairs (the redistributable co-registered pairs of the training cache, warped by known random
misregistrations; nothing of the benchmark's pairs): ``hsscl.engine.train.verifier`` fits it and writes
``resources/models/verifier-<version>.json`` (registry name ``verifier``). Two heads share the file: the
*candidate* head judges a hypothesis after verification (pass 1), so that hypotheses from any source
(rotation/scale search, other descriptors, adaptation) are ranked on one scale; the *final* head adds the
sub-pixel pass and gives the confidence that the decision (:mod:`engine.decision`) thresholds.

Every alternative the pipeline tries is judged here and nowhere else.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

INLIER_PX = 3.0           # the robust fit's inlier threshold (full-resolution pixels)


@dataclass(frozen=True)
class Evidence:
    """What one hypothesis's verification found (full-resolution reference pixels)."""

    n_windows: int            # template windows that could be evaluated (pass 1)
    n_inliers: int            # of them, consistent with one affine within INLIER_PX
    inlier_ratio: float       # n_inliers / n_windows
    decoy_ratio: float        # the same ratio under deliberately wrong alignments (the images' own chance level)
    coverage: float           # share of the overlap's 4 x 4 cells holding windows that also hold an inlier
    log_nfa: float            # log10 number of false alarms of the consensus (a-contrario; lower = stronger)
    peak: float               # median ZNCC peak of the inliers
    distinct: float           # median peak minus side lobe of the inliers
    affine_rmse: float        # pass-1 affine RMSE of the inliers (px)
    coarse_score: float = 0.0  # the hypothesis's coarse-search score (significance-weighted ZNCC)
    # pass 2 (sub-pixel): filled for the winner only
    ratio2: float = float("nan")
    n_inliers2: int = 0
    rmse2: float = float("nan")
    # the HSSCL network's own look at the aligned pair (its mid and coarse levels): mean feature similarity at
    # the alignment minus the best of the same alignment shifted by a few template widths (learned verification)
    net_margin: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def features(ev: Evidence, head: str) -> dict[str, float]:
    """The verifier's inputs for ``head`` (``candidate`` or ``final``): bounded, monotone transforms."""
    f = {
        "log_inliers": math.log1p(ev.n_inliers),
        "inlier_ratio": ev.inlier_ratio,
        "margin_over_decoy": ev.inlier_ratio - ev.decoy_ratio,
        "decoy_ratio": ev.decoy_ratio,
        "coverage": ev.coverage,
        "neg_log_nfa": min(max(-ev.log_nfa, -5.0), 60.0) / 10.0,
        "peak": ev.peak,
        "distinct": ev.distinct,
        "affine_rmse": min(ev.affine_rmse, 5.0) if math.isfinite(ev.affine_rmse) else 5.0,
        "coarse_score": ev.coarse_score,
    }
    if head == "final":
        f["ratio2"] = ev.ratio2 if math.isfinite(ev.ratio2) else 0.0
        f["log_inliers2"] = math.log1p(ev.n_inliers2)
        f["rmse2"] = min(ev.rmse2, 5.0) if math.isfinite(ev.rmse2) else 5.0
        f["net_margin"] = ev.net_margin
    return f


@lru_cache(maxsize=2)
def _network(device: str) -> Any:
    """The shipped HSSCL network (mid and coarse levels), loaded once per device; None when it cannot be."""
    from ..descriptors.hsscl import HSSCLDescriptor
    from ..errors import HSSCLError

    try:
        return HSSCLDescriptor.from_weights(None, device, levels=("mid", "coarse"))
    except HSSCLError:
        return None


def network_margin(ref, ref_valid, mov, mov_valid, model, size: int = 160, step: int = 6) -> float:
    """How much better the network's mid/coarse features agree at the alignment ``model`` (reference px ->
    moving px) than at the same alignment moved by ``step`` reduced pixels in 8 directions (the images reduced
    so that their larger side is about ``size`` px). Shapes: (1, 1, H, W) images and bool masks. 0 when the
    network is not available or nothing overlaps."""
    import torch

    from .fine import warp_to_reference
    from .sampling import downsample

    net = _network(str(ref.device))
    if net is None:
        return 0.0
    H, W = ref.shape[-2:]
    f = max(1.0, max(H, W) / size)
    r, rv = downsample(ref, f), downsample(ref_valid.float(), f) > 0.99
    fm = max(1.0, max(mov.shape[-2:]) / size)
    m, mv = downsample(mov, fm), downsample(mov_valid.float(), fm) > 0.99
    h, w = r.shape[-2:]
    sx, sy = W / w, H / h
    msx, msy = mov.shape[-1] / m.shape[-1], mov.shape[-2] / m.shape[-2]

    def reduced(xy):
        full = model(np.asarray(xy) * [sx, sy])
        return full / [msx, msy]

    wimg, wval = warp_to_reference(m, mv, reduced, h, w, step)  # type: ignore[arg-type]  # any callable xy -> xy
    with torch.no_grad():
        dr = net(r, rv)
        dm = net(wimg, wval)
    sims = {}
    for dy in (-step, 0, step):
        for dx in (-step, 0, step):
            win = dm[..., step + dy:step + dy + h, step + dx:step + dx + w]
            vv = rv & wval[..., step + dy:step + dy + h, step + dx:step + dx + w]
            n = float(vv.sum())
            if n < 0.2 * h * w:
                continue
            sims[(dx, dy)] = float(((dr * win).sum(1, keepdim=True) * vv).sum()) / n
    if (0, 0) not in sims or len(sims) < 2:
        return 0.0
    return sims[(0, 0)] - max(v for k, v in sims.items() if k != (0, 0))


def log_nfa(n_windows: int, n_inliers: int, search_radius_px: float, n_tests: int) -> float:
    """log10 of the expected number of consensus sets at least this large among ``n_tests`` hypotheses if
    every window's peak fell anywhere in its search window by chance (a-contrario; Moisan & Stival 2004):
    a chance peak lands within INLIER_PX of a given affine with probability ``p`` = disc / search square;
    three windows fix the affine, the others must agree: ``NFA = n_tests * C(n, 3) * P[Bin(n - 3, p) >= k - 3]``.
    """
    from scipy.special import gammaln, logsumexp  # (scipy.stats would add ~0.4 s to every run's start)

    n, k = int(n_windows), int(n_inliers)
    if n < 4 or k < 4:
        return 0.0
    side = 2.0 * search_radius_px + 1.0
    p = min(math.pi * INLIER_PX ** 2 / side ** 2, 0.5)
    log_c3 = (gammaln(n + 1) - gammaln(4) - gammaln(n - 2)) / math.log(10)
    # log P[Bin(N, p) >= m], N = n - 3, m = k - 3: the pmf summed in log space (no underflow)
    N, j = n - 3, np.arange(max(k - 3, 0), n - 2, dtype=np.float64)
    tail = float(logsumexp(gammaln(N + 1) - gammaln(j + 1) - gammaln(N - j + 1) + j * math.log(p)
                           + (N - j) * math.log1p(-p))) / math.log(10) if len(j) else -math.inf
    return float(math.log10(max(n_tests, 1)) + log_c3 + tail)


def coverage(ref_xy: np.ndarray, inlier: np.ndarray, width: float, height: float, cells: int = 4) -> float:
    """Share of the ``cells`` x ``cells`` grid cells over the image that hold matches and also hold an inlier."""
    if len(ref_xy) == 0:
        return 0.0
    cx = np.clip((ref_xy[:, 0] / max(width, 1e-9) * cells).astype(int), 0, cells - 1)
    cy = np.clip((ref_xy[:, 1] / max(height, 1e-9) * cells).astype(int), 0, cells - 1)
    cell = cy * cells + cx
    occupied = np.unique(cell)
    with_inlier = np.unique(cell[inlier])
    return float(len(with_inlier) / max(len(occupied), 1))


@dataclass(frozen=True)
class Head:
    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def probability(self, f: dict[str, float]) -> float:
        x = (np.array([f[n] for n in self.names]) - np.array(self.mean)) / np.array(self.std)
        z = float(self.intercept + x @ np.array(self.coef))
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Head:
        return cls(**{f.name: (tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name])  # type: ignore[arg-type]
                      for f in fields(cls)})


@dataclass(frozen=True)
class Verifier:
    name: str
    candidate: Head
    final: Head
    threshold: float          # the default decision threshold on the final head's confidence

    @classmethod
    def load(cls, path: str | Path) -> Verifier:
        from ..errors import WeightsError

        try:
            d = json.loads(Path(path).read_text())
            return cls(d["name"], Head.from_dict(d["candidate"]), Head.from_dict(d["final"]), float(d["threshold"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"The verifier file '{path}' is missing or damaged ({exc}).",
                               "Reinstall the plugin, or run the verifier's calibration again "
                               "(python -m hsscl.engine.train.verifier).") from exc


@lru_cache(maxsize=4)
def load_verifier(path: str | None = None) -> Verifier | None:
    """The verifier in ``path``, or the shipped one named ``verifier`` in the model registry (its sha256
    checked); None when the registry names none (a verifier being fitted: the heuristic below judges then)."""
    if path:
        return Verifier.load(path)
    from ..errors import WeightsError
    from ..network.registry import MODELS_DIR, read_registry, sha256

    entry = read_registry().get("models", {}).get("verifier")
    if entry is None:
        return None
    p = MODELS_DIR / entry["file"]
    if not p.exists():
        raise WeightsError(f"The shipped verifier '{entry['file']}' is missing.", "Reinstall the plugin.")
    if sha256(p) != entry["sha256"]:
        raise WeightsError(f"The shipped verifier '{entry['file']}' is damaged (checksum mismatch).",
                           "Reinstall the plugin.")
    return Verifier.load(p)


def heuristic(ev: Evidence, head: str) -> float:
    """A hand-set score in [0, 1] used only before a verifier is fitted (calibration runs): the former guard's
    evidence (agreement ratio above the decoy's, and enough agreeing windows)."""
    margin = ev.inlier_ratio - 2.0 * ev.decoy_ratio - 0.05
    z = 8.0 * margin + 0.08 * (min(ev.n_inliers, 40) - 12)
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class Verdict:
    confidence: float          # probability that the alignment is within 3 px
    head: str                  # candidate | final
    evidence: Evidence
    model: str                 # the verifier that judged (name) or "heuristic"

    def to_dict(self) -> dict:
        return {"confidence": round(self.confidence, 4), "head": self.head, "verifier": self.model,
                "evidence": self.evidence.to_dict()}


HEURISTIC = "heuristic"   # pass as ``verifier`` to judge by :func:`heuristic` (while fitting a verifier)


def judge(ev: Evidence, head: str = "final", verifier: Verifier | str | None = None) -> Verdict:
    """The confidence of one hypothesis's evidence (``head``: candidate after pass 1, final after pass 2).
    ``verifier``: None = the shipped one."""
    v = verifier if verifier is not None else load_verifier()
    if v is None or isinstance(v, str):
        return Verdict(heuristic(ev, head), head, ev, "heuristic")
    h = v.candidate if head == "candidate" else v.final
    return Verdict(h.probability(features(ev, head)), head, ev, v.name)
