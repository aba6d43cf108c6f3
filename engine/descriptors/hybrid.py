"""Structural + learned: CFOG channels beside the network's fine-level channels, one dense field.

The matcher's masked ZNCC correlates all channels of a template together, so concatenating the two
fields lets the learned channels add evidence where gradients alone are ambiguous (speckle, maps) while
CFOG keeps its geometry; ``weight`` scales the learned part relative to CFOG (whose per-pixel norm is
at most 1). Shapes as :class:`~.base.DenseDescriptor`.
"""
from __future__ import annotations

import torch

from .cfog import CFOG
from .hsscl import HSSCLDescriptor


class HybridDescriptor:
    name = "hybrid"

    def __init__(self, network: HSSCLDescriptor, weight: float = 0.5, cfog: CFOG | None = None) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self.cfog = cfog or CFOG()
        self.network = network
        self.weight = float(weight)
        self.device = network.device
        self.info = dict(network.info, weight=self.weight, levels=list(network.levels))

    @property
    def channels(self) -> int:
        return self.cfog.channels + self.network.channels

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        c = self.cfog(images, valid)
        n = self.network(images, valid).to(c.device)
        return torch.cat([c, self.weight * n], 1)
