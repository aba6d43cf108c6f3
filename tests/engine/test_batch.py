"""``hsscl batch``: a CSV manifest of real pairs on a Dask LocalCluster, a scheduler address and in-process.

The bundled sample pair (448 px, S2 reference / S1 target misregistered by a known similarity in
resources/sample/truth.json) is used for the real runs; cheap behaviours (overwrite, Ctrl-C, no Dask)
replace the per-pair work by a stub.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from hsscl.engine import batch, cli
from hsscl.engine.batch import SUMMARY_COLUMNS, read_manifest, run_batch
from hsscl.engine.config import CoregConfig
from hsscl.engine.correction import Correction
from hsscl.engine.errors import InputError
from hsscl.engine.io.outputset import verify
from hsscl.engine.pipeline import OUTPUT_NAMES

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"
REF, TGT = SAMPLE / "s2_reference.tif", SAMPLE / "s1_target_misregistered.tif"


def sample_truth():
    """Reference pixel -> target pixel of the sample pair (truth.json holds target -> reference)."""
    m = np.array(json.loads((SAMPLE / "truth.json").read_text())["target_to_reference_pixel"])
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))
    return lambda p: p @ inv[:2, :2].T + inv[:2, 2]


def model_error_px(folder: Path) -> float:
    """RMS distance between the estimated and the true correction on a grid of reference pixels."""
    model = Correction.load(folder / OUTPUT_NAMES["correction"]).model
    yy, xx = np.mgrid[40:410:20, 40:410:20] + 0.5
    p = np.stack([xx.ravel(), yy.ravel()], 1)
    return float(np.sqrt(np.mean(np.sum((model(p) - sample_truth()(p)) ** 2, axis=1))))


def read_summary(outdir: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(outdir / "summary.csv", newline="") as f:
        r = csv.DictReader(f)
        rows = list(r)
        return list(r.fieldnames or []), {row["id"]: row for row in rows}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A manifest folder holding a copy of the sample pair (relative paths) and two good rows + a bad one."""
    root = tmp_path_factory.mktemp("batch")
    data = root / "data"
    data.mkdir()
    shutil.copy(REF, data / "ref.tif")
    shutil.copy(TGT, data / "tgt.tif")
    manifest = write(root / "pairs.csv",
                     "id,reference,target,transform,seed\n"
                     "plain,data/ref.tif,data/tgt.tif,,\n"
                     "# a comment line\n"
                     f"affine-3,{REF},{TGT},affine,3\n"
                     ",data/ref.tif,data/missing_target.tif,,\n")
    return {"root": root, "manifest": manifest, "out": root / "out"}


@pytest.fixture(scope="module")
def first_run(project):
    """The real run: a LocalCluster of two worker processes via the CLI."""
    import contextlib
    import io

    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["batch", str(project["manifest"]), "-o", str(project["out"]), "--workers", "2"])
    return {"rc": rc, "stdout": buf.getvalue(), "seconds": time.perf_counter() - t}


# ------------------------------------------------------------------------------------------ real runs

