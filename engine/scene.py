"""Whole scenes in bounded memory: a global estimate on decimated reads, then tiles matched under it.

A reference window larger than :data:`TILED_ABOVE_PX` on a side is never read at full resolution at once:

1. **Global prior.** Both images are read decimated so that the window's larger side is about
   :data:`OVERVIEW_PX` (GDAL resampling with an anti-aliasing kernel, using overviews when the files
   have them) and the usual matcher runs on them (:func:`~.matching.matcher.match_pair` with the search
   radius scaled down). An affine fitted to its matches, scaled to full resolution, is the prior.
2. **Tiles.** The window is cut into tiles of about :data:`TILE_PX`. Per tile the reference block (plus
   half a template) is read, and the target resampled onto the reference grid over the prior's image of
   the tile plus a margin covering the prior's uncertainty; template windows are matched under the prior
   within a small radius (:func:`~.matching.fine.fine_match`). Tiles with too little valid data or
   structure, or whose matches do not agree with one local affine, are skipped and say why.
3. **Merge.** Template centres come from one grid over the window and each belongs to exactly one tile's
   core, so overlapping reads never give duplicate tie points. The merged matches (match-grid pixels of
   the window, like the whole-image path) go to the shared robust fit.

Memory depends on the tile size, not on the scene (GDAL's block cache is capped while tiles are read);
time grows with the area; progress is reported per tile and cancel is checked between and inside tiles.
Coordinates: ``ref`` = pixels of the reference window; ``mov`` = pixels of the moving frame, i.e. the
match grid for georeferenced pairs (the target resampled onto the reference grid) and the target's own
pixel grid otherwise, as in :func:`~.pipeline.estimate`.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .errors import InputError, NotEnoughMatchesError
from .geometry.robust import magsac
from .geometry.transforms import Affine
from .io.raster import RasterGrid, RasterInfo, Window, read_bands
from .matching.fine import (
    FineMatches,
    collect_matches,
    cut_patches,
    grid_centres,
    sample_with_mask,
    with_mask,
)
from .matching.matcher import MatchResult, MatchSettings
from .matching.ncc import masked_zncc, subpixel_peak
from .matching.sampling import pixel_grid
from .preprocess import prepare

TILED_ABOVE_PX = 2048        # windows larger than this on a side are matched tile by tile
OVERVIEW_PX = 1024           # larger side of the decimated images of the global estimate
TILE_PX = 1024               # tile core size (templates reach half a template beyond it)
TEMPLATE_PX = 64             # template windows of the tile matching
MIN_SPACING_PX = 128         # template grid spacing (at least)
MAX_TIE_POINTS = 4000        # the spacing grows beyond this many template centres
MAX_RADIUS_PX = 32           # largest search radius around the prior
MIN_TILE_VALID = 0.2         # share of valid pixels a tile needs in both images
MIN_TILE_INLIERS = 6         # matches agreeing with one local affine that a tile needs
MIN_TILE_RATIO = 0.3         # ... as a share of its evaluated windows
GDAL_CACHE_MB = 256          # GDAL block cache while the scene is read tile by tile


def needs_tiling(window: Window) -> bool:
    """True when ``window`` is too large to be matched as one image."""
    return max(window.width, window.height) > TILED_ABOVE_PX


@contextmanager
def gdal_cache_limit(mb: int = GDAL_CACHE_MB):
    """Cap GDAL's block cache (it defaults to 5 % of the RAM) for the block; the old value is restored."""
    from osgeo import gdal

    old = gdal.GetCacheMax()
    gdal.SetCacheMax(min(old, mb * 1024 * 1024))
    try:
        yield
    finally:
        gdal.SetCacheMax(old)


@dataclass(frozen=True)
class Prior:
    model: Affine      # ref window px -> moving frame px (full resolution)
    rmse_px: float     # residual of the decimated matches about it, full-resolution px
    radius: int        # search radius of the tile matching


