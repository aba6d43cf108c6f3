"""Ground truth that does not trust the tools: a raster of true coordinates.

Conventions (as the engine's): pixel coordinates are (x = column, y = row), (0, 0) = top-left corner of the
top-left pixel, a pixel centre is at (i + 0.5, j + 0.5). All 3x3 matrices act on homogeneous column vectors
``[x, y, 1]``.

``M`` (the case's true mapping) maps a TARGET pixel position to the REFERENCE pixel position that shows the
same ground. The truth raster lives on the target grid; its two float32 bands hold ``M(p)`` at each target
pixel centre ``p``. A tool's correction is applied to the truth raster exactly as to the target image, so
it lands on the reference grid; at reference pixel ``q`` a perfect correction gives back ``q`` itself. The
error at ``q`` is ``|warped(q) - q|`` and the RMSE is taken over the pixels of the overlap where the warp
has a value.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Model = Callable[[np.ndarray], np.ndarray]  # (N, 2) reference pixel positions -> (N, 2) target positions


def similarity(width: int, height: int, dx: float, dy: float, rot_deg: float, scale: float) -> np.ndarray:
    """3x3 similarity about the image centre: rotate by ``rot_deg``, scale, then shift by (dx, dy) px."""
    cx, cy = width / 2.0, height / 2.0
    a = np.deg2rad(rot_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    A = np.array([[c, -s], [s, c]])
    t = np.array([cx, cy]) - A @ np.array([cx, cy]) + np.array([dx, dy])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = t
    return M


def apply_h(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 (affine or projective) matrix to (N, 2) points."""
    xy = np.asarray(xy, dtype=np.float64)
    v = xy @ H[:2, :2].T + H[:2, 2]
    w = xy @ H[2, :2] + H[2, 2]
    return v / w[:, None]


def pixel_centres(width: int, height: int) -> np.ndarray:
    """(H*W, 2) pixel-centre positions, row-major."""
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


# ---- non-affine truth: a similarity plus a smooth local distortion (the strong sets) ----------------------

@dataclass(frozen=True)
class Distortion:
    """A smooth displacement field in reference pixels, a function of the TARGET pixel position p:

        d(p) = norm * sum_k (wx_k, wy_k) * sin(2 pi (kx_k x + ky_k y) + phase_k)

    a few plane waves of 0.5-1.5 cycles across the image (``draw``), scaled so that the largest |d| over the
    target's pixel centres is ``amp`` px. Analytic, so the truth raster holds it exactly and the mapping can be
    inverted to any precision."""
    amp: float
    norm: float
    waves: tuple[tuple[float, float, float, float, float], ...]   # (kx, ky, phase, wx, wy); k in cycles / px

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = np.zeros_like(xy)
        for kx, ky, ph, wx, wy in self.waves:
            s = np.sin(2 * np.pi * (kx * xy[:, 0] + ky * xy[:, 1]) + ph)
            out[:, 0] += wx * s
            out[:, 1] += wy * s
        return self.norm * out

    def jacobian_bound(self) -> float:
        """An upper bound of |grad d| (px per px): the field's Lipschitz constant."""
        return float(self.norm * sum(2 * np.pi * np.hypot(kx, ky) * np.hypot(wx, wy)
                                     for kx, ky, _, wx, wy in self.waves))

    def bilinear_bound(self) -> float:
        """An upper bound of bilinear interpolation's error on the truth raster (px): max|d''| / 8 per axis,
        over both axes."""
        curv = self.norm * sum((2 * np.pi * np.hypot(kx, ky)) ** 2 * np.hypot(wx, wy)
                               for kx, ky, _, wx, wy in self.waves)
        return float(curv / 8 * np.sqrt(2))

    @staticmethod
    def draw(rng: np.random.Generator, width: int, height: int, max_px: float, n_waves: int = 4) -> Distortion:
        """Draw a field whose largest |d| over the target's pixel centres is uniform in [0, max_px]."""
        amp = float(rng.uniform(0, max_px))
        size = float(max(width, height))
        waves = []
        for _ in range(n_waves):
            f, a = rng.uniform(0.5, 1.5) / size, rng.uniform(0, 2 * np.pi)
            ph, w, b = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)
            waves.append((float(f * np.cos(a)), float(f * np.sin(a)), float(ph), float(w * np.cos(b)),
                          float(w * np.sin(b))))
        raw = Distortion(amp, 1.0, tuple(waves))(pixel_centres(width, height))
        peak = float(np.sqrt((raw ** 2).sum(axis=1)).max())
        return Distortion(amp, amp / peak if peak > 0 else 0.0, tuple(waves))

    def to_json(self) -> dict:
        return {"amp": self.amp, "norm": self.norm, "waves": [list(w) for w in self.waves]}

    @staticmethod
    def from_json(d: dict | None) -> Distortion | None:
        if not d:
            return None
        return Distortion(float(d["amp"]), float(d["norm"]), tuple(tuple(map(float, w)) for w in d["waves"]))


