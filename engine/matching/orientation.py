"""Rotation estimates for images that may be turned by any angle: dominant-orientation histograms.

Edges keep their direction relative to the ground whatever the sensor (a road is a road in SAR and in
optical), though not their polarity (dark-on-bright may become bright-on-dark). So each image's gradient
orientations are histogrammed modulo 180° (doubled angles, weighted by gradient magnitude), and the circular
cross-correlation of the two histograms peaks at the rotation between them, modulo 180°. Each peak gives two
rotation centres (θ and θ + 180°) around which the coarse search then looks (:mod:`.coarse`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .sampling import downsample


def orientation_histogram(img: torch.Tensor, valid: torch.Tensor, bins: int = 180, size: int = 256) -> np.ndarray:
    """Magnitude-weighted histogram of gradient orientation modulo 180° (``bins`` bins), normalised to zero
    mean and unit norm. Shapes: img, valid (1, 1, H, W)."""
    factor = max(1.0, max(img.shape[-2:]) / size)
    x = downsample(img.float(), factor)
    v = downsample(valid.float(), factor) > 0.99
    k = torch.tensor([0.25, 0.5, 0.25])
    x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :])[None, None])
    gx = x[..., 1:-1, 2:] - x[..., 1:-1, :-2]
    gy = x[..., 2:, 1:-1] - x[..., :-2, 1:-1]
    vv = v[..., 2:, 2:] & v[..., :-2, :-2] & v[..., 2:, :-2] & v[..., :-2, 2:]
    vv = vv[..., :gx.shape[-2], :gx.shape[-1]]
    mag = torch.sqrt(gx ** 2 + gy ** 2)[vv].numpy().astype(float)
    ang = torch.atan2(gy, gx)[vv].numpy().astype(float)
    if mag.size == 0:
        return np.zeros(bins)
    # robust to a few very strong edges (bright targets in SAR): weights capped at a high quantile
    w = np.minimum(mag, np.quantile(mag, 0.98) + 1e-12)
    idx = (np.mod(ang, math.pi) / math.pi * bins).astype(int) % bins
    h = np.bincount(idx, weights=w, minlength=bins)
    # circular smoothing over +-3 bins
    kk = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
    h = np.real(np.fft.ifft(np.fft.fft(h) * np.fft.fft(np.roll(np.pad(kk, (0, bins - len(kk))), -6))))
    h = h - h.mean()
    n = np.linalg.norm(h)
    return h / n if n > 0 else h


def rotation_priors(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
                    n_peaks: int = 2) -> list[tuple[float, float]]:
    """Rotation centres (degrees, in the convention of ``Affine.from_similarity`` for the model reference ->
    moving) with the histogram correlation that supports each, best first: every one of the ``n_peaks``
    strongest peaks of the circular cross-correlation gives θ and θ + 180°."""
    bins = 180
    a = orientation_histogram(ref, ref_valid, bins)
    b = orientation_histogram(mov, mov_valid, bins)
    c = np.real(np.fft.ifft(np.conj(np.fft.fft(a)) * np.fft.fft(b)))   # c[d] = sum_k a[k] b[k + d]
    order = np.argsort(-c)
    peaks: list[int] = []
    for d in order:
        if all(min(abs(d - p), bins - abs(d - p)) > 8 for p in peaks):
            peaks.append(int(d))
        if len(peaks) >= n_peaks:
            break
    out: list[tuple[float, float]] = []
    for d in peaks:
        theta = d * 180.0 / bins  # the moving image's orientations = the reference's + theta
        for t in (theta, theta + 180.0):
            out.append((float(((_sign() * t) + 180.0) % 360.0 - 180.0), float(c[d])))
    return out


def _sign() -> float:
    """+1 or -1: the sense of ``Affine.from_similarity``'s rotation relative to the image angle of atan2(gy, gx)
    with rows pointing down (checked by the test of a turned image)."""
    return 1.0
