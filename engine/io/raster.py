"""Raster input: the only module of the engine that reads rasters (GDAL).

Conventions: pixel coordinates are ``(x = column, y = row)``, ``(0, 0)`` is the top-left corner of the
top-left pixel, a pixel centre is at ``(i + 0.5, j + 0.5)``. A raster without a CRS (a plain PNG/JPEG,
or a GeoTIFF without projection) is *not georeferenced*: its grid is the pixel grid itself,
``crs_wkt=None`` and geotransform ``(0, 1, 0, 0, 0, 1)``; such rasters are matched in pixel space.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from osgeo import gdal, osr

from ..errors import GeoreferencingError, InputError, NoOverlapError
from .gdal_env import gdal_exceptions

GeoTransform = tuple[float, float, float, float, float, float]
"""A GDAL geotransform ``(x0, dx/dcol, dx/drow, y0, dy/dcol, dy/drow)``."""

IDENTITY_GT: GeoTransform = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_COMPLEX = {gdal.GDT_CInt16, gdal.GDT_CInt32, gdal.GDT_CFloat32, gdal.GDT_CFloat64}


def _gt_matrix(gt: tuple[float, ...]) -> np.ndarray:
    """3x3 homogeneous matrix of a geotransform (pixel -> map)."""
    return np.array([[gt[1], gt[2], gt[0]], [gt[4], gt[5], gt[3]], [0.0, 0.0, 1.0]])


def flip_y(gt: tuple[float, ...]) -> tuple[float, ...]:
    """Geotransform composed with ``(X, Y) -> (X, -Y)``.

    Used for pixel-space rasters: GDAL refuses the identity geotransform as georeferencing, and
    QGIS shows a raster without georeferencing at ``(x, -y)``; both are served by this flip.
    """
    return (gt[0], gt[1], gt[2], -gt[3], -gt[4], -gt[5])


@dataclass(frozen=True)
class Window:
    """A block of pixels: column/row offset and size, in a raster's own pixel grid."""

    col_off: int
    row_off: int
    width: int
    height: int


@dataclass(frozen=True)
class RasterGrid:
    """Pixel grid of a raster: size, GDAL geotransform (pixel corner -> map) and CRS (WKT or None)."""

    width: int
    height: int
    transform: GeoTransform = IDENTITY_GT
    crs_wkt: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        if len(self.transform) != 6:
            raise ValueError("transform must be a 6-element GDAL geotransform")
        if self.crs_wkt == "":
            object.__setattr__(self, "crs_wkt", None)

    @property
    def georeferenced(self) -> bool:
        """True when the grid has a CRS (map coordinates are meaningful)."""
        return self.crs_wkt is not None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, numpy order."""
        return (self.height, self.width)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size along x and y in map units (positive numbers)."""
        gt = self.transform
        return (math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5]))

    def pixel_to_map(self, xy: ArrayLike) -> np.ndarray:
        """Map coordinates of pixel positions ``xy`` (N, 2)."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        gt = self.transform
        return np.stack([gt[0] + p[:, 0] * gt[1] + p[:, 1] * gt[2],
                         gt[3] + p[:, 0] * gt[4] + p[:, 1] * gt[5]], axis=1)

    def map_to_pixel(self, xy: ArrayLike) -> np.ndarray:
        """Pixel positions of map coordinates ``xy`` (N, 2)."""
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        inv = np.linalg.inv(_gt_matrix(self.transform))
        return p @ inv[:2, :2].T + inv[:2, 2]

    def corners(self) -> np.ndarray:
        """Pixel positions of the four outer corners (4, 2): TL, TR, BR, BL."""
        w, h = self.width, self.height
        return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])

    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the grid in map coordinates."""
        m = self.pixel_to_map(self.corners())
        return (float(m[:, 0].min()), float(m[:, 1].min()), float(m[:, 0].max()), float(m[:, 1].max()))

    def subgrid(self, window: Window) -> RasterGrid:
        """The grid of ``window`` (same pixel size and CRS, shifted origin)."""
        origin = self.pixel_to_map([[window.col_off, window.row_off]])[0]
        gt = self.transform
        return RasterGrid(window.width, window.height, (origin[0], gt[1], gt[2], origin[1], gt[4], gt[5]),
                          self.crs_wkt)

    def window_for_bounds(self, bounds: tuple[float, float, float, float]) -> Window:
        """Pixel window (clipped to the grid) covering map ``bounds`` = (xmin, ymin, xmax, ymax)."""
        x0, y0, x1, y1 = bounds
        px = self.map_to_pixel(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        return _clip_window(px, self.width, self.height, "The extent does not overlap the reference raster.")

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "transform": list(self.transform),
                "crs_wkt": self.crs_wkt}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RasterGrid:
        return cls(int(d["width"]), int(d["height"]), tuple(d["transform"]), d.get("crs_wkt"))