@dataclass(frozen=True)
class Mapping:
    """The true mapping target pixel -> reference pixel: ``M`` (3x3) plus an optional distortion d(p)."""
    M: np.ndarray
    distortion: Distortion | None = None

    def forward(self, xy: np.ndarray) -> np.ndarray:
        out = apply_h(self.M, xy)
        return out if self.distortion is None else out + self.distortion(xy)

    def inverse(self, q: np.ndarray, tol: float = 1e-9, max_iter: int = 200) -> np.ndarray:
        """Target positions of reference positions ``q``: fixed point p = M^-1(q - d(p)) (a contraction: |grad d|
        is under 0.5 for the fields drawn here, M^-1 scales by at most 1.12)."""
        Minv = np.linalg.inv(self.M)
        p = apply_h(Minv, q)
        if self.distortion is None:
            return p
        q = np.asarray(q, np.float64).reshape(-1, 2)
        for _ in range(max_iter):
            nxt = apply_h(Minv, q - self.distortion(p))
            step = float(np.abs(nxt - p).max()) if len(p) else 0.0
            p = nxt
            if step < tol:
                break
        return p

    def truth_array(self, width: int, height: int) -> np.ndarray:
        """(2, H, W) float32: the reference (x, y) of every target pixel centre."""
        return self.forward(pixel_centres(width, height)).T.reshape(2, height, width).astype(np.float32)


def case_mapping(case: dict) -> Mapping:
    """A case's true mapping (case.json: ``M_target_to_reference`` and, on the strong sets, the distortion)."""
    return Mapping(np.array(case["M_target_to_reference"], np.float64),
                   Distortion.from_json((case.get("transform") or {}).get("distortion")))


def truth_array(M: np.ndarray, width: int, height: int) -> np.ndarray:
    """(2, H, W) float32: the reference (x, y) of every target pixel centre."""
    return apply_h(M, pixel_centres(width, height)).T.reshape(2, height, width).astype(np.float32)


def write_truth(path: str, M: np.ndarray, width: int, height: int,
                geotransform: tuple | None = None, crs_wkt: str | None = None) -> str:
    """Write the truth raster (GeoTIFF, 2 bands float32, NaN nodata) on the target grid."""
    return write_truth_array(path, truth_array(M, width, height), geotransform, crs_wkt)


def write_truth_array(path: str, arr: np.ndarray, geotransform: tuple | None = None,
                      crs_wkt: str | None = None) -> str:
    """Write a (2, H, W) truth array (the reference (x, y) of every target pixel centre) as the truth raster."""
    from osgeo import gdal

    height, width = arr.shape[1:]
    ds = gdal.GetDriverByName("GTiff").Create(path, width, height, 2, gdal.GDT_Float32,
                                              options=["COMPRESS=DEFLATE", "PREDICTOR=3", "TILED=YES"])
    if geotransform is not None:
        ds.SetGeoTransform(tuple(geotransform))
    if crs_wkt:
        ds.SetProjection(crs_wkt)
    for b in range(2):
        band = ds.GetRasterBand(b + 1)
        band.SetNoDataValue(float("nan"))
        band.SetDescription("true_ref_x" if b == 0 else "true_ref_y")
        band.WriteArray(arr[b])
    ds.FlushCache()
    ds = None
    return path


def read_raster(path: str) -> np.ndarray:
    """(B, H, W) float32 with nodata as NaN."""
    from osgeo import gdal

    ds = gdal.Open(path)
    out = []
    for b in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(b)
        a = band.ReadAsArray().astype(np.float32)
        nd = band.GetNoDataValue()
        if nd is not None and not np.isnan(nd):
            a[a == nd] = np.nan
        out.append(a)
    return np.stack(out)


