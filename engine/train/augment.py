"""Photometric and noise augmentation of normalised single-channel crops (batched, on any device).

Per image, each with its own probability: a non-linear intensity map (monotone gamma / sigmoid or
non-monotone sinusoidal), gradient (contrast) inversion, SAR-like speckle (log-gamma noise, L looks)
on SAR images, haze (a smooth additive field with contrast loss), blur and additive noise; then the
image is re-normalised over its valid pixels like :func:`engine.modality.normalise` does.

Shapes: x (B, 1, S, S) float, valid (B, 1, S, S) bool, modality (B,) long -> (B, 1, S, S).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_LOOKS = 5  # speckle of 1 to MAX_LOOKS looks


@dataclass(frozen=True)
class AugmentConfig:
    p_nonlinear: float = 0.6
    p_invert: float = 0.25
    p_speckle: float = 0.4
    p_haze: float = 0.3
    p_blur: float = 0.25
    p_noise: float = 0.3


def _rand(n: int, gen: torch.Generator, device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(device).view(n, 1, 1, 1)


def speckle_gamma(looks: torch.Tensor, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """Multiplicative speckle of ``looks`` (B,) integer looks in [1, MAX_LOOKS]: Gamma(L, 1) / L per pixel,
    drawn from ``gen`` as the sum of L unit exponentials (exact for integer L). Returns (B, 1, h, w) on the CPU."""
    b = looks.shape[0]
    e = torch.empty(b, MAX_LOOKS, h, w).exponential_(generator=gen)
    take = torch.arange(MAX_LOOKS).view(1, -1, 1, 1) < looks.view(b, 1, 1, 1)
    return (e * take).sum(1, keepdim=True) / looks.view(b, 1, 1, 1).float()


def _renorm(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid.float()
    n = v.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    mu = (x * v).sum(dim=(1, 2, 3), keepdim=True) / n
    sd = (((x - mu) ** 2 * v).sum(dim=(1, 2, 3), keepdim=True) / n).sqrt()
    return ((x - mu) / (sd + 1e-5)).clamp(-8, 8) * v


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r = 3
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device).view(1, -1)
    k = torch.exp(-0.5 * (t / sigma.view(-1, 1).clamp(min=0.05)) ** 2)
    k = k / k.sum(1, keepdim=True)                                       # (B, 2r+1)
    b = x.shape[0]
    y = F.conv2d(F.pad(x.transpose(0, 1), (r, r, 0, 0), mode="replicate"), k.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(b, 1, -1, 1), groups=b)
    return y.transpose(0, 1)


def augment(x: torch.Tensor, valid: torch.Tensor, modality: torch.Tensor, gen: torch.Generator,
            cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    b, _, h, w = x.shape
    dev = x.device

    def pick(p: float) -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).to(dev).view(b, 1, 1, 1)

    x = x.float()
    # non-linear intensity maps on u = sigmoid(x) in (0, 1)
    u = torch.sigmoid(x)
    gamma = torch.exp(_rand(b, gen, dev, -0.8, 0.8))
    mono = u.clamp(1e-4, 1) ** gamma
    freq = _rand(b, gen, dev, 0.5, 2.0)
    amp = _rand(b, gen, dev, 0.1, 0.5)
    phase = _rand(b, gen, dev, 0, 6.283)
    nonmono = u + amp * torch.sin(6.283 * freq * u + phase)
    kind = pick(0.5)
    x = torch.where(pick(cfg.p_nonlinear), torch.where(kind, mono, nonmono), x)
    # gradient inversion (contrast reversal, as between SAR and optical over water / urban)
    x = torch.where(pick(cfg.p_invert), -x, x)
    x = _renorm(x, valid)
    # speckle: log-gamma noise of L looks (dB-domain images are normalised: scale ~ 4.34 dB / 4 dB)
    g = speckle_gamma(torch.randint(1, MAX_LOOKS + 1, (b,), generator=gen), h, w, gen).to(dev)
    speck = torch.log(g.clamp(min=1e-6)) * _rand(b, gen, dev, 0.4, 1.0)
    sar = (modality.view(b, 1, 1, 1).to(dev) == 0)
    x = torch.where(pick(cfg.p_speckle) & sar, x + speck, x)
    # haze: a smooth field with contrast loss
    field = F.interpolate(torch.randn(b, 1, 4, 4, generator=gen).to(dev), size=(h, w), mode="bicubic",
                          align_corners=False)
    hz = _rand(b, gen, dev, 0.1, 0.6)
    x = torch.where(pick(cfg.p_haze), (1 - hz) * x + hz * 1.5 * field, x)
    x = torch.where(pick(cfg.p_blur), _blur(x, _rand(b, gen, dev, 0.3, 1.3).view(-1)), x)
    noise = torch.randn(x.shape, generator=gen).to(dev) * _rand(b, gen, dev, 0.02, 0.25)
    x = torch.where(pick(cfg.p_noise), x + noise, x)
    return _renorm(x, valid)
