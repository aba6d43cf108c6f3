"""Faults: a set of outputs is complete or absent, one writer per folder, a full disk said plainly, signals,
distributed faults (docs/batch.md, "Faults").

Most tests run the real output machinery (OutputSet, locks, the batch) around a fast stand-in for the
matching (``fake_coregister``: same OutputSet, tiny files), so that kills and races are cheap to repeat;
``scripts/check_faults.sh`` does the same with the real pipeline and a real Dask scheduler.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsscl.engine import batch, cli, pipeline
from hsscl.engine.batch import BatchStopped, run_batch
from hsscl.engine.config import CoregConfig
from hsscl.engine.errors import DiskFullError, FolderLockedError, OutputExistsError
from hsscl.engine.io import outputset
from hsscl.engine.io.lock import PARTIAL_DIR, FolderLock, is_locked
from hsscl.engine.io.outputset import OutputSet, foreign_entries, recover, verify
from hsscl.engine.pipeline import OUTPUT_NAMES

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "resources" / "sample" / "s2_reference.tif"
TGT = ROOT / "resources" / "sample" / "s1_target_misregistered.tif"
NAMES = tuple(OUTPUT_NAMES.values())


def fake_coregister(reference, target, outdir, config=None, monitor=None, run_id=None, delay=0.0, size=40_000):
    """The real OutputSet around tiny outputs (no matching): what a kill, a race or a full disk meets."""
    config = config or CoregConfig()
    with OutputSet(outdir, OUTPUT_NAMES, overwrite=config.overwrite, run_id=run_id) as s:
        s.check_space(3 * size)
        for key in ("raster", "tiepoints", "correction"):
            with open(s.temp(key), "wb") as f:
                f.write(os.urandom(size))
            time.sleep(delay)
        report = {"reference": {"path": str(reference), "modality": "optical"},
                  "target": {"path": str(target), "modality": "sar"}, "space": "map", "descriptor": "fake",
                  "config": config.to_dict(), "model": {"kind": "shift", "reason": "fake"},
                  "rmse_px": {"check": 0.5, "fit": 0.4}, "counts": {"inliers": 10, "check_points": 2}, "device": "cpu"}
        report = s.commit(report, json_default=list)
    return SimpleNamespace(report=report, outputs=s.paths, n_inliers=10, n_tiepoints=12)


DRIVER = textwrap.dedent("""
    import functools, sys, time
    sys.path.insert(0, {tests!r})
    from hsscl.engine import cli, pipeline
    from test_faults import fake_coregister
    delay = float(sys.argv[1])
    pipeline.coregister = functools.partial(fake_coregister, delay=delay)
    sys.exit(cli.main(sys.argv[2:]))
