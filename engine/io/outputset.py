"""A set of outputs is one unit: complete or absent, one writer per folder, a record written last.

    with OutputSet(folder, {"raster": "coregistered.tif", ..., "report": "report.json"}, overwrite=...) as s:
        s.check_space(expected_bytes)          # refuses at once when the disk clearly cannot take the set
        ...write each output to s.temp(key)...  # in FOLDER/.hsscl-partial/<run id>/, never under a final name
        s.commit(report)                        # sha256 + fsync each file, write the record, rename all

How a set is made (``commit``):

1. every data file is read back once for its size and sha256 and fsynced;
2. the record (``report.json``) lists every other output with its file name, size and sha256; it is
   written and fsynced in the run's own folder, then renamed to its final name there (the commit point);
3. the data files are renamed onto their final names, the record last, and the folder is fsynced.

A reader may trust a set exactly when its record verifies (:func:`verify`): every file it lists exists with
that size and sha256. A run killed between steps 2 and 3 is completed by the next run that takes the folder's
lock (:func:`recover`, "roll forward"); a run killed earlier left nothing under the final names, and its
in-flight folder is removed by the next run that takes the lock. Nothing else is ever deleted: only folders
under ``.hsscl-partial`` whose name is a run id (:func:`~.lock.new_run_id`), and only while holding the lock.

Errors while writing that mean a full disk become one :class:`DiskFullError` naming the output folder, the
space needed and the space free; the previous set stays as it was and the run's temporary files are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, OutputError, OutputExistsError
from .lock import PARTIAL_DIR, FolderLock
from .output import (
    SIDECARS,
    disk_full_error,
    free_bytes,
    fsync_dir,
    full_message,
    prepare_outdir,
    sha256_and_fsync,
)

RECORD_FORMAT = "hsscl-output-set/1"
RECORD_NAME = "report.json"
_RUN_ID = re.compile(r"^\d{8}T\d{6}-\d+-[0-9a-f]{8}$")
#: Side-cars derived from a raster (statistics, overviews, masks): stale once the raster is replaced.
_DERIVED_SIDECARS = (".aux.xml", ".ovr", ".msk")


def raster_bytes(width: int, height: int, bands: int, dtypes: tuple[str, ...] = ()) -> int:
    """Expected size of a GeoTIFF: bands x pixels x type size (``dtypes``: GDAL type names; compression is
    assumed to gain nothing, the warp writes the widest type of the bands)."""
    from osgeo import gdal

    sizes = [gdal.GetDataTypeSize(gdal.GetDataTypeByName(d)) // 8 for d in dtypes]
    return int(width) * int(height) * max(1, int(bands)) * max([1, *sizes])


# ------------------------------------------------------------------------------------------ records

def read_record(folder: str | os.PathLike, name: str = RECORD_NAME) -> dict[str, Any] | None:
    """The parsed record (``report.json``) in ``folder``, or None when absent or unreadable."""
    try:
        with open(Path(folder) / name, encoding="utf-8") as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def listed_files(record: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The file entries (``file``, ``size``, ``sha256``) a record lists; [] for an older or foreign report."""
    files = (record or {}).get("files")
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, dict) and isinstance(f.get("file"), str)
            and "/" not in f["file"] and "\\" not in f["file"] and f["file"] not in ("", ".", "..")]


def verify(folder: str | os.PathLike, name: str = RECORD_NAME,
           required: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, list[str]]:
    """Check the set in ``folder`` against its record: ``(record, problems)``; no problems = it verifies.

    ``required``: file names the record must list (e.g. the four outputs of a co-registration).
    """
    folder = Path(folder)
    rec = read_record(folder, name)
    if rec is None:
        return None, [f"{name} is missing or unreadable" if (folder / name).exists() else f"no {name}"]
    if (rec.get("record") or {}).get("format") != RECORD_FORMAT or not listed_files(rec):
        return rec, [f"{name} lists no checksums (written by an older version)"]
    problems: list[str] = []
    entries = listed_files(rec)
    missing = [n for n in required if n != name and n not in {e["file"] for e in entries}]
    problems += [f"{name} does not list {n}" for n in missing]
    for e in entries:
        problems += _check_file(folder / e["file"], e)
    return rec, problems


