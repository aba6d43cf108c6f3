"""Modality-aware input stem: one shared convolution, modulated per modality (FiLM embedding).

Inputs are the single normalised channel the engine prepares (:func:`engine.preprocess.prepare`: SAR
in dB, optical luminance, the multispectral band mean, each robustly normalised). The modality
embedding (a learned scale and shift per stem channel) lets one stem serve all of them; the id
``UNKNOWN`` is trained too (modality dropout) so the network also works when the caller does not say.
"""
from __future__ import annotations

import torch
from torch import nn

MODALITIES = ("sar", "optical", "multispectral", "unknown")
UNKNOWN = MODALITIES.index("unknown")


def modality_ids(names: list[str] | tuple[str, ...], device=None) -> torch.Tensor:
    """Names ("sar", "optical", "multispectral", anything else = unknown) -> (B,) long ids."""
    return torch.tensor([MODALITIES.index(n) if n in MODALITIES else UNKNOWN for n in names],
                        dtype=torch.long, device=device)


class ModalityStem(nn.Module):
    """4x4 stride-2 convolution (pad 1), then a per-modality FiLM (scale, shift), then ReLU.

    The stride-2 stem keeps the CPU cost low (no full-resolution feature maps); output index ``j`` is
    centred on pixel coordinate ``(j + 0.5) * 2`` like every other level (see :mod:`.encoder`).

    Shapes: x (B, 1, H, W), modality (B,) long -> (B, C, H/2, W/2)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 4, stride=2, padding=1, padding_mode="replicate")
        self.scale = nn.Embedding(len(MODALITIES), channels)
        self.shift = nn.Embedding(len(MODALITIES), channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        g = self.scale(modality)[:, :, None, None]
        b = self.shift(modality)[:, :, None, None]
        return torch.relu(y * g + b)
