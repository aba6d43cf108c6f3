"""Block-wise adaptive denoising of one channel before description and matching.

The image is cut into ``block`` x ``block`` tiles only to *estimate* the noise: one number per tile.
That block map is interpolated bilinearly (block centres as nodes) into a smooth per-pixel noise map,
and one spatially varying filter runs over the whole image, so there are no seams at tile borders.

* SAR (multiplicative speckle), in the linear domain (dB input is converted and converted back):
  per block the equivalent number of looks ENL = 1 / CV^2 from the coefficient of variation of the
  most homogeneous ``window`` x ``window`` windows (the ``HOMOGENEOUS_QUANTILE`` quantile of the local
  CV). The Lee filter then uses the block's speckle CV, Cu = 1/sqrt(ENL): ``out = m + k (I - m)`` with
  ``k = var_x / var``, ``var_x = (var - m^2 Cu^2) / (1 + Cu^2)``. Lower ENL -> larger Cu -> stronger
  smoothing. Where the window straddles an edge (CV^2 > 2 Cu^2) the statistics come from the most
  homogeneous of 8 edge-aligned sub-windows (halves and quadrants; refined-Lee idea), so the pixel is
  smoothed along its own side of the edge; point targets keep k -> 1. Blocks whose ENL is already >= ``ENL_CLEAN`` (multi-looked or filtered data) are
  left alone.
* optical / multispectral (additive noise): per block the noise sigma is Immerkaer's estimate made
  robust: the 25 % quantile of ``|I * N|`` (N: the 3x3 Laplacian-difference mask, sum of squares 36)
  divided by ``0.3186 * 6`` (its value for pure Gaussian noise), so texture and edges, which fill the
  upper quantiles, hardly bias it. Where sigma is at least
  ``OPTICAL_NOISE_REL`` of the image's 1-99 % range the block is filtered by an adaptive Wiener
  filter (the additive counterpart of Lee: ``k = max(var - sigma^2, 0) / var``), which smooths flat
  noisy areas and keeps edges. Clean blocks get sigma = 0, i.e. no change at all.

Only numpy/scipy; the input is never modified. Invalid pixels keep their input values and are filled
(normalised convolution) only internally so that they do not bleed into the statistics.

Shapes:
    image: (H, W) float; valid: (H, W) bool; noise_map, filtered_blocks: (ceil(H/block), ceil(W/block)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

#: Quantile of the local CV in a block that stands for its homogeneous areas.
HOMOGENEOUS_QUANTILE = 0.2
#: Blocks with an ENL at or above this are considered clean (no despeckling).
ENL_CLEAN = 40.0
#: Cap of the ENL estimate (nearly constant blocks).
ENL_MAX = 1e4
#: Optical blocks are filtered when noise sigma >= this fraction of the image's 1-99 % range.
OPTICAL_NOISE_REL = 0.02
#: Fewest usable samples (fraction of a block) for a block estimate.
MIN_BLOCK_FRACTION = 0.1

_LAPLACE_DIFF = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


@dataclass(frozen=True)
class DenoiseResult:
    """Output of :func:`denoise`.

    ``image``: (H, W) float32 in the input's domain (dB stays dB). ``noise_map``: per-block noise
    before filtering (SAR: ENL; optical: sigma in input units; NaN where a block had too few valid
    pixels). ``filtered_blocks``: blocks that were filtered. ``stats``: summary, with ``method``,
    ``noise_measure`` ("enl" | "sigma"), ``before`` / ``after`` (mean block ENL, or median block sigma),
    ``fraction_filtered``, ``block``, ``window``.
    """

    image: np.ndarray
    noise_map: np.ndarray
    filtered_blocks: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- helpers
def _fill_invalid(image: np.ndarray, valid: np.ndarray, size: int = 9) -> np.ndarray:
    """Invalid pixels replaced by the local mean of valid ones (normalised convolution), else the median."""
    img = np.where(valid, image, 0.0)
    if valid.all():
        return img
    w = ndi.uniform_filter(valid.astype(np.float64), size)
    s = ndi.uniform_filter(img, size)
    fill = np.where(w > 1e-6, s / np.maximum(w, 1e-6), np.median(image[valid]) if valid.any() else 0.0)
    return np.where(valid, img, fill)


def _local_moments(img: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and variance (float32 filtering: callers scale their data to about unit level)."""
    x = img.astype(np.float32)
    mean = ndi.uniform_filter(x, window).astype(np.float64)
    var = np.maximum(ndi.uniform_filter(x * x, window) - mean * mean, 0.0)
    return mean, var