""")


def driver(tmp_path: Path) -> Path:
    p = tmp_path / "driver.py"
    p.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    return p


def spawn(tmp_path: Path, delay: float, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(driver(tmp_path)), str(delay), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def read_summary(outdir: Path) -> dict[str, dict[str, str]]:
    with open(outdir / "summary.csv", newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def manifest(tmp_path: Path, n: int = 3) -> Path:
    p = tmp_path / "m.csv"
    p.write_text("id,reference,target\n" + "".join(f"p{i},{REF},{TGT}\n" for i in range(1, n + 1)))
    return p


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------------------ one set, one record

def test_record_lists_every_output_and_is_written_last(tmp_path):
    res = fake_coregister(REF, TGT, tmp_path / "o")
    folder = tmp_path / "o"
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)          # no lock, no partial left
    rec = json.loads((folder / "report.json").read_text())
    assert {f["file"] for f in rec["files"]} == set(NAMES) - {"report.json"}
    assert all(len(f["sha256"]) == 64 and f["size"] == 40_000 for f in rec["files"])
    assert rec["record"]["format"] == outputset.RECORD_FORMAT and res.report["record"]["run_id"]
    assert verify(folder, required=NAMES) == (rec, [])
    with open(folder / "tiepoints.gpkg", "r+b") as f:   # same size, other bytes
        f.write(b"x")
    assert verify(folder)[1] == ["tiepoints.gpkg differs (sha256)"]
    (folder / "correction.json").unlink()
    assert "correction.json is missing" in verify(folder)[1]


def test_existing_outputs_are_refused_without_overwrite(tmp_path):
    fake_coregister(REF, TGT, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError):
        fake_coregister(REF, TGT, tmp_path)
    assert snapshot(tmp_path) == before and not (tmp_path / PARTIAL_DIR).exists()


def test_an_error_leaves_the_previous_set_and_no_temporary(tmp_path):
    fake_coregister(REF, TGT, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ZeroDivisionError), OutputSet(tmp_path, OUTPUT_NAMES, overwrite=True) as s:
        Path(s.temp("raster")).write_bytes(b"half")
        raise ZeroDivisionError("an error while writing")
    assert snapshot(tmp_path) == before and not (tmp_path / PARTIAL_DIR).exists()


def test_a_run_killed_while_renaming_is_completed_by_the_next(tmp_path, monkeypatch):
    """Kill between the renames (simulated: the install stops after the first file): the next holder rolls forward."""
    fake_coregister(REF, TGT, tmp_path)
    real_replace = os.replace
    calls = []

    def replace_then_die(a, b):
        calls.append(b)
        if len(calls) == 3:  # 1: the record in the run's folder (commit point), 2: the raster into place
            raise SystemExit("killed")
        real_replace(a, b)

    monkeypatch.setattr(outputset.os, "replace", replace_then_die)
    monkeypatch.setattr(OutputSet, "__exit__", lambda self, *a: self._lock.release())  # a kill cleans nothing
    with pytest.raises(SystemExit):
        fake_coregister(REF, TGT, tmp_path, CoregConfig(overwrite=True))
    monkeypatch.undo()
    assert verify(tmp_path)[1] != []                                # mixed: new raster, old record
    with FolderLock(tmp_path) as lock:
        notes = recover(tmp_path, lock)
    assert notes and "completed the outputs" in notes[0]
    assert verify(tmp_path, required=NAMES)[1] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)


def test_only_run_folders_of_the_engine_are_removed(tmp_path):
    part = tmp_path / PARTIAL_DIR
    dead = part / "20260101T000000-4242-0123abcd"
    dead.mkdir(parents=True)
    (dead / "coregistered.tif").write_bytes(b"half")
    mine = part / "my-notes"
    mine.mkdir()
    (tmp_path / ".notes.tmp-mine.txt").write_text("mine")
    fake_coregister(REF, TGT, tmp_path)
    assert not dead.exists() and mine.is_dir() and (tmp_path / ".notes.tmp-mine.txt").read_text() == "mine"
    assert foreign_entries(tmp_path, NAMES) == [".notes.tmp-mine.txt"]


# ------------------------------------------------------------------------------------------ one writer per folder

def test_a_held_folder_is_refused_at_once_with_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from hsscl.engine.io.lock import FolderLock
        with FolderLock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.perf_counter()
        with pytest.raises(FolderLockedError) as err:
            fake_coregister(REF, TGT, tmp_path)
        assert time.perf_counter() - t < 2
        msg = str(err.value)
        assert f"another run (pid {holder.pid}, started " in msg and f"is writing into {tmp_path}" in msg
        assert is_locked(tmp_path)
    finally:
        holder.kill()                       # SIGKILL: the lock must not outlive it
        holder.wait()
    assert is_locked(tmp_path) is None
    fake_coregister(REF, TGT, tmp_path)
    assert verify(tmp_path)[1] == []


def test_two_runs_started_together_one_wins(tmp_path):
    out = tmp_path / "out"
    procs = [spawn(tmp_path, 0.5, "coregister", str(REF), str(TGT), "-o", str(out)) for _ in range(2)]
    results = [(p.wait(30), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _o, _e in results)
    assert codes == [0, 2], results
    loser = next(e for rc, _o, e in results if rc == 2)
    assert "another run (pid " in loser.strip().splitlines()[-1] and "is writing into" in loser
    assert verify(out, required=NAMES)[1] == []


# ------------------------------------------------------------------------------------------ kills

@pytest.mark.parametrize("after", [0.05, 0.3, 0.6, 0.9])
def test_a_killed_overwrite_leaves_a_set_that_verifies(tmp_path, after):
    out = tmp_path / "out"
    fake_coregister(REF, TGT, out)
    p = spawn(tmp_path, 0.3, "coregister", str(REF), str(TGT), "-o", str(out), "--overwrite")
    time.sleep(after)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert verify(out, required=NAMES)[1] == []
    fake_coregister(REF, TGT, out, CoregConfig(overwrite=True))       # the next run cleans what was left
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)


def test_sigterm_on_coregister_removes_its_temporaries(tmp_path):
    out = tmp_path / "out"
    p = spawn(tmp_path, 1.0, "coregister", str(REF), str(TGT), "-o", str(out))
    deadline = time.time() + 20
    while time.time() < deadline and not any((out / PARTIAL_DIR).glob("*/coregistered.tif")):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143
    assert not out.exists() or sorted(x.name for x in out.iterdir()) == []


# ------------------------------------------------------------------------------------------ a full disk

def _tmpfs(path: Path, size: str) -> bool:
    if os.name != "posix" or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A 1.5 MB tmpfs where the machine allows it, else a fault-injecting wrapper that says ENOSPC after 1.5 MB."""
    disk = tmp_path / "disk"
    if _tmpfs(disk, "1500k"):
        yield disk
        subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    disk.mkdir()
    budget = {"left": 1_500_000}
    real_open = open

    class Limited:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            if budget["left"] < len(b):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            budget["left"] -= len(b)
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    def limited_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Limited(f) if str(file).startswith(str(disk)) and "w" in mode else f

    import builtins
    monkeypatch.setattr(builtins, "open", limited_open)
    monkeypatch.setattr(outputset, "free_bytes", lambda _f: budget["left"])
    yield disk


