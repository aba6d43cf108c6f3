"""Typed, frozen configuration of a co-registration run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

TRANSFORMS = ("auto", "shift", "similarity", "affine", "poly2", "poly3", "tps")
GRIDS = ("reference", "target")
DEVICES = ("auto", "cpu", "cuda")
MODALITIES = ("auto", "sar", "optical", "multispectral")
DESCRIPTORS = ("auto", "cfog", "hsscl", "hybrid", "learned-cfog", "hsscl-fine", "hsscl-mid",
               "hsscl-coarse")  # hsscl-LEVEL: ablations
GRAPH_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class CoregConfig:
    """Options of one co-registration. Build with ``CoregConfig.from_overrides(**kw)`` to validate."""

    transform: str = "auto"          # auto | shift | similarity | affine | poly2 | poly3 | tps
    grid: str = "reference"          # reference: output on the reference grid; target: target's own grid
    device: str = "auto"             # auto | cpu | cuda
    seed: int = 0
    denoise: bool = True             # block-wise adaptive denoising before description
    descriptor: str = "auto"         # auto (current default) | one of DESCRIPTORS
    weights: str | None = None       # path of other network or pre-filter weights (safetensors)
    ref_bands: tuple[int, ...] | None = None   # 1-based band numbers; None = automatic reduction
    tgt_bands: tuple[int, ...] | None = None
    ref_modality: str = "auto"       # auto | sar | optical | multispectral
    tgt_modality: str = "auto"
    extent: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax in reference CRS
    adapt: bool = False              # on-the-fly domain adaptation to the pair
    adapt_budget_s: float = 30.0     # time budget of the adaptation steps
    graph: str = "auto"              # graph refinement of matches: auto (= off: no clear gain measured yet) | on | off
    max_shift_px: float | None = None  # coarse search radius; None = 15 % of the size, at least 50 px
    max_rotation_deg: float = 10.0     # rotation searched (degrees, (0, 180])
    max_scale_change: float = 0.10     # scale change searched (fraction, (0, 1))
    any_rotation: bool = False         # also search any rotation (always so for images without georeferencing)
    wider_search: bool = True          # a wider second search when nothing reaches the confidence threshold
    min_confidence: float | None = None  # decision threshold on the confidence; None = the verifier's default
    keep_best_guess: bool = False      # below the threshold, write the best candidate anyway (marked low-confidence)
    overwrite: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        from .errors import InputError

        def check(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"Unknown {name} '{value}'.", f"Use one of: {', '.join(allowed)}.")

        check("transform", TRANSFORMS)
        check("grid", GRIDS)
        check("device", DEVICES)
        check("ref_modality", MODALITIES)
        check("tgt_modality", MODALITIES)
        check("descriptor", DESCRIPTORS)
        check("graph", GRAPH_MODES)
        if self.max_shift_px is not None and not self.max_shift_px > 0:
            raise InputError(f"The search radius must be positive, got {self.max_shift_px} px.",
                             "Give the search radius in reference pixels, e.g. --max-shift 50, or leave it out.")
        if not 0.0 < self.max_rotation_deg <= 180.0:
            raise InputError(f"The rotation range must be in (0, 180] degrees, got {self.max_rotation_deg}.",
                             "Give the largest rotation to search in degrees, e.g. --max-rotation 15.")
        if not 0.0 < self.max_scale_change < 1.0:
            raise InputError(f"The scale range must be a fraction in (0, 1), got {self.max_scale_change}.",
                             "Give the largest scale change to search as a fraction, e.g. --max-scale 0.1 for ±10 %.")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"The minimum confidence must be in [0, 1], got {self.min_confidence}.",
                             "It is a probability, e.g. --min-confidence 0.8; leave it out for the default.")
        if not self.adapt_budget_s > 0:
            raise InputError(f"The adaptation budget must be positive, got {self.adapt_budget_s} s.")

    @classmethod
    def from_overrides(cls, **overrides: Any) -> CoregConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            from .errors import InputError

            raise InputError(f"Unknown option(s): {', '.join(sorted(unknown))}.")
        return cls(**{k: v for k, v in overrides.items()
                      if v is not None or k in ("weights", "extent", "min_confidence")})

    def replace(self, **changes: Any) -> CoregConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