def warp_with_model(truth: np.ndarray, model: Model, ref_width: int, ref_height: int) -> np.ndarray:
    """Resample a (B, h, w) target-grid raster onto the reference grid through ``model`` (ref -> target).

    Bilinear (exact for the truth raster of an affine ``M``, which is affine in the pixel position; the raster
    is extended by one pixel by linear extrapolation so that the outer half pixel is exact too). With a smooth
    local distortion (``Distortion``, the strong sets) bilinear interpolation is off by at most
    max|d''| / 8 px, under 0.005 px for the fields drawn here (``Distortion.bilinear_bound``; checked in
    ``tests/bench/test_strong.py``); positions outside the
    target raster give NaN. This one function warps the truth for every peer that returns tie points or a
    model, so all of them are treated alike.
    """
    from scipy.ndimage import map_coordinates

    q = pixel_centres(ref_width, ref_height)
    p = np.asarray(model(q), dtype=np.float64)
    h, w = truth.shape[1:]
    ok = np.isfinite(p).all(axis=1) & (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)
    # index space of the padded raster: pixel centre (i + 0.5) is index i + 1
    ix = np.where(ok, p[:, 0], 0.5) + 0.5
    iy = np.where(ok, p[:, 1], 0.5) + 0.5
    out = np.empty((truth.shape[0], ref_height * ref_width), np.float32)
    for b in range(truth.shape[0]):
        a = np.pad(truth[b].astype(np.float64), 1, mode="reflect", reflect_type="odd")
        v = map_coordinates(a, [iy, ix], order=1, mode="nearest")
        v[~ok] = np.nan
        out[b] = v
    return out.reshape(truth.shape[0], ref_height, ref_width)


def eval_mask(M: np.ndarray, target_valid: np.ndarray, ref_width: int, ref_height: int) -> np.ndarray:
    """(H, W) bool on the reference grid: the overlap, i.e. pixels the true correction fills with data."""
    q = pixel_centres(ref_width, ref_height)
    return _overlap(apply_h(np.linalg.inv(M), q), target_valid, ref_width, ref_height)


def eval_mask_mapping(mapping: Mapping, target_valid: np.ndarray, ref_width: int, ref_height: int) -> np.ndarray:
    """``eval_mask`` for a non-affine true mapping (its numerical inverse)."""
    return _overlap(mapping.inverse(pixel_centres(ref_width, ref_height)), target_valid, ref_width, ref_height)


