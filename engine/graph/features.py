"""The match graph: nodes = candidate matches with their evidence, edges = neighbours (pure torch/numpy).

Node features (``NODE_DIM`` per match), all scale-free:
    score, distinctiveness of the matching peak (as the matcher found them);
    residual (dx, dy, |d|) of the moving position from a robust global affine, in moving pixels / 4 (clipped);
    positions in both images, normalised to [-1, 1];
    descriptor ZNCC of the match at two scales (``SCALES``: 16 px every pixel, 40 px every 2nd pixel), each on
    a 3 x 3 grid of offsets of one sample (the centre value and the eight differences to it: how peaked and
    how off-centre the match is).
Edges ``j -> i``: the ``k`` nearest neighbours of ``i`` in the reference image plus its ``k_disp`` nearest in
residual displacement (similar motion), without duplicates. Edge attributes (``EDGE_DIM``): relative
reference position / spacing (2), residual difference (2) and its norm, score difference.

Shapes: features (N, NODE_DIM) float32, edge_index (2, E) long (row 0 = source j, row 1 = target i),
edge_attr (E, EDGE_DIM) float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.transforms import Affine
from ..matching.fine import FineMatches
from ..matching.sampling import sample

SCALES = ((16, 1), (40, 2))   # (template px, sampling step px): fine, and coarser context
NODE_DIM = 9 + 9 * len(SCALES)
EDGE_DIM = 6
RES_CLIP = 8.0      # px: residuals beyond this are "far" whatever their size
RES_UNIT = 4.0


@dataclass(frozen=True)
class MatchGraph:
    x: torch.Tensor            # (N, NODE_DIM)
    edge_index: torch.Tensor   # (2, E)
    edge_attr: torch.Tensor    # (E, EDGE_DIM)
    spacing: float             # median nearest-neighbour distance of the reference positions (px)
    affine: Affine             # robust global estimate: reference px -> moving px

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])


def global_affine(fm: FineMatches, inlier: np.ndarray | None = None) -> Affine:
    """Least-squares affine over ``inlier`` (the matcher's consistent set) or a robust fit of all matches."""
    if inlier is not None and int(np.sum(inlier)) >= 3:
        return Affine.fit(fm.ref_xy[inlier], fm.mov_xy[inlier])
    from ..geometry.robust import magsac

    model = magsac(fm.ref_xy, fm.mov_xy, "affine", max_threshold=2.5, prior=np.clip(fm.score, 0.05, 1)).model
    assert isinstance(model, Affine)  # magsac fits the kind it is asked for
    return model


def _patch_grid(centres: torch.Tensor, size: int, step: float, lin: torch.Tensor | None) -> torch.Tensor:
    """Positions of ``size`` x ``size`` samples, ``step`` px apart, centred on ``centres`` (N, 2), mapped by ``lin``."""
    r = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * step
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    off = torch.stack([xx, yy], -1)                                   # (S, S, 2)
    if lin is not None:
        off = off @ lin.T
    return centres.view(-1, 1, 1, 2) + off[None]


def zncc_surfaces(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
                  ref_xy: np.ndarray, mov_xy: np.ndarray, lin: np.ndarray, descriptor,
                  scales: tuple[tuple[int, int], ...] = SCALES, batch: int = 512) -> np.ndarray:
    """Descriptor ZNCC of each match at every scale, on a 3 x 3 grid of offsets of one sample.

    A scale ``(t, step)`` is a template of ``t`` px sampled every ``step`` px (coarser context is sampled
    more sparsely, which keeps the cost per scale alike). Patches are resampled around the match in both
    images (the moving one through ``lin``, the global affine's linear part) and described there.
    Shapes: images (1, 1, H, W), masks alike (bool); ref_xy, mov_xy (N, 2) -> (N, 9 * len(scales)) float32
    (-1 where there is no overlap).
    """
    n = len(ref_xy)
    out = np.full((n, 9 * len(scales)), -1.0, np.float32)
    if n == 0:
        return out
    lin_t = torch.tensor(lin, dtype=torch.float32)
    margin = 3
    for s_i, (tpx, step) in enumerate(scales):
        t = tpx // step
        size = t + 2 + 2 * margin
        for b0 in range(0, n, batch):
            rc = torch.tensor(ref_xy[b0:b0 + batch], dtype=torch.float32)
            mc = torch.tensor(mov_xy[b0:b0 + batch], dtype=torch.float32)
            nb = len(rc)
            pr, vr = _sample_patches(ref, ref_valid, _patch_grid(rc, size, step, None))
            pm, vm = _sample_patches(mov, mov_valid, _patch_grid(mc, size, step, lin_t))
            desc = descriptor(torch.cat([pr, pm]), torch.cat([vr, vm]))[:, :, margin:-margin, margin:-margin]
            val = torch.cat([vr, vm])[:, :, margin:-margin, margin:-margin]
            dr, dm, vr, vm = desc[:nb], desc[nb:], val[:nb], val[nb:]
            a, va = dr[:, :, 1:1 + t, 1:1 + t], vr[:, :, 1:1 + t, 1:1 + t]
            win = [(1 + dy, 1 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            b = torch.stack([dm[:, :, y:y + t, x:x + t] for y, x in win], 1)          # (nb, 9, C, t, t)
            m = (va[:, None] & torch.stack([vm[:, :, y:y + t, x:x + t] for y, x in win], 1)).float()
            z = _zncc_pairs(a[:, None], b, m)
            out[b0:b0 + nb, 9 * s_i:9 * s_i + 9] = z.view(nb, 9).numpy()
    return out


def _sample_patches(img: torch.Tensor, valid: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear patches of one (1, 1, H, W) image at ``grid`` (B, S, S, 2) -> (B, 1, S, S) and valid (bool).

    One grid_sample call over the stacked patches (never a per-patch copy of the whole image).
    """
    b, s = grid.shape[0], grid.shape[1]
    g = grid.reshape(1, b * s, s, 2)
    both = torch.cat([img.float(), valid.float()], 1)
    out = sample(both, g).reshape(2, b, s, s).transpose(0, 1)
    return out[:, :1].contiguous(), out[:, 1:] > 0.99


def _zncc_pairs(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Masked ZNCC over channels and pixels: a (..., C, h, w) broadcast against b, mask m (..., 1, h, w) -> (...).

    Channel sums first, so that the mask (one value per pixel) multiplies C times fewer values.
    """
    dims = (-2, -1)
    c = b.shape[-3]
    mm = m[..., 0, :, :]
    n = (mm.sum(dim=dims) * c).clamp(min=1)
    sa = (mm * a.sum(-3)).sum(dim=dims) / n
    sb = (mm * b.sum(-3)).sum(dim=dims) / n
    cov = (mm * (a * b).sum(-3)).sum(dim=dims) / n - sa * sb
    va = (mm * (a * a).sum(-3)).sum(dim=dims) / n - sa * sa
    vb = (mm * (b * b).sum(-3)).sum(dim=dims) / n - sb * sb
    z = cov / torch.sqrt(va.clamp(min=1e-12) * vb.clamp(min=1e-12))
    ok = (va > 1e-9) & (vb > 1e-9) & (mm.mean(dim=dims) > 0.5)
    return torch.where(ok, z.clamp(-1, 1), torch.full_like(z, -1.0))


def knn(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (N, min(k, N-1)) of each point's k nearest other points (Euclidean)."""
    n = points.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros((n, 0), dtype=torch.long)
    d = torch.cdist(points, points)
    d.fill_diagonal_(float("inf"))
    return d.topk(k, largest=False).indices


def node_features(fm: FineMatches, affine: Affine, surfaces: np.ndarray, ref_size: tuple[int, int],
                  mov_size: tuple[int, int]) -> np.ndarray:
    """(N, NODE_DIM) float32 node features; sizes are (width, height)."""
    res = np.clip(fm.mov_xy - affine(fm.ref_xy), -RES_CLIP, RES_CLIP) / RES_UNIT
    rpos = 2 * fm.ref_xy / np.asarray(ref_size, float) - 1
    mpos = 2 * fm.mov_xy / np.asarray(mov_size, float) - 1
    s = np.asarray(surfaces, np.float32).reshape(len(fm), -1, 9)
    centre = s[:, :, 4:5]
    rel = np.concatenate([centre, np.delete(s, 4, axis=2) - centre], axis=2).reshape(len(fm), -1)
    cols = [fm.score[:, None], np.clip(fm.distinct, 0, 1)[:, None], res, np.linalg.norm(res, axis=1)[:, None],
            rpos, mpos, rel]
    return np.concatenate(cols, axis=1).astype(np.float32)


def build_edges(ref_xy: np.ndarray, residual: np.ndarray, score: np.ndarray, k: int = 8, k_disp: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Edges j -> i (spatial kNN in the reference + kNN in residual displacement) and their attributes.

    Shapes: ref_xy (N, 2) px, residual (N, 2) moving px, score (N,) -> edge_index (2, E), edge_attr (E, 6).
    """
    n = len(ref_xy)
    p = torch.tensor(ref_xy, dtype=torch.float32)
    r = torch.tensor(np.clip(residual, -RES_CLIP, RES_CLIP), dtype=torch.float32)
    if n < 2:
        return torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, EDGE_DIM)), 1.0
    nn_sp = knn(p, k)
    d1 = (p[nn_sp[:, 0]] - p).norm(dim=1)
    spacing = float(d1.median().clamp(min=1.0))
    nbr = [nn_sp]
    if k_disp > 0:
        nbr.append(knn(r, k_disp))
    idx = torch.cat(nbr, 1)                                            # (N, K)
    tgt = torch.arange(n).view(-1, 1).expand_as(idx)
    key = torch.unique(tgt.reshape(-1) * n + idx.reshape(-1))          # dedupe (i, j) pairs
    i, j = key // n, key % n
    edge_index = torch.stack([j, i])
    dp = (p[j] - p[i]) / spacing
    dr = (r[j] - r[i]) / RES_UNIT
    sc = torch.tensor(score, dtype=torch.float32)
    attr = torch.cat([dp.clamp(-4, 4), dr, dr.norm(dim=1, keepdim=True), (sc[j] - sc[i])[:, None]], 1)
    return edge_index, attr, spacing


def build_graph(fm: FineMatches, inlier: np.ndarray | None, ref: torch.Tensor, ref_valid: torch.Tensor,
                mov: torch.Tensor, mov_valid: torch.Tensor, descriptor, k: int = 8, k_disp: int = 4) -> MatchGraph:
    """The match graph of ``fm`` (reference px, moving px) on the images the matcher saw ((1, 1, H, W))."""
    affine = global_affine(fm, inlier)
    surf = zncc_surfaces(ref, ref_valid, mov, mov_valid, fm.ref_xy, fm.mov_xy, affine.A[:, :2], descriptor)
    ref_size = (ref.shape[-1], ref.shape[-2])
    mov_size = (mov.shape[-1], mov.shape[-2])
    x = node_features(fm, affine, surf, ref_size, mov_size)
    ei, ea, spacing = build_edges(fm.ref_xy, fm.mov_xy - affine(fm.ref_xy), fm.score, k, k_disp)
    return MatchGraph(torch.from_numpy(x), ei, ea, spacing, affine)
