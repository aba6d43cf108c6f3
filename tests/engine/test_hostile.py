"""Hostile input, each a test, nothing lost (issue 7).

Every failure goes through the public API or the CLI and must end with a non-zero exit, one
``hsscl: error:`` line saying what is wrong and what to do, no traceback, nothing under the output
names (no temporary files either) and the input files byte-for-byte untouched. Every odd-but-valid input
(another CRS and pixel size, complex SAR, 16-bit / float / 13-band rasters) must register.

Where each case of the issue is tested (this module unless named):
    no overlap ............................ test_bad_input (2 ways); here with inputs checked
    missing CRS on one input .............. test_bad_input; here with inputs checked
    other CRS + coarser pixels ............ test_reprojected_coarser_target_registers
    all-nodata / constant / tiny .......... test_bad_input; NaN-filled, 1 px and 3 px here
    complex SAR ........................... test_complex_sar_target_registers (test_io: amplitude read)
    16-bit, float32, 13 bands ............. test_multiband_and_dtypes_register
    shift beyond the search range ......... test_shift_beyond_the_search_range_is_refused
    truncated GeoTIFF / text file ......... test_truncated_geotiff_fails_cleanly; text: test_bad_input, test_cli;
                                            a folder or /dev/null: test_folder_or_device_given_as_a_raster
    negative --max-shift .................. test_negative_search_radius_is_a_clear_error
    output folder not writable ............ test_bad_input (path under a file); test_unwritable_output_folder
    output exists ......................... test_bad_input, test_cli (match), test_warp; test_existing_outputs_untouched
    cancel midway ......................... test_cancel_midway_leaves_nothing (test_warp: apply_correction alone)
    CUDA requested but absent ............. test_cuda_requested_but_absent_falls_back_to_cpu
    weights missing / corrupt ............. test_network (API); test_bad_weights_through_the_cli
    same inputs + seed = same tie points .. test_pipeline (estimate); test_same_seed_same_csv_bytes (CLI)
    weights never unpickled ............... test_pickled_weights_are_refused_unread, test_source_never_unpickles...
    no shell=True subprocess .............. test_source_never_unpickles_nor_runs_a_shell
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from hsscl.engine import cli, pipeline
from hsscl.engine.config import CoregConfig
from hsscl.engine.correction import Correction
from hsscl.engine.errors import CancelledError
from hsscl.engine.io.raster import open_raster_info, transform_points
from hsscl.engine.pipeline import OUTPUT_NAMES
from hsscl.engine.progress import Monitor

gdal.UseExceptions()

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "sample"
TERRAMESH = "more_s1s2/terramind_terramesh_examples/{}/637U_59R_1_3.tif"   # 224 px, EPSG:32632, Int16


# ------------------------------------------------------------------------------------------ helpers

def fingerprint(paths) -> dict[str, tuple[str, int, int]]:
    """sha256, size and mtime of each input file (to prove that nothing touched them)."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[str(p)] = (hashlib.sha256(Path(p).read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def leftovers(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name in OUTPUT_NAMES.values() or ".tmp-" in p.name)


def fail(capsys, argv: list[str], outdir: Path | None, inputs, expect_rc: int = 2) -> str:
    """Run the CLI, expect a clean one-line failure; inputs unchanged, nothing under the outputs."""
    before = fingerprint(inputs)
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == expect_rc, cap.err
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("hsscl: error: ") and len(lines[0]) > 40, lines[0]
    if outdir is not None:
        assert leftovers(outdir) == [], leftovers(outdir)
    assert fingerprint(inputs) == before
    return lines[0]


def succeed(capsys, argv: list[str], inputs) -> str:
    before = fingerprint(inputs)
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert fingerprint(inputs) == before
    return cap.out


def coreg(ref, tgt, outdir: Path, *extra: str) -> list[str]:
    # one torch thread: several times faster on a shared 2-core runner (threads do not spin against others)
    return ["coregister", str(ref), str(tgt), "-o", str(outdir), "-q", "--threads", "1", *extra]


def moved(src: str, out: Path, dx: float, dy: float, dtype: str | None = None) -> str:
    """Copy of ``src`` (optionally another data type) whose georeferencing claims it lies (dx, dy) px away.

    The copy's pixel p shows what ``src`` shows at p, so the true correction (reference = ``src``'s grid,
    pixel -> target pixel) is the identity.
    """
    gdal.Translate(str(out), src, outputType=gdal.GetDataTypeByName(dtype) if dtype else gdal.GDT_Unknown)
    ds = gdal.Open(str(out), gdal.GA_Update)
    g = list(ds.GetGeoTransform())
    g[0] += dx * g[1]
    g[3] += dy * g[5]
    ds.SetGeoTransform(g)
    ds = None
    return str(out)


def like(src: str, path: Path, data: np.ndarray, dtype=gdal.GDT_Float32, nodata: float | None = None,
         srs: bool = True) -> str:
    """A one-band raster holding ``data`` with ``src``'s geotransform (and CRS unless ``srs`` is false)."""
    ds = gdal.Open(src)
    o = gdal.GetDriverByName("GTiff").Create(str(path), data.shape[1], data.shape[0], 1, dtype)
    o.SetGeoTransform(ds.GetGeoTransform())
    if srs:
        o.SetProjection(ds.GetProjection())
    if nodata is not None:
        o.GetRasterBand(1).SetNoDataValue(nodata)
    o.GetRasterBand(1).WriteArray(data)
    o = None
    return str(path)


def sample_truth():
    """Reference pixel -> target pixel of the bundled sample pair (truth.json holds target -> reference)."""
    m = np.array(json.loads((SAMPLE / "truth.json").read_text())["target_to_reference_pixel"])
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    return lambda p: p @ inv[:2, :2].T + inv[:2, 2]


def grid_errors(model, truth, lo: float, hi: float, step: float) -> np.ndarray:
    yy, xx = np.mgrid[lo:hi:step, lo:hi:step] + 0.5
    p = np.stack([xx.ravel(), yy.ravel()], 1)
    return np.linalg.norm(model(p) - truth(p), axis=1)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    """``--threads 1`` sets torch's process-wide thread count: give the next modules theirs back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ben_run(ben, tmp_path_factory):
    """One successful coregister of B08 onto B04 (its correction serves 'apply' and overwrite tests)."""
    out = tmp_path_factory.mktemp("ben_run") / "out"
    pipeline.coregister(ben["b04"], ben["b08"], out, CoregConfig(seed=0, threads=1))
    return out


@pytest.fixture(scope="module")
def sample():
    ref, tgt = SAMPLE / "s2_reference.tif", SAMPLE / "s1_target_misregistered.tif"
    if not (ref.is_file() and tgt.is_file()):
        pytest.skip("the bundled sample pair resources/sample/ is missing from this checkout")
    return str(ref), str(tgt)


# ------------------------------------------------------------- failures: inputs untouched, one line

@pytest.mark.parametrize("case", ["no_overlap", "no_crs", "text", "constant", "nan_filled", "nan_reference",
                                  "one_pixel", "three_pixels"])
def test_bad_inputs_fail_cleanly_and_leave_inputs_alone(case, ben, tmp_path, capsys):
    ref, tgt = ben["b04"], ben["b08"]
    if case == "no_overlap":
        tgt, words = ben["vv_zone33"], ["do not overlap"]
    elif case == "no_crs":
        tgt = like(ben["b08"], tmp_path / "no_crs.tif", gdal.Open(ben["b08"]).ReadAsArray(), gdal.GDT_UInt16,
                   srs=False)
        assert open_raster_info(tgt).grid.crs_wkt is None
        words = ["coordinate reference system"]
    elif case == "text":
        tgt = str(tmp_path / "notes.tif")
        Path(tgt).write_text("not a raster, only text\n")
        words = ["notes.tif", "raster"]
    elif case == "constant":
        tgt = like(ben["b08"], tmp_path / "const.tif", np.full((120, 120), 7, np.uint16), gdal.GDT_UInt16)
        words = ["constant"]
    elif case == "nan_filled":  # Float32 full of NaN, no nodata value declared
        tgt = like(ben["b08"], tmp_path / "nan.tif", np.full((120, 120), np.nan, np.float32))
        words = ["target", "no valid pixels"]
    elif case == "nan_reference":
        ref = like(ben["b04"], tmp_path / "nan_ref.tif", np.full((120, 120), np.nan, np.float32))
        words = ["reference", "no valid pixels"]
    else:
        n = 1 if case == "one_pixel" else 3
        tgt = str(tmp_path / f"tiny{n}.tif")
        gdal.Translate(tgt, ben["b08"], srcWin=[50, 50, n, n])
        words = ["too small"]
    out = tmp_path / "out"
    line = fail(capsys, coreg(ref, tgt, out), out, [ref, tgt])
    for w in words:
        assert w in line, line


def test_folder_or_device_given_as_a_raster(ben, tmp_path, capsys):
    folder = tmp_path / "scenes"
    folder.mkdir()
    (folder / "readme.txt").write_text("the rasters are elsewhere\n")
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], folder, out), out, [ben["b04"]])
    assert "is a folder" in line and "raster file" in line, line
    line = fail(capsys, coreg("/dev/null", ben["b04"], out), out, [ben["b04"]])
    assert "/dev/null" in line and "not a readable raster" in line, line


def test_negative_search_radius_is_a_clear_error(ben, tmp_path, capsys):
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], ben["b08"], out, "--max-shift", "-5"), out, [ben["b04"], ben["b08"]])
    assert "max-shift" in line or "search" in line, line


def test_tiny_images_through_match(ben, tmp_path, capsys):
    tiny = str(tmp_path / "tiny.tif")
    gdal.Translate(tiny, ben["b04"], srcWin=[10, 10, 1, 1])
    out = tmp_path / "m.csv"
    line = fail(capsys, ["match", tiny, tiny, "-o", str(out)], None, [tiny])
    assert "too small" in line and not out.exists()


@pytest.mark.parametrize("frac", [0.02, 0.6])
@pytest.mark.parametrize("role", ["reference", "target", "apply"])
def test_truncated_geotiff_fails_cleanly(frac, role, ben, ben_run, tmp_path, capsys):
    src = str(tmp_path / "b08_deflate.tif")
    gdal.Translate(src, ben["b08"], creationOptions=["COMPRESS=DEFLATE", "TILED=YES", "BLOCKXSIZE=32",
                                                     "BLOCKYSIZE=32"])
    data = Path(src).read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[:int(len(data) * frac)])
    out = tmp_path / "out"
    if role == "apply":
        dest = tmp_path / "applied.tif"
        line = fail(capsys, ["apply", str(ben_run), str(bad), "-o", str(dest)], tmp_path, [bad])
        assert not dest.exists()
    else:
        args = (bad, ben["b04"]) if role == "reference" else (ben["b04"], bad)
        line = fail(capsys, coreg(*args, out), out, [bad, ben["b04"]])
    assert "truncated.tif" in line and ("corrupt" in line or "reads completely" in line), line


# ------------------------------------------------------------------------ odd but valid: must register

def test_reprojected_coarser_target_registers(sample, tmp_path, capsys):
    """Target warped to another UTM zone (EPSG:32632, the sample is in 32631) at 20 m instead of 10 m."""
    ref, tgt0 = sample
    tgt = str(tmp_path / "s1_utm32_20m.tif")
    gdal.Warp(tgt, tgt0, dstSRS="EPSG:32632", xRes=20, yRes=20, resampleAlg="bilinear",
              srcNodata=float("nan"), dstNodata=float("nan"))
    g0, g1 = open_raster_info(tgt0).grid, open_raster_info(tgt).grid
    assert "32632" in g1.crs_wkt and g1.resolution == (20.0, 20.0)
    to_tgt0 = sample_truth()

    def truth(p):  # reference px -> original target px -> map (32631) -> map (32632) -> new target px
        return g1.map_to_pixel(transform_points(g0.pixel_to_map(to_tgt0(p)), g0.crs_wkt, g1.crs_wkt))

    out = tmp_path / "out"
    succeed(capsys, coreg(ref, tgt, out, "--seed", "0"), [ref, tgt])
    model = Correction.load(out / "correction.json").model
    e = grid_errors(model, truth, 40, 408, 16)   # in target pixels (20 m)
    assert np.median(e) < 0.6 and np.percentile(e, 90) < 1.0, (np.median(e), np.percentile(e, 90))
    ds = gdal.Open(str(out / "coregistered.tif"))   # on the reference grid (EPSG:32631, 10 m)
    assert (ds.RasterXSize, ds.RasterYSize) == (448, 448)
    assert ds.GetGeoTransform() == gdal.Open(ref).GetGeoTransform()


def test_complex_sar_target_registers(sample, tmp_path, capsys):
    """complex64 GeoTIFF: the sample's SAR amplitude with a random phase; the amplitude is matched."""
    ref, tgt0 = sample
    src = gdal.Open(tgt0)
    inten = src.ReadAsArray()
    amp = np.sqrt(np.where(np.isfinite(inten), inten, 0.0))
    phase = np.random.default_rng(0).uniform(-np.pi, np.pi, amp.shape)
    tgt = str(tmp_path / "slc.tif")
    o = gdal.GetDriverByName("GTiff").Create(tgt, amp.shape[1], amp.shape[0], 1, gdal.GDT_CFloat32)
    o.SetGeoTransform(src.GetGeoTransform())
    o.SetProjection(src.GetProjection())
    o.GetRasterBand(1).WriteArray((amp * np.exp(1j * phase)).astype(np.complex64))
    o = None
    assert open_raster_info(tgt).is_complex
    out = tmp_path / "out"
    succeed(capsys, coreg(ref, tgt, out, "--seed", "0"), [ref, tgt])
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"]["modality"] == "sar"
    e = grid_errors(Correction.load(out / "correction.json").model, sample_truth(), 40, 408, 16)
    assert np.median(e) < 1.0 and np.percentile(e, 90) < 1.5, (np.median(e), np.percentile(e, 90))
    ds = gdal.Open(str(out / "coregistered.tif"))
    assert ds.GetRasterBand(1).DataType == gdal.GDT_CFloat32   # nothing lost: the output stays complex


@pytest.mark.parametrize("ref_type,tgt_type", [(None, None), ("Float32", "UInt16")])
def test_multiband_and_dtypes_register(ref_type, tgt_type, data_file, tmp_path, capsys):
    """Real Sentinel-2: 12-band L2A reference, 13-band L1C target (Int16 as stored, or converted) whose
    georeferencing is 6 px east, 4 px south of the truth; every band of the target is kept."""
    ref = str(tmp_path / "l2a.tif")
    gdal.Translate(ref, data_file(TERRAMESH.format("S2L2A")),
                   outputType=gdal.GetDataTypeByName(ref_type) if ref_type else gdal.GDT_Unknown)
    tgt = moved(data_file(TERRAMESH.format("S2L1C")), tmp_path / "l1c_moved.tif", 6, -4, tgt_type)
    ri, ti = open_raster_info(ref), open_raster_info(tgt)
    assert (ri.count, ti.count) == (12, 13)
    assert ri.dtypes[0] == (ref_type or "Int16") and ti.dtypes[0] == (tgt_type or "Int16")
    out = tmp_path / "out"
    succeed(capsys, coreg(ref, tgt, out, "--seed", "0"), [ref, tgt])
    e = grid_errors(Correction.load(out / "correction.json").model, lambda p: p, 16, 208, 16)
    assert e.max() < 0.3, e.max()
    ds = gdal.Open(str(out / "coregistered.tif"))
    assert ds.RasterCount == 13 and gdal.GetDataTypeName(ds.GetRasterBand(13).DataType) == ti.dtypes[0]


def test_shift_beyond_the_search_range_is_refused(sample, tmp_path, capsys):
    """150 px off with --max-shift 40: exit 3, never a wrong answer reported as success. The same
    content 20 px off is found with the same settings (so the refusal is about the range)."""
    ref = str(tmp_path / "s2_crop.tif")   # a 320 px crop keeps the three runs short
    tgt0 = str(tmp_path / "s1_crop.tif")
    for src, dst in zip(sample, (ref, tgt0)):
        gdal.Translate(dst, src, srcWin=[0, 0, 320, 320])
    for i, (src, dx, dy) in enumerate([(tgt0, 150, 0), (ref, 150, 100)]):
        far = moved(src, tmp_path / f"far{i}.tif", dx, dy)
        out = tmp_path / f"out{i}"
        line = fail(capsys, coreg(ref, far, out, "--max-shift", "40"), out, [ref, far], expect_rc=3)
        assert "search range" in line or "alignment" in line, line
    near = moved(ref, tmp_path / "near.tif", 20, 10)
    out = tmp_path / "near_out"
    succeed(capsys, coreg(ref, near, out, "--max-shift", "40"), [ref, near])
    e = grid_errors(Correction.load(out / "correction.json").model, lambda p: p, 60, 260, 25)
    assert e.max() < 0.3


# ----------------------------------------------------------------------------------------- outputs

def test_unwritable_output_folder(ben, tmp_path, capsys):
    """chmod 555 where that stops writes; as root (CI) it does not, so /proc/self stands in: an existing
    folder nobody can create files in. Both commands refuse before any work."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        try:
            (folder / "probe").write_bytes(b"")
            (folder / "probe").unlink()
            writable = True
        except OSError:
            writable = False
        if writable:   # root: chmod does not stop writes
            folder = Path("/proc/self")
            try:
                (folder / "hsscl-probe").write_bytes(b"")
            except OSError:
                pass
            else:  # pragma: no cover - no such folder on this system
                pytest.skip("no folder here refuses writes (root, and /proc/self accepts files)")
        line = fail(capsys, coreg(ben["b04"], ben["b08"], folder), None, [ben["b04"], ben["b08"]])
        assert "Cannot write into the folder" in line and "permission" in line, line
        line = fail(capsys, ["match", ben["b04"], ben["b08"], "-o", str(folder / "m.csv")], None,
                    [ben["b04"], ben["b08"]])
        assert "Cannot write" in line, line
        assert not (folder / "m.csv").exists()
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_existing_outputs_untouched(ben, ben_run, tmp_path, capsys):
    """An existing coregistered.tif (coregister) or GeoTIFF (apply) is refused without --overwrite and
    kept byte for byte, mtime included."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(ben_run / "coregistered.tif", out / "coregistered.tif")
    keep = fingerprint([out / "coregistered.tif"])
    line = fail(capsys, coreg(ben["b04"], ben["b08"], out), None, [ben["b04"], ben["b08"]])
    assert "already exist" in line and "--overwrite" in line
    assert fingerprint([out / "coregistered.tif"]) == keep
    assert sorted(p.name for p in out.iterdir()) == ["coregistered.tif"]
    dest = tmp_path / "applied.tif"
    dest.write_bytes(b"an older result")
    keep = fingerprint([dest])
    line = fail(capsys, ["apply", str(ben_run), ben["b08"], "-o", str(dest)], None, [ben["b08"]])
    assert "exist" in line and "--overwrite" in line
    assert fingerprint([dest]) == keep
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# ------------------------------------------------------------------------------------------ cancel

CANCEL_AT = {
    "reading": lambda f, m: f >= 0.02,
    "matching": lambda f, m: f >= 0.4,
    "warping": lambda f, m: f >= 0.9,
    # the last check: the warped raster is complete (under its temporary name), nothing renamed yet
    "after_warp": lambda f, m: m == "warping (GDAL)" and f >= 0.979,
}
CANCEL_CASES = list(CANCEL_AT)


def test_cancel_after_the_outputs_are_in_place_is_not_reported(ben, tmp_path):
    """A cancel that comes after the last check (at the final 'done') does not turn a complete run into a
    'cancelled' one: all four outputs are there and the call returns normally."""
    out = tmp_path / "out"
    state = {"m": ""}
    res = pipeline.coregister(ben["b04"], ben["b08"], out, CoregConfig(seed=0, threads=1),
                              Monitor(lambda f, m: state.update(m=m), lambda: state["m"] == "done"))
    assert state["m"] == "done"
    assert all(Path(p).is_file() for p in res.outputs.values())
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("when,existing", [(w, False) for w in CANCEL_CASES] + [("matching", True)])
def test_cancel_midway_leaves_nothing(when, existing, ben, ben_run, tmp_path):
    """Monitor.cancel_fn turns True after some progress: CancelledError, no output under its final name
    (or, with --overwrite over an earlier run, the earlier outputs byte for byte), no temporary files."""
    cond = CANCEL_AT[when]
    out = tmp_path / "out"
    if existing:
        shutil.copytree(ben_run, out)
    before = fingerprint([out / n for n in OUTPUT_NAMES.values()]) if existing else {}
    inputs = fingerprint([ben["b04"], ben["b08"]])
    state = {"f": 0.0, "m": "", "reports": 0}

    def report(f: float, m: str) -> None:
        state.update(f=f, m=m, reports=state["reports"] + 1)

    with pytest.raises(CancelledError):
        pipeline.coregister(ben["b04"], ben["b08"], out, CoregConfig(seed=0, overwrite=existing, threads=1),
                            Monitor(report, lambda: cond(state["f"], state["m"])))
    assert state["reports"] > 1
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    if existing:
        assert fingerprint([out / n for n in OUTPUT_NAMES.values()]) == before
    else:
        assert leftovers(out) == []
    assert fingerprint([ben["b04"], ben["b08"]]) == inputs