@dataclass(frozen=True)
class RasterInfo:
    """What the engine needs to know about a raster file before reading its pixels."""

    path: str
    grid: RasterGrid
    count: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    descriptions: tuple[str, ...]
    is_complex: bool
    has_mask: bool
    driver: str = ""

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height


# ----------------------------------------------------------------------------------------- opening

@gdal_exceptions()
def open_dataset(path: str | os.PathLike) -> gdal.Dataset:
    """Open a raster read-only or raise :class:`InputError` saying why it cannot be used."""
    p = os.fspath(path)
    is_vsi = p.startswith("/vsi")
    if not is_vsi and not os.path.exists(p):
        raise InputError(f"Raster not found: '{p}'.", "Check the path and the file name.")
    if not is_vsi and os.path.isfile(p) and not os.access(p, os.R_OK):
        raise InputError(f"Raster '{p}' cannot be read (permission denied).", "Check the file permissions.")
    try:
        ds = gdal.OpenEx(p, gdal.OF_RASTER | gdal.OF_READONLY)
    except RuntimeError as exc:
        ds, details = None, str(exc)
    else:
        details = ""
    if ds is None:
        try:
            vec = gdal.OpenEx(p, gdal.OF_VECTOR)
        except RuntimeError:
            vec = None
        if vec is not None:
            raise InputError(f"'{p}' is a vector dataset, not a raster.",
                             "Give a raster file (GeoTIFF, JPEG2000, PNG...).", details)
        if not is_vsi and os.path.isdir(p):  # some rasters are folders (ESRI grids): only when GDAL said no
            raise InputError(f"'{p}' is a folder, not a raster GDAL can read.",
                             "Give a raster file in it (GeoTIFF, JPEG2000, PNG...).", details)
        raise InputError(f"'{p}' is not a readable raster (unknown format or corrupt file).",
                         "Check that the file is a complete raster GDAL can read, e.g. with gdalinfo.", details)
    if ds.RasterCount == 0:
        subs = ds.GetSubDatasets()
        hint = ("It contains sub-datasets; give one of them, e.g. " + subs[0][0]) if subs else \
            "Give a raster with at least one band."
        raise InputError(f"'{p}' has no raster bands.", hint)
    return ds


def _grid_of(ds: gdal.Dataset) -> RasterGrid:
    wkt = ds.GetProjection() or None
    gt = ds.GetGeoTransform(can_return_null=True)
    if wkt is None or gt is None:
        return RasterGrid(ds.RasterXSize, ds.RasterYSize, IDENTITY_GT, None)
    return RasterGrid(ds.RasterXSize, ds.RasterYSize, tuple(gt), wkt)


@gdal_exceptions()
def open_raster_info(path: str | os.PathLike) -> RasterInfo:
    """Describe the raster at ``path``; :class:`InputError` if it is missing, unreadable or not a raster."""
    ds = open_dataset(path)
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    try:  # catches files whose header opens but whose pixels do not (truncated / corrupt)
        bands[0].ReadRaster(0, 0, 1, 1)
    except RuntimeError as exc:
        raise InputError(f"The pixels of '{os.fspath(path)}' cannot be read (corrupt or truncated file).",
                         "Check the file with gdalinfo -checksum, or export it again.", str(exc)) from exc
    flags = [b.GetMaskFlags() for b in bands]
    return RasterInfo(
        path=os.fspath(path), grid=_grid_of(ds), count=ds.RasterCount,
        dtypes=tuple(gdal.GetDataTypeName(b.DataType) for b in bands),
        nodata=tuple(b.GetNoDataValue() for b in bands),
        descriptions=tuple(b.GetDescription() or "" for b in bands),
        is_complex=any(b.DataType in _COMPLEX for b in bands),
        has_mask=any(not (f & gdal.GMF_ALL_VALID) and f != gdal.GMF_NODATA for f in flags),
        driver=ds.GetDriver().ShortName)


# ------------------------------------------------------------------------------------------- CRSs

@lru_cache(maxsize=64)
def _srs(wkt: str) -> osr.SpatialReference:
    s = osr.SpatialReference()
    try:
        s.SetFromUserInput(wkt)
    except RuntimeError as exc:
        raise GeoreferencingError("A coordinate reference system cannot be used.",
                                  "Assign a valid CRS (QGIS layer properties, or gdal_edit -a_srs).",
                                  str(exc)) from exc
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


