"""Shared encoder: a small CNN with feature maps at strides 2, 4, 8 and 16 (the stem gives stride 2).

Downsampling uses 2x2 stride-2 convolutions (the stem a 4x4 stride-2 one, pad 1), so the feature at
index ``j`` of a level of stride ``s`` sits at pixel coordinate ``(j + 0.5) * s`` (GDAL convention,
``(0, 0)`` the top-left corner), which is exactly where ``F.interpolate(..., align_corners=False)`` and
``grid_sample(..., align_corners=False)`` place it: training samples and the descriptor adapter's
upsampling agree to the sub-pixel.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate"), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Shapes: x (B, C0, H/2, W/2) stem output (H, W multiples of 16)
    -> {2: (B, c1, H/2, W/2), 4: (B, c2, H/4, W/4), 8: (B, c3, H/8, W/8), 16: (B, c4, H/16, W/16)}."""

    def __init__(self, stem: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.l2 = conv_block(stem, c1)
        self.l4 = nn.Sequential(down(c1, c2), conv_block(c2, c2))
        self.l8 = nn.Sequential(down(c2, c3), conv_block(c3, c3), conv_block(c3, c3))
        self.l16 = nn.Sequential(down(c3, c4), conv_block(c4, c4), conv_block(c4, c4))
        self.widths = widths

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        f2 = self.l2(x)
        f4 = self.l4(f2)
        f8 = self.l8(f4)
        f16 = self.l16(f8)
        return {2: f2, 4: f4, 8: f8, 16: f16}
