"""The command-line contract: coregister / apply / match, exit codes, one-line errors, CSV columns."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from hsscl.engine import cli
from hsscl.engine.pipeline import OUTPUT_NAMES

gdal.UseExceptions()

OPT_PNG = "osmnet_osdataset_samples/opt1.png"   # 256x256 Byte, no georeferencing
SHIFT = (9, 5)                                   # b = a[5:, 9:]: a pixel (x, y) is b pixel (x - 9, y - 5)


def hsscl_command() -> list[str]:
    exe = Path(sys.executable).with_name("hsscl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hsscl.engine.cli"]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*hsscl_command(), *args], capture_output=True, text=True, timeout=timeout)


def write_png(path: Path, a: np.ndarray) -> str:
    mem = gdal.GetDriverByName("MEM").Create("", a.shape[1], a.shape[0], 1, gdal.GDT_Byte)
    mem.GetRasterBand(1).WriteArray(a.astype(np.uint8))
    gdal.GetDriverByName("PNG").CreateCopy(str(path), mem)
    return str(path)


def leftovers(folder: Path) -> list[str]:
    """Output names or temporary files present in ``folder``."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in OUTPUT_NAMES.values() or ".tmp-" in p.name)


def assert_one_line_error(rc: int, err: str, expect_rc: int | None = None) -> str:
    assert rc != 0
    if expect_rc is not None:
        assert rc == expect_rc, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hsscl: error: ") and len(lines[0]) > 30, lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def crop_pair(data_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    ds = gdal.Open(data_file(OPT_PNG))
    a = ds.ReadAsArray()
    a = a if a.ndim == 2 else a[0]
    b = a[SHIFT[1]:, SHIFT[0]:]
    return data_file(OPT_PNG), write_png(tmp / "b_cropped.png", b), tmp


@pytest.fixture(scope="module")
def match_csv(crop_pair):
    a, b, tmp = crop_pair
    out = tmp / "matches.csv"
    r = run("match", a, b, "-o", str(out))
    return r, out


def test_help_lists_the_three_commands():
    r = run("--help", timeout=120)
    assert r.returncode == 0
    for c in ("coregister", "apply", "match"):
        assert c in r.stdout


def test_match_csv_columns_and_known_integer_shift(match_csv):
    r, out = match_csv
    assert r.returncode == 0, r.stderr
    assert "Wrote" in r.stdout and str(out) in r.stdout
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["a_x", "a_y", "b_x", "b_y", "score", "inlier"]
    t = np.array(rows[1:], dtype=float)
    assert len(t) >= 20
    assert set(np.unique(t[:, 5])) <= {0.0, 1.0}
    inl = t[t[:, 5] == 1]
    assert len(inl) >= 0.5 * len(t)
    d = inl[:, 2:4] - inl[:, 0:2]
    expect = -np.asarray(SHIFT, float)
    assert np.linalg.norm(np.median(d, 0) - expect) < 0.3, np.median(d, 0)
    assert np.linalg.norm(d.mean(0) - expect) < 0.3, d.mean(0)
    assert (np.linalg.norm(d - expect, axis=1) < 1.0).all()
    # (0, 0) = top-left corner of the top-left pixel: template centres are pixel centres (i + 0.5)
    np.testing.assert_allclose(inl[:, 0:2] % 1.0, 0.5, atol=1e-3)
    # inside both images
    assert (inl[:, 0:2] >= 0).all() and (inl[:, 0] <= 256).all() and (inl[:, 2] <= 256 - SHIFT[0]).all()


def test_match_refuses_an_existing_csv_then_overwrites(crop_pair, match_csv):
    a, b, tmp = crop_pair
    out = tmp / "exists.csv"
    out.write_text("keep me\n")
    r = run("match", a, b, "-o", str(out))
    line = assert_one_line_error(r.returncode, r.stderr)
    assert "exist" in line and "--overwrite" in line
    assert out.read_text() == "keep me\n"


def test_coregister_and_apply_in_process(crop_pair, tmp_path, capsys):
    a, b, _ = crop_pair
    outdir = tmp_path / "out"
    rc = cli.main(["coregister", a, b, "-o", str(outdir), "--seed", "0"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    for key in ("model:", "tie points:", "residual RMSE", "time:"):
        assert key in cap.out, key
    assert "%]" in cap.err  # progress on stderr (not with -q)
    for name in OUTPUT_NAMES.values():
        assert (outdir / name).is_file(), name
    rep = json.loads((outdir / "report.json").read_text())
    assert rep["space"].startswith("pixel")
    # apply the correction to the target itself: same as coregistered.tif
    out = tmp_path / "applied.tif"
    rc = cli.main(["apply", str(outdir), b, "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert f"Wrote {out}" in cap.out
    x = gdal.Open(str(out)).ReadAsArray()
    y = gdal.Open(str(outdir / "coregistered.tif")).ReadAsArray()
    np.testing.assert_array_equal(x, y)


def test_apply_without_a_correction_fails_cleanly(crop_pair, tmp_path):
    _, b, _ = crop_pair
    out = tmp_path / "o.tif"
    r = run("apply", str(tmp_path), b, "-o", str(out))
    line = assert_one_line_error(r.returncode, r.stderr, 2)
    assert "correction" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_failure_is_one_line_without_traceback_and_leaves_nothing(crop_pair, tmp_path):
    _, b, _ = crop_pair
    text = tmp_path / "notes.txt"
    text.write_text("this is not a raster\n")
    outdir = tmp_path / "out"
    r = run("coregister", str(text), b, "-o", str(outdir), "-q")
    line = assert_one_line_error(r.returncode, r.stderr, 2)
    assert "notes.txt" in line and "raster" in line
    assert r.stdout == ""
    assert leftovers(outdir) == []


def test_usage_error_exits_2(tmp_path):
    r = run("coregister", "only-one-argument", timeout=120)
    assert r.returncode == 2 and "usage" in r.stderr and "Traceback" not in r.stderr


def test_match_failure_writes_no_csv(crop_pair, tmp_path):
    a, _, _ = crop_pair
    noise = write_png(tmp_path / "noise.png", np.random.default_rng(0).integers(0, 256, (256, 256)))
    out = tmp_path / "m.csv"
    r = run("match", a, noise, "-o", str(out))
    assert_one_line_error(r.returncode, r.stderr, 3)
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []
