"""Benchmark cases: real aligned pairs from shared/data, misregistered by seeded random similarities.

A case = reference image + misregistered target image (on the reference's pixel grid; for georeferenced
pairs with the reference's geotransform, so the georeferencing is wrong by the known transform) + the true
mapping ``M`` (target pixel -> reference pixel) + the truth raster (see ``truth.py``).

Each source pair is first aligned by its ground truth: ``G`` maps a reference pixel position to the
position in the ORIGINAL target file that shows the same ground (identity for registered patches, from the
geotransforms for georeferenced pairs, from the published homography / affine / tie points otherwise). The
case's target is then ``target(p) = original_target(G(M(p)))``: one bilinear resampling. MATLAB-made ground
truth (MMIM, CFOG) is 1-based with pixel centres at integers: corner = MATLAB - 0.5. SRIF's affine matrices
apply as written, in corner coordinates (``_g_srif`` says how that was established).
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import truth as T

DATA = Path(os.environ.get("HSSCL_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CASES_DIR = Path(__file__).resolve().parents[1] / ".bench" / "cases"
SEED = 20240604
MAX_SHIFT, MAX_ROT, MAX_SCALE = 40.0, 4.0, 0.05
SHIFT_CAP_FRACTION = 0.15   # small patches (100-256 px): shift at most 15 % of the smaller side


@dataclass(frozen=True)
class Draws:
    """The ranges a case set draws its misregistrations from. The dev and held-out sets use ``DEV_DRAWS`` (the
    constants above, no distortion); the strong sets (``bench/strong.py``) wider ones plus a smooth local
    distortion of up to ``max_distortion`` px (``truth.Distortion``)."""
    max_shift: float = MAX_SHIFT
    max_rot: float = MAX_ROT
    max_scale: float = MAX_SCALE
    shift_cap_fraction: float = SHIFT_CAP_FRACTION
    max_distortion: float = 0.0

    def key(self) -> dict | None:
        """What a cached case records of its ranges (None for the dev ranges: their case.json stays as it was)."""
        from dataclasses import asdict

        return None if self == Draws() else asdict(self)


DEV_DRAWS = Draws()

# How exact a case's ground truth is, decided per source from what its authors document (not from any tool's
# result): SUBPIXEL = the bands of one Sentinel-2 product on its own grids, and SRIF's validated affines (0.15 px
# rms per axis left once their convention was established: ``_g_srif``); APPROXIMATE = the rest, whose truths
# are documented at about 1-6 px (registered patch sets, landmark homographies, tie-point fits, Sentinel-1/2
# geocoding, map renderings). An error below about 1 px is only meaningful on SUBPIXEL cases.
SUBPIXEL, APPROXIMATE = "sub-pixel", "approximate"
GT_CLASSES = {
    SUBPIXEL: "bands of one Sentinel-2 product; SRIF validated affines",
    APPROXIMATE: "documented at about 1-6 px: registered patches, landmark homographies, tie points, S1/S2 "
                 "geocoding, maps",
}

FAMILIES = ("SAR-optical", "optical-infrared", "multispectral", "optical-map", "optical-LiDAR",
            "cross-season/day-night")


@dataclass
class Img:
    data: np.ndarray                 # (B, H, W) float32, NaN where invalid
    gdal_type: int                   # GDAL data type to write back
    gt: tuple | None = None          # geotransform (None: pixel space)
    crs: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1], self.data.shape[2]


@dataclass
class Source:
    name: str
    family: str
    origin: str                      # data folder, for the table's notes
    ref: Callable[[], Img]
    tgt: Callable[[], Img]
    G: Callable[[Img, Img], np.ndarray] | None = None   # ref px -> original target px; None: geotransforms
    gt_note: str = ""
    quick: bool = False
    files: tuple[Path, ...] = field(default_factory=tuple)
    gt_class: str = APPROXIMATE      # how exact the ground truth is: SUBPIXEL or APPROXIMATE (GT_CLASSES)

    def available(self) -> bool:
        return all(Path(f).exists() for f in self.files)


# ---- reading ---------------------------------------------------------------------------------------------

def _read(path: str | Path, bands: list[int] | None = None, decode: Callable | None = None) -> Img:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    if ds is None:
        raise FileNotFoundError(path)
    idx = bands or list(range(1, ds.RasterCount + 1))
    arrs = []
    for b in idx:
        band = ds.GetRasterBand(b)
        a = band.ReadAsArray().astype(np.float32)
        nd = band.GetNoDataValue()
        if nd is not None and not np.isnan(nd):
            a[a == nd] = np.nan
        if decode is not None:
            a = decode(a)
        arrs.append(a)
    gtype = ds.GetRasterBand(idx[0]).DataType
    if gtype == gdal.GDT_Float64 or decode is not None:   # decoded values (e.g. dB) are floats
        gtype = gdal.GDT_Float32
    gt = ds.GetGeoTransform(can_return_null=True)
    crs = ds.GetProjection() or None
    if not crs:
        gt = None
    return Img(np.stack(arrs), gtype, gt, crs)


def _stack(*imgs: Img) -> Img:
    return Img(np.concatenate([i.data for i in imgs]), imgs[0].gdal_type, imgs[0].gt, imgs[0].crs)


def _gt_matrix(gt: tuple) -> np.ndarray:
    return np.array([[gt[1], gt[2], gt[0]], [gt[4], gt[5], gt[3]], [0, 0, 1.0]])


def _conj_matlab(H: np.ndarray) -> np.ndarray:
    """A matrix in 1-based MATLAB pixel coordinates -> the same mapping in corner coordinates."""
    S = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    return np.linalg.inv(S) @ H @ S


# ---- ground-truth readers --------------------------------------------------------------------------------

def _g_identity(ref: Img, tgt: Img) -> np.ndarray:
    return np.eye(3)


def _g_mmim(gt_json: Path) -> Callable[[Img, Img], np.ndarray]:
    def g(ref: Img, tgt: Img) -> np.ndarray:
        Tm = np.array(json.loads(gt_json.read_text())["T"], np.float64)
        H_mov_to_fix = _conj_matlab(Tm.T)           # row-vector convention -> column vectors
        return np.linalg.inv(H_mov_to_fix)          # fixed (reference) -> moving (target)
    return g


def _g_srif(gt_txt: Path) -> Callable[[Img, Img], np.ndarray]:
    """SRIF's 2x3 ``gt_N.txt`` maps image 1 (reference) -> image 2 (target) in corner coordinates, as written.

    Not the 1-based MATLAB convention of the authors' demo: read that way, the truth is off by half a pixel
    conjugated through each pair's synthetic rotation (up to 86 deg), which predicts a per-pair offset of
    0.2-1.0 px along x. The matched tie points of all 11 Optical-Infrared pairs of both benchmark sets showed
    exactly that offset (with two descriptors); a least-squares fit of the convention offset over them gives
    -0.04 px from corner coordinates (MATLAB would be -0.5), and the remaining offset is 0.15 px rms per axis
    (0.49 px before). See bench/README.md, "Ground-truth conventions".
    """
    def g(ref: Img, tgt: Img) -> np.ndarray:
        H = np.eye(3)
        H[:2, :] = np.loadtxt(gt_txt)[:2, :3]      # image 1 (reference) -> image 2 (target)
        return H
    return g


def _g_cfog(cp_txt: Path, ref_is_first: bool) -> Callable[[Img, Img], np.ndarray]:
    def g(ref: Img, tgt: Img) -> np.ndarray:
        p = np.loadtxt(cp_txt)[:, :4] - 0.5        # MATLAB -> corner coordinates
        a, b = (p[:, :2], p[:, 2:]) if ref_is_first else (p[:, 2:], p[:, :2])
        return T.fit_affine(a, b)                   # reference -> target, least squares over all CPs
    return g


def _g_geo(ref: Img, tgt: Img) -> np.ndarray:
    return np.linalg.inv(_gt_matrix(tgt.gt)) @ _gt_matrix(ref.gt)


# ---- the sources -----------------------------------------------------------------------------------------

def _wc_decode_s1(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (20 * np.log10(a) - 83).astype(np.float32)


def sources() -> list[Source]:
    D = DATA
    out: list[Source] = []

    def add(name, family, origin, ref, tgt, G, files, note="", quick=False, gt_class=APPROXIMATE):
        out.append(Source(name, family, origin, ref, tgt, G, note, quick, tuple(Path(f) for f in files), gt_class))

    # SAR-optical ------------------------------------------------------------------------------------------
    gf = D / "gefolki_EvalGeFolki" / "S1S2"
    add("gefolki_S1S2", "SAR-optical", "gefolki_EvalGeFolki", lambda: _read(gf / "S2_patch11.tif"),
        lambda: _read(gf / "S1_patch11.tif", [1]), _g_geo, [gf / "S2_patch11.tif", gf / "S1_patch11.tif"],
        "identity in map coords (±1-2 px)")
    ben = D / "bigearthnet_example"
    s1dirs = sorted((ben / "BigEarthNet-S1-Example").glob("S1*")) if ben.exists() else []
    ben_pairs = []
    for s1 in s1dirs:
        suffix = "_".join(s1.name.split("_")[-2:])
        s2 = next((d for d in (ben / "BigEarthNet-S2-Example").glob(f"S2*_{suffix}")), None)
        if s2 is not None:
            ben_pairs.append((suffix, s1, s2))
    for k, (suffix, s1, s2) in enumerate(ben_pairs[:3]):
        b = lambda n, s2=s2: s2 / f"{s2.name}_{n}.tif"  # noqa: E731
        v = lambda n, s1=s1: s1 / f"{s1.name}_{n}.tif"  # noqa: E731
        if k < 2:
            add(f"bigearthnet_{suffix}_S1S2", "SAR-optical", "bigearthnet_example",
                lambda b=b: _stack(_read(b("B04")), _read(b("B03")), _read(b("B02"))),
                lambda v=v: _stack(_read(v("VV")), _read(v("VH"))), _g_geo,
                [b("B04"), v("VV")], "identity (same grid)")
        band = ("B11", "B08", "B12")[k]
        add(f"bigearthnet_{suffix}_B04_{band}", "multispectral", "bigearthnet_example",
            lambda b=b: _read(b("B04")), lambda b=b, band=band: _read(b(band)), _g_geo,
            [b("B04"), b(band)], "identity in map coords (10 m vs 20 m for B11/B12)", gt_class=SUBPIXEL)
    tm = D / "more_s1s2" / "terramind_terramesh_examples"
    tm_ids = sorted(p.stem for p in (tm / "S1RTC").glob("*.tif")) if tm.exists() else []
    for k, i in enumerate(tm_ids[:5]):
        s2 = tm / "S2L2A" / f"{i}.tif"
        if k < 3:
            add(f"terramesh_{i}_S1S2", "SAR-optical", "more_s1s2/terramind_terramesh_examples",
                lambda s2=s2: _read(s2, [4, 3, 2]), lambda i=i: _read(tm / "S1RTC" / f"{i}.tif"), _g_geo,
                [s2, tm / "S1RTC" / f"{i}.tif"], "identity (same grid, ±2-3 px)", quick=(k == 1))
        if k < 2:
            continue
        band = ("B08", "B11", "B12")[k % 3]
        bidx = {"B08": 8, "B11": 11, "B12": 12}[band]
        add(f"terramesh_{i}_B04_{band}", "multispectral", "more_s1s2/terramind_terramesh_examples",
            lambda s2=s2: _read(s2, [4]), lambda s2=s2, bidx=bidx: _read(s2, [bidx]), _g_geo, [s2],
            "identity (same grid)", quick=(k == 2), gt_class=SUBPIXEL)
    wc = D / "more_s1s2" / "worldcereal_openeo_s1s2_composites" / "worldcereal_preprocessed_inputs.nc"
    nc = lambda var: f'NETCDF:"{wc}":{var}'  # noqa: E731
    # monthly composites t = 1..12 from Nov 2020; t = 2, 3 (Dec, Jan) hold no S2 data (fill 65535)
    for t in (7,):           # May 2021
        add(f"worldcereal_t{t:02d}_S1S2", "SAR-optical", "more_s1s2/worldcereal_openeo_s1s2_composites",
            lambda t=t: _stack(*[_read(nc(f"S2-L2A-{b}"), [t]) for b in ("B04", "B03", "B02")]),
            lambda t=t: _stack(*[_read(nc(f"S1-SIGMA0-{p}"), [t], _wc_decode_s1) for p in ("VV", "VH")]),
            _g_geo, [wc], "identity (same grid)")
    for t0, t1 in ((1, 9),):   # Nov 2020 vs Jul 2021
        add(f"worldcereal_B04_t{t0:02d}_t{t1:02d}", "cross-season/day-night",
            "more_s1s2/worldcereal_openeo_s1s2_composites",
            lambda t0=t0: _read(nc("S2-L2A-B04"), [t0]), lambda t1=t1: _read(nc("S2-L2A-B04"), [t1]),
            _g_geo, [wc], "identity (same grid)")
    ssl = D / "more_s1s2" / "ssl4eo_s12_via_rico_hdl" / "SSL4EO-S12"
    s1d = sorted((ssl / "s1" / "0000200").glob("S1*")) if ssl.exists() else []
    s2d = sorted((ssl / "s2a" / "0000200").glob("2020*")) if ssl.exists() else []
    for a, b in list(zip(s2d, s1d))[:1]:
        add(f"ssl4eo_{a.name[:8]}_S1S2", "SAR-optical", "more_s1s2/ssl4eo_s12_via_rico_hdl",
            lambda a=a: _stack(_read(a / "B4.tif"), _read(a / "B3.tif"), _read(a / "B2.tif")),
            lambda b=b: _stack(_read(b / "VV.tif"), _read(b / "VH.tif")), _g_geo,
            [a / "B4.tif", b / "VV.tif"], "georeferencing (different grids, aligned by geotransform)")
    if len(s2d) >= 2:
        add("ssl4eo_B4_june_august", "cross-season/day-night", "more_s1s2/ssl4eo_s12_via_rico_hdl",
            lambda: _read(s2d[0] / "B4.tif"), lambda: _read(s2d[1] / "B4.tif"), _g_geo,
            [s2d[0] / "B4.tif", s2d[1] / "B4.tif"], "georeferencing")
    cf = D / "cfog_ye2019"
    add("cfog_optical_SAR", "SAR-optical", "cfog_ye2019", lambda: _read(cf / "data/optical_ref.png"),
        lambda: _read(cf / "data/SAR_sen.png"), _g_cfog(cf / "data/OpticaltoSAR_CP.txt", True),
        [cf / "data/optical_ref.png", cf / "data/SAR_sen.png"], "affine fit to 294 CPs (0.4-1 px)")
    add("cfog_Stest3", "SAR-optical", "cfog_ye2019", lambda: _read(cf / "data/Stest3_ref.tif"),
        lambda: _read(cf / "data/Stest3_sen.tif"), _g_cfog(cf / "data/Stest3gcp.pts", True),
        [cf / "data/Stest3_ref.tif", cf / "data/Stest3_sen.tif"], "affine fit to 164 GCPs", quick=True)
    vs = cf / "other_data/visible-SAR"
    add("cfog_visible_SAR1", "SAR-optical", "cfog_ye2019", lambda: _read(vs / "visible1_ref.tif"),
        lambda: _read(vs / "SAR1_sen.tif"), _g_cfog(vs / "visibleToSAR1_CP.txt", True),
        [vs / "visible1_ref.tif", vs / "SAR1_sen.tif", vs / "visibleToSAR1_CP.txt"], "affine fit to CPs")
    mm = D / "mmim_jiang2021_RemoteSensing"

    def mmim(cat: str, prefix: str, family: str, n: int, quick_first: bool = False, cap: int = 99):
        taken = 0
        for i in range(1, n + 1):
            d = mm / cat
            if taken >= cap or not (d / f"{prefix}{i}_gt.json").exists():
                continue
            taken += 1
            add(f"mmim_{prefix}{i}", family, "mmim_jiang2021_RemoteSensing",
                lambda d=d, i=i: _read(d / f"{prefix}{i}a.png"), lambda d=d, i=i: _read(d / f"{prefix}{i}b.png"),
                _g_mmim(d / f"{prefix}{i}_gt.json"), [d / f"{prefix}{i}a.png", d / f"{prefix}{i}_gt.json"],
                "homography from 15-20 landmarks (1-5 px)", quick=(quick_first and i == 1))

    mmim("SAR_Optical", "SO", "SAR-optical", 6, quick_first=True)
    os_ = D / "osmnet_osdataset_samples"
    for i in [i for i in range(1, 5) if (os_ / f"opt{i}.png").exists()][:1]:
        add(f"osmnet_{i}", "SAR-optical", "osmnet_osdataset_samples", lambda i=i: _read(os_ / f"opt{i}.png"),
            lambda i=i: _read(os_ / f"sar{i}.png"), _g_identity, [os_ / f"opt{i}.png", os_ / f"sar{i}.png"],
            "identity (registered patches, ±few px)")
    mo = D / "3mos_montage_samples" / "split"
    cells = [(sat, k) for k in (0, 4, 8) for sat in ("SEN_city", "GF3_city", "RCM_city", "Redarsat_hills",
                                                     "ALOS_desert", "TerraSAR_rural", "SEN_mountain")]
    cells = [(sat, k) for sat, k in cells if (mo / f"{sat}_{k:02d}_sar.png").exists()][:2]
    for sat, k in cells:
        o, s = mo / f"{sat}_{k:02d}_opt.png", mo / f"{sat}_{k:02d}_sar.png"
        add(f"3mos_{sat}_{k:02d}", "SAR-optical", "3mos_montage_samples", lambda o=o: _read(o),
            lambda s=s: _read(s), _g_identity, [o, s], "identity (registered patches, ±1-6 px)")

    # optical-infrared --------------------------------------------------------------------------------------
    add("cfog_visible_infrared", "optical-infrared", "cfog_ye2019", lambda: _read(cf / "data/visible_ref.tif"),
        lambda: _read(cf / "data/infrared_sen.tif"), _g_cfog(cf / "data/VisibletoInfrared_CP.txt", True),
        [cf / "data/visible_ref.tif", cf / "data/infrared_sen.tif"], "affine fit to 290 CPs", quick=True)
    vi = cf / "other_data/visible-infrared"
    add("cfog_test6_visible_infrared", "optical-infrared", "cfog_ye2019", lambda: _read(vi / "test6_ref.tif"),
        lambda: _read(vi / "test6_sen.tif"), _g_geo, [vi / "test6_ref.tif", vi / "test6_sen.tif"],
        "identity (same grid)")
    mmim("Infrared_Optical", "IO", "optical-infrared", 4, cap=2)
    sr = D / "srif_li2023_subset"

    def srif(cat: str, family: str, ids: list[int], note: str, quick_id: int | None = None,
             gt_class: str = APPROXIMATE):
        for i in ids:
            d = sr / cat
            add(f"srif_{cat}_{i}", family, "srif_li2023_subset", lambda d=d, i=i: _read(d / f"pair{i}_1.jpg"),
                lambda d=d, i=i: _read(d / f"pair{i}_2.jpg"), _g_srif(d / f"gt_{i}.txt"),
                [d / f"pair{i}_1.jpg", d / f"pair{i}_2.jpg", d / f"gt_{i}.txt"], note, quick=(i == quick_id),
                gt_class=gt_class)

    srif("Optical-Infrared", "optical-infrared", [1, 9, 17, 25, 33], "affine GT (validated)", gt_class=SUBPIXEL)

    # optical-map -------------------------------------------------------------------------------------------
    om = cf / "other_data/optical-Map"
    for i in (1, 2):
        add(f"cfog_optical_map{i}", "optical-map", "cfog_ye2019", lambda i=i: _read(om / f"optical{i}_ref.tif"),
            lambda i=i: _read(om / f"map{i}_sen.tif"), _g_cfog(om / f"opticalToMap{i}_CP.txt", True),
            [om / f"optical{i}_ref.tif", om / f"map{i}_sen.tif"], "affine fit to 159 CPs", quick=(i == 1))
    mmim("Map_Optical", "MO", "optical-map", 7, cap=3)
    srif("Optical-Map", "optical-map", [1, 9, 17], "identity GT")

    # optical-LiDAR -----------------------------------------------------------------------------------------
    add("cfog_lidar_depth", "optical-LiDAR", "cfog_ye2019", lambda: _read(cf / "data/LidarDepth_ref.png"),
        lambda: _read(cf / "data/optical1_sen.png"), _g_cfog(cf / "data/LidartoOptical_CP.txt", True),
        [cf / "data/LidarDepth_ref.png", cf / "data/optical1_sen.png"], "affine fit to 298 CPs", quick=True)
    ol = cf / "other_data/optical-LiDAR"
    add("cfog_lidar_intensity1", "optical-LiDAR", "cfog_ye2019", lambda: _read(ol / "visible1_ref.tif"),
        lambda: _read(ol / "LiDARintensity1_sen.tif"), _g_cfog(ol / "LiDARToVisible1.txt", False),
        [ol / "visible1_ref.tif", ol / "LiDARintensity1_sen.tif"], "affine fit to 264 CPs")
    add("cfog_lidar_intensity2", "optical-LiDAR", "cfog_ye2019", lambda: _read(ol / "visible2_ref.png"),
        lambda: _read(ol / "LiDARintensity2_sen.png"), _g_cfog(ol / "LiDARToVisible2.txt", False),
        [ol / "visible2_ref.png", ol / "LiDARintensity2_sen.png"], "affine fit to 243 CPs")
    mmim("DepthOptical", "DO", "optical-LiDAR", 8, cap=4)

    # cross-season / day-night (and multi-temporal optical) ------------------------------------------------
    mmim("DayNight", "DN", "cross-season/day-night", 5, quick_first=True, cap=4)
    mmim("CrossSeason", "CS", "cross-season/day-night", 5, cap=2)
    mmim("Optical_Optical", "OO", "cross-season/day-night", 6, cap=1)
    return [s for s in out if s.available()]


# ---- case generation -------------------------------------------------------------------------------------

def draw_transform(case_id: str, width: int, height: int, seed: int = SEED, draws: Draws = DEV_DRAWS) -> dict:
    """The similarity's parameters (and, when ``draws.max_distortion`` > 0, a ``distortion`` field drawn after
    them from the same generator, so the similarity draws do not depend on it)."""
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    cap = min(draws.max_shift, draws.shift_cap_fraction * min(width, height))
    r, a = cap * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
    out = {"dx": float(r * np.cos(a)), "dy": float(r * np.sin(a)),
           "rot_deg": float(rng.uniform(-draws.max_rot, draws.max_rot)),
           "scale": float(1 + rng.uniform(-draws.max_scale, draws.max_scale))}
    if draws.max_distortion > 0:
        out["distortion"] = T.Distortion.draw(rng, width, height, draws.max_distortion).to_json()
    return out


def _resample(img: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Bilinear sample of (B, h, w) at corner-convention positions P (2, H, W); NaN outside / invalid."""
    from scipy.ndimage import map_coordinates

    h, w = img.shape[1:]
    x, y = P[0] - 0.5, P[1] - 0.5
    inside = (P[0] >= 0) & (P[0] <= w) & (P[1] >= 0) & (P[1] <= h)
    out = np.empty((img.shape[0],) + P.shape[1:], np.float32)
    nanmask = ~np.isfinite(img).all(axis=0)
    for b in range(img.shape[0]):
        band = np.where(nanmask, 0, img[b]).astype(np.float64)
        out[b] = map_coordinates(band, [np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], order=1, mode="nearest")
    bad = map_coordinates(nanmask.astype(np.float32), [np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)],
                          order=1, mode="nearest") > 0.01
    out[:, bad | ~inside] = np.nan
    return out


