"""Build the compact training-data cache from the redistributable real pairs (needs GDAL; run on CPU).

Every image goes through the engine's own path (:func:`engine.preprocess.prepare`: modality, band
reduction, block-wise denoising, normalisation), twice: with and without denoising. Co-registered
partners are read on one grid (``read_bands(out_grid=...)``: SSL4EO's S2 is warped onto S1 via the
geotransforms, BigEarthNet's 20 m bands are resampled to 10 m). The result is one ``.npz`` (float16,
no pickled objects) that :mod:`.data` reads on any machine, GDAL or not.

Only sources whose licence allows training weights that ship are read (``SOURCES`` below); the
evaluation-only sets (CFOG, MMIM, SRIF, OSMNet, Sen1Floods11) are never touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: source -> licence, as recorded in shared/data/SOURCES.md (redistributable sources only)
LICENCES = {
    "bigearthnet": "CDLA-Permissive-1.0 (BigEarthNet), Copernicus Sentinel data",
    "gefolki_s1s2": "Copernicus Sentinel data (GeFolki EvalGeFolki S1S2 patch)",
    "3mos": "Apache-2.0 (3MOS)",
    "terramesh": "CC-BY-SA-4.0 (TerraMesh examples, IBM/terramind), Copernicus Sentinel data",
    "worldcereal": "MIT (WorldCereal), Copernicus Sentinel data",
    "gfmap": "Apache-2.0 (openEO GFMap), Copernicus Sentinel data",
    "ssl4eo": "CC-BY-4.0 (SSL4EO-S12 via rico-hdl, MIT)",
}
#: held out for validation (never trained on): whole locations / cells
VAL_KEYS = ("bigearthnet:4_55", "terramesh:637U_59R_1_3", "3mos:SEN_city_08", "3mos:SEN_city_09",
            "3mos:GF3_city_08", "3mos:GF3_city_09")
MODALITY_IDS = {"sar": 0, "optical": 1, "multispectral": 2}


@dataclass
class CacheBuilder:
    root: Path
    images_dn: list = field(default_factory=list)
    images_raw: list = field(default_factory=list)
    valids: list = field(default_factory=list)
    meta: list = field(default_factory=list)          # per image: name, modality, domain
    pairs: list = field(default_factory=list)         # (a, b, kind, source, key)

    def add_image(self, name: str, data: np.ndarray, valid: np.ndarray, dtype: str, modality: str,
                  domain: str, bands: tuple[int, ...] | None = None, descriptions=()) -> int:
        from ..preprocess import prepare

        descs = list(descriptions) or [""] * data.shape[0]
        dn = prepare(data, valid, dtype, descs, "training image", name, modality, bands, True)
        raw = prepare(data, valid, dtype, descs, "training image", name, modality, bands, False)
        self.images_dn.append(np.clip(dn.image, -8, 8).astype(np.float16))
        self.images_raw.append(np.clip(raw.image, -8, 8).astype(np.float16))
        self.valids.append(dn.valid.astype(np.uint8))
        self.meta.append({"name": name, "modality": modality, "domain": domain})
        return len(self.meta) - 1

    def add_pair(self, a: int, b: int, kind: str, source: str, key: str) -> None:
        self.pairs.append((a, b, kind, source, key))

    def save(self, path: Path) -> dict:
        shapes = np.array([im.shape for im in self.images_dn], np.int32)
        offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]).astype(np.int64)
        split = np.array([1 if p[4] in VAL_KEYS else 0 for p in self.pairs], np.int8)
        domains = sorted({m["domain"] for m in self.meta})
        summary = {
            "images": len(self.meta), "pairs": len(self.pairs), "val_pairs": int(split.sum()),
            "pixels": int(offsets[-1]), "domains": domains,
            "sources": {s: sum(1 for p in self.pairs if p[3] == s) for s in LICENCES},
            "licences": LICENCES, "val_keys": list(VAL_KEYS),
            "kinds": sorted({p[2] for p in self.pairs}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            pixels_dn=np.concatenate([im.ravel() for im in self.images_dn]),
            pixels_raw=np.concatenate([im.ravel() for im in self.images_raw]),
            valid=np.concatenate([v.ravel() for v in self.valids]),
            shapes=shapes, offsets=offsets,
            modality=np.array([MODALITY_IDS[m["modality"]] for m in self.meta], np.int8),
            domain=np.array([domains.index(m["domain"]) for m in self.meta], np.int16),
            names=np.array([m["name"] for m in self.meta]),
            pair_index=np.array([[p[0], p[1]] for p in self.pairs], np.int32),
            pair_kind=np.array([p[2] for p in self.pairs]),
            pair_source=np.array([p[3] for p in self.pairs]),
            pair_key=np.array([p[4] for p in self.pairs]),
            split=split,
            summary=np.array(json.dumps(summary)),
        )
        return summary


def _read(path, bands=None, out_grid=None):
    from ..io.raster import open_raster_info, read_bands

    info = open_raster_info(path)
    data, valid = read_bands(path, bands=bands, out_grid=out_grid)
    return info, data, valid


def _s2_views(cb: CacheBuilder, prefix: str, stack: dict, valid: np.ndarray, domain: str) -> dict:
    """Views of one S2 acquisition: the engine's multispectral reduction and single bands."""
    names = [b for b in ("B2", "B3", "B4", "B8") if b in stack]
    out = {}
    if len(names) == 4:
        data = np.stack([stack[b] for b in names])
        out["ms"] = cb.add_image(f"{prefix}:ms", data, valid, "UInt16", "multispectral", domain,
                                 descriptions=names)
    for b in ("B4", "B8", "B11", "B12"):
        if b in stack:
            out[b] = cb.add_image(f"{prefix}:{b}", stack[b][None], valid, "UInt16", "multispectral", domain,
                                  bands=(1,))
    return out


