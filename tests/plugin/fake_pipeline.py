"""A stand-in for ``hsscl.engine.pipeline`` with the documented API, for fast plumbing tests (error
conversion, cancel, output delivery). It writes outputs of the documented shape from the real inputs; the
tests against the real engine live in test_processing_real.py / test_dock.py."""
from __future__ import annotations

import json
import os
import shutil
import time
from types import SimpleNamespace

from hsscl.engine.errors import HSSCLError, InputError

behaviour = SimpleNamespace(fail=None, delay=0.0, steps=5)


def _grid(path):
    from osgeo import gdal

    ds = gdal.Open(path)
    if ds is None:
        raise InputError(f"Cannot read the raster '{path}'.", "Check that the file exists and is a raster.")
    return ds.GetGeoTransform(), ds.GetProjection(), ds.RasterXSize, ds.RasterYSize


def _work(monitor):
    for i in range(behaviour.steps + 1):
        if monitor is not None:
            monitor.report(i / behaviour.steps, f"step {i}")
        time.sleep(behaviour.delay)
    if behaviour.fail is not None:
        raise behaviour.fail


def write_tiepoints(path, ref_path, tgt_path, n=12):
    import numpy as np

    from hsscl.engine.io.raster import open_raster_info
    from hsscl.engine.io.vector import write_tiepoints_gpkg

    ref, tgt = open_raster_info(ref_path), open_raster_info(tgt_path)
    i = np.arange(n)
    rx, ry = (i % 4 + 0.5) * ref.width / 4, (i // 4 + 0.5) * ref.height / 3
    table = dict(ref_x=rx, ref_y=ry, tgt_x=rx + 1.5, tgt_y=ry - 0.5, score=np.full(n, 0.9),
                 residual_px=0.1 * i, inlier=(i < n - 2).astype(int), check=(i % 5 == 0).astype(int))
    return write_tiepoints_gpkg(path, table, ref.grid, tgt.grid)


def coregister(reference, target, outdir, config, monitor=None):
    from osgeo import gdal

    _grid(reference)
    _grid(target)
    _work(monitor)
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, "coregistered.tif")
    gdal.Translate(out, target, format="GTiff")
    ties = write_tiepoints(os.path.join(outdir, "tiepoints.gpkg"), reference, target)
    report = {"rmse_px": 0.42, "n_tiepoints": 12, "n_inliers": 10, "transform": config.transform,
              "adapt": config.adapt, "extent": config.extent}
    with open(os.path.join(outdir, "report.json"), "w") as f:
        json.dump(report, f)
    with open(os.path.join(outdir, "correction.json"), "w") as f:
        json.dump({"model": {"type": "shift"}}, f)
    outputs = {"raster": out, "tiepoints": ties, "report": os.path.join(outdir, "report.json"),
               "correction": os.path.join(outdir, "correction.json")}
    return SimpleNamespace(outputs=outputs, rmse_px=0.42, n_tiepoints=12, n_inliers=10, report=report,
                           config=config)


class _Ties:
    def __init__(self, table):
        self.table = table

    def __len__(self):
        return len(self.table["ref_x"])

    @property
    def n_inliers(self):
        return int(self.table["inlier"].sum())

    def as_table(self):
        return self.table


class _Correction:
    def __init__(self, reference, target):
        from hsscl.engine.io.raster import open_raster_info

        self.reference, self.target = open_raster_info(reference).grid, open_raster_info(target).grid

    def save(self, path):
        with open(path, "w") as f:
            json.dump({"model": {"type": "shift"}}, f)


def match(image_a, image_b, config, monitor=None):
    import numpy as np

    from hsscl.engine.io.raster import open_raster_info

    _grid(image_a)
    _grid(image_b)
    _work(monitor)
    ref = open_raster_info(image_a)
    i = np.arange(12)
    table = dict(ref_x=(i % 4 + 0.5) * ref.width / 4, ref_y=(i // 4 + 0.5) * ref.height / 3, score=np.full(12, 0.9),
                 residual_px=0.1 * i, inlier=(i < 10).astype(int), check=(i % 5 == 0).astype(int))
    table.update(tgt_x=table["ref_x"] + 1.5, tgt_y=table["ref_y"] - 0.5)
    return SimpleNamespace(tiepoints=_Ties(table), correction=_Correction(image_a, image_b),
                           report={"rmse_px": {"fit": 0.4, "check": 0.42}})


def apply_tiepoints(tiepoints, reference, raster, out, transform="auto", grid="reference", overwrite=False,
                    monitor=None):
    from hsscl.engine.io.vector import read_tiepoints_gpkg

    table = read_tiepoints_gpkg(tiepoints)
    _work(monitor)
    shutil.copyfile(raster, out)
    return out, {"model": transform, "reason": "fake", "points": int(table["inlier"].sum()),
                 "rmse_fit_px": 0.3, "rmse_check_px": None}


__all__ = ["HSSCLError", "coregister", "match", "apply_tiepoints", "behaviour"]