def test_a_full_disk_is_said_plainly_and_loses_nothing(small_disk, monkeypatch):
    fake_coregister(REF, TGT, small_disk, size=300_000)
    before = snapshot(small_disk)
    monkeypatch.setattr(OutputSet, "check_space", lambda self, n: setattr(self, "needed", n))  # past the pre-check
    with pytest.raises(DiskFullError) as err:
        fake_coregister(REF, TGT, small_disk, CoregConfig(overwrite=True), size=400_000)
    msg = str(err.value)
    assert msg.startswith(f"the disk holding {small_disk} is full (about 1.2 MB needed, ") and "MB free)" in msg
    assert snapshot(small_disk) == before and not (small_disk / PARTIAL_DIR).exists()


def test_the_free_space_check_refuses_before_any_work(small_disk):
    fake_coregister(REF, TGT, small_disk, size=300_000)
    before = snapshot(small_disk)
    with pytest.raises(DiskFullError, match="is full"):
        fake_coregister(REF, TGT, small_disk, CoregConfig(overwrite=True), size=2_000_000)
    assert snapshot(small_disk) == before and not (small_disk / PARTIAL_DIR).exists()


def test_a_full_disk_on_the_summary_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "coregister", fake_coregister)

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(batch, "write_summary", full)
    rc = cli.main(["batch", str(manifest(tmp_path, 1)), "-o", str(tmp_path / "out"), "--scheduler", "sync"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is full" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / PARTIAL_DIR).exists()


# ------------------------------------------------------------------------------------------ the batch

def test_the_batch_never_touches_what_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "coregister", fake_coregister)
    out = tmp_path / "out"
    mine = out / "p2"
    mine.mkdir(parents=True)
    (mine / "coregistered.tif").write_bytes(b"my own raster")
    (mine / ".notes.tmp-mine.txt").write_text("my notes")
    before = snapshot(mine)
    res = run_batch(manifest(tmp_path), out, scheduler="sync")
    rows = {r["id"]: r for r in res.rows}
    assert rows["p1"]["status"] == rows["p3"]["status"] == "ok"
    assert rows["p2"]["status"] == "failed" and res.exit_code == 1
    assert rows["p2"]["message"] == (f"{mine} already holds files this batch did not write (.notes.tmp-mine.txt, "
                                     "coregistered.tif); move them or use --overwrite")
    assert snapshot(mine) == before
    res = run_batch(manifest(tmp_path), out, scheduler="sync", overwrite=True)   # only the four outputs replaced
    assert res.count("ok") == 3 and (mine / ".notes.tmp-mine.txt").read_text() == "my notes"
    assert verify(mine)[1] == []


def test_a_locked_row_fails_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "coregister", fake_coregister)
    out = tmp_path / "out"
    with FolderLock(out / "p1"):
        res = run_batch(manifest(tmp_path), out, scheduler="sync")
    rows = {r["id"]: r for r in res.rows}
    assert rows["p1"]["status"] == "failed" and "another run (pid " in rows["p1"]["message"]
    assert rows["p2"]["status"] == rows["p3"]["status"] == "ok"
    with FolderLock(out), pytest.raises(FolderLockedError, match="another run"):   # a second batch, same OUTDIR
        run_batch(manifest(tmp_path), out, scheduler="sync")