def _write(path: Path, data: np.ndarray, gdal_type: int, gt: tuple | None, crs: str | None) -> None:
    from osgeo import gdal

    B, H, W = data.shape
    valid = np.isfinite(data).all(axis=0)
    if path.suffix == ".png":
        a = np.where(valid, data, 0)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        mem = gdal.GetDriverByName("MEM").Create("", W, H, B, gdal.GDT_Byte)
        for b in range(B):
            mem.GetRasterBand(b + 1).WriteArray(a[b])
        gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)
        aux = Path(str(path) + ".aux.xml")
        if aux.exists():
            aux.unlink()
        return
    is_float = gdal_type in (gdal.GDT_Float32, gdal.GDT_Float64)
    nd = float("nan") if is_float else 0.0
    ds = gdal.GetDriverByName("GTiff").Create(str(path), W, H, B, gdal_type, options=["COMPRESS=DEFLATE"])
    if gt is not None:
        ds.SetGeoTransform(gt)
        ds.SetProjection(crs)
    for b in range(B):
        band = ds.GetRasterBand(b + 1)
        band.SetNoDataValue(nd)
        a = data[b]
        if not is_float:
            a = np.where(valid, np.round(a), 0)
            if gdal_type == gdal.GDT_Byte:
                a = np.clip(a, 0, 255)
            elif gdal_type == gdal.GDT_UInt16:
                a = np.clip(a, 1, 65535)   # 0 is nodata
            a = np.where(valid, a, 0)
        band.WriteArray(a)
    ds = None


