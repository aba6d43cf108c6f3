"""QGIS delivery of the engine's outputs (plugin/algorithms/outputs.py): atomic across file systems, a full disk
said plainly with the previous file intact, the JSON report naming the user's files, work folders removed."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException

from hsscl.plugin.algorithms import outputs
from hsscl.plugin.algorithms.outputs import deliver_file, deliver_raster, deliver_report, deliver_vector

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "resources" / "sample" / "s2_reference.tif"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def other_fs(tmp_path):
    """A source folder on another file system than tmp_path (a tmpfs), where the machine has one."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system to copy from")
    d = shm / f"hsscl-test-{os.getpid()}"
    d.mkdir(exist_ok=True)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 600 kB tmpfs (as root), else a fault-injecting copy that says ENOSPC."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                                            capture_output=True).returncode == 0:
        yield disk, None
        subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    yield disk, "inject"


def test_raster_delivery_across_file_systems_replaces_atomically(tmp_path, other_fs):
    src = other_fs / "coregistered.tif"
    src.write_bytes(REF.read_bytes())
    dest = tmp_path / "out.tif"
    dest.write_bytes(b"the previous output")
    (tmp_path / "out.tif.aux.xml").write_text("<PAMDataset>stale statistics</PAMDataset>")
    assert deliver_raster(str(src), str(dest)) == str(dest)
    assert sha(dest) == sha(REF) and not (tmp_path / "out.tif.aux.xml").exists()
    assert leftovers(tmp_path) == []


def test_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path, tiny_disk, monkeypatch):
    disk, mode = tiny_disk
    dest = disk / "out.tif"
    dest.write_bytes(b"the previous output" * 1000)
    before = sha(dest)
    if mode == "inject":
        def full(_src, _dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(outputs.shutil, "copyfile", full)
    with pytest.raises(QgsProcessingException) as err:
        deliver_raster(str(REF), str(dest))           # 794 kB onto 600 kB
    assert f"the disk holding {disk} is full (about 0.8 MB needed, " in str(err.value)
    assert sha(dest) == before and leftovers(disk) == []


def test_vector_delivery_to_a_shapefile_renames_every_part(tmp_path):
    from osgeo import ogr

    from hsscl.engine.io.raster import open_raster_info
    from hsscl.engine.io.vector import write_tiepoints_gpkg

    grid = open_raster_info(str(REF)).grid
    gpkg = tmp_path / "ties.gpkg"
    write_tiepoints_gpkg(gpkg, {"ref_x": [10.0, 20.0], "ref_y": [5.0, 9.0], "tgt_x": [11.0, 21.0],
                                "tgt_y": [5.5, 9.5]}, grid, grid)
    out = tmp_path / "shp"
    out.mkdir()
    dest = out / "ties.shp"
    deliver_vector(str(gpkg), "tiepoints", str(dest))
    assert sorted(p.suffix for p in out.iterdir()) == [".cpg", ".dbf", ".prj", ".shp", ".shx"] or \
        {".dbf", ".shp", ".shx"} <= {p.suffix for p in out.iterdir()}
    assert leftovers(out) == []
    assert ogr.Open(str(dest)).GetLayer(0).GetFeatureCount() == 2


def test_the_json_report_names_the_users_files(tmp_path):
    engine = tmp_path / "work"
    engine.mkdir()
    (engine / "report.json").write_text(json.dumps({"outputs": {"raster": str(engine / "coregistered.tif")},
                                                    "files": [{"file": "coregistered.tif"}], "record": {}}))
    raster = tmp_path / "mine.tif"
    deliver_file(str(REF), str(raster))
    dest = tmp_path / "mine.report.json"
    deliver_report(str(engine / "report.json"), str(dest), {"raster": str(raster), "matches": ""})
    rep = json.loads(dest.read_text())
    assert rep["outputs"] == {"raster": str(raster), "report": str(dest)}
    assert rep["files"] == [{"file": str(raster), "size": raster.stat().st_size, "sha256": sha(raster)}]
    assert str(engine) not in dest.read_text()


def test_work_folders_are_removed_even_after_a_kill(tmp_path, monkeypatch):
    import tempfile
    import time

    from hsscl.plugin.algorithms.base import HSSCLAlgorithm

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / "hsscl-work"
    dead = base / "20260101T000000-999999-0123abcd"      # a run killed outright: its lock went with it
    (dead / "out").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(dead, (old, old))
    with HSSCLAlgorithm.work_folder() as folder:
        assert os.path.isdir(folder) and not dead.exists()
        (Path(folder) / "x.tif").write_bytes(b"x")
    assert list(base.iterdir()) == []
    with pytest.raises(RuntimeError), HSSCLAlgorithm.work_folder() as folder:
        raise RuntimeError("failed")
    assert list(base.iterdir()) == []
