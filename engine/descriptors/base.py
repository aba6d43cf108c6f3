"""The dense descriptor interface: images in, per-pixel L2-normalised feature maps out."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class DenseDescriptor(Protocol):
    """A dense, modality-robust descriptor.

    Shapes:
        images: (B, 1, H, W) float32, normalised single-channel images
        valid:  (B, 1, H, W) bool or None
        return: (B, C, H, W) float32, L2-normalised along C (zero where invalid)
    """

    name: str
    channels: int

    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor: ...


def get_descriptor(name: str = "auto", weights: str | None = None, device: str = "cpu") -> DenseDescriptor:
    """Return the descriptor called ``name``; ``auto`` is the current engine default (CFOG), or the network
    when other ``weights`` are given (a user who picks weights means the network)."""
    if name == "auto" and weights:
        name = "hsscl"
    if name in ("auto", "cfog"):
        from .cfog import CFOG

        return CFOG()
    if name == "hybrid":
        from .hsscl import HSSCLDescriptor
        from .hybrid import HybridDescriptor

        return HybridDescriptor(HSSCLDescriptor.from_weights(weights, device, levels=("fine",)))
    if name == "hsscl" or name.startswith("hsscl-"):
        from .hsscl import HSSCLDescriptor

        levels = ("fine", "mid", "coarse") if name == "hsscl" else (name.split("-", 1)[1],)
        if levels[0] not in ("fine", "mid", "coarse"):
            from ..errors import InputError

            raise InputError(f"Unknown descriptor '{name}'.", "Use hsscl-fine, hsscl-mid or hsscl-coarse.")
        return HSSCLDescriptor.from_weights(weights, device, levels=levels)
    from ..errors import InputError

    raise InputError(f"Unknown descriptor '{name}'.", "Use 'auto', 'cfog', 'hsscl' (or one level: hsscl-fine, "
                     "hsscl-mid, hsscl-coarse).")
