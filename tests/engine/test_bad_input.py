"""Bad input through the CLI: a non-zero exit, one clear line on stderr, nothing under the output names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from osgeo import gdal

from hsscl.engine import cli
from hsscl.engine.pipeline import OUTPUT_NAMES

gdal.UseExceptions()


def like(src: str, path: Path, data: np.ndarray | None = None, *, gt=None, srs: bool = True,
         dtype=gdal.GDT_Float32, nodata: float | None = None) -> str:
    """A raster on ``src``'s grid (or ``gt``), holding ``data`` (default: a copy of src's pixels)."""
    ds = gdal.Open(src)
    a = ds.ReadAsArray() if data is None else data
    o = gdal.GetDriverByName("GTiff").Create(str(path), a.shape[1], a.shape[0], 1, dtype)
    g = list(ds.GetGeoTransform())
    o.SetGeoTransform(gt or g)
    if srs:
        o.SetProjection(ds.GetProjection())
    b = o.GetRasterBand(1)
    if nodata is not None:
        b.SetNoDataValue(nodata)
    b.WriteArray(a)
    o = None
    return str(path)


def fail(capsys, argv: list[str], outdir: Path | None = None, expect_rc: int = 2) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == expect_rc, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hsscl: error: ")
    if outdir is not None and outdir.exists():
        left = [p.name for p in outdir.iterdir() if p.name in OUTPUT_NAMES.values() or ".tmp-" in p.name]
        assert left == [], left
    return lines[0]


def coreg(ref: str, tgt: str, outdir: Path, *extra: str) -> list[str]:
    return ["coregister", ref, tgt, "-o", str(outdir), "-q", *extra]


def test_no_overlap_between_utm_zones(ben, tmp_path, capsys):
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], ben["vv_zone33"], out), out)
    assert "do not overlap" in line


def test_no_overlap_geotransform_moved_far_away(ben, tmp_path, capsys):
    g = list(gdal.Open(ben["vv"]).GetGeoTransform())
    g[0] += 500_000.0
    moved = like(ben["vv"], tmp_path / "moved.tif", gt=g)
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], moved, out), out)
    assert "do not overlap" in line


def test_raster_without_crs_with_one_that_has_one(ben, tmp_path, capsys):
    plain = like(ben["vv"], tmp_path / "no_crs.tif", srs=False)
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], plain, out), out)
    assert "coordinate reference system" in line


def test_non_raster_text_file(ben, tmp_path, capsys):
    text = tmp_path / "readme.tif"
    text.write_text("hello, I am text\n")
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], str(text), out), out)
    assert "readme.tif" in line and "raster" in line


def test_missing_file(ben, tmp_path, capsys):
    out = tmp_path / "out"
    line = fail(capsys, coreg(str(tmp_path / "nope.tif"), ben["vv"], out), out)
    assert "not found" in line


def test_all_nodata_image(ben, tmp_path, capsys):
    empty = like(ben["vv"], tmp_path / "empty.tif", np.full((120, 120), -9999, np.float32), nodata=-9999)
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], empty, out), out)
    assert "nodata" in line or "no valid pixels" in line


def test_constant_image(ben, tmp_path, capsys):
    const = like(ben["b04"], tmp_path / "const.tif", np.full((120, 120), 1234, np.uint16), dtype=gdal.GDT_UInt16)
    out = tmp_path / "out"
    line = fail(capsys, coreg(const, ben["vv"], out), out)
    assert "constant" in line


def test_image_smaller_than_the_matching_window(ben, tmp_path, capsys):
    small = str(tmp_path / "small.tif")
    gdal.Translate(small, ben["b04"], srcWin=[50, 50, 20, 20])
    out = tmp_path / "out"
    line = fail(capsys, coreg(small, ben["vv"], out), out)
    assert "too small" in line


def test_images_too_small_for_enough_windows_say_so(ben, tmp_path, capsys):
    """64 x 64 px real S2 crops (B08 onto B04, 3 px apart, so 61 x 64 px overlap): only a few matching windows fit, fewer than the
    evidence needs; the message says the images are too small and how large they must be, not "0 of 0
    windows agree"."""
    a, b = str(tmp_path / "b04.tif"), str(tmp_path / "b08.tif")
    gdal.Translate(a, ben["b04"], srcWin=[30, 30, 64, 64])
    gdal.Translate(b, ben["b08"], srcWin=[33, 30, 64, 64])
    out = tmp_path / "out"
    line = fail(capsys, coreg(a, b, out), out)
    assert "too small to match (61x64 px)" in line and "at least about 100 px" in line, line  # the overlap


def test_not_enough_matches_pure_noise_vs_real_image(ben, tmp_path, capsys):
    noise = like(ben["b04"], tmp_path / "noise.tif",
                 np.random.default_rng(0).normal(1000, 300, (120, 120)).astype(np.float32))
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], noise, out), out, expect_rc=3)
    assert "tie point" in line or "alignment" in line


def test_output_folder_not_writable(ben, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, so no folder can be made under it (even as root)\n")
    out = blocker / "out"
    line = fail(capsys, coreg(ben["b04"], ben["b08"], out))
    assert "output folder" in line or "Cannot" in line
    assert blocker.read_text().startswith("a regular file")


def test_output_exists_is_refused_unless_overwrite(ben, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{\"old\": true}")
    rc = cli.main(coreg(ben["b04"], ben["b08"], out))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "already exist" in lines[0] and "--overwrite" in lines[0]
    assert json.loads((out / "report.json").read_text()) == {"old": True}
    assert not (out / "coregistered.tif").exists()
    rc = cli.main(coreg(ben["b04"], ben["b08"], out, "--overwrite"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads((out / "report.json").read_text())
    assert "model" in rep and "old" not in rep
    for name in OUTPUT_NAMES.values():
        assert (out / name).is_file(), name
