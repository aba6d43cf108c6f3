"""Apply a :class:`~hsscl.engine.correction.Correction` to a raster with GDAL.

All bands are written with their original data type, nodata, descriptions, colour interpretation and
metadata, as a tiled, DEFLATE-compressed GeoTIFF, through a temporary file renamed at the end.

How (``grid="reference"`` and nonlinear ``grid="target"``): the model is sampled on a regular grid of
reference points ``q``; each becomes a GCP with pixel/line ``T(q)`` in the raster and X/Y the position of
``q`` in the *output pixel grid*. ``gdal.Warp`` runs with ``DST_METHOD=NO_GEOTRANSFORM`` so the GCPs
map output pixels straight to source pixels: a polynomial GCP transformer of the model's order is exact
for shift/affine/poly2/poly3 (reprojection aside), a thin-plate spline on a dense grid is used otherwise;
the GCP grid is densified until GDAL's transformer stays within ``GCP_TOLERANCE_PX`` of the model,
checked half-way between the GCPs (the warper adds at most ``TPS_ERROR_PX`` of approximation).
The output's CRS and geotransform are written afterwards; a pixel-space output claims neither.
Linear models with ``grid="target"`` need no resampling: the raster is copied with a corrected
geotransform.
"""
from __future__ import annotations

import math
import os
import traceback

import numpy as np
from osgeo import gdal

from .correction import Correction
from .errors import CancelledError, InputError, OutputError
from .geometry.transforms import Affine, Polynomial, Shift, Transform
from .io.gdal_env import gdal_exceptions
from .io.output import atomic_path, check_output_file, gdal_close_checked
from .io.raster import RasterGrid, flip_y, open_dataset, open_raster_info, same_crs, transform_points
from .progress import Monitor

RESAMPLING = {"near": "near", "nearest": "near", "bilinear": "bilinear", "cubic": "cubic",
              "cubicspline": "cubicspline", "lanczos": "lanczos", "average": "average", "mode": "mode"}
CREATION_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]
GCP_GRID = 12          # GCPs per side for polynomial models (exact anyway)
TPS_GCP_GRIDS = (24, 36, 48, 64)  # GCPs per side tried for thin-plate splines / reprojected warps
GCP_TOLERANCE_PX = 0.03  # largest deviation of GDAL's GCP transformer from the model that is accepted
TPS_ERROR_PX = 0.01    # approximation error allowed by the warper for nonlinear transformers


# -------------------------------------------------------------------------------------- geometry

def _as_affine(model: Transform) -> Affine | None:
    if isinstance(model, Affine):
        return model
    if isinstance(model, Shift):
        return Affine.from_array([[1.0, 0.0, model.t[0]], [0.0, 1.0, model.t[1]]])
    return None


def invert_points(model: Transform, tgt_xy: np.ndarray, ref_grid: RasterGrid, iterations: int = 30) -> np.ndarray:
    """Reference positions ``q`` with ``model(q) = tgt_xy`` (Newton iterations from an affine guess)."""
    p = np.asarray(tgt_xy, dtype=np.float64).reshape(-1, 2)
    aff = _as_affine(model)
    if aff is not None:
        return aff.inverse()(p)
    u, v = np.meshgrid(np.linspace(0, ref_grid.width, 9), np.linspace(0, ref_grid.height, 9))
    s = np.stack([u.ravel(), v.ravel()], 1)
    q = Affine.fit(s, model(s)).inverse()(p)
    for _ in range(iterations):
        la = model.local_affine(q)
        r = model(q) - p
        step = np.linalg.solve(la[:, :, :2], r[:, :, None])[:, :, 0]
        q = q - step
        if np.nanmax(np.abs(step), initial=0.0) < 1e-6:
            break
    return q


def _corrected_map(correction: Correction, tgt_xy: np.ndarray) -> np.ndarray:
    """Target pixels -> their corrected position: in the target CRS, or (x, -y) reference pixels."""
    ref, tgt = correction.reference, correction.target
    m = ref.pixel_to_map(invert_points(correction.model, tgt_xy, ref))
    if ref.georeferenced and tgt.georeferenced:
        return transform_points(m, ref.crs_wkt, tgt.crs_wkt)  # type: ignore[arg-type]
    return m * [1.0, -1.0]


