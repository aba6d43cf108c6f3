"""Sampling images at arbitrary pixel positions (GDAL corner convention) with torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample(image: torch.Tensor, xy: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` at pixel positions ``xy``.

    Shapes: image (1, C, H, W) or (N, C, H, W); xy (N, h, w, 2) as (x, y) with (0, 0) the top-left
    corner of the top-left pixel; return (N, C, h, w). Outside the image: zeros.
    """
    n = xy.shape[0]
    h_img, w_img = image.shape[-2:]
    g = torch.empty_like(xy)
    g[..., 0] = 2.0 * xy[..., 0] / w_img - 1.0
    g[..., 1] = 2.0 * xy[..., 1] / h_img - 1.0
    img = image.expand(n, -1, -1, -1) if image.shape[0] == 1 and n > 1 else image
    return F.grid_sample(img, g, mode=mode, padding_mode="zeros", align_corners=False)


def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an (h, w) grid, shape (h, w, 2) as (x, y)."""
    ys = torch.arange(h, device=device, dtype=dtype) + 0.5
    xs = torch.arange(w, device=device, dtype=dtype) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def downsample(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Anti-aliased downsampling of (B, C, H, W) by ``factor`` (>= 1)."""
    if factor <= 1.0:
        return image
    h, w = image.shape[-2:]
    size = (max(1, int(round(h / factor))), max(1, int(round(w / factor))))
    return F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
