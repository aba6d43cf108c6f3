"""Fine matching: template windows on a grid, searched locally under the current model, sub-pixel.

The moving image is resampled once into the reference frame through the current model
(``warped(p) = mov(model(p))``) and both are described once with the dense descriptor. For each
template centre ``p`` (a pixel centre of the reference) a masked ZNCC over offsets ``d`` in
[-radius, radius] finds where the reference template sits in the warped image; the match pairs the
reference position ``p`` with the moving position ``model(p + d)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.transforms import Transform
from .ncc import fft_size, masked_zncc, prepare_templates, subpixel_peak
from .sampling import pixel_grid, sample


@dataclass(frozen=True)
class FineMatches:
    ref_xy: np.ndarray      # (N, 2) reference pixels
    mov_xy: np.ndarray      # (N, 2) moving pixels
    score: np.ndarray       # (N,) ZNCC at the peak
    distinct: np.ndarray    # (N,) peak minus best other peak
    n_windows: int = 0      # windows that could be evaluated (valid template and search window)

    def __len__(self) -> int:
        return len(self.ref_xy)

    def subset(self, keep: np.ndarray) -> FineMatches:
        return FineMatches(self.ref_xy[keep], self.mov_xy[keep], self.score[keep], self.distinct[keep],
                           self.n_windows)

    @staticmethod
    def empty() -> FineMatches:
        z = np.zeros((0, 2))
        return FineMatches(z, z, np.zeros(0), np.zeros(0))


def grid_centres(width: int, height: int, template: int, spacing: float) -> np.ndarray:
    """Template centres (pixel centres) on a regular grid, templates fully inside the image."""
    half = template // 2
    nx = max(1, int((width - template) // spacing) + 1) if width >= template else 0
    ny = max(1, int((height - template) // spacing) + 1) if height >= template else 0
    if nx == 0 or ny == 0:
        return np.zeros((0, 2))
    x0 = half + ((width - template) - (nx - 1) * spacing) / 2
    y0 = half + ((height - template) - (ny - 1) * spacing) / 2
    xs = np.floor(x0 + np.arange(nx) * spacing) + 0.5
    ys = np.floor(y0 + np.arange(ny) * spacing) + 0.5
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def warp_to_reference(mov: torch.Tensor, mov_valid: torch.Tensor, model: Transform, height: int, width: int,
                      pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mov(model(p))`` for reference pixel centres ``p`` of a grid padded by ``pad`` on every side.

    Shapes: mov (1,1,H2,W2) -> (1,1,height+2pad,width+2pad), valid alike (bool).
    """
    g = pixel_grid(height + 2 * pad, width + 2 * pad, dtype=torch.float64) - pad
    xy = model(g.reshape(-1, 2).numpy())
    xy_t = torch.tensor(xy, dtype=torch.float32, device=mov.device).view(1, height + 2 * pad, width + 2 * pad, 2)
    return sample_with_mask(with_mask(mov, mov_valid), xy_t)


