"""Build the bundled sample pair (run once; its outputs are committed under resources/sample/).

Reference: Sentinel-2 RGB patch of GeFolki's EvalGeFolki S1S2 set (EPSG:32631, 10 m, 448 x 448).
Target: the co-located Sentinel-1 patch, resampled through a known similarity transform while keeping
its original georeferencing, so its content is misregistered by exactly that transform.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from osgeo import gdal
from scipy.ndimage import map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

gdal.UseExceptions()
SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data") / "gefolki_EvalGeFolki" / "S1S2"
OUT = Path(__file__).resolve().parents[1] / "resources" / "sample"
# target pixel (x, y) shows what the original S1 shows at  S @ (x, y)  (about the image centre)
ROTATION_DEG, SCALE, SHIFT = 2.0, 1.02, (12.5, -8.25)


def similarity(width: int, height: int) -> np.ndarray:
    th = np.deg2rad(ROTATION_DEG)
    r = SCALE * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    c = np.array([width / 2, height / 2])
    t = c - r @ c + np.array(SHIFT)
    return np.concatenate([r, t[:, None]], 1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    opts = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=3", "ZLEVEL=9"]
    gdal.Translate(str(OUT / "s2_reference.tif"), str(SRC / "S2_patch11.tif"), creationOptions=opts)
    ds = gdal.Open(str(SRC / "S1_patch11.tif"))
    band = ds.GetRasterBand(1).ReadAsArray().astype(np.float32)  # both bands are identical upstream
    h, w = band.shape
    a = similarity(w, h)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    src = np.stack([xx.ravel(), yy.ravel()], 1) @ a[:, :2].T + a[:, 2]
    out = map_coordinates(band, [src[:, 1] - 0.5, src[:, 0] - 0.5], order=3, cval=np.nan, mode="constant")
    out = out.reshape(h, w).astype(np.float32)
    drv = gdal.GetDriverByName("GTiff")
    dst = drv.Create(str(OUT / "s1_target_misregistered.tif"), w, h, 1, gdal.GDT_Float32, options=opts)
    dst.SetGeoTransform(ds.GetGeoTransform())
    dst.SetProjection(ds.GetProjection())
    b = dst.GetRasterBand(1)
    b.SetNoDataValue(float("nan"))
    b.SetDescription("VV")
    b.WriteArray(out)
    dst = None
    truth = {"description": "target pixel (x, y) shows the ground that the reference shows at M @ (x, y, 1); "
                            "pixel coordinates with (0, 0) the top-left corner (GDAL).",
             "target_to_reference_pixel": a.tolist(), "rotation_deg": ROTATION_DEG, "scale": SCALE,
             "shift_px": list(SHIFT), "center": [w / 2, h / 2]}
    (OUT / "truth.json").write_text(json.dumps(truth, indent=2))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