def corrected_target_transform(correction: Correction) -> tuple[float, ...]:
    """Geotransform giving the target's own pixels their corrected position (linear models).

    In the target CRS; for pixel-space corrections it maps to (x, -y) in reference pixels (as QGIS
    shows rasters without georeferencing). Reprojection makes it a least-squares affine fit.
    """
    t = correction.target
    u, v = np.meshgrid(np.linspace(0, t.width, 11), np.linspace(0, t.height, 11))
    p = np.stack([u.ravel(), v.ravel()], 1)
    a = Affine.fit(p, _corrected_map(correction, p)).A
    return (a[0, 2], a[0, 0], a[0, 1], a[1, 2], a[1, 0], a[1, 1])


def corrected_target_grid(correction: Correction) -> RasterGrid:
    """North-up grid of the target's resolution (and CRS) covering the corrected target footprint.

    For pixel-space corrections it is expressed in reference pixels (y down, like the reference grid).
    """
    t = correction.target
    n = 64
    s = np.linspace(0.0, 1.0, n)
    border = np.concatenate([np.stack([s * t.width, 0 * s], 1), np.stack([s * t.width, 0 * s + t.height], 1),
                             np.stack([0 * s, s * t.height], 1), np.stack([0 * s + t.width, s * t.height], 1)])
    m = _corrected_map(correction, border)
    m = m[np.isfinite(m).all(axis=1)]
    geo = t.georeferenced
    rx, ry = t.resolution if geo else (1.0, 1.0)
    x0, y0 = t.transform[0], t.transform[3]
    xmin = x0 + math.floor((m[:, 0].min() - x0) / rx + 1e-9) * rx
    xmax = x0 + math.ceil((m[:, 0].max() - x0) / rx - 1e-9) * rx
    ymax = y0 + math.ceil((m[:, 1].max() - y0) / ry - 1e-9) * ry
    ymin = y0 + math.floor((m[:, 1].min() - y0) / ry + 1e-9) * ry
    w, h = int(round((xmax - xmin) / rx)), int(round((ymax - ymin) / ry))
    if geo:
        return RasterGrid(w, h, (xmin, rx, 0.0, ymax, 0.0, -ry), t.crs_wkt)
    return RasterGrid(w, h, (xmin, 1.0, 0.0, -ymax, 0.0, 1.0), None)


def _region(correction: Correction, out: RasterGrid) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi) in reference pixels of what ``out`` shows."""
    ref = correction.reference
    if correction.grid == "reference":
        return np.zeros(2), np.array([ref.width, ref.height], dtype=float)
    corners = out.corners()
    s = np.linspace(0, 1, 16)[:, None]
    edge = np.concatenate([c0 + s * (c1 - c0) for c0, c1 in zip(corners, np.roll(corners, -1, 0))])
    m = out.pixel_to_map(edge)
    q = ref.map_to_pixel(transform_points(m, out.crs_wkt, ref.crs_wkt)) if ref.georeferenced else m  # type: ignore[arg-type]
    q = q[np.isfinite(q).all(axis=1)]
    return q.min(0), q.max(0)


def _pairs(correction: Correction, out: RasterGrid, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source pixel = model(q), position of reference pixel q in ``out``'s pixel grid), finite only."""
    ref = correction.reference
    src = correction.model(q)
    m = ref.pixel_to_map(q)
    if ref.georeferenced and not same_crs(ref.crs_wkt, out.crs_wkt):
        m = transform_points(m, ref.crs_wkt, out.crs_wkt)  # type: ignore[arg-type]
    dst = out.map_to_pixel(m)
    ok = np.isfinite(dst).all(axis=1) & np.isfinite(src).all(axis=1)
    return src[ok], dst[ok]


def _lattice(lo: np.ndarray, hi: np.ndarray, n: int, margin: float, mid: bool = False) -> np.ndarray:
    pad = margin * (hi - lo) + 1.0
    a, b = lo - pad, hi + pad
    u, v = np.linspace(a[0], b[0], n), np.linspace(a[1], b[1], n)
    if mid:
        u, v = 0.5 * (u[1:] + u[:-1]), 0.5 * (v[1:] + v[:-1])
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu.ravel(), vv.ravel()], 1)