def _overlap(p: np.ndarray, target_valid: np.ndarray, ref_width: int, ref_height: int) -> np.ndarray:
    q = pixel_centres(ref_width, ref_height)
    h, w = target_valid.shape
    ix = np.floor(p[:, 0]).astype(np.int64)
    iy = np.floor(p[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ok = np.zeros(len(q), bool)
    ok[inside] = target_valid[iy[inside], ix[inside]]
    return ok.reshape(ref_height, ref_width)


@dataclass(frozen=True)
class Score:
    rmse: float          # px on the reference grid; inf when the tool failed
    mean_err: float
    max_err: float
    coverage: float      # share of the overlap where the corrected truth has a value
    failed: bool
    reason: str = ""


MIN_COVERAGE = 0.5


def score(warped: np.ndarray, mask: np.ndarray) -> Score:
    """Per-pixel error |warped(q) - q| over the overlap; a tool covering under half of it has failed."""
    _, h, w = warped.shape
    q = pixel_centres(w, h).T.reshape(2, h, w)
    err = np.sqrt(((warped.astype(np.float64) - q) ** 2).sum(axis=0))
    n = int(mask.sum())
    valid = mask & np.isfinite(err)
    cov = float(valid.sum()) / n if n else 0.0
    if n == 0 or cov < MIN_COVERAGE:
        return Score(float("inf"), float("inf"), float("inf"), cov, True,
                     f"corrected raster covers {cov:.0%} of the overlap")
    e = err[valid]
    return Score(float(np.sqrt(np.mean(e ** 2))), float(e.mean()), float(e.max()), cov, False)


def identity_rmse(M: np.ndarray, mask: np.ndarray) -> float:
    """Analytic RMSE of doing nothing: at reference pixel q the target shows M(q), so the error is |M(q) - q|."""
    h, w = mask.shape
    q = pixel_centres(w, h)
    e = np.linalg.norm(apply_h(M, q) - q, axis=1).reshape(h, w)[mask]
    return float(np.sqrt(np.mean(e ** 2)))


def identity_rmse_mapping(mapping: Mapping, mask: np.ndarray) -> float:
    """``identity_rmse`` for a non-affine true mapping."""
    h, w = mask.shape
    q = pixel_centres(w, h)
    e = np.linalg.norm(mapping.forward(q) - q, axis=1).reshape(h, w)[mask]
    return float(np.sqrt(np.mean(e ** 2)))


# ---- models from tie points (shared by all peers) -------------------------------------------------------

def fit_affine(ref_xy: np.ndarray, tgt_xy: np.ndarray) -> np.ndarray:
    """Least-squares 3x3 affine mapping reference -> target pixel positions."""
    ref_xy = np.asarray(ref_xy, np.float64)
    tgt_xy = np.asarray(tgt_xy, np.float64)
    if len(ref_xy) < 3:
        raise ValueError(f"{len(ref_xy)} tie points: an affine needs 3")
    X = np.c_[ref_xy, np.ones(len(ref_xy))]
    P, *_ = np.linalg.lstsq(X, tgt_xy, rcond=None)
    H = np.eye(3)
    H[:2, :] = P.T
    return H


def fit_shift(ref_xy: np.ndarray, tgt_xy: np.ndarray) -> np.ndarray:
    d = np.median(np.asarray(tgt_xy, np.float64) - np.asarray(ref_xy, np.float64), axis=0)
    H = np.eye(3)
    H[:2, 2] = d
    return H


def matrix_model(H: np.ndarray) -> Model:
    H = np.asarray(H, np.float64)
    return lambda xy: apply_h(H, xy)


def match_quality(M: np.ndarray | Model, ref_xy: np.ndarray, tgt_xy: np.ndarray,
                  tol: float = 3.0) -> tuple[int, float]:
    """(correct matches, precision) of tie points: correct when M(tgt) lies within ``tol`` px of ref (``M`` a
    3x3 matrix or a function of (N, 2) target positions, e.g. ``Mapping.forward``)."""
    ref_xy = np.asarray(ref_xy, np.float64).reshape(-1, 2)
    tgt_xy = np.asarray(tgt_xy, np.float64).reshape(-1, 2)
    if len(ref_xy) == 0:
        return 0, 0.0
    d = np.linalg.norm((M(tgt_xy) if callable(M) else apply_h(M, tgt_xy)) - ref_xy, axis=1)
    n = int((d <= tol).sum())
    return n, n / len(ref_xy)


def fit_affine_robust(ref_xy: np.ndarray, tgt_xy: np.ndarray, thresh: float = 3.0, iters: int = 2000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded RANSAC affine (3-point samples, ``thresh`` px in the target) and a least-squares refit on
    the inliers. Used for every peer that gives tie points but no model of its own."""
    ref_xy = np.asarray(ref_xy, np.float64).reshape(-1, 2)
    tgt_xy = np.asarray(tgt_xy, np.float64).reshape(-1, 2)
    n = len(ref_xy)
    if n < 3:
        raise ValueError(f"{n} tie points: an affine needs 3")
    rng = np.random.default_rng(seed)
    X = np.c_[ref_xy, np.ones(n)]
    best = np.ones(n, bool) if n == 3 else np.zeros(n, bool)
    for _ in range(iters if n > 3 else 0):
        s = rng.choice(n, 3, replace=False)
        try:
            P = np.linalg.solve(X[s], tgt_xy[s])
        except np.linalg.LinAlgError:
            continue
        inl = np.linalg.norm(X @ P - tgt_xy, axis=1) <= thresh
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < 3:
        raise ValueError("no affine consensus among the tie points")
    for _ in range(3):   # refit, re-select
        H = fit_affine(ref_xy[best], tgt_xy[best])
        inl = np.linalg.norm(apply_h(H, ref_xy) - tgt_xy, axis=1) <= thresh
        if inl.sum() < 3 or (inl == best).all():
            break
        best = inl
    return fit_affine(ref_xy[best], tgt_xy[best]), best
