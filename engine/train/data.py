"""Training pairs from the cache: random crops, known random warps, band mixing (no GDAL needed).

A sample is two crops of one co-registered pair: ``a`` (reference side) and ``b``, the partner resampled
through a random warp ``W`` (similarity + shear + shift) around the crop centre, so that the point ``q``
of ``a`` (pixel coordinates of the crop, GDAL convention) shows the ground seen at ``p = H q`` in ``b``
with ``H = W^-1``. Both crops share a random placement (offset, zoom, 90-degree turn) in the source.

Shapes: a, b (B, 1, S, S) float32; va, vb (B, 1, S, S) bool; H (B, 2, 3) float32.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MOD_NAMES = ("sar", "optical", "multispectral")


@dataclass(frozen=True)
class WarpRange:
    rotation_deg: float = 10.0
    log_scale: float = 0.1
    shear: float = 0.05
    shift_px: float = 8.0


@dataclass
class PairBatch:
    a: torch.Tensor
    va: torch.Tensor
    b: torch.Tensor
    vb: torch.Tensor
    H: torch.Tensor            # A-crop px -> B-crop px
    mod_a: torch.Tensor        # (B,) long, 0 sar / 1 optical / 2 multispectral
    mod_b: torch.Tensor
    dom_a: torch.Tensor        # (B,) long domain (sensor/source) ids
    dom_b: torch.Tensor
    pair: torch.Tensor         # (B,) pair index in the cache

    def to(self, device) -> PairBatch:
        return PairBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _affine(theta: float, log_s: float, shear: float, tx: float, ty: float, c: float) -> np.ndarray:
    """3x3 matrix of x -> c + R S (x - c) + t (crop coordinates)."""
    co, si = math.cos(theta), math.sin(theta)
    s = math.exp(log_s)
    A = np.array([[co, -si], [si, co]]) @ np.array([[s, shear], [0.0, s]])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = np.array([c, c]) - A @ np.array([c, c]) + np.array([tx, ty])
    return M


class PairCache:
    """The training cache (.npz from :mod:`.cache`), held on ``device`` as float16 images."""

    def __init__(self, path: str | Path, split: str = "train", device: str | torch.device = "cpu",
                 max_pairs: int | None = None, exclude: tuple[str, ...] | list[str] = (),
                 val_keys: tuple[str, ...] | list[str] = (), residuals: bool = False) -> None:
        z = np.load(path, allow_pickle=False)
        self.summary = json.loads(str(z["summary"]))
        shapes, offsets = z["shapes"], z["offsets"]
        is_val = np.isin(z["pair_key"], np.asarray(list(val_keys))) if val_keys else z["split"] == 1
        sel = {"train": ~is_val, "val": is_val, "all": np.ones(len(z["split"]), bool)}[split]
        if exclude:  # whole locations kept out (e.g. those of the held-out benchmark)
            sel = sel & ~np.isin(z["pair_key"], np.asarray(list(exclude)))
        pidx = np.nonzero(sel)[0]
        if max_pairs is not None:
            pidx = pidx[:max_pairs]
        if len(pidx) == 0:
            raise ValueError(f"no {split} pairs in {path}")
        self.pairs = z["pair_index"][pidx]
        self.kinds = z["pair_kind"][pidx]
        self.sources = z["pair_source"][pidx]
        self.keys = z["pair_key"][pidx]
        self.names = z["names"]
        used = sorted(set(self.pairs.ravel().tolist()))
        # band groups: views of one S2 acquisition (same name prefix) can be mixed ("band dropout")
        prefix = {i: str(self.names[i]).rsplit(":", 1)[0] for i in range(len(self.names))}
        groups: dict[str, list[int]] = {}
        for i in range(len(self.names)):
            if int(z["modality"][i]) == 2:
                groups.setdefault(prefix[i], []).append(i)
        need = set(used)
        for i in used:
            need.update(groups.get(prefix[i], []))
        self.device = torch.device(device)
        self.images: dict[int, torch.Tensor] = {}
        self.valid: dict[int, torch.Tensor] = {}
        for i in sorted(need):
            o, (h, w) = int(offsets[i]), shapes[i]
            dn = z["pixels_dn"][o:o + h * w].reshape(h, w)
            raw = z["pixels_raw"][o:o + h * w].reshape(h, w)
            self.images[i] = torch.from_numpy(np.stack([dn, raw])).to(self.device)          # (2, h, w) f16
            self.valid[i] = torch.from_numpy(z["valid"][o:o + h * w].reshape(1, h, w).astype(np.float32)).to(self.device)
        self.group = {i: [j for j in groups.get(prefix[i], []) if j in self.images and
                          tuple(self.images[j].shape) == tuple(self.images[i].shape)] for i in need}
        self.modality = torch.from_numpy(z["modality"].astype(np.int64))
        self.domain = torch.from_numpy(z["domain"].astype(np.int64))
        self.domains = list(self.summary.get("domains", []))
        # residual misregistration of each pair (b relative to a, source px), see .residual
        self.shift = np.zeros((len(self.pairs), 2))
        self.residual_records: list[dict] = []
        if residuals:
            from .residual import mine_pair_shifts

            shifts, ok, self.residual_records = mine_pair_shifts(self)
            same_sensor = self.kinds == "band-band"
            keep = ok | same_sensor            # unverified cross-sensor pairs are left out
            self.shift = np.where(ok[:, None], shifts, 0.0)[keep]
            self.pairs, self.kinds, self.sources, self.keys = (x[keep] for x in (self.pairs, self.kinds, self.sources,
                                                                                 self.keys))
            if len(self.pairs) == 0:
                raise ValueError(f"no {split} pairs of {path} survive the residual check")
        # balance sources: weight of a pair ~ 1 / sqrt(pairs of its source)
        src, counts = np.unique(self.sources, return_counts=True)
        per = dict(zip(src, counts))
        wts = np.array([1.0 / math.sqrt(per[s]) for s in self.sources])
        self.weights = torch.tensor(wts / wts.sum(), dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.pairs)

    def _crop(self, img: torch.Tensor, valid: torch.Tensor, G: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (C, h, w) ``img`` at ``G @ (x, y, 1)`` for the crop's pixel centres -> (C, S, S), (1, S, S)."""
        h, w = img.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(size, device=img.device, dtype=torch.float32) + 0.5,
                                torch.arange(size, device=img.device, dtype=torch.float32) + 0.5, indexing="ij")
        g = torch.tensor(G[:2], dtype=torch.float32, device=img.device)
        x = g[0, 0] * xs + g[0, 1] * ys + g[0, 2]
        y = g[1, 0] * xs + g[1, 1] * ys + g[1, 2]
        grid = torch.stack([2 * x / w - 1, 2 * y / h - 1], -1)[None]
        out = F.grid_sample(img[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        v = F.grid_sample(valid[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] > 0.99
        return out, v

    def sample(self, batch: int, size: int, gen: torch.Generator, warp: WarpRange = WarpRange(),
               p_denoised: float = 0.7, p_band_mix: float = 0.3, index: list[int] | None = None) -> PairBatch:
        """Draw ``batch`` samples (crops of ``size`` px). ``index``: pairs to use instead of random ones."""
        def u(lo=0.0, hi=1.0) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=gen))

        if index is None:
            index = torch.multinomial(self.weights, batch, replacement=True, generator=gen).tolist()
        A, VA, B, VB, Hs, ma, mb, da, db = [], [], [], [], [], [], [], [], []
        for k in index:
            ia, ib = (int(v) for v in self.pairs[k])
            sx, sy = self.shift[k]
            if u() < 0.5:
                ia, ib, sx, sy = ib, ia, -sx, -sy
            h, w = self.images[ia].shape[-2:]
            zoom = max(1.0, 1.15 * size / min(h, w)) * math.exp(u(-0.15, 0.15))
            span = size / zoom
            ox, oy = u(0, max(w - span, 0)), u(0, max(h - span, 0))
            c = size / 2
            turn = _affine(math.pi / 2 * int(u(0, 4)), 0, 0, 0, 0, c)
            GA = np.array([[1 / zoom, 0, ox], [0, 1 / zoom, oy], [0, 0, 1]]) @ turn
            W = _affine(math.radians(u(-warp.rotation_deg, warp.rotation_deg)), u(-warp.log_scale, warp.log_scale),
                        u(-warp.shear, warp.shear), u(-warp.shift_px, warp.shift_px), u(-warp.shift_px, warp.shift_px), c)
            GB = np.array([[1.0, 0, sx], [0, 1.0, sy], [0, 0, 1]]) @ GA @ W   # + the pair's residual offset
            imgs = []
            for i, G in ((ia, GA), (ib, GB)):
                ch = 0 if u() < p_denoised else 1
                src = self.images[i][ch:ch + 1]
                grp = self.group.get(i, [])
                if len(grp) > 1 and u() < p_band_mix:  # band dropout: random convex mix of a random subset of bands
                    wts = torch.rand(len(grp), generator=gen) * (torch.rand(len(grp), generator=gen) < 0.6)
                    if float(wts.sum()) == 0:
                        wts[int(u(0, len(grp))) % len(grp)] = 1.0
                    wts = (wts / wts.sum()).to(self.device)
                    src = sum(wt * self.images[j][ch:ch + 1].float() for wt, j in zip(wts, grp))
                    src = (src - src.mean()) / (src.std() + 1e-6)
                imgs.append(self._crop(src, self.valid[i], G, size))
            (a, va), (b, vb) = imgs
            A.append(a)
            VA.append(va)
            B.append(b)
            VB.append(vb)
            Hs.append(np.linalg.inv(W)[:2])
            ma.append(self.modality[ia])
            mb.append(self.modality[ib])
            da.append(self.domain[ia])
            db.append(self.domain[ib])
        return PairBatch(torch.stack(A), torch.stack(VA), torch.stack(B), torch.stack(VB),
                         torch.tensor(np.stack(Hs), dtype=torch.float32, device=self.device),
                         torch.stack(ma), torch.stack(mb), torch.stack(da), torch.stack(db),
                         torch.tensor(index, dtype=torch.long))