def make_gcps(correction: Correction, out: RasterGrid, n: int, margin: float = 0.1) -> list[gdal.GCP]:
    """n x n GCPs over the output's footprint (+ ``margin``): pixel/line = model(q), X/Y = q in ``out``."""
    src, dst = _pairs(correction, out, _lattice(*_region(correction, out), n, margin))
    return [gdal.GCP(float(d[0]), float(d[1]), 0.0, float(s_[0]), float(s_[1])) for s_, d in zip(src, dst)]


def gcp_error(correction: Correction, out: RasterGrid, vrt: gdal.Dataset, options: list[str], n: int,
              margin: float = 0.1) -> float:
    """Largest distance (source pixels) between GDAL's GCP transformer and the model, checked half-way
    between the GCPs inside the output grid."""
    src, dst = _pairs(correction, out, _lattice(*_region(correction, out), n, margin, mid=True))
    inside = (dst[:, 0] >= 0) & (dst[:, 0] <= out.width) & (dst[:, 1] >= 0) & (dst[:, 1] <= out.height)
    src, dst = src[inside], dst[inside]
    if len(dst) == 0:
        return 0.0
    tr = gdal.Transformer(vrt, None, [o for o in options if not o.startswith("DST_")])
    pts, ok = tr.TransformPoints(True, dst.tolist())
    got = np.asarray(pts, dtype=np.float64)[:, :2]
    ok = np.asarray(ok, dtype=bool)
    if not ok.all():
        return math.inf
    return float(np.hypot(*(got - src).T).max())


def _transformer(correction: Correction, out: RasterGrid) -> tuple[list[str], list[int], float]:
    """(transformer options, GCP grid sizes to try, error threshold) for warping with the model."""
    model = correction.model
    exact = correction.grid == "reference" or same_crs(correction.reference.crs_wkt, out.crs_wkt)
    if exact and _as_affine(model) is not None:
        return ["SRC_METHOD=GCP_POLYNOMIAL", "MAX_GCP_ORDER=1", "DST_METHOD=NO_GEOTRANSFORM"], [GCP_GRID], 0.0
    if exact and isinstance(model, Polynomial):
        return (["SRC_METHOD=GCP_POLYNOMIAL", f"MAX_GCP_ORDER={model.order}", "DST_METHOD=NO_GEOTRANSFORM"],
                [GCP_GRID], TPS_ERROR_PX)
    return ["SRC_METHOD=GCP_TPS", "DST_METHOD=NO_GEOTRANSFORM"], list(TPS_GCP_GRIDS), TPS_ERROR_PX


@gdal_exceptions()
def gcp_source(correction: Correction, ds: gdal.Dataset, out: RasterGrid,
               monitor: Monitor) -> tuple[gdal.Dataset, list[str], float]:
    """VRT of ``ds`` with GCPs reproducing the model within :data:`GCP_TOLERANCE_PX` (densified as needed).

    Returns (vrt, transformer options, warper error threshold).
    """
    options, sizes, err = _transformer(correction, out)
    vrt = gdal.Translate("", ds, format="VRT")
    for n in sizes:
        monitor.check()
        vrt.SetGCPs(make_gcps(correction, out, n), "")
        achieved = gcp_error(correction, out, vrt, options, n)
        if achieved <= GCP_TOLERANCE_PX:
            break
    monitor.log(f"GCP transformer: {n}x{n} GCPs, largest deviation from the model {achieved:.3f} px")
    return vrt, options, err


def _kernel_options(correction: Correction, out: RasterGrid) -> list[str]:
    """Plain (unwidened) kernels unless the output is clearly coarser than the source.

    GDAL widens the resampling kernel by the downsampling factor (anti-aliasing). For the near-unity
    scales of a co-registration this only blurs, so the kernel is kept as is below a factor 1.25.
    """
    ref = correction.reference
    if correction.grid == "target" and ref.georeferenced:
        return ["XSCALE=1", "YSCALE=1"]  # output pixels have the target's own size
    # output pixels are reference pixels (pixel-space "target" grids use reference pixels too)
    centre = np.array([[out.width / 2.0, out.height / 2.0]])
    q = centre if correction.grid == "reference" else out.pixel_to_map(centre)
    j = correction.model.local_affine(q)[0, :, :2]
    factor = math.sqrt(abs(float(np.linalg.det(j))))
    return ["XSCALE=1", "YSCALE=1"] if factor < 1.25 else []


