"""The decision: which alternative wins, and whether it is good enough to deliver.

Input: the alternatives the pipeline produced for one pair (the first match, a second opinion, an adapted
match, a wider search ...), each already judged by the verify stage (:mod:`.matching.verify`) on one scale.
Output: :class:`Decision`: the most confident alternative, accepted when its confidence (the probability
that the alignment is within 3 px) reaches the threshold (the verifier's default, or ``--min-confidence``);
below it the run is refused (:class:`~.errors.NotEnoughMatchesError`, CLI exit 3) unless the user asked to
keep the best guess, in which case the outputs are written and marked low-confidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import NotEnoughMatchesError
from .matching.verify import Evidence, load_verifier

DEFAULT_THRESHOLD = 0.5   # used only when no verifier is shipped


@dataclass(frozen=True)
class Alternative:
    source: str              # e.g. "cfog", "learned-cfog (second opinion)", "cfog, wider search"
    result: Any              # MatchResult
    descriptor: Any
    extra: dict = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        return float(self.result.confidence)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    confidence: float
    threshold: float
    low_confidence: bool     # delivered below the threshold (--keep-best-guess)
    chosen: str
    why: str
    candidates: tuple[dict, ...]
    verifier_changed: bool   # the former fixed rule (decoy margin, evidence count) would have decided otherwise

    def to_dict(self) -> dict:
        return {"accepted": self.accepted, "confidence": round(self.confidence, 4), "threshold": self.threshold,
                "low_confidence": self.low_confidence, "chosen": self.chosen, "why": self.why,
                "candidates": list(self.candidates), "verifier_changed": self.verifier_changed}


def threshold(min_confidence: float | None) -> float:
    if min_confidence is not None:
        return float(min_confidence)
    v = load_verifier()
    return v.threshold if v is not None else DEFAULT_THRESHOLD


def former_rule(ev: Evidence | None) -> bool:
    """What the engine's fixed guard (before the verify stage) would have said: the best candidate's share of
    agreeing windows at least twice the decoy's + 5 points, and at least 20 agreeing windows or a 60 % majority."""
    if ev is None:
        return False
    r, n = ev.inlier_ratio, ev.n_inliers
    return n >= 6 and r >= 0.15 and r >= 2.0 * ev.decoy_ratio + 0.05 and (n >= 20 or r >= 0.6)


def decide(alternatives: list[Alternative], min_confidence: float | None = None,
           keep_best_guess: bool = False) -> tuple[Alternative, Decision]:
    """The most confident alternative and the decision on it; raises :class:`NotEnoughMatchesError` (with the
    confidence and the best candidate) when it is below the threshold and ``keep_best_guess`` is off."""
    if not alternatives:
        raise NotEnoughMatchesError("No alignment could be judged.")
    thr = threshold(min_confidence)
    best = max(alternatives, key=lambda a: a.confidence)
    conf = best.confidence
    accepted = conf >= thr
    cands = tuple({"source": a.source, "confidence": round(a.confidence, 4)} for a in alternatives)
    others = [f"{a.source} {a.confidence:.0%}" for a in alternatives if a is not best]
    why = (f"{best.source} has the highest confidence ({conf:.1%})"
           + (f" of {len(alternatives)} alternatives ({', '.join(others)})" if others else "")
           + (f", at or above the threshold {thr:.0%}" if accepted else f", below the threshold {thr:.0%}"))
    ev = best.result.verdict.evidence if best.result.verdict is not None else None
    decision = Decision(accepted, conf, thr, (not accepted) and keep_best_guess, best.source, why, cands,
                        former_rule(ev) != accepted)
    if not accepted and not keep_best_guess:
        model = best.result.diagnostics.get("pass1", {})
        err = NotEnoughMatchesError(
            f"No reliable alignment found: the best candidate ({best.source}) has a confidence of {conf:.0%}, "
            f"below the threshold of {thr:.0%}.",
            (f"Best candidate: {model.get('inliers', '?')} of {ev.n_windows} matching windows agree (a deliberately "
             f"wrong alignment: {ev.decoy_ratio:.0%} agree). " if ev else "")
            + "The images may not show the same ground, may lack distinct structure (flat, noisy or repetitive), or "
            "the misregistration may exceed the search range (--max-shift, --max-rotation, --max-scale). "
            "--keep-best-guess writes the best candidate anyway, marked low-confidence; --min-confidence moves "
            "the threshold. Alternatives tried: "
            + ", ".join(f"{a.source} ({a.confidence:.0%})" for a in alternatives) + ".")
        err.decision = decision  # type: ignore[attr-defined]
        raise err
    return best, decision
