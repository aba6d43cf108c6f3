"""The dense descriptor interface: images in, per-pixel L2-normalised feature maps out."""
from __future__ import annotations

from pathlib import Path
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

    @property
    def name(self) -> str: ...

    @property
    def channels(self) -> int: ...

    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor: ...


def second_opinion(name: str = "auto", weights: str | None = None) -> str | None:
    """The descriptor asked when ``name`` finds no reliable alignment, or None.

    Only the default (``auto`` without other weights: CFOG) has one, CFOG on the shipped learned pre-filter:
    the pre-filter changes what the images look like to CFOG, so its evidence is a second, partly independent
    look at the pair, and the same guard judges it. A descriptor the user names is used alone (the ablation
    rows of the benchmark rely on that)."""
    return "learned-cfog" if name == "auto" and not weights else None


def get_descriptor(name: str = "auto", weights: str | None = None, device: str = "cpu") -> DenseDescriptor:
    """Return the descriptor called ``name``; ``auto`` is the current engine default (CFOG), or what other
    ``weights`` are for when given (a user who picks weights means that model: the network, or the
    pre-filter of ``learned-cfog``)."""
    if name == "auto" and weights:
        from ..network.prefilter import is_prefilter_file

        name = "learned-cfog" if is_prefilter_file(weights) else "hsscl"
    if name in ("auto", "cfog"):
        from .cfog import CFOG

        return CFOG()
    if name == "learned-cfog":
        from ..network.prefilter import is_prefilter_file
        from .learned_cfog import LearnedCFOG

        if weights and Path(weights).is_file() and not is_prefilter_file(weights):
            from ..errors import WeightsError

            raise WeightsError(f"'{weights}' does not hold pre-filter weights, which 'learned-cfog' needs.",
                               "Give a file written by 'hsscl train' with \"model\": \"prefilter\", or leave out "
                               "--weights to use the shipped pre-filter.")
        return LearnedCFOG.from_weights(weights, device)
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

    raise InputError(f"Unknown descriptor '{name}'.", "Use 'auto', 'cfog', 'learned-cfog', 'hsscl', 'hybrid' "
                     "(or one level: hsscl-fine, hsscl-mid, hsscl-coarse).")