class ScenePlan:
    """How one large pair is matched: decimated grids, tiles, and the tile matching itself."""

    def __init__(self, ref: RasterInfo, tgt: RasterInfo, window: Window, match_grid: RasterGrid,
                 ref_bands=None, tgt_bands=None, use_denoise: bool = True, seed: int = 0) -> None:
        self.ref, self.tgt, self.window, self.match_grid = ref, tgt, window, match_grid
        self.georeferenced = ref.grid.georeferenced
        self.ref_bands, self.tgt_bands, self.use_denoise, self.seed = ref_bands, tgt_bands, use_denoise, seed
        f = max(window.width, window.height) / OVERVIEW_PX
        self.size = (max(32, round(window.width / f)), max(32, round(window.height / f)))
        self.factor = np.array([window.width / self.size[0], window.height / self.size[1]])
        if self.georeferenced:
            self.mov_size, self.mov_factor = self.size, self.factor
        else:  # the moving frame is the target's own pixel grid, decimated alike
            tw, th = tgt.grid.width, tgt.grid.height
            self.mov_size = (max(32, round(tw / f)), max(32, round(th / f)))
            self.mov_factor = np.array([tw / self.mov_size[0], th / self.mov_size[1]])
        self.max_shift_px = 0.0

    # ---------------------------------------------------------------------------- global estimate

    def _decimated_grid(self) -> RasterGrid:
        fx, fy = self.factor
        if self.georeferenced:
            gt = self.match_grid.transform
            return RasterGrid(self.size[0], self.size[1],
                              (gt[0], gt[1] * fx, gt[2] * fy, gt[3], gt[4] * fx, gt[5] * fy), self.match_grid.crs_wkt)
        w = self.window
        return RasterGrid(self.size[0], self.size[1], (w.col_off, fx, 0.0, w.row_off, 0.0, fy), None)

    def read_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference window, decimated: (B, h, w) float32 and validity."""
        with gdal_cache_limit():
            return read_bands(self.ref.path, bands=None, out_grid=self._decimated_grid())

    def read_target(self) -> tuple[np.ndarray, np.ndarray]:
        """The target decimated: on the decimated reference grid (georeferenced) or its own grid."""
        if self.georeferenced:
            grid = self._decimated_grid()
        else:
            fx, fy = self.mov_factor
            grid = RasterGrid(self.mov_size[0], self.mov_size[1], (0.0, fx, 0.0, 0.0, 0.0, fy), None)
        with gdal_cache_limit():
            return read_bands(self.tgt.path, bands=None, out_grid=grid)

    def overview_settings(self, settings: MatchSettings) -> MatchSettings:
        """Matcher settings for the decimated images (the search radius scaled down)."""
        self.max_shift_px = settings.max_shift_px
        return replace(settings, max_shift_px=max(8.0, settings.max_shift_px / float(self.factor.max())))

    def prior(self, res: MatchResult) -> Prior:
        """Full-resolution affine prior from the matcher's result on the decimated images."""
        fm = res.matches
        keep = res.inlier if res.inlier.sum() >= 3 else np.ones(len(fm), bool)
        src, dst = fm.ref_xy[keep] * self.factor, fm.mov_xy[keep] * self.mov_factor
        model = Affine.fit(src, dst)
        r = np.hypot(*(model(src) - dst).T)
        rmse = float(np.sqrt(np.mean(r ** 2))) if len(r) else float(self.factor.max())
        # the decimated matches are good to about half a decimated pixel; local departures from one
        # affine show in the residual
        radius = int(np.clip(math.ceil(3.0 * rmse + 0.5 * float(self.factor.max()) + 2.0), 6, MAX_RADIUS_PX))
        return Prior(model, rmse, radius)

    # ---------------------------------------------------------------------------------- tiles

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """Tile cores (x0, y0, x1, y1) in window pixels: an even split into cores of about TILE_PX."""
        W, H = self.window.width, self.window.height
        nx, ny = max(1, round(W / TILE_PX)), max(1, round(H / TILE_PX))
        xs = np.linspace(0, W, nx + 1).round().astype(int)
        ys = np.linspace(0, H, ny + 1).round().astype(int)
        return [(int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1])) for j in range(ny) for i in range(nx)]

    def centres(self) -> np.ndarray:
        """Template centres over the whole window (one grid; each belongs to one tile core)."""
        W, H = self.window.width, self.window.height
        spacing = max(MIN_SPACING_PX, math.sqrt(W * H / MAX_TIE_POINTS))
        return grid_centres(W, H, TEMPLATE_PX, spacing)

    def _read_tile(self, core: tuple[int, int, int, int], prior: Prior):
        """Reference block and moving block of one tile, with their offsets (window / moving frame px)."""
        x0, y0, x1, y1 = core
        pad = TEMPLATE_PX // 2 + 16  # chips take up to 16 px of context
        rx0, ry0 = x0 - pad, y0 - pad
        rwin = Window(self.window.col_off + rx0, self.window.row_off + ry0, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
        ref_data, ref_valid = read_bands(self.ref.path, None, window=rwin)
        # the moving block covers the prior's image of the reference block plus the search margin
        c = np.array([[rx0, ry0], [rx0 + rwin.width, ry0], [rx0, ry0 + rwin.height],
                      [rx0 + rwin.width, ry0 + rwin.height]], float)
        m = prior.model(c)
        margin = prior.radius + 8
        mx0, my0 = np.floor(m.min(0)).astype(int) - margin
        mx1, my1 = np.ceil(m.max(0)).astype(int) + margin
        mwin = Window(int(mx0), int(my0), int(mx1 - mx0), int(my1 - my0))
        if self.georeferenced:
            mov_data, mov_valid = read_bands(self.tgt.path, None, out_grid=self.match_grid.subgrid(mwin))
        else:
            mov_data, mov_valid = read_bands(self.tgt.path, None, window=mwin)
        return (ref_data, ref_valid, np.array([rx0, ry0], float)), (mov_data, mov_valid, np.array([mx0, my0], float))

    def match_tiles(self, res: MatchResult, descriptor, ref_modality: str, tgt_modality: str,
                    device: torch.device | str, monitor) -> MatchResult:
        """Match every tile under the prior from ``res`` (the decimated result); merged, with diagnostics."""
        t0 = time.perf_counter()
        prior = self.prior(res)
        cores = self.tiles()
        centres = self.centres()
        n = len(cores)
        parts: list[FineMatches] = []
        inliers: list[np.ndarray] = []
        tiles_diag: list[dict] = []
        with gdal_cache_limit():
            for k, core in enumerate(cores):
                monitor.report(k / n, f"tile {k + 1}/{n}")
                x0, y0, x1, y1 = core
                inside = ((centres[:, 0] >= x0) & (centres[:, 0] < x1) & (centres[:, 1] >= y0)
                          & (centres[:, 1] < y1))
                d = {"tile": k + 1, "core": [x0, y0, x1 - x0, y1 - y0], "templates": int(inside.sum())}
                tiles_diag.append(d)
                if not inside.any():
                    d["skipped"] = "no template fits in the tile"
                    continue
                with monitor.stage(k / n, (k + 1) / n, f"tile {k + 1}/{n}") as mon:
                    fm, inl, why = self._match_tile(core, centres[inside], prior, descriptor, ref_modality,
                                                    tgt_modality, device, mon, d)
                if why:
                    d["skipped"] = why
                    continue
                parts.append(fm)
                inliers.append(inl)
        used = [d for d in tiles_diag if "skipped" not in d]
        diag: dict[str, Any]
        diag = {"mode": "tiled", "overview": {"size": list(self.size), "factor": round(float(self.factor.max()), 3),
                                              "matching": res.diagnostics},
                "prior": {"model": prior.model.to_dict(), "rmse_px": round(prior.rmse_px, 3), "radius": prior.radius},
                "tiles": {"count": n, "matched": len(used), "skipped": n - len(used), "tile_px": TILE_PX,
                          "template": TEMPLATE_PX, "per_tile": tiles_diag},
                "seconds": {"overview": res.diagnostics.get("seconds"), "tiles": round(time.perf_counter() - t0, 3)}}
        total = sum(len(p) for p in parts)
        if not parts or total < 3 * MIN_TILE_INLIERS:
            raise NotEnoughMatchesError(
                f"Tile matching found too few consistent tie points ({total} in {len(used)} of {n} tiles).",
                "The images may be too different at full resolution, or show little structure; try other bands, "
                "or an extent where both images have clear features.")
        fm = FineMatches(np.concatenate([p.ref_xy for p in parts]), np.concatenate([p.mov_xy for p in parts]),
                         np.concatenate([p.score for p in parts]), np.concatenate([p.distinct for p in parts]),
                         sum(p.n_windows for p in parts))
        inlier = np.concatenate(inliers)
        aff = Affine.fit(fm.ref_xy[inlier], fm.mov_xy[inlier])
        r = np.hypot(*(aff(fm.ref_xy[inlier]) - fm.mov_xy[inlier]).T)
        diag["tiles"]["matches"] = int(len(fm))
        diag["tiles"]["tile_inliers"] = int(inlier.sum())
        return MatchResult(fm, inlier, float(np.sqrt(np.mean(r ** 2))), TEMPLATE_PX, diag)

    def _match_tile(self, core, centres: np.ndarray, prior: Prior, descriptor, ref_modality: str,
                    tgt_modality: str, device, mon, d: dict) -> tuple[FineMatches, np.ndarray, str]:
        """Matches of one tile (window / moving frame px), their local-affine inliers, or why it is skipped."""
        (rd, rv, roff), (md, mv, moff) = self._read_tile(core, prior)
        mon.check()
        d["valid"] = [round(float(rv.mean()), 3), round(float(mv.mean()), 3)]
        if rv.mean() < MIN_TILE_VALID or mv.mean() < MIN_TILE_VALID:
            return FineMatches.empty(), np.zeros(0, bool), "too little valid data"
        try:
            pr = prepare(rd, rv, self.ref.dtypes[0], self.ref.descriptions, "reference", self.ref.path,
                         ref_modality, self.ref_bands, self.use_denoise)
            mon.check()
            pt = prepare(md, mv, self.tgt.dtypes[0], self.tgt.descriptions, "target", self.tgt.path,
                         tgt_modality, self.tgt_bands, self.use_denoise)
        except InputError:  # constant or empty here
            return FineMatches.empty(), np.zeros(0, bool), "no structure (constant)"
        del rd, md
        mon.check()
        R = torch.from_numpy(pr.image)[None, None].to(device)
        RV = torch.from_numpy(pr.valid)[None, None].to(device)
        M = torch.from_numpy(pt.image)[None, None].to(device)
        MV = torch.from_numpy(pt.valid)[None, None].to(device)

        def local(xy: np.ndarray) -> np.ndarray:  # tile ref px -> moving block px, through the prior
            return prior.model(np.asarray(xy, float) + roff) - moff

        # context around each chip: CFOG's kernels reach 4 px; a network sees further
        border = 6 if getattr(descriptor, "name", "") == "cfog" else 16
        fm = chip_match(R, RV, M, MV, local, centres - roff, TEMPLATE_PX, prior.radius, descriptor,
                        border=border, monitor=mon)
        fm = FineMatches(fm.ref_xy + roff, fm.mov_xy + moff, fm.score, fm.distinct, fm.n_windows)
        d["matches"] = len(fm)
        if len(fm) < MIN_TILE_INLIERS:
            return fm, np.zeros(len(fm), bool), f"too few matches ({len(fm)} of {len(centres)} templates)"
        try:
            fit = magsac(fm.ref_xy, fm.mov_xy, "affine", max_threshold=2.5, prior=np.clip(fm.score, 0.05, 1),
                         seed=self.seed)
        except NotEnoughMatchesError:
            return fm, np.zeros(len(fm), bool), "no consistent local affine"
        ratio = fit.n_inliers / max(fm.n_windows, 1)
        d.update(inliers=fit.n_inliers, inlier_ratio=round(ratio, 3), affine_rmse=round(fit.rmse, 3))
        if fit.n_inliers < MIN_TILE_INLIERS or ratio < MIN_TILE_RATIO:
            return fm, fit.inlier, f"too few consistent matches ({fit.n_inliers} of {fm.n_windows} windows)"
        return fm, fit.inlier, ""


def chip_match(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor, model,
               centres: np.ndarray, template: int, radius: int, descriptor, batch: int = 48,
               min_valid: float = 0.7, min_search_valid: float = 0.95, border: int = 6,
               monitor=None) -> FineMatches:
    """:func:`~.matching.fine.fine_match` on chips: only the templates and their search windows are described.

    For sparse templates (a scene's tie point grid) this costs a fraction of describing the whole tile.
    ``model`` maps reference pixels to moving pixels; the moving chips are resampled through it (bilinear),
    the descriptor sees ``border`` pixels of context around each chip. Same matching as ``fine_match``:
    masked ZNCC over offsets in [-radius, radius], sub-pixel peak, search windows cut by the moving
    image's edge rejected.
    Shapes: ref, ref_valid (1,1,H,W); mov, mov_valid (1,1,H2,W2); centres (N, 2) reference pixel centres.
    """
    H, W = ref.shape[-2:]
    half = template // 2
    x0 = (centres[:, 0] - 0.5).astype(int) - half
    y0 = (centres[:, 1] - 0.5).astype(int) - half
    ok = (x0 - border >= 0) & (y0 - border >= 0) & (x0 + template + border <= W) & (y0 + template + border <= H)
    centres, x0, y0 = centres[ok], x0[ok], y0[ok]
    st, sm_ = template + 2 * border, template + 2 * radius + 2 * border
    local = pixel_grid(sm_, sm_, dtype=torch.float64).reshape(-1, 2).numpy() - (radius + border)
    mov_both = with_mask(mov, mov_valid)
    out = []
    n_windows = 0
    for i in range(0, len(centres), batch):
        xs, ys = x0[i:i + batch] - border, y0[i:i + batch] - border
        rc, rv = cut_patches((ref, ref_valid), ys, xs, st)  # (n, 1, st, st) each
        tl = np.stack([x0[i:i + batch], y0[i:i + batch]], 1).astype(float)  # template top-left corners
        pts = (tl[:, None, :] + local[None]).reshape(-1, 2)
        xy = torch.tensor(model(pts), dtype=torch.float32, device=mov.device).view(len(tl), sm_, sm_, 2)
        mc, mv = sample_with_mask(mov_both, xy)
        b = slice(border, -border)
        tpl = descriptor(rc, rv)[:, :, b, b]
        tm = rv[:, :, b, b]
        sr = descriptor(mc, mv)[:, :, b, b]
        sv = mv[:, :, b, b]
        frac = tm.float().mean(dim=(1, 2, 3))
        z, _ = masked_zncc(tpl, tm, sr, sv, min_overlap=0.6)
        off, peak, second = subpixel_peak(z, exclusion=2)
        cut = sv.float().mean(dim=(1, 2, 3)) < min_search_valid
        n_windows += int((~cut & (frac >= min_valid)).sum())
        peak = torch.where(cut | (frac < min_valid), torch.full_like(peak, -1.0), peak)
        out.append((off.double().cpu().numpy() - radius, peak.cpu().numpy(), (peak - second).cpu().numpy()))
        if monitor is not None:
            monitor.report(min(1.0, (i + batch) / len(centres)), "fine matching")
    return collect_matches(out, centres, model, n_windows)


def plan_scene(ref: RasterInfo, tgt: RasterInfo, window: Window, match_grid: RasterGrid,
               config) -> ScenePlan | None:
    """A :class:`ScenePlan` when the window is too large to match whole, else None."""
    if not needs_tiling(window):
        return None
    return ScenePlan(ref, tgt, window, match_grid, config.ref_bands, config.tgt_bands, config.denoise, config.seed)