def build_case(src: Source, out_root: Path = CASES_DIR, seed: int = SEED, force: bool = False,
               draws: Draws = DEV_DRAWS) -> dict:
    """Write one case folder and return its description (case.json).

    With a distortion (``draws.max_distortion`` > 0) the true mapping is ``M(p) + d(p)`` (``truth.Mapping``):
    the target is resampled through it, the truth raster holds it at every target pixel centre, and the overlap
    and the initial RMSE use its numerical inverse / forward map. ``M_target_to_reference`` is then the
    similarity part only; ``transform.distortion`` holds the field."""
    d = out_root / src.name
    meta_path = d / "case.json"
    ref, tgt = src.ref(), src.tgt()
    G = (src.G or _g_geo)(ref, tgt)
    if meta_path.exists() and not force:
        meta = json.loads(meta_path.read_text())
        # a cached case stands only while its seed and its ground truth are those of this code
        if meta.get("seed") == seed and meta.get("draws") == draws.key() and np.allclose(meta.get("G_reference_to_source_target", np.nan), G,
                                                    rtol=0, atol=1e-9):
            return {**meta, "gt_note": src.gt_note, "gt_class": src.gt_class}  # descriptions: no rebuild
    d.mkdir(parents=True, exist_ok=True)
    for what, im in (("reference", ref), ("target", tgt)):
        v = im.data[np.isfinite(im.data)]
        if v.size == 0 or float(v.std()) == 0.0:
            raise ValueError(f"{src.name}: the {what} holds no data (empty or constant)")
    H, W = ref.shape
    georef = ref.gt is not None and ref.crs is not None
    prm = draw_transform(src.name, W, H, seed, draws)
    M = T.similarity(W, H, **{k: v for k, v in prm.items() if k != "distortion"})   # target px -> reference px
    mapping = T.Mapping(M, T.Distortion.from_json(prm.get("distortion")))
    if mapping.distortion is None:
        P = T.apply_h(G @ M, T.pixel_centres(W, H)).T.reshape(2, H, W)
    else:
        P = T.apply_h(G, mapping.forward(T.pixel_centres(W, H))).T.reshape(2, H, W)
    target = _resample(tgt.data, P)
    tvalid = np.isfinite(target).all(axis=0)
    ext = ".tif" if georef else ".png"
    ref_path, tgt_path = d / f"reference{ext}", d / f"target{ext}"
    _write(ref_path, ref.data, ref.gdal_type, ref.gt, ref.crs)
    _write(tgt_path, target, tgt.gdal_type, ref.gt if georef else None, ref.crs if georef else None)
    if mapping.distortion is None:
        T.write_truth(str(d / "truth.tif"), M, W, H, ref.gt if georef else None, ref.crs if georef else None)
        mask = T.eval_mask(M, tvalid, W, H)
    else:
        T.write_truth_array(str(d / "truth.tif"), mapping.truth_array(W, H), ref.gt if georef else None,
                            ref.crs if georef else None)
        mask = T.eval_mask_mapping(mapping, tvalid, W, H)
    np.save(d / "eval_mask.npy", mask)
    meta = {
        "id": src.name, "family": src.family, "origin": src.origin, "gt_note": src.gt_note, "gt_class": src.gt_class,
        "seed": seed,
        "georeferenced": georef, "width": W, "height": H, "reference": str(ref_path), "target": str(tgt_path),
        "truth": str(d / "truth.tif"), "eval_mask": str(d / "eval_mask.npy"), "transform": prm,
        "M_target_to_reference": M.tolist(), "G_reference_to_source_target": G.tolist(),
        "initial_rmse": T.identity_rmse(M, mask) if mapping.distortion is None else
        T.identity_rmse_mapping(mapping, mask),
        "overlap_px": int(mask.sum()), "quick": src.quick,
    }
    if draws.key() is not None:
        meta["draws"] = draws.key()
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def select(quick: bool = False, families: list[str] | None = None, names: list[str] | None = None) -> list[Source]:
    return filter_sources(sources(), quick, families, names)


def filter_sources(srcs: list[Source], quick: bool = False, families: list[str] | None = None,
                   names: list[str] | None = None) -> list[Source]:
    """The quick subset, the given families (full name or its part before '/') and name substrings."""
    if quick:
        srcs = [s for s in srcs if s.quick]
    if families:
        fam = {f.lower() for f in families}
        srcs = [s for s in srcs if s.family.lower() in fam or s.family.split("/")[0].lower() in fam]
    if names:
        srcs = [s for s in srcs if any(n in s.name for n in names)]
    return srcs


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the benchmark cases into .bench/cases")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    for s in select(a.quick):
        m = build_case(s, force=a.force)
        print(f"{m['id']:40s} {m['family']:24s} {m['width']}x{m['height']} init {m['initial_rmse']:.1f} px")
