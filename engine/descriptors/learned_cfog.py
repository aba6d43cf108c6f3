"""CFOG on the learned pre-filter's output (``--descriptor learned-cfog``).

The structural descriptor keeps its geometry (oriented gradients, smoothed, L2-normalised); what it is
computed on is the image corrected by :class:`~..network.prefilter.PreFilter`, trained so that the
engine's template matching finds the known shift across sensors. With an untrained (identity)
pre-filter this is exactly CFOG. Shapes as :class:`~.base.DenseDescriptor`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..network.prefilter import PreFilter, load_prefilter
from .cfog import CFOG

REGISTRY_NAME = "prefilter"


class LearnedCFOG:
    name = "learned-cfog"

    def __init__(self, prefilter: PreFilter, device: str | torch.device = "cpu", info: dict | None = None,
                 cfog: CFOG | None = None) -> None:
        self.prefilter = prefilter.eval().to(device)
        self.device = torch.device(device)
        self.cfog = cfog or CFOG()
        self.info = info or {}

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, device: str = "cpu") -> LearnedCFOG:
        """The shipped pre-filter (registry, sha256-checked) or the safetensors file ``weights``."""
        if weights:
            return cls(load_prefilter(weights, device=device), device, info={"weights": str(weights)})
        from ..network.registry import REGISTRY, registry_entry

        entry = registry_entry(REGISTRY_NAME)
        model = load_prefilter(REGISTRY.parent / entry["file"], entry.get("sha256"), device)
        return cls(model, device, info={"weights": entry["file"], "version": entry.get("version")})

    @property
    def channels(self) -> int:
        return self.cfog.channels

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        x = images.float().to(self.device)
        v = None if valid is None else valid.to(self.device)
        if v is not None:
            x = x * v.float()
        return self.cfog(self.prefilter(x), v).to(images.device)