def _s1_views(cb: CacheBuilder, prefix: str, vv: np.ndarray, vh: np.ndarray | None, valid: np.ndarray,
              domain: str) -> dict:
    out = {"VV": cb.add_image(f"{prefix}:VV", vv[None], valid, "Float32", "sar", domain, descriptions=["VV"])}
    if vh is not None:
        out["VH"] = cb.add_image(f"{prefix}:VH", vh[None], valid, "Float32", "sar", domain, descriptions=["VH"])
    return out


def _link(cb: CacheBuilder, s1: dict, s2: dict, source: str, key: str) -> None:
    """SAR-optical pairs (VV and VH against the multispectral reduction / B4 / B8) and band pairs."""
    for pol in ("VV", "VH"):
        for v in ("ms", "B4", "B8"):
            if pol in s1 and v in s2:
                cb.add_pair(s1[pol], s2[v], "sar-ms", source, key)
    for v in ("B8", "B11", "B12"):
        if "B4" in s2 and v in s2:
            cb.add_pair(s2["B4"], s2[v], "band-band", source, key)


def add_bigearthnet(cb: CacheBuilder) -> None:
    base = cb.root / "bigearthnet_example"
    for s2dir in sorted((base / "BigEarthNet-S2-Example").iterdir()):
        patch = "_".join(s2dir.name.split("_")[-2:])
        s1dir = next((base / "BigEarthNet-S1-Example").glob(f"*_{patch}"))
        ref = s2dir / f"{s2dir.name}_B04.tif"
        from ..io.raster import open_raster_info

        grid = open_raster_info(ref).grid
        stack, valid = {}, None
        for b in ("B02", "B03", "B04", "B08", "B11", "B12"):
            _, d, v = _read(s2dir / f"{s2dir.name}_{b}.tif", out_grid=grid)
            stack[f"B{int(b[1:])}"] = d[0]
            valid = v if valid is None else valid & v
        _, vv, v1 = _read(s1dir / f"{s1dir.name}_VV.tif", out_grid=grid)
        _, vh, v2 = _read(s1dir / f"{s1dir.name}_VH.tif", out_grid=grid)
        valid = valid & v1 & v2
        key = f"bigearthnet:{patch}"
        s2 = _s2_views(cb, key + ":S2", stack, valid, "bigearthnet:S2")
        s1 = _s1_views(cb, key + ":S1", vv[0], vh[0], valid, "bigearthnet:S1")
        _link(cb, s1, s2, "bigearthnet", key)


