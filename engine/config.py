"""Typed, frozen configuration of a co-registration run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

TRANSFORMS = ("auto", "shift", "affine", "poly2", "poly3", "tps")
GRIDS = ("reference", "target")
DEVICES = ("auto", "cpu", "cuda")
MODALITIES = ("auto", "sar", "optical", "multispectral")
DESCRIPTORS = ("auto", "cfog", "hsscl", "hybrid", "learned-cfog", "hsscl-fine", "hsscl-mid", "hsscl-coarse",
               "hsscl-staged")  # hsscl-LEVEL, hsscl-staged: ablations
GRAPH_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class CoregConfig:
    """Options of one co-registration. Build with ``CoregConfig.from_overrides(**kw)`` to validate."""

    transform: str = "auto"          # auto | shift | affine | poly2 | poly3 | tps
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
    max_shift_px: float | None = None  # coarse search radius; None = min(10 % of size, 100 px), at least 40 px
    max_rotation_deg: float = 5.0
    max_scale_change: float = 0.05
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
        if not self.adapt_budget_s > 0:
            raise InputError(f"The adaptation budget must be positive, got {self.adapt_budget_s} s.")

    @classmethod
    def from_overrides(cls, **overrides: Any) -> CoregConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            from .errors import InputError

            raise InputError(f"Unknown option(s): {', '.join(sorted(unknown))}.")
        return cls(**{k: v for k, v in overrides.items() if v is not None or k in ("weights", "extent")})

    def replace(self, **changes: Any) -> CoregConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