def _block_quantile(values: np.ndarray, ok: np.ndarray, block: int, q: float) -> np.ndarray:
    """Per-block ``q`` quantile of ``values`` where ``ok`` (vectorised: sort with NaN last)."""
    h, w = values.shape
    nby, nbx = -(-h // block), -(-w // block)
    pad = np.full((nby * block, nbx * block), np.nan)
    pad[:h, :w] = np.where(ok, values, np.nan)
    step = 2 if block >= 32 else 1  # every other pixel: local statistics are correlated anyway
    tiles = pad.reshape(nby, block, nbx, block)[:, ::step, :, ::step].transpose(0, 2, 1, 3)
    tiles = tiles.reshape(nby, nbx, -1)
    tiles = np.sort(tiles, axis=-1)
    count = np.sum(np.isfinite(tiles), axis=-1)
    idx = np.clip(np.floor(q * (count - 1)).astype(int), 0, tiles.shape[-1] - 1)
    out = np.take_along_axis(tiles, idx[..., None], axis=-1)[..., 0]
    out[count < MIN_BLOCK_FRACTION * tiles.shape[-1]] = np.nan
    return out


def _to_pixels(block_map: np.ndarray, shape: tuple[int, int], block: int) -> np.ndarray:
    """Bilinear interpolation of a block map (nodes at block centres) to every pixel."""
    h, w = shape
    yy = (np.arange(h) + 0.5) / block - 0.5
    xx = (np.arange(w) + 0.5) / block - 0.5
    iy = np.clip(yy, 0, block_map.shape[0] - 1)
    ix = np.clip(xx, 0, block_map.shape[1] - 1)
    # separable linear interpolation: each block row along x, then between block rows along y
    rows_x = np.stack([np.interp(ix, np.arange(block_map.shape[1]), r) for r in block_map])  # (nby, w)
    i0 = np.floor(iy).astype(int)
    i1 = np.minimum(i0 + 1, block_map.shape[0] - 1)
    f = (iy - i0)[:, None]
    out = rows_x[i0] * (1.0 - f) + rows_x[i1] * f
    return out


def _fill_blocks(block_map: np.ndarray, default: float) -> np.ndarray:
    """NaN blocks take the value of the nearest estimated block (``default`` when none)."""
    bad = ~np.isfinite(block_map)
    if not bad.any():
        return block_map
    if bad.all():
        return np.full_like(block_map, default)
    _, (iy, ix) = ndi.distance_transform_edt(bad, return_indices=True)
    return block_map[iy, ix]


def _check(image: np.ndarray, valid: np.ndarray | None, block: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"denoise expects one channel (rows, columns), got shape {image.shape}.")
    valid = np.ones(image.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != image.shape:
        raise InputError(f"Validity mask shape {valid.shape} does not match the image {image.shape}.")
    if block < 16:
        raise InputError(f"Denoising block size {block} is too small.", "Use 16 pixels or more.")
    if window < 3 or window % 2 == 0:
        raise InputError(f"Denoising window {window} must be odd and at least 3.")
    return image.astype(np.float64), valid & np.isfinite(image)


# --------------------------------------------------------------------------------------- estimates
def block_enl(intensity: np.ndarray, valid: np.ndarray, block: int = 64, window: int = 7) -> np.ndarray:
    """Per-block ENL (1/CV^2) of a linear SAR channel from its most homogeneous windows."""
    img = _fill_invalid(intensity, valid)
    mean, var = _local_moments(img, window)
    full = True if valid.all() else ndi.uniform_filter(valid.astype(np.float32), window) > 0.999
    ok = full & (mean > 0) & (var > 1e-12 * mean * mean)  # constant windows: no-data, saturation
    cv = np.sqrt(var) / np.where(mean > 0, mean, 1.0)
    cv_block = _block_quantile(cv, ok, block, HOMOGENEOUS_QUANTILE)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(1.0 / np.maximum(cv_block, 1e-6) ** 2, ENL_MAX)


def block_sigma(image: np.ndarray, valid: np.ndarray, block: int = 64) -> np.ndarray:
    """Per-block additive noise sigma (robust Immerkaer estimate), in the image's units."""
    img = _fill_invalid(image, valid)
    resp = np.abs(ndi.convolve(img, _LAPLACE_DIFF, mode="reflect"))
    ok = ndi.minimum_filter(valid, 3, mode="constant", cval=False)
    # For Gaussian noise of std s the response has std 6 s, and its 25 % quantile of |.| is 0.3186 * 6 s.
    return _block_quantile(resp, ok, block, 0.25) / (0.3186 * 6.0)


# ------------------------------------------------------------------------------------------ filters
def _directional_moments(img: np.ndarray, window: int, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance, at the pixels ``where``, of the most homogeneous (lowest CV) of 8 sub-windows.

    The sub-windows are the 4 half-windows (left, right, top, bottom) and the 4 quadrants of the
    ``window`` x ``window`` neighbourhood, all containing the centre pixel: near an edge one of them
    lies on the pixel's own side (the idea of the refined Lee / Nagao-Matsuyama filters). Box sums are
    read from integral images at the selected pixels only. Returns two 1-D arrays (one value per pixel).
    """
    h, w = img.shape
    r = window // 2
    pad = np.pad(img, r, mode="reflect")
    ii = np.zeros((h + 2 * r + 1, w + 2 * r + 1))
    ii2 = np.zeros_like(ii)
    ii[1:, 1:] = pad.cumsum(0).cumsum(1)
    ii2[1:, 1:] = (pad * pad).cumsum(0).cumsum(1)
    flat, flat2 = ii.ravel(), ii2.ravel()
    rows, cols = np.nonzero(where)
    stride = ii.shape[1]
    base = rows * stride + cols

    def box(table: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        # sum over rows p+y0..p+y1 and columns q+x0..q+x1 (inclusive) for every selected pixel (p, q)
        a, b, c, d = r + y0, r + y1 + 1, r + x0, r + x1 + 1
        return (table[base + b * stride + d] - table[base + a * stride + d]
                - table[base + b * stride + c] + table[base + a * stride + c])

    spans = [(-r, r, -r, 0), (-r, r, 0, r), (-r, 0, -r, r), (0, r, -r, r),
             (-r, 0, -r, 0), (-r, 0, 0, r), (0, r, -r, 0), (0, r, 0, r)]
    best_mean = np.zeros(rows.size)
    best_var = np.zeros(rows.size)
    best_cv = np.full(rows.size, np.inf)
    for y0, y1, x0, x1 in spans:
        n = (y1 - y0 + 1) * (x1 - x0 + 1)
        mean = box(flat, y0, y1, x0, x1) / n
        var = np.maximum(box(flat2, y0, y1, x0, x1) / n - mean * mean, 0.0)
        cv = var / np.maximum(mean * mean, 1e-30)
        take = cv < best_cv
        best_mean[take], best_var[take], best_cv[take] = mean[take], var[take], cv[take]
    return best_mean, best_var


def _adaptive(img: np.ndarray, noise_var: np.ndarray, window: int, multiplicative: bool) -> np.ndarray:
    """Lee (multiplicative, ``noise_var`` = Cu^2) or Wiener (additive, ``noise_var`` = sigma^2) filter.

    Lee is refined: where the full window is heterogeneous (CV^2 > 2 Cu^2, an edge or a target) the
    statistics come from the most homogeneous edge-aligned sub-window, so edges are not blurred.
    """
    mean, var = _local_moments(img, window)
    if multiplicative:
        hetero = var > 2.0 * noise_var * mean * mean
        if hetero.any():
            mean, var = mean.copy(), var.copy()
            mean[hetero], var[hetero] = _directional_moments(img, window, hetero)
        signal_var = (var - mean * mean * noise_var) / (1.0 + noise_var)
    else:
        signal_var = var - noise_var
    k = np.clip(signal_var, 0.0, None) / np.maximum(var, 1e-30)
    k = np.where(noise_var > 0, np.clip(k, 0.0, 1.0), 1.0)
    return mean + k * (img - mean)


def denoise(image: np.ndarray, valid: np.ndarray | None, modality: str, block: int = 64, *,
            sar_scale: str | None = "db", window: int | None = None, enl_clean: float = ENL_CLEAN) -> DenoiseResult:
    """Block-wise adaptive denoising of one channel (see the module doc for the method).

    Args:
        image: (H, W) channel as :func:`engine.modality.reduce_bands` gives it.
        valid: (H, W) validity mask (None: all pixels valid; non-finite pixels count as invalid).
        modality: "sar" | "optical" | "multispectral".
        block: side of the estimation blocks, in pixels.
        sar_scale: SAR only. "db": the channel is in dB (filtered in linear power, returned in dB);
            "linear" or None (display-scaled SAR): filtered as it is.
        window: local statistics window (default 7 for SAR, 5 for optical).
        enl_clean: SAR blocks whose ENL is at or above this are left as they are.
    """
    if modality not in ("sar", "optical", "multispectral"):
        raise InputError(f"Unknown modality '{modality}'.", "Use sar, optical or multispectral.")
    sar = modality == "sar"
    window = window or (7 if sar else 5)
    img, valid = _check(image, valid, block, window)
    shape = (int(img.shape[0]), int(img.shape[1]))  # 2-D: _check rejects anything else
    nblocks = (-(-shape[0] // block), -(-shape[1] // block))
    stats: dict[str, Any] = {"block": block, "window": window, "modality": modality}
    if not valid.any():
        return DenoiseResult(np.asarray(image, np.float32).copy(), np.full(nblocks, np.nan, np.float32),
                             np.zeros(nblocks, bool), {**stats, "method": "none", "fraction_filtered": 0.0})

    if sar:
        db = sar_scale == "db"
        lin = 10.0 ** (img / 10.0) if db else np.maximum(img, 0.0)
        lin = _fill_invalid(np.where(valid, lin, 0.0), valid)
        scale = float(np.median(lin[valid])) or 1.0  # Lee is scale-free; values near 1 keep sums exact
        lin = lin / scale
        enl = block_enl(lin, valid, block, window)
        filtered = np.isfinite(enl) & (enl < enl_clean)
        cu2_block = np.where(filtered, 1.0 / np.where(np.isfinite(enl), np.maximum(enl, 1e-3), 1.0), 0.0)
        cu2_block = np.where(np.isfinite(enl), cu2_block, np.nan)
        cu2 = _to_pixels(_fill_blocks(cu2_block, 0.0), shape, block)
        out_lin = _adaptive(lin, cu2, window, multiplicative=True)
        enl_after = block_enl(out_lin, valid, block, window)
        if db:
            out = 10.0 * np.log10(np.maximum(out_lin, 1e-3) * scale)  # floor: 30 dB below the median
        else:
            out = out_lin * scale
        noise_map = enl
        stats.update(method="refined_lee", estimator="ENL of the most homogeneous windows", noise_measure="enl", domain="db" if db else "linear",
                     before=float(np.nanmean(enl)) if np.isfinite(enl).any() else float("nan"),
                     after=float(np.nanmean(enl_after)) if np.isfinite(enl_after).any() else float("nan"))
    else:
        filled = _fill_invalid(img, valid)
        sigma = block_sigma(filled, valid, block)
        lo, hi = np.percentile(img[valid], [1, 99])
        span = max(float(hi - lo), 1e-12)
        filtered = np.isfinite(sigma) & (sigma >= OPTICAL_NOISE_REL * span)
        var_block = np.where(filtered, np.nan_to_num(sigma) ** 2, 0.0)
        var_block = np.where(np.isfinite(sigma), var_block, np.nan)
        noise_var = _to_pixels(_fill_blocks(var_block, 0.0), shape, block) / (span * span)
        if filtered.any():  # filter in units of the 1-99 % range so float32 moments stay exact
            out = _adaptive((filled - lo) / span, noise_var, window, multiplicative=False) * span + lo
        else:
            out = filled
        sigma_after = block_sigma(out, valid, block)
        noise_map = sigma
        stats.update(method="wiener" if filtered.any() else "none", estimator="robust Immerkaer (Laplacian quantile)",
                     noise_measure="sigma",
                     relative_threshold=OPTICAL_NOISE_REL, span=span,
                     before=float(np.nanmedian(sigma)) if np.isfinite(sigma).any() else float("nan"),
                     after=float(np.nanmedian(sigma_after)) if np.isfinite(sigma_after).any() else float("nan"))
    if not filtered.any():
        stats["method"] = "none"
    stats["fraction_filtered"] = float(filtered.mean())
    result = np.where(valid, out, np.asarray(image, np.float64)).astype(np.float32)
    return DenoiseResult(result, noise_map.astype(np.float32), filtered, stats)