def _check_file(path: Path, entry: Mapping[str, Any]) -> list[str]:
    try:
        size = path.stat().st_size
    except OSError:
        return [f"{path.name} is missing"]
    if size != entry.get("size"):
        return [f"{path.name} differs (size {size} bytes, the record says {entry.get('size')})"]
    if sha256_of(path) != entry.get("sha256"):
        return [f"{path.name} differs (sha256)"]
    return []


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def foreign_entries(folder: str | os.PathLike, names: tuple[str, ...] = (), name: str = RECORD_NAME) -> list[str]:
    """Entries of ``folder`` that no earlier run of this engine provably wrote.

    Ours are: the hidden ``.hsscl-partial`` folder and, when ``report.json`` is a record of this engine (or
    the report of an older version, which named exactly ``names``), the record and the files it lists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    rec = read_record(folder, name)
    ours = {PARTIAL_DIR}
    if rec is not None and "reference" in rec and "target" in rec:
        ours.add(name)
        entries = listed_files(rec)
        ours.update(e["file"] for e in entries) if entries else ours.update(names)
    return sorted(p.name for p in folder.iterdir() if p.name not in ours)


# ------------------------------------------------------------------------------------------ recovery

def _rmtree_run(path: Path) -> None:
    if _RUN_ID.match(path.name) and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def recover(folder: str | os.PathLike, lock: FolderLock, name: str = RECORD_NAME) -> list[str]:
    """With ``lock`` held: finish the commit of dead runs killed while renaming, remove their other leftovers.

    Returns a line per completed set ("completed the outputs of run ... killed while renaming").
    """
    assert lock.held, "recover() needs the folder's lock"
    folder = Path(folder)
    notes: list[str] = []
    try:
        runs = sorted(p for p in lock.dir.iterdir() if _RUN_ID.match(p.name) and p.name != lock.run_id)
    except OSError:
        return notes
    for run in runs:
        rec = read_record(run, name)
        if rec is not None and (rec.get("record") or {}).get("format") == RECORD_FORMAT and _roll_forward(run, folder, rec,
                                                                                                        name):
            notes.append(f"completed the outputs of run {run.name}, which was stopped while renaming them")
        _rmtree_run(run)
    return notes


def _roll_forward(run: Path, folder: Path, rec: dict[str, Any], name: str) -> bool:
    entries = listed_files(rec)
    todo = []
    for e in entries:
        if not _check_file(run / e["file"], e):
            todo.append(e["file"])
        elif _check_file(folder / e["file"], e):
            return False  # neither copy is the one the record lists: cannot complete; the partial goes
    for n in todo:
        os.replace(run / n, folder / n)
    os.replace(run / name, folder / name)
    fsync_dir(folder)
    return True


# ------------------------------------------------------------------------------------------ the set

class OutputSet:
    """Write a set of outputs into ``folder`` as one unit (see the module docstring).

    ``names``: output key -> file name in ``folder``; ``record``: the key of the record (written last and
    listing the others), or None for a set without a record (e.g. a batch's ``summary.csv``).
    Raises :class:`FolderLockedError` if another run holds the folder, :class:`OutputExistsError` if an
    output exists and not ``overwrite``, :class:`DiskFullError` when the disk is (or would be) full.
    """

    def __init__(self, folder: str | os.PathLike, names: Mapping[str, str], *, overwrite: bool = False,
                 record: str | None = "report", run_id: str | None = None) -> None:
        self.folder = Path(folder)
        self.names = dict(names)
        self.overwrite = overwrite
        self.record_key = record
        self.run_id = run_id
        self.needed: int | None = None
        self.notes: list[str] = []
        self._lock: FolderLock | None = None
        self._writing = False
        self.work = Path()

    # ---- paths
    def temp(self, key: str) -> str:
        """Where to write output ``key`` (in the run's own hidden folder, same disk as the final name)."""
        self._writing = True
        return str(self.work / self.names[key])

    def final(self, key: str) -> str:
        return str(self.folder / self.names[key])

    @property
    def paths(self) -> dict[str, str]:
        return {k: self.final(k) for k in self.names}

    # ---- life cycle
    def __enter__(self) -> OutputSet:
        self.folder = prepare_outdir(self.folder).absolute()
        self._lock = FolderLock(self.folder, self.run_id).acquire()
        self.run_id = self._lock.run_id
        try:
            self.notes = recover(self.folder, self._lock)
            existing = [n for n in self.names.values() if (self.folder / n).exists()]
            if existing and not self.overwrite:
                raise OutputExistsError(f"Output(s) already exist in '{self.folder}': {', '.join(existing)}.",
                                        "Use --overwrite (or tick 'Overwrite') to replace them, or choose another "
                                        "folder.")
            self.work = self._lock.dir / self._lock.run_id
            self.work.mkdir()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            free = free_bytes(self.folder) if exc is not None else None
            _rmtree_run(self.work)
            if isinstance(exc, Exception) and (self._writing or isinstance(exc, DiskFullError)):
                full = disk_full_error(exc, self.folder, self.needed, free)
                if full is not None:
                    err = full_message(self.folder, self.needed)  # this folder, space free after the clean-up
                    err.details = full.details or f"{type(exc).__name__}: {exc}"
                    raise err from exc
        finally:
            if self._lock is not None:
                self._lock.release()

    # ---- work
    def check_space(self, needed: int) -> None:
        """Refuse at once (DiskFullError) when the disk has less than ``needed`` bytes free."""
        self.needed = int(needed)
        free = free_bytes(self.folder)
        if free is not None and free < self.needed:
            raise full_message(self.folder, self.needed, free)

    def commit(self, record: Mapping[str, Any] | None = None,
               json_default: Callable[[Any], Any] | None = None) -> dict[str, Any] | None:
        """Checksum and fsync every output, write the record, and rename the whole set into place."""
        self._writing = True
        rec_name = self.names.get(self.record_key) if self.record_key else None
        data = [n for k, n in self.names.items() if k != self.record_key]
        data += [n + s for n in list(data) for s in SIDECARS if (self.work / (n + s)).is_file()]
        files = []
        t0 = time.perf_counter()
        for n in data:
            p = self.work / n
            if not p.is_file():
                raise OutputError(f"Nothing was written for '{self.folder / n}'.")
            size, sha = sha256_and_fsync(p)
            files.append({"file": n, "size": size, "sha256": sha})
        out = None
        if rec_name:
            out = dict(record or {})
            out["files"] = files
            out["record"] = {"format": RECORD_FORMAT, "run_id": self.run_id, "pid": os.getpid(),
                             "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "checksum_s": round(time.perf_counter() - t0, 3),
                             "note": f"{rec_name} is written last; the set is complete when every file listed "
                                     "here has this size and sha256"}
            part = self.work / (rec_name + ".part")
            with open(part, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2, default=json_default)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.work / rec_name)  # the commit point: recover() completes a set from here
        fsync_dir(self.work)
        self._install(data, rec_name)
        return out

    def _install(self, data: list[str], rec_name: str | None) -> None:
        for n in data:
            os.replace(self.work / n, self.folder / n)
            for sfx in _DERIVED_SIDECARS:  # statistics/overviews of the file just replaced are stale
                stale = self.folder / (n + sfx)
                if (n + sfx) not in data and stale.is_file():
                    stale.unlink()
        if rec_name:
            os.replace(self.work / rec_name, self.folder / rec_name)
        fsync_dir(self.folder)
