"""Training configuration: a frozen dataclass read from a small JSON file (unknown keys are an error)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    name: str = "hsscl"
    version: str = "0.1.0"
    cache: str = ".traincache/hsscl_pairs.npz"
    seed: int = 0
    device: str = "auto"
    steps: int = 2000                 # upper bound; ``time_budget_s`` may stop earlier
    time_budget_s: float | None = None
    batch: int = 16
    crop: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    tau: float = 0.07
    points: tuple[int, int, int] = (256, 128, 64)          # positions per sample: fine, mid, coarse
    level_weights: tuple[float, float, float] = (1.0, 1.0, 0.5)
    exclusion_px: tuple[float, float, float] = (4.0, 12.0, 24.0)
    coral_weight: float = 0.5
    mining_start: float = 0.5         # fraction of training after which mined positives are used (>1: never)
    mining_max_shift_px: float = 4.0
    p_denoised: float = 0.7
    p_band_mix: float = 0.3
    p_modality_dropout: float = 0.5  # show the network "unknown" modality this often (the engine does not say)
    warp: dict[str, float] = field(default_factory=lambda: {"rotation_deg": 10.0, "log_scale": 0.1, "shear": 0.05,
                                                            "shift_px": 8.0})
    net: dict[str, Any] = field(default_factory=dict)
    val_every: int = 250
    val_batches: int = 4
    log_every: int = 20
    ckpt_every: int = 250
    amp: bool = True                 # bf16 autocast on CUDA
    init_weights: str | None = None  # start from these weights (safetensors) instead of a random network
    # level weights of the dense map the matcher uses (fine, mid, coarse), saved with the weights; None keeps
    # the network's own (a zero drops a level from matching; it is still trained by its InfoNCE term)
    dense_weights: tuple[float, float, float] | None = None
    nce_weight: float = 1.0          # the multi-level InfoNCE terms
    # template-matching loss (losses.template_loss): the engine's fine matching step, on the network's
    # dense map (tm_weight) and on the hybrid field CFOG + hybrid_weight x fine level (tm_hybrid_weight)
    tm_weight: float = 0.0
    tm_hybrid_weight: float = 0.0
    hybrid_weight: float = 0.5
    tm_template: int = 32
    tm_radius: int = 8
    tm_n: int = 8
    tm_scale: float = 20.0
    tm_label_sigma: float = 0.0      # > 0: Gaussian target over the shifts around the true one (px)
    select_on: str = "net"           # best checkpoint by held-out PCK@1 of "net" or "hybrid"
    model: str = "hsscl"             # "hsscl" (the network) or "prefilter" (the learned pre-filter of CFOG)
    prefilter: dict[str, Any] = field(default_factory=dict)   # PreFilterConfig fields
    exclude_keys: tuple[str, ...] = ()  # cache pair keys never used (training or validation): held-out locations
    val_keys: tuple[str, ...] = ()      # cache pair keys validated on instead of the cache's own split
    residuals: bool = False             # correct each pair by its verified residual offset (train.residual)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"comment"}
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        cfg = cls.from_dict(json.loads(Path(path).read_text()))
        return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
