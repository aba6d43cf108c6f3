"""One descriptor per matching stage: the network's levels used coarse to fine.

Issue 5 describes the network's matching as: the coarse level finds the correspondence under large
shifts (the matcher's global search), the mid level confirms (pass-1 verification of the candidates),
the fine level gives sub-pixel positions (pass-2 refinement). :class:`StagedDescriptor` carries one
descriptor per stage; :func:`~..matching.matcher.stage_descriptors` hands each stage its own. Called
directly (graph features, adaptation, whole-scene tiles), it is the refinement descriptor.
Shapes as :class:`~.base.DenseDescriptor`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .hsscl import HSSCLDescriptor


class StagedDescriptor:
    name = "hsscl-staged"

    def __init__(self, coarse, verify, refine) -> None:
        self.stages = {"coarse": coarse, "verify": verify, "refine": refine}
        self.device = getattr(refine, "device", torch.device("cpu"))
        self.info = dict(getattr(refine, "info", {}),
                         stages={k: getattr(d, "name", str(d)) for k, d in self.stages.items()})

    @classmethod
    def network_levels(cls, weights: str | Path | None = None, device: str = "cpu") -> StagedDescriptor:
        """The network's coarse, mid and fine levels for the three stages (one model, shared)."""
        net = HSSCLDescriptor.from_weights(weights, device)
        one = {lv: HSSCLDescriptor(net.model, device, info=net.info, levels=(lv,)) for lv in ("coarse", "mid", "fine")}
        return cls(one["coarse"], one["mid"], one["fine"])

    @property
    def refine(self):
        return self.stages["refine"]

    @property
    def channels(self) -> int:
        return int(self.refine.channels)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.refine(images, valid)