# ----------------------------------------------------------------------------------- device, weights

def test_cuda_requested_but_absent_falls_back_to_cpu(ben, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    stdout = succeed(capsys, coreg(ben["b04"], ben["b08"], out, "--device", "cuda"), [ben["b04"], ben["b08"]])
    assert "note: CUDA was requested" in stdout and "CPU" in stdout, stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["device"] == "cpu" and "CUDA was requested" in rep["device_note"]
    for name in OUTPUT_NAMES.values():
        assert (out / name).is_file(), name


def _shipped_weights() -> Path | None:
    reg = REPO / "resources" / "models" / "registry.json"
    if not reg.is_file():
        return None
    f = reg.parent / json.loads(reg.read_text())["models"]["hsscl"]["file"]
    return f if f.is_file() else None


@pytest.mark.parametrize("kind", ["missing", "truncated", "random_bytes", "directory"])
def test_bad_weights_through_the_cli(kind, ben, tmp_path, capsys):
    w = tmp_path / "w.safetensors"
    if kind == "truncated":
        good = _shipped_weights()
        if good is None:
            pytest.skip("no shipped weights to truncate in this checkout")
        w.write_bytes(good.read_bytes()[:300])
    elif kind == "random_bytes":
        w.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "directory":
        w.mkdir()
    out = tmp_path / "out"
    inputs = [ben["b04"], ben["b08"]] + ([w] if w.is_file() else [])
    descriptor = ["--descriptor", "hsscl"] if kind != "missing" else []  # --weights alone means the network
    line = fail(capsys, coreg(ben["b04"], ben["b08"], out, *descriptor, "--weights", str(w)), out, inputs)
    assert "w.safetensors" in line and ("weights" in line or "safetensors" in line), line


class _Boom:
    """Unpickling this object creates ``marker`` (proof that the file was unpickled)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_unread(ben, tmp_path, capsys, monkeypatch):
    """A torch.save() (pickle) file given as --weights: WeightsError, and no unpickler is ever called."""
    import pickle

    import torch

    marker = tmp_path / "UNPICKLED"
    w = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Boom(str(marker))}, str(w))

    def forbidden(*a, **k):
        raise AssertionError("weights were unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    out = tmp_path / "out"
    line = fail(capsys, coreg(ben["b04"], ben["b08"], out, "--descriptor", "hsscl", "--weights", str(w)),
                out, [ben["b04"], ben["b08"], w])
    assert "model.pt" in line and "safetensors" in line, line
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_source_never_unpickles_nor_runs_a_shell():
    """engine/ and plugin/: no pickle/dill/joblib, torch.load only with weights_only=True, np.load never
    with allow_pickle=True, no shell=True, no os.system / os.popen."""
    files = [*(REPO / "engine").rglob("*.py"), *(REPO / "plugin").rglob("*.py"), REPO / "__init__.py"]
    assert len(files) > 20
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                if m.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"):
                    bad.append(f"{rel}:{node.lineno} imports {m}")
        for node, owner, name in _calls(tree):
            where = f"{rel}:{node.lineno}"
            if owner == "torch" and name == "load" and _kw(node, "weights_only") is not True:
                bad.append(f"{where} torch.load without weights_only=True")
            if owner in ("np", "numpy") and name == "load" and _kw(node, "allow_pickle") not in (None, False):
                bad.append(f"{where} np.load with allow_pickle")
            if _kw(node, "shell") not in (None, False):
                bad.append(f"{where} {owner}.{name}(shell=...)")
            if (owner == "os" and name in ("system", "popen")) or name in ("getoutput", "getstatusoutput"):
                bad.append(f"{where} {owner}.{name}")
    assert bad == [], bad


# ----------------------------------------------------------------------------------- determinism

def test_same_seed_same_csv_bytes(ben, tmp_path, capsys):
    """Same inputs and seed through the CLI: byte-identical tie point CSVs."""
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (a, b):
        succeed(capsys, ["match", ben["b04"], ben["b08"], "-o", str(out), "--seed", "3", "--threads", "1"],
                [ben["b04"], ben["b08"]])
    assert a.read_bytes() == b.read_bytes() and len(a.read_text().splitlines()) > 20