@gdal_exceptions()
def same_crs(a: str | None, b: str | None) -> bool:
    """True if both CRSs are None or both describe the same CRS."""
    if a is None or b is None:
        return a is None and b is None
    return a == b or bool(_srs(a).IsSame(_srs(b)))


@gdal_exceptions()
def transform_points(xy: np.ndarray, src_wkt: str, dst_wkt: str) -> np.ndarray:
    """Transform map coordinates ``xy`` (N, 2) from ``src_wkt`` to ``dst_wkt`` (x = easting/longitude)."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if same_crs(src_wkt, dst_wkt) or len(p) == 0:
        return p.copy()
    ct = osr.CoordinateTransformation(_srs(src_wkt), _srs(dst_wkt))
    try:
        out = np.asarray(ct.TransformPoints(p.tolist()), dtype=np.float64)[:, :2]
    except RuntimeError:  # some points fail: do them one by one, failures become NaN
        out = np.full_like(p, np.nan)
        for i, (x, y) in enumerate(p):
            try:
                out[i] = ct.TransformPoint(float(x), float(y))[:2]
            except RuntimeError:
                pass
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def check_georeferencing(ref_grid: RasterGrid, tgt_grid: RasterGrid) -> None:
    """Raise :class:`GeoreferencingError` when exactly one of the two rasters has a CRS."""
    if ref_grid.georeferenced != tgt_grid.georeferenced:
        which = "reference" if ref_grid.georeferenced else "target"
        other = "target" if which == "reference" else "reference"
        raise GeoreferencingError(
            f"The {which} raster has a coordinate reference system but the {other} has none.",
            f"Assign a CRS and georeferencing to the {other} (QGIS Georeferencer or layer properties, "
            "or gdal_edit -a_srs / -a_ullr), or use two plain images (both without CRS).")


def footprint_in(grid: RasterGrid, other: RasterGrid, n: int = 21) -> np.ndarray:
    """Outline of ``grid`` (4 * n points along its border) in pixel coordinates of ``other``."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    w, h = grid.width, grid.height
    border = np.concatenate([np.stack([t * w, 0 * t], 1), np.stack([w + 0 * t, t * h], 1),
                             np.stack([w - t * w, h + 0 * t], 1), np.stack([0 * t, h - t * h], 1)])
    if not (grid.georeferenced and other.georeferenced):
        return border
    m = transform_points(grid.pixel_to_map(border), grid.crs_wkt, other.crs_wkt)  # type: ignore[arg-type]
    return other.map_to_pixel(m)


def _clip_window(px: np.ndarray, width: int, height: int, message: str, hint: str = "") -> Window:
    px = px[np.isfinite(px).all(axis=1)]
    if len(px) == 0:
        raise NoOverlapError(message, hint)
    x0 = max(0, int(math.floor(px[:, 0].min() + 1e-6)))
    y0 = max(0, int(math.floor(px[:, 1].min() + 1e-6)))
    x1 = min(width, int(math.ceil(px[:, 0].max() - 1e-6)))
    y1 = min(height, int(math.ceil(px[:, 1].max() - 1e-6)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise NoOverlapError(message, hint)
    return Window(x0, y0, x1 - x0, y1 - y0)


def overlap_window(ref_grid: RasterGrid, tgt_grid: RasterGrid, margin_px: float = 0.0) -> Window:
    """Window of the reference grid covered by the target's footprint (plus ``margin_px``).

    Raises :class:`GeoreferencingError` if only one grid has a CRS and :class:`NoOverlapError` if the
    footprints do not intersect. For two pixel-space rasters the whole reference is returned (their
    relative position is unknown until matched).
    """
    check_georeferencing(ref_grid, tgt_grid)
    if not ref_grid.georeferenced:
        return Window(0, 0, ref_grid.width, ref_grid.height)
    px = footprint_in(tgt_grid, ref_grid)
    if margin_px:
        px = np.concatenate([px + [dx, dy] for dx in (-margin_px, margin_px) for dy in (-margin_px, margin_px)])
    rb, tb = ref_grid.bounds(), tgt_grid.bounds()
    return _clip_window(px, ref_grid.width, ref_grid.height,
                        "The reference and the target do not overlap.",
                        f"Reference bounds {tuple(round(v, 3) for v in rb)}, target bounds "
                        f"{tuple(round(v, 3) for v in tb)} (each in its own CRS). Check that the right "
                        "rasters were chosen and that their CRSs are correctly assigned.")


# ------------------------------------------------------------------------------------------ reading

def _band_list(ds: gdal.Dataset, bands: list[int] | tuple[int, ...] | None, path: str) -> list[int]:
    if bands is None:
        return list(range(1, ds.RasterCount + 1))
    out = [int(b) for b in bands]
    bad = [b for b in out if not 1 <= b <= ds.RasterCount]
    if bad or not out:
        raise InputError(f"Band(s) {bad or '[]'} do not exist in '{path}', which has {ds.RasterCount} band(s).",
                         f"Choose band numbers between 1 and {ds.RasterCount}.")
    return out


def _read_direct(ds: gdal.Dataset, blist: list[int], win: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read ``win`` (may extend past the raster; outside = invalid) at native resolution."""
    data = np.full((len(blist), win.height, win.width), np.nan, dtype=np.float32)
    valid = np.zeros((win.height, win.width), dtype=bool)
    x0, y0 = max(win.col_off, 0), max(win.row_off, 0)
    x1 = min(win.col_off + win.width, ds.RasterXSize)
    y1 = min(win.row_off + win.height, ds.RasterYSize)
    if x1 <= x0 or y1 <= y0:
        return data, valid
    sl = (slice(y0 - win.row_off, y1 - win.row_off), slice(x0 - win.col_off, x1 - win.col_off))
    ok = np.ones((y1 - y0, x1 - x0), dtype=bool)
    for i, b in enumerate(blist):
        band = ds.GetRasterBand(b)
        a = band.ReadAsArray(x0, y0, x1 - x0, y1 - y0)
        if np.iscomplexobj(a):
            a = np.abs(a)
        nd = band.GetNoDataValue()
        if nd is not None and not math.isnan(nd):
            ok &= a != (a.dtype.type(nd) if a.dtype.kind == "f" else nd)
        f = band.GetMaskFlags()
        if not (f & gdal.GMF_ALL_VALID) and f != gdal.GMF_NODATA:
            ok &= band.GetMaskBand().ReadAsArray(x0, y0, x1 - x0, y1 - y0) > 0
        data[(i, *sl)] = a
    ok &= np.isfinite(data[(slice(None), *sl)]).all(axis=0)
    valid[sl] = ok
    return data, valid


def _aligned_window(src: RasterGrid, out: RasterGrid) -> Window | None:
    """``out`` as an integer window of ``src`` when no resampling is needed, else None."""
    if not same_crs(src.crs_wkt, out.crs_wkt):
        return None
    a, b = src.transform, out.transform
    scale = max(abs(a[1]), abs(a[2]), abs(a[4]), abs(a[5]))
    if any(abs(a[i] - b[i]) > 1e-9 * scale for i in (1, 2, 4, 5)):
        return None
    off = src.map_to_pixel([[b[0], b[3]]])[0]
    r = np.round(off)
    if np.abs(off - r).max() > 1e-6:
        return None
    return Window(int(r[0]), int(r[1]), out.width, out.height)


def _scale_factor(src: RasterGrid, out: RasterGrid) -> float:
    """Source pixels per output pixel (area ratio, square-rooted) at the centre of ``out``."""
    c = np.array([[out.width / 2.0, out.height / 2.0]])
    p = np.concatenate([c, c + [1.0, 0.0], c + [0.0, 1.0]])
    if src.georeferenced:
        q = src.map_to_pixel(transform_points(out.pixel_to_map(p), out.crs_wkt, src.crs_wkt))  # type: ignore[arg-type]
    else:
        q = out.pixel_to_map(p)
    j = np.stack([q[1] - q[0], q[2] - q[0]], axis=1)
    f = math.sqrt(abs(float(np.linalg.det(j))))
    return f if math.isfinite(f) else 1.0


def _amplitude_vrt(ds: gdal.Dataset, blist: list[int]) -> gdal.Dataset:
    """A virtual Float32 dataset of the amplitude of complex bands ``blist`` (GDAL pixel function ``mod``):
    GDAL computes it block by block while warping, so the complex raster is never read whole. A band's
    nodata value marks invalid amplitudes, as in :func:`_read_direct`."""
    from xml.sax.saxutils import escape

    bands = []
    for i, b in enumerate(blist, 1):
        nd = ds.GetRasterBand(b).GetNoDataValue()
        nodata = f"<NoDataValue>{abs(nd)!r}</NoDataValue>" if nd is not None and not math.isnan(nd) else ""
        bands.append(
            f'<VRTRasterBand dataType="Float32" band="{i}" subClass="VRTDerivedRasterBand">{nodata}'
            "<PixelFunctionType>mod</PixelFunctionType><SourceTransferType>CFloat64</SourceTransferType>"
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(ds.GetDescription())}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>")
    xml = f'<VRTDataset rasterXSize="{ds.RasterXSize}" rasterYSize="{ds.RasterYSize}">{"".join(bands)}</VRTDataset>'
    src = gdal.Open(xml)
    if src is None:  # pragma: no cover - GDAL without the VRT driver
        from ..errors import InputError

        raise InputError(f"GDAL cannot derive the amplitude of '{ds.GetDescription()}'.")
    return src


def _warp_to(ds: gdal.Dataset, src_grid: RasterGrid, blist: list[int], out: RasterGrid,
             complex_: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling of bands ``blist`` onto ``out`` (reprojecting); outside the footprint = NaN."""
    if complex_:  # amplitude first: warping complex data would interpolate real/imag parts
        src = _amplitude_vrt(ds, blist)
    else:
        mask = "mask,1" if ds.GetRasterBand(1).GetMaskFlags() & gdal.GMF_PER_DATASET else None
        src = gdal.Translate("", ds, format="VRT", bandList=blist, maskBand=mask)
    pixel_space = not src_grid.georeferenced
    src.SetGeoTransform(flip_y(IDENTITY_GT) if pixel_space else src_grid.transform)
    if not pixel_space:
        src.SetProjection(src_grid.crs_wkt)
    dst = gdal.GetDriverByName("MEM").Create("", out.width, out.height, len(blist), gdal.GDT_Float32)
    dst.SetGeoTransform(flip_y(out.transform) if pixel_space else out.transform)
    if not pixel_space:
        dst.SetProjection(out.crs_wkt)
    for i in range(len(blist)):
        dst.GetRasterBand(i + 1).SetNoDataValue(float("nan"))
        dst.GetRasterBand(i + 1).Fill(float("nan"))
    # GDAL widens the kernel when downsampling (anti-aliasing); near-unity scales keep plain bilinear
    kernel = ["XSCALE=1", "YSCALE=1"] if _scale_factor(src_grid, out) < 1.25 else []
    gdal.Warp(dst, src, resampleAlg="bilinear", dstNodata=float("nan"), errorThreshold=0.01,
              warpOptions=["UNIFIED_SRC_NODATA=NO", "INIT_DEST=NO_DATA", *kernel])
    data = np.stack([dst.GetRasterBand(i + 1).ReadAsArray() for i in range(len(blist))]).astype(np.float32)
    return data, np.isfinite(data).all(axis=0)


@gdal_exceptions()
def read_bands(path: str | os.PathLike, bands: list[int] | tuple[int, ...] | None = None,
               out_grid: RasterGrid | None = None,
               window: Window | tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read bands of a raster as float32, with a validity mask.

    Args:
        path: raster file.
        bands: 1-based band numbers (default: all).
        out_grid: resample (bilinear, reprojecting if CRSs differ) onto this grid. For a raster without
            CRS, ``out_grid`` (also without CRS) is in the raster's own pixel coordinates.
        window: read this block of the raster's own grid instead (no resampling); not with ``out_grid``.

    Returns:
        ``data`` (B, H, W) float32 (complex bands as amplitude; invalid pixels hold NaN when resampled,
        the stored value otherwise) and ``valid`` (H, W) bool: False where any band is nodata, NaN,
        masked (mask band / alpha), or outside the raster's footprint.
    """
    p = os.fspath(path)
    if out_grid is not None and window is not None:
        raise ValueError("give either out_grid or window, not both")
    ds = open_dataset(p)
    blist = _band_list(ds, bands, p)
    grid = _grid_of(ds)
    try:
        if out_grid is None:
            win = Window(*window) if isinstance(window, tuple) else window
            return _read_direct(ds, blist, win or Window(0, 0, grid.width, grid.height))
        check_georeferencing(out_grid, grid)
        aligned = _aligned_window(grid, out_grid)
        if aligned is not None:
            return _read_direct(ds, blist, aligned)
        complex_ = any(ds.GetRasterBand(b).DataType in _COMPLEX for b in blist)
        return _warp_to(ds, grid, blist, out_grid, complex_)
    except RuntimeError as exc:
        raise InputError(f"Cannot read the pixels of '{p}' (corrupt or truncated file?).",
                         "Check the file with gdalinfo -checksum, or export it again.", str(exc)) from exc