def with_mask(img: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``img`` (1, C, H, W) with its validity (1, 1, H, W) as one more channel, for :func:`sample_with_mask`."""
    return torch.cat([img, valid.to(img.dtype)], 1)


def sample_with_mask(both: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An image and its validity (``both`` = :func:`with_mask`) sampled at ``xy`` in one pass; a sample is
    valid where the bilinear weight of valid pixels exceeds 0.99.

    Shapes: both (1, C+1, H, W), xy (N, h, w, 2) -> (N, C, h, w) and (N, 1, h, w) bool.
    """
    s = sample(both, xy)
    return s[:, :-1], s[:, -1:] > 0.99


def cut_patches(tensors: tuple[torch.Tensor, ...], ys: np.ndarray, xs: np.ndarray,
                size: int) -> tuple[torch.Tensor, ...]:
    """Square patches with top-left corners (xs, ys), cut from each of ``tensors`` (1, C_i, H, W) in one pass
    over the corners -> (B, C_i, size, size) each. Slices stacked: ~15x faster on the CPU than advanced
    indexing with (B, size, size) index grids, and the same values."""
    corners = list(zip(np.asarray(ys).tolist(), np.asarray(xs).tolist()))
    if not corners:
        return tuple(x.new_empty((0, x.shape[1], size, size)) for x in tensors)
    return tuple(torch.stack([x[0, :, y:y + size, x0:x0 + size] for y, x0 in corners]) for x in tensors)


def fine_match(ref_desc: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
               model: Transform, centres: np.ndarray, template: int, radius: int, descriptor,
               batch: int = 128, min_valid: float = 0.7, min_search_valid: float = 0.95,
               monitor=None, bank: dict | None = None) -> FineMatches:
    """Match templates at ``centres`` (reference pixel centres).

    Shapes: ref_desc (1,C,H,W) descriptor of the reference; ref_valid (1,1,H,W) bool;
    mov (1,1,H2,W2) moving image; mov_valid (1,1,H2,W2) bool.
    ``bank``: a dict kept by the caller across calls with the same ``ref_desc``, ``ref_valid`` and ``centres``
    (the verify stage's hypotheses and decoys): the templates' spectra are computed once and kept there.
    """
    if len(centres) == 0:
        return FineMatches.empty()
    H, W = ref_desc.shape[-2:]
    border = 3
    pad = radius + border
    warped, wvalid = warp_to_reference(mov, mov_valid, model, H, W, pad)
    d_mov = descriptor(warped, wvalid)[:, :, border:-border, border:-border]  # padded by `radius`
    wvalid = wvalid[:, :, border:-border, border:-border]
    half = template // 2
    x0 = (centres[:, 0] - 0.5).astype(int) - half
    y0 = (centres[:, 1] - 0.5).astype(int) - half
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + template <= W) & (y0 + template <= H)
    ii = np.pad(ref_valid[0, 0].cpu().numpy().astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    xa, ya = x0.clip(0, W - template), y0.clip(0, H - template)
    xb, yb = xa + template, ya + template
    frac = (ii[yb, xb] - ii[ya, xb] - ii[yb, xa] + ii[ya, xa]) / template ** 2
    ok &= frac >= min_valid
    centres, x0, y0 = centres[ok], x0[ok], y0[ok]
    s = template + 2 * radius
    # integral image of the warped target's validity: the valid share of every search window
    svalid = np.pad(wvalid[0, 0].cpu().numpy().astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    prepared = None
    if bank is not None:
        key = (template, s, len(centres))
        if key not in bank:
            (tpl_all,) = cut_patches((ref_desc,), y0, x0, template)
            bank[key] = (prepare_templates(tpl_all, fft_size(s, s)) if len(centres) else None)
        prepared = bank[key]
    out = []
    n_windows = 0
    for i in range(0, len(centres), batch):
        xs, ys = x0[i:i + batch], y0[i:i + batch]
        # a search window cut by the target's edge gives peaks that follow the edge, not the content: such
        # windows are left out before correlating (their peak is -1, as if evaluated and discarded)
        keep = svalid[ys + s, xs + s] - svalid[ys, xs + s] - svalid[ys + s, xs] + svalid[ys, xs] >= \
            min_search_valid * s * s
        n_windows += int(keep.sum())
        peak_all = np.full(len(xs), -1.0, dtype=np.float32)
        off_all = np.zeros((len(xs), 2))
        dist_all = np.zeros(len(xs), dtype=np.float32)
        if keep.any():
            tpl, tm = cut_patches((ref_desc, ref_valid), ys[keep], xs[keep], template)
            sr, sm = cut_patches((d_mov, wvalid), ys[keep], xs[keep], s)
            idx = np.flatnonzero(keep) + i
            pre = None if prepared is None else tuple(p[idx] for p in prepared)
            z, _ = masked_zncc(tpl, tm, sr, sm, min_overlap=0.6, prepared=pre)
            off, peak, second = subpixel_peak(z, exclusion=2)
            peak_all[keep] = peak.cpu().numpy()
            off_all[keep] = off.double().cpu().numpy()
            dist_all[keep] = (peak - second).cpu().numpy()
        out.append((off_all - radius, peak_all, dist_all))
        if monitor is not None:
            monitor.report(min(1.0, (i + batch) / len(centres)), "fine matching")
    return collect_matches(out, centres, model, n_windows)


def collect_matches(out: list, centres: np.ndarray, model, n_windows: int) -> FineMatches:
    """Batches of (offset - radius, peak, peak - second) per template -> the matches whose peak is valid
    (> -1), at ``model(centre + offset)`` in the moving image."""
    if not out:
        return FineMatches.empty()
    d = np.concatenate([o[0] for o in out])
    peak = np.concatenate([o[1] for o in out])
    dist = np.concatenate([o[2] for o in out])
    good = peak > -1.0
    c = centres[good]
    return FineMatches(c, model(c + d[good]), peak[good], dist[good], n_windows)
