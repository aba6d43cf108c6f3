"""Deliver the engine's fixed-name outputs to the destinations chosen in Processing, atomically.

Each destination is written under a temporary name in its own folder (so on its own disk: a copy across file
systems never leaves a half file under the chosen name), fsynced, and renamed onto the chosen name with
``os.replace``; the destination is never deleted before the new file is complete. Formats made of several
files (a Shapefile's .shp/.shx/.dbf/.prj) are renamed together, the main file last. A full disk ends the run
with the engine's one line ("the disk holding FOLDER is full (about N MB needed, M MB free)"), the previous
file untouched and no temporary left. The JSON report is delivered last and names the files the user chose,
with their size and sha256.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qgis.core import QgsProcessingException, QgsRasterFileWriter, QgsVectorFileWriter

#: Side-cars of a replaced destination that would describe the old file (statistics, SQLite journals).
_STALE = (".aux.xml", "-wal", "-shm")


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def _size(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


@contextmanager
def atomic_destination(dest: str, needed: int | None = None) -> Iterator[str]:
    """Yield a temporary path (same folder and extension as ``dest``); on success rename it onto ``dest``.

    Raises :class:`QgsProcessingException` with one line when the disk is full (``needed``: bytes expected).
    """
    from ...engine.io.output import disk_full_error, free_bytes, fsync_dir, fsync_file

    folder = os.path.dirname(os.path.abspath(dest)) or "."
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(dest))
    tmp_stem = os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}")
    tmp = tmp_stem + ext

    def made() -> list[str]:
        return sorted(glob.glob(glob.escape(tmp_stem) + ".*") + glob.glob(glob.escape(tmp_stem) + "-*"))

    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise QgsProcessingException(f"Nothing was written for '{dest}'.")
        files = made()
        for f in files:
            fsync_file(f)
        for f in files:  # companions (.shx, .dbf, .prj, .aux.xml...) first, the main file last
            if f != tmp:
                os.replace(f, os.path.join(folder, stem + f[len(tmp_stem):]))
        os.replace(tmp, dest)
        for sfx in _STALE:
            stale = dest + sfx
            if os.path.isfile(stale) and (tmp + sfx) not in files:
                os.remove(stale)
        fsync_dir(folder)
    except Exception as exc:
        free = free_bytes(folder)
        for f in made():
            _remove_quietly(f)
        full = disk_full_error(exc, folder, needed, free)
        if full is not None:
            raise QgsProcessingException(str(full)) from exc
        raise
    finally:
        for f in made():
            _remove_quietly(f)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def deliver_raster(src: str, dest: str) -> str:
    """Copy (GeoTIFF) or convert the raster ``src`` to ``dest``, atomically."""
    from osgeo import gdal

    from ...engine.io.output import gdal_close_checked

    driver = "" if _ext(dest) in ("tif", "tiff") else (QgsRasterFileWriter.driverForExtension(_ext(dest)) or "GTiff")
    with atomic_destination(dest, _size([src])) as tmp:
        if not driver:
            shutil.copyfile(src, tmp)
        else:
            out = gdal.Translate(tmp, src, format=driver)
            if out is None:
                raise QgsProcessingException(f"Could not write the raster '{dest}' with the {driver} driver.")
            with gdal_close_checked(dest):
                out = None
    return dest


def deliver_vector(src_gpkg: str, layer: str, dest: str) -> str:
    """Copy one layer of the engine's GeoPackage to ``dest`` (any OGR format chosen by extension), atomically."""
    from osgeo import gdal

    from ...engine.io.output import gdal_close_checked

    driver = QgsVectorFileWriter.driverForExtension(_ext(dest)) or "GPKG"
    with atomic_destination(dest, _size([src_gpkg])) as tmp:
        out = gdal.VectorTranslate(tmp, src_gpkg, format=driver, layers=[layer], layerName=layer)
        if out is None:
            raise QgsProcessingException(f"Could not write the layer '{layer}' to '{dest}'.")
        with gdal_close_checked(dest):
            out = None
    return dest


def deliver_file(src: str, dest: str) -> str:
    """Copy a file to ``dest``, atomically."""
    with atomic_destination(dest, _size([src])) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def deliver_text(dest: str, write) -> str:
    """Write a text file through ``write(tmp_path)``, atomically (e.g. the HTML report)."""
    with atomic_destination(dest) as tmp:
        write(tmp)
    return dest


def deliver_report(src_json: str, dest: str, user_files: dict[str, str]) -> str:
    """Deliver the engine's report.json to ``dest``, naming the files the user chose (deliver it last).

    ``outputs`` becomes ``user_files`` (output key -> chosen path; empty ones left out) and ``files`` lists
    each delivered file with its path, size and sha256, so that the record verifies against what the user has.
    """
    from ...engine.io.outputset import sha256_of

    with open(src_json, encoding="utf-8") as f:
        report: dict[str, Any] = json.load(f)
    chosen = {k: v for k, v in user_files.items() if v and os.path.abspath(v) != os.path.abspath(dest)}
    report["outputs"] = {**chosen, "report": dest}
    report["files"] = [{"file": os.path.abspath(p), "size": os.path.getsize(p), "sha256": sha256_of(p)}
                       for p in dict.fromkeys(chosen.values()) if os.path.isfile(p)]
    record = dict(report.get("record") or {})
    record["note"] = ("delivered by QGIS Processing: 'files' lists the files chosen in the dialog (absolute paths) "
                      "with their size and sha256; this report is written last")
    report["record"] = record
    with atomic_destination(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return dest
