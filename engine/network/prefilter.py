"""Learned pre-filter for the structural descriptor: a small residual CNN at full resolution.

``y = x + h(x)``: the engine's prepared single-channel image ``x`` plus a learned correction ``h`` (a few
dilated 3x3 convolutions, no normalisation layers, no stride, so sub-pixel positions are untouched).
The last layer starts at zero, so an untrained pre-filter is the identity and CFOG on its output is
exactly CFOG: training (:mod:`engine.train.prefilter`, the template-matching loss) can only move the
descriptor from the structural one towards what matches better across sensors, e.g. suppressing
speckle-born gradients and strengthening edges that both sensors see. About 5k parameters: cheap on a
CPU at full resolution and trainable on one.

Shapes: x (B, 1, H, W) float -> (B, 1, H, W).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError

FORMAT = "hsscl-prefilter-1"


@dataclass(frozen=True)
class PreFilterConfig:
    width: int = 16
    dilations: tuple[int, ...] = (1, 2, 4, 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PreFilterConfig:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items() if k in names}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class PreFilter(nn.Module):
    def __init__(self, config: PreFilterConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PreFilterConfig()
        c = config.width
        d0, *rest = config.dilations
        self.inp = nn.Conv2d(1, c, 3, padding=d0, dilation=d0, padding_mode="replicate")
        self.body = nn.ModuleList(nn.Conv2d(c, c, 3, padding=d, dilation=d, padding_mode="replicate") for d in rest)
        self.out = nn.Conv2d(c, 1, 1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # Conv2d(..., bias=True)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be (B, 1, H, W), got {tuple(x.shape)}")
        h = torch.relu(self.inp(x))
        for conv in self.body:
            h = h + torch.relu(conv(h))
        return x + self.out(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_prefilter(model: PreFilter, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Write the pre-filter (float32 tensors + its config) to a safetensors file; return its sha256."""
    from safetensors.torch import save_file

    from .registry import sha256

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "prefilter_config": json.dumps(model.config.to_dict())}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return sha256(path)


def is_prefilter_file(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file holding pre-filter weights (False for anything else)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a file, not safetensors: the caller's own loader reports it
        return False


def load_prefilter(path: str | Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
                   ) -> PreFilter:
    """Build the pre-filter described in the file and load it (eval mode); WeightsError on any problem."""
    from .registry import read_safetensors

    p = Path(path)
    meta, state = read_safetensors(p, expected_sha256, "pre-filter weights",
                                   ("Check the path, or use the shipped weights (no --weights).",
                                    "Reinstall the plugin.",
                                    "Give the .safetensors file written by 'hsscl train' for the pre-filter."))
    if meta.get("format") != FORMAT:
        raise WeightsError(f"'{p.name}' does not hold pre-filter weights.",
                           "Give the .safetensors file written by 'hsscl train' with \"model\": \"prefilter\".")
    try:
        model = PreFilter(PreFilterConfig.from_dict(json.loads(meta.get("prefilter_config", "{}"))))
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"The weights in '{p.name}' do not fit the pre-filter.",
                           "Use weights written by this version of 'hsscl train'.", str(exc)) from exc
    return model.eval().to(device)