def test_local_cluster_registers_good_pairs_and_reports_the_bad_row(project, first_run):
    out = project["out"]
    assert first_run["rc"] == batch.EXIT_PAIRS_FAILED == 1, first_run["stdout"]
    header, rows = read_summary(out)
    assert header == list(SUMMARY_COLUMNS)
    assert set(rows) == {"plain", "affine-3", "003_missing_target"}
    for rid in ("plain", "affine-3"):
        r = rows[rid]
        assert r["status"] == "ok", r
        assert float(r["rmse_check_px"]) < 1.5 and float(r["rmse_fit_px"]) < 1.5, r
        assert int(r["inliers"]) >= 30 and float(r["seconds"]) > 0 and r["message"] == ""
        folder = out / rid
        assert Path(r["outdir"]) == folder
        assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_NAMES.values())
        assert verify(folder, required=tuple(OUTPUT_NAMES.values()))[1] == []   # the record verifies
        assert model_error_px(folder) < 1.5          # registered: close to the known truth
    assert rows["plain"]["reference"] == str(project["root"] / "data" / "ref.tif")  # relative to the manifest
    assert rows["affine-3"]["model"] == "affine"
    assert json.loads((out / "affine-3" / "report.json").read_text())["config"]["seed"] == 3
    bad = rows["003_missing_target"]
    assert bad["status"] == "failed" and bad["model"] == "" and bad["seconds"] == ""
    assert "row 3 (line 5)" in bad["message"] and "missing_target.tif" in bad["message"]
    assert "not found" in bad["message"]
    assert not (out / "003_missing_target").exists()
    lines = first_run["stdout"].splitlines()
    assert sum(ln.startswith(("[1/3]", "[2/3]", "[3/3]")) for ln in lines) == 3, first_run["stdout"]
    assert "1 failed" in first_run["stdout"] and "2 ok" in first_run["stdout"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_rerun_skips_finished_pairs_quickly(project, first_run, capsys):
    t = time.perf_counter()
    rc = cli.main(["batch", str(project["manifest"]), "-o", str(project["out"]), "--workers", "2"])
    seconds = time.perf_counter() - t
    assert rc == 1                                      # the bad row still fails
    _, rows = read_summary(project["out"])
    assert rows["plain"]["status"] == rows["affine-3"]["status"] == "skipped"
    assert rows["affine-3"]["model"] == "affine" and float(rows["plain"]["rmse_check_px"]) < 1.5
    assert rows["003_missing_target"]["status"] == "failed"
    assert seconds < 5.0, seconds                      # no cluster is started when nothing is left to do
    assert "skipped (already done)" in capsys.readouterr().out


def test_sync_redoes_a_pair_whose_record_does_not_verify(project, first_run, capsys):
    out = project["out"]
    with open(out / "plain" / "coregistered.tif", "ab") as f:           # not the file its record lists
        f.write(b"changed")
    dead = out / "plain" / ".hsscl-partial" / "20260101T000000-999999-0123abcd"   # left by a killed run
    dead.mkdir(parents=True)
    (dead / "coregistered.tif").write_bytes(b"partial")
    rc = cli.main(["batch", str(project["manifest"]), "-o", str(out), "--scheduler", "sync"])
    assert rc == 1
    _, rows = read_summary(out)
    assert rows["plain"]["status"] == "ok" and float(rows["plain"]["rmse_check_px"]) < 1.5
    assert "did not verify" in rows["plain"]["message"] and "coregistered.tif differs" in rows["plain"]["message"]
    assert "redone" in capsys.readouterr().out
    assert rows["affine-3"]["status"] == "skipped"
    assert not (out / "plain" / ".hsscl-partial").exists()
    assert verify(out / "plain")[1] == []
    assert model_error_px(out / "plain") < 1.5


def test_existing_scheduler_address(project, first_run, capsys):
    """``--scheduler tcp://...`` sends the pairs to a running scheduler (here a 1-worker LocalCluster)."""
    from distributed import LocalCluster

    out = project["root"] / "out_address"
    one = write(project["root"] / "one.csv", "id,reference,target\nplain,data/ref.tif,data/tgt.tif\n")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = run_batch(one, out, CoregConfig(transform="affine", seed=5), scheduler=cluster.scheduler_address)
    assert res.exit_code == 0 and len(res.rows) == 1
    r = res.rows[0]
    assert r["status"] == "ok" and r["model"] == "affine" and r["rmse_check_px"] < 1.5, r
    config = json.loads((out / "plain" / "report.json").read_text())["config"]
    assert config["seed"] == 5 and config["threads"] == 1      # batch defaults; 1 torch thread per pair
    assert model_error_px(out / "plain") < 1.5


# ------------------------------------------------------------------------------------------ cheap behaviours

def fake_pair(calls: list[str], interrupt_on: str | None = None):
    def run(task):
        if interrupt_on and task["outdir"].endswith(interrupt_on):
            raise KeyboardInterrupt
        calls.append(Path(task["outdir"]).name)
        assert isinstance(task["config"], dict) and task["run_id"]
        return {"status": "ok", "model": "shift", "rmse_check_px": 0.5, "rmse_fit_px": 0.4, "inliers": 10,
                "seconds": 0.01, "message": ""}
    return run


def three_rows(tmp_path: Path) -> Path:
    return write(tmp_path / "m.csv", "reference,target\n" + "".join(f"{REF},{TGT}\n" for _ in range(3)))


def test_overwrite_redoes_every_pair(project, first_run, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(batch, "run_pair", fake_pair(calls))
    out = project["root"] / "out_overwrite"
    shutil.copytree(project["out"], out)
    res = run_batch(project["manifest"], out, scheduler="sync")
    assert calls == [] and res.count("skipped") == 2
    res = run_batch(project["manifest"], out, scheduler="sync", overwrite=True)
    assert sorted(calls) == ["affine-3", "plain"] and res.count("ok") == 2


def test_changed_options_redo_the_pair(project, first_run, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(batch, "run_pair", fake_pair(calls))
    out = project["root"] / "out_changed"
    shutil.copytree(project["out"], out)
    run_batch(project["manifest"], out, CoregConfig(max_shift_px=60.0), scheduler="sync")
    assert sorted(calls) == ["affine-3", "plain"]


def test_ctrl_c_cancels_the_rest_and_writes_the_summary(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(batch, "run_pair", fake_pair(calls, interrupt_on="002_s1_target_misregistered"))
    res = run_batch(three_rows(tmp_path), tmp_path / "out", scheduler="sync")
    assert res.interrupted and res.exit_code == 130
    _, rows = read_summary(tmp_path / "out")
    assert [rows[k]["status"] for k in sorted(rows)] == ["ok", "cancelled", "cancelled"]
    assert "run the batch again" in rows["002_s1_target_misregistered"]["message"]


def test_a_batch_that_stops_lists_the_pairs_not_run(tmp_path, monkeypatch):
    def unreachable(*_a):
        raise InputError("Cannot connect to the Dask scheduler at tcp://10.0.0.9:8786.")
    monkeypatch.setattr(batch, "_run_dask", unreachable)
    with pytest.raises(InputError):
        run_batch(three_rows(tmp_path), tmp_path / "out", scheduler="tcp://10.0.0.9:8786")
    _, rows = read_summary(tmp_path / "out")
    assert {r["status"] for r in rows.values()} == {"not run"}
    assert all("not run: the batch stopped (Cannot connect" in r["message"] for r in rows.values())


def test_without_dask_local_falls_back_to_sync_with_a_note(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(batch, "run_pair", fake_pair(calls))
    monkeypatch.setattr(batch, "_dask_available", lambda: False)
    lines: list[str] = []
    res = run_batch(three_rows(tmp_path), tmp_path / "out", report=lines.append)
    assert res.exit_code == 0 and len(calls) == 3
    assert "dask is not installed" in res.note and lines[0] == res.note
    with pytest.raises(InputError, match="distributed"):
        run_batch(three_rows(tmp_path), tmp_path / "out2", scheduler="tcp://127.0.0.1:8786")


def test_dask_runs_use_one_torch_thread_unless_asked(tmp_path, monkeypatch):
    seen: list[dict] = []
    monkeypatch.setattr(batch, "_run_dask", lambda tasks, *a: seen.extend(t for _r, t in tasks))
    run_batch(three_rows(tmp_path), tmp_path / "o1")
    run_batch(three_rows(tmp_path), tmp_path / "o2", CoregConfig(threads=4))
    assert [t["config"]["threads"] for t in seen] == [1, 1, 1, 4, 4, 4]
    assert all(isinstance(t, dict) and set(t) == {"reference", "target", "outdir", "config", "run_id", "note"}
               for t in seen)


# ------------------------------------------------------------------------------------------ manifest checks

def cli_error(capsys, *argv: str) -> str:
    rc = cli.main(["batch", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hsscl: error: ") and "Traceback" not in err, err
    return lines[0]


def test_manifest_without_required_columns(tmp_path, capsys):
    m = write(tmp_path / "m.csv", f"ref,tgt\n{REF},{TGT}\n")
    msg = cli_error(capsys, str(m), "-o", str(tmp_path / "out"))
    assert "no column 'reference' or 'target'" in msg and "ref, tgt" in msg
    assert not (tmp_path / "out").exists()              # nothing done before the manifest is right


def test_manifest_with_duplicate_ids(tmp_path, capsys):
    m = write(tmp_path / "m.csv", f"id,reference,target\nA/1,{REF},{TGT}\nb,{REF},{TGT}\na_1,{REF},{TGT}\n")
    msg = cli_error(capsys, str(m), "-o", str(tmp_path / "out"))
    assert "Rows 1 and 3" in msg and "same id" in msg and "own id" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, expect", [
    (None, "is not a readable text"),                      # a GeoTIFF given as manifest
    ("", "empty or not a CSV"),
    ("reference,target\n", "no pairs"),
    ("reference,target,max_shfit\n", "unknown column(s): max_shfit"),
    ("reference,target,seed,Seed\n", "more than once"),
])
def test_unusable_manifests(tmp_path, capsys, content, expect):
    m = tmp_path / "m.csv"
    if content is None:
        shutil.copy(REF, m)
    else:
        m.write_text(content)
    assert expect in cli_error(capsys, str(m), "-o", str(tmp_path / "out"))


def test_missing_manifest_and_bad_scheduler(tmp_path, capsys):
    assert "does not exist" in cli_error(capsys, str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o"))
    m = three_rows(tmp_path)
    assert "not a scheduler" in cli_error(capsys, str(m), "-o", str(tmp_path / "o"), "--scheduler", "my cluster")
    assert "--workers" in cli_error(capsys, str(m), "-o", str(tmp_path / "o"), "--workers", "0")


def test_rows_are_checked_one_by_one(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(TGT, tmp_path / "sub" / "t.tif")
    m = write(tmp_path / "m.csv",
              "id;reference;target;ref_bands;tgt_bands;extent;denoise;max-shift;graph\n"
              f"ok;{REF};sub/t.tif;1;\"1,2\";0 0 100 100;no;60;off\n"
              f"blank;{REF};sub/t.tif;;;;;;\n"
              f"bands;{REF};sub/t.tif;0;x;;;;\n"
              f"extent;{REF};sub/t.tif;;;1 2 3;;;\n"
              f"choice;{REF};sub/t.tif;;;;maybe;-5;sometimes\n"
              f"../../evil id;;sub/t.tif;;;;;;\n")
    rows = {r.id: r for r in read_manifest(m, CoregConfig(seed=7))}
    ok = rows["ok"]
    assert ok.error is None and ok.target == str(tmp_path / "sub" / "t.tif")
    assert ok.options == {"ref_bands": (1,), "tgt_bands": (1, 2), "extent": (0.0, 0.0, 100.0, 100.0),
                          "denoise": False, "max_shift_px": 60.0, "graph": "off"}
    assert rows["blank"].error is None and rows["blank"].options == {}
    assert "ref_bands '0'" in rows["bands"].error and "tgt_bands 'x'" in rows["bands"].error
    assert "row 3 (line 4)" in rows["bands"].error
    assert "extent '1 2 3'" in rows["extent"].error
    err = rows["choice"].error
    assert "denoise 'maybe'" in err and "max_shift '-5'" in err and "graph 'sometimes'" in err
    evil = rows["../../evil id"]
    assert evil.folder == "evil_id" and "reference cell is empty" in evil.error
