"""Descriptor heads: per level, a small projection to ``dim`` channels, L2-normalised along channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)


class DescriptorHead(nn.Module):
    """3x3 conv + ReLU + 1x1 conv, then L2 normalisation. Shapes: (B, Cin, h, w) -> (B, dim, h, w)."""

    def __init__(self, cin: int, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or cin
        self.body = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1, padding_mode="replicate"),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.body(x))


class FineHead(nn.Module):
    """Fine level (stride 2): 1x1 projections of the stride-2 features plus the upsampled projection of the
    stride-4 features (a one-step FPN, cheap at the largest resolution), then L2 normalisation.

    Shapes: f2 (B, c2, h, w), f4 (B, c4, h/2, w/2) -> (B, dim, h, w)
    """

    def __init__(self, c2: int, c4: int, dim: int) -> None:
        super().__init__()
        self.lateral = nn.Sequential(nn.Conv2d(c4, c4, 3, padding=1, padding_mode="replicate"),
                                     nn.ReLU(inplace=True), nn.Conv2d(c4, dim, 1))
        self.local = nn.Conv2d(c2, dim, 1)

    def forward(self, f2: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.lateral(f4), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return l2n(self.local(f2) + up)