def test_summary_cells_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "run_pair", lambda task: {"status": "failed", "message": "first\nsecond\r\nthird",
                                                         "seconds": 0.1})
    run_batch(manifest(tmp_path, 2), tmp_path / "out", scheduler="sync")
    lines = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and "first second third" in lines[1]


def test_sigterm_on_a_batch_writes_the_summary_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    m = manifest(tmp_path)
    p = spawn(tmp_path, 0.4, "batch", str(m), "-o", str(out), "--scheduler", "sync")
    deadline = time.time() + 30
    while time.time() < deadline and not (out / "p1" / "report.json").exists():
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 143
    rows = read_summary(out)
    assert rows["p1"]["status"] == "ok" and {rows["p2"]["status"], rows["p3"]["status"]} == {"cancelled"}
    assert "SIGTERM" in rows["p2"]["message"]
    p = spawn(tmp_path, 0.0, "batch", str(m), "-o", str(out), "--scheduler", "sync")
    assert p.wait(60) == 0
    rows = read_summary(out)
    assert [rows[k]["status"] for k in ("p1", "p2", "p3")] == ["skipped", "ok", "ok"]
    assert not any(x.name == PARTIAL_DIR for x in out.rglob("*"))


# ------------------------------------------------------------------------------------------ distributed faults

class FakeFuture:
    def __init__(self, key, status, value=None):
        self.key, self.status, self.value = key, status, value

    def result(self, timeout=None):
        return self.value

    def done(self):
        return self.status != "pending"


class FakeClient:
    def __init__(self, workers=2, status="running"):
        self.workers, self.status = workers, status

    def scheduler_info(self):
        return {"workers": {f"w{i}": {} for i in range(self.workers)}}

    def wait_for_workers(self, n, timeout=None):
        if self.workers < n:
            time.sleep(0.01)
            raise TimeoutError


def test_a_lost_scheduler_stops_the_batch_naming_it(tmp_path):
    ok = {"status": "ok", "model": "shift", "message": "", "seconds": 1.0}
    pending = {"a": ("row-a", {}, FakeFuture("a", "finished", ok)),
               "b": ("row-b", {}, FakeFuture("b", "cancelled")), "c": ("row-c", {}, FakeFuture("c", "pending"))}
    done = []
    with pytest.raises(BatchStopped) as err:
        batch._collect(FakeClient(status="connecting"), pending, lambda row, v, n: done.append(row),
                       "tcp://10.0.0.5:8786", 3, 60, print, Exception)
    assert done == ["row-a"]
    msg = str(err.value)
    assert "lost the Dask scheduler at tcp://10.0.0.5:8786 after {done} of 3" in msg and "memory" not in msg


def test_a_lost_scheduler_counts_the_pairs_that_finished_on_their_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "coregister", fake_coregister)

    def lost(tasks, out, results, on_done, *_a):
        batch.run_pair(tasks[0][1])          # finished on its worker, its answer lost with the scheduler
        raise BatchStopped("lost the Dask scheduler at tcp://h:1 after {done} of 3 pair(s) had finished")
    monkeypatch.setattr(batch, "_run_dask", lost)
    res = run_batch(manifest(tmp_path), tmp_path / "out", scheduler="tcp://h:1")
    assert [r["status"] for r in res.rows] == ["ok", "not run", "not run"] and res.exit_code == 1
    assert res.stopped == "lost the Dask scheduler at tcp://h:1 after 1 of 3 pair(s) had finished"
    assert "verify" in res.rows[0]["message"] and "memory" not in json.dumps(res.rows)


def test_no_workers_is_said_within_seconds_and_given_up(tmp_path):
    said = []
    t = time.perf_counter()
    with pytest.raises(BatchStopped, match="no Dask worker connected to the scheduler at tcp://h:1 within"):
        batch._wait_for_workers(FakeClient(workers=0), "tcp://h:1", 0.5, said.append)
    assert said and said[0].startswith("waiting for workers on tcp://h:1: 0 connected")
    assert time.perf_counter() - t < 5