# ------------------------------------------------------------------------------------------ output

def _output_nodata(ds: gdal.Dataset) -> list[float]:
    """Source nodata per band, or a chosen one: NaN for float bands, 0 otherwise."""
    out = []
    for i in range(ds.RasterCount):
        band = ds.GetRasterBand(i + 1)
        nd = band.GetNoDataValue()
        if nd is None:
            is_float = band.DataType in (gdal.GDT_Float32, gdal.GDT_Float64)
            nd = float("nan") if is_float else 0.0
        out.append(nd)
    return out


def _creation_options(dtype: int) -> list[str]:
    opts = list(CREATION_OPTIONS)
    if dtype in (gdal.GDT_Float32, gdal.GDT_Float64):
        opts.append("PREDICTOR=3")
    elif dtype not in (gdal.GDT_CInt16, gdal.GDT_CInt32, gdal.GDT_CFloat32, gdal.GDT_CFloat64):
        opts.append("PREDICTOR=2")
    return opts


def _copy_band_info(src: gdal.Dataset, dst: gdal.Dataset) -> None:
    dst.SetMetadata(src.GetMetadata())
    for i in range(src.RasterCount):
        s, d = src.GetRasterBand(i + 1), dst.GetRasterBand(i + 1)
        d.SetDescription(s.GetDescription())
        d.SetColorInterpretation(s.GetColorInterpretation())
        if s.GetColorTable() is not None:
            d.SetColorTable(s.GetColorTable())
        if s.GetMetadata():
            d.SetMetadata(s.GetMetadata())
        if s.GetScale() not in (None, 1.0) or s.GetOffset() not in (None, 0.0):
            d.SetScale(s.GetScale() or 1.0)
            d.SetOffset(s.GetOffset() or 0.0)
        if s.GetUnitType():
            d.SetUnitType(s.GetUnitType())


def _run_gdal(monitor: Monitor, call) -> None:
    """Run ``call(callback)`` (a GDAL operation) with progress reporting; cancel raises CancelledError."""
    state: dict = {}

    def cb(fraction: float, message: str, data: object) -> int:
        try:
            monitor.report(fraction, "Writing the corrected raster")
        except CancelledError as exc:
            state["cancelled"] = exc
            return 0
        return 1

    try:
        call(cb)
    except RuntimeError:
        if "cancelled" in state:
            raise state["cancelled"] from None
        raise
    if "cancelled" in state:
        raise state["cancelled"]


def _warp(correction: Correction, ds: gdal.Dataset, out: RasterGrid, tmp: str, resampling: str,
          monitor: Monitor) -> None:
    src, options, err = gcp_source(correction, ds, out, monitor)
    alpha = ds.GetRasterBand(ds.RasterCount).GetColorInterpretation() == gdal.GCI_AlphaBand and ds.RasterCount > 1
    if any(ds.GetRasterBand(i + 1).GetColorTable() is not None for i in range(ds.RasterCount)):
        resampling = "near"  # palette indices must not be interpolated
    dtype = ds.GetRasterBand(1).DataType
    for i in range(1, ds.RasterCount):
        dtype = gdal.DataTypeUnion(dtype, ds.GetRasterBand(i + 1).DataType)
    dst = gdal.GetDriverByName("GTiff").Create(tmp, out.width, out.height, ds.RasterCount, dtype,
                                               _creation_options(dtype))
    try:
        _warp_into(correction, ds, dst, src, options, err, out, alpha, resampling, monitor)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # the frames below must not keep the dataset open
        with gdal_close_checked(tmp, quiet=True):  # the first error is the one to report
            dst = None
        raise
    with gdal_close_checked(tmp):  # a failed close (e.g. a full disk) is an error, never ignored
        dst = None