def add_gefolki(cb: CacheBuilder) -> None:
    d = cb.root / "gefolki_EvalGeFolki" / "S1S2"
    i1, s1, v1 = _read(d / "S1_patch11.tif", bands=[1])
    i2, s2, v2 = _read(d / "S2_patch11.tif")
    valid = v1 & v2
    a = cb.add_image("gefolki:S1", s1, valid, i1.dtypes[0], "sar", "gefolki:S1")
    b = cb.add_image("gefolki:S2", s2, valid, i2.dtypes[0], "optical", "gefolki:S2")
    cb.add_pair(a, b, "sar-opt", "gefolki_s1s2", "gefolki:patch11")


def add_3mos(cb: CacheBuilder) -> None:
    d = cb.root / "3mos_montage_samples" / "split"
    for opt in sorted(d.glob("*_opt.png")):
        stem = opt.name[:-8]
        sensor = stem.split("_")[0]
        i1, o, v1 = _read(opt)
        i2, s, v2 = _read(d / f"{stem}_sar.png")
        valid = v1 & v2
        a = cb.add_image(f"3mos:{stem}:opt", o, valid, i1.dtypes[0], "optical", "3mos:optical")
        b = cb.add_image(f"3mos:{stem}:sar", s, valid, i2.dtypes[0], "sar", f"3mos:{sensor}")
        cb.add_pair(b, a, "sar-opt", "3mos", f"3mos:{stem}")


def add_terramesh(cb: CacheBuilder) -> None:
    d = cb.root.parent / "data" / "more_s1s2" / "terramind_terramesh_examples" \
        if not (cb.root / "more_s1s2").exists() else cb.root / "more_s1s2" / "terramind_terramesh_examples"
    order = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
    for f in sorted((d / "S1RTC").glob("*.tif")):
        key = f"terramesh:{f.stem}"
        _, s1, v1 = _read(f)
        _, l2a, v2 = _read(d / "S2L2A" / f.name)
        i3, rgb, v3 = _read(d / "S2RGB" / f.name)
        valid = v1 & v2 & v3
        s1v = _s1_views(cb, key + ":S1", s1[0], s1[1], valid, "terramesh:S1RTC")
        stack = {b: l2a[i] for i, b in enumerate(order) if b in ("B2", "B3", "B4", "B8", "B11", "B12")}
        s2v = _s2_views(cb, key + ":S2", stack, valid, "terramesh:S2L2A")
        _link(cb, s1v, s2v, "terramesh", key)
        r = cb.add_image(key + ":RGB", rgb, valid, i3.dtypes[0], "optical", "terramesh:S2RGB")
        cb.add_pair(s1v["VV"], r, "sar-opt", "terramesh", key)


def _netcdf(path: Path, var: str) -> tuple[np.ndarray, None]:
    """All time steps (bands) of one NetCDF variable, float32 (T, H, W); nodata handled by the caller."""
    from osgeo import gdal

    if not path.is_file():
        raise FileNotFoundError(path)
    ds = gdal.Open(f'NETCDF:"{path}":{var}')
    return ds.ReadAsArray().astype(np.float32).reshape(ds.RasterCount, ds.RasterYSize, ds.RasterXSize), None