def _warp_into(correction: Correction, ds: gdal.Dataset, dst: gdal.Dataset, src: gdal.Dataset, options: list[str],
               err: float, out: RasterGrid, alpha: bool, resampling: str, monitor: Monitor) -> None:
    nodata = _output_nodata(ds)
    if not alpha:
        for i, nd in enumerate(nodata):
            dst.GetRasterBand(i + 1).SetNoDataValue(nd)
    kw = {"srcAlpha": True, "dstAlpha": True} if alpha else {"dstNodata": " ".join(repr(v) for v in nodata)}
    _run_gdal(monitor, lambda cb: gdal.Warp(
        dst, src, resampleAlg=resampling, transformerOptions=options, errorThreshold=err,
        warpOptions=["INIT_DEST=NO_DATA" if not alpha else "INIT_DEST=0", "UNIFIED_SRC_NODATA=NO",
                     "NUM_THREADS=ALL_CPUS", "OPTIMIZE_SIZE=TRUE", *_kernel_options(correction, out)],
        callback=cb, **kw))
    if out.georeferenced:
        dst.SetProjection(out.crs_wkt)
        dst.SetGeoTransform(out.transform)
    elif correction.grid == "target":
        dst.SetGeoTransform(flip_y(out.transform))  # place it over the reference as QGIS shows it
    _copy_band_info(ds, dst)
    dst.FlushCache()


def _regeoreference(correction: Correction, ds: gdal.Dataset, tmp: str, monitor: Monitor) -> None:
    vrt = gdal.Translate("", ds, format="VRT")
    vrt.SetGeoTransform(corrected_target_transform(correction))
    vrt.SetProjection(correction.target.crs_wkt or "")
    dtype = ds.GetRasterBand(1).DataType
    made: dict[str, gdal.Dataset] = {}
    _run_gdal(monitor, lambda cb: made.setdefault("ds", gdal.Translate(
        tmp, vrt, format="GTiff", creationOptions=_creation_options(dtype), callback=cb)))
    with gdal_close_checked(tmp):  # a failed close (e.g. a full disk) is an error, never ignored
        made.clear()


@gdal_exceptions()
def apply_correction(correction: Correction, raster_path: str | os.PathLike, out_path: str | os.PathLike,
                     overwrite: bool = False, monitor: Monitor | None = None,
                     resampling: str = "bilinear") -> str:
    """Write ``raster_path`` (on the target's grid) corrected by ``correction`` to ``out_path``.

    ``correction.grid == "reference"``: the output has exactly the reference CRS, geotransform and size.
    ``"target"``: the target's own resolution and CRS; linear models only change the geotransform.
    Raises :class:`InputError` if the raster is not on the target's grid, :class:`OutputExistsError` if
    ``out_path`` exists and not ``overwrite``, :class:`OutputError` if it cannot be written and
    :class:`CancelledError` if the monitor says so (nothing is left under ``out_path`` then).
    """
    monitor = monitor or Monitor()
    if resampling not in RESAMPLING:
        raise InputError(f"Unknown resampling '{resampling}'.", f"Use one of: {', '.join(RESAMPLING)}.")
    info = open_raster_info(raster_path)
    t = correction.target
    if (info.width, info.height) != (t.width, t.height):
        raise InputError(
            f"'{info.path}' is {info.width}x{info.height} pixels but the correction's target is "
            f"{t.width}x{t.height}.", "The raster must be on the target's grid (same size and pixels as the "
            "target that was co-registered); resample it onto the target's grid first.")
    final = check_output_file(out_path, overwrite)
    monitor.check()
    ds = open_dataset(info.path)
    try:
        with atomic_path(final) as tmp:
            if correction.grid == "target" and _as_affine(correction.model) is not None:
                _regeoreference(correction, ds, tmp, monitor)
            else:
                out = correction.reference if correction.grid == "reference" else corrected_target_grid(correction)
                _warp(correction, ds, out, tmp, RESAMPLING[resampling], monitor)
            monitor.check()
    except RuntimeError as exc:
        raise OutputError(f"Writing '{final}' from '{info.path}' failed.",
                          "Check that the raster reads completely (gdalinfo -checksum), the free disk space "
                          "and the folder permissions.", str(exc)) from exc
    return os.fspath(out_path)