def _s1_db(dn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = (dn > 0) & (dn != 32769) & np.isfinite(dn)
    return np.where(ok, 20.0 * np.log10(np.maximum(dn, 1.0)) - 83.0, np.nan).astype(np.float32), ok


def add_worldcereal(cb: CacheBuilder) -> None:
    f = cb.root / "more_s1s2" / "worldcereal_openeo_s1s2_composites" / "worldcereal_preprocessed_inputs.nc"
    vv, _ = _netcdf(f, "S1-SIGMA0-VV")
    vh, _ = _netcdf(f, "S1-SIGMA0-VH")
    bands = {b: _netcdf(f, f"S2-L2A-B{b[1:].zfill(2)}")[0] for b in ("B2", "B3", "B4", "B8", "B11", "B12")}
    for t in range(vv.shape[0]):
        key = f"worldcereal:t{t:02d}"
        dvv, ok1 = _s1_db(vv[t])
        dvh, ok2 = _s1_db(vh[t])
        stack = {b: a[t] for b, a in bands.items()}
        valid = ok1 & ok2 & np.all([np.isfinite(a) & (a > 0) for a in stack.values()], axis=0)
        if valid.mean() < 0.9:
            continue
        try:  # some monthly composites are empty (constant) in one band: skip that month
            s2 = _s2_views(cb, key + ":S2", stack, valid, "worldcereal:S2")
        except Exception:
            continue
        s1 = _s1_views(cb, key + ":S1", dvv, dvh, valid, "worldcereal:S1")
        _link(cb, s1, s2, "worldcereal", key)


def add_gfmap(cb: CacheBuilder) -> None:
    d = cb.root / "more_s1s2" / "openeo_gfmap_cdse_s1s2"
    vv, _ = _netcdf(d / "cdse_sentinel1_grd.nc", "S1-SIGMA0-VV")
    vh, _ = _netcdf(d / "cdse_sentinel1_grd.nc", "S1-SIGMA0-VH")
    b4, _ = _netcdf(d / "cdse_sentinel2_l2a.nc", "S2-L2A-B04")
    b8, _ = _netcdf(d / "cdse_sentinel2_l2a.nc", "S2-L2A-B08")
    b11, _ = _netcdf(d / "cdse_sentinel2_l2a.nc", "S2-L2A-B11")
    for t2 in (1, 4, 5, 11):  # the clearer S2 dates (SOURCES.md)
        t1 = min(int(round(t2 * (vv.shape[0] - 1) / (b4.shape[0] - 1))), vv.shape[0] - 1)
        key = f"gfmap:t{t2:02d}"
        dvv, ok1 = _s1_db(vv[t1])
        dvh, ok2 = _s1_db(vh[t1])
        stack = {"B4": b4[t2], "B8": b8[t2], "B11": b11[t2]}
        valid = ok1 & ok2 & np.all([np.isfinite(a) & (a > 0) for a in stack.values()], axis=0)
        if valid.mean() < 0.9:
            continue
        s1 = _s1_views(cb, key + ":S1", dvv, dvh, valid, "gfmap:S1")
        s2 = _s2_views(cb, key + ":S2", stack, valid, "gfmap:S2")
        _link(cb, s1, s2, "gfmap", key)


def add_ssl4eo(cb: CacheBuilder) -> None:
    from ..io.raster import open_raster_info

    d = cb.root / "more_s1s2" / "ssl4eo_s12_via_rico_hdl" / "SSL4EO-S12"
    s1dirs = sorted((d / "s1" / "0000200").iterdir())
    s2dirs = sorted((d / "s2a" / "0000200").iterdir())
    for season, (s1d, s2d) in enumerate(zip(s1dirs, s2dirs)):
        grid = open_raster_info(s1d / "VV.tif").grid       # S2 is warped onto the S1 grid (georeferencing)
        _, vv, v1 = _read(s1d / "VV.tif")
        _, vh, v2 = _read(s1d / "VH.tif")
        stack, valid = {}, v1 & v2
        for b in ("B2", "B3", "B4", "B8", "B11", "B12"):
            _, a, v = _read(s2d / f"{b}.tif", out_grid=grid)
            stack[b] = a[0]
            valid &= v
        key = f"ssl4eo:0000200:{season}"
        s1 = _s1_views(cb, key + ":S1", vv[0], vh[0], valid, "ssl4eo:S1")
        s2 = _s2_views(cb, key + ":S2", stack, valid, "ssl4eo:S2")
        _link(cb, s1, s2, "ssl4eo", key)


def build_cache(shared_data: str | Path, out: str | Path, log=print) -> dict:
    """Read every redistributable pair under ``shared_data`` and write the cache ``out`` (.npz)."""
    from ..io.gdal_env import gdal_exceptions

    cb = CacheBuilder(Path(shared_data))
    for name, fn in (("bigearthnet", add_bigearthnet), ("gefolki", add_gefolki), ("3mos", add_3mos),
                     ("terramesh", add_terramesh), ("worldcereal", add_worldcereal), ("gfmap", add_gfmap),
                     ("ssl4eo", add_ssl4eo)):
        n0, p0 = len(cb.meta), len(cb.pairs)
        try:
            with gdal_exceptions():  # a GDAL error skips the source with its message
                fn(cb)
        except Exception as exc:  # a missing folder in this copy of the data: say so, go on
            log(f"  {name}: skipped ({type(exc).__name__}: {exc})")
            continue
        log(f"  {name}: {len(cb.meta) - n0} images, {len(cb.pairs) - p0} pairs")
    if not cb.pairs:
        raise RuntimeError(f"No training pair found under {shared_data}.")
    summary = cb.save(Path(out))
    log(json.dumps({k: summary[k] for k in ("images", "pairs", "val_pairs", "pixels", "sources")}))
    return summary



