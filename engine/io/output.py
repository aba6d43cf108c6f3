"""Output checks and atomic writes: nothing is ever left half-written under a final name.

``prepare_outdir`` validates an output folder before any work starts; ``atomic_path`` hands out a
temporary name in the same folder and renames it onto the final name only when the block succeeds.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError, OutputExistsError

#: Side-car files GDAL/SQLite may write next to a dataset; they travel with it on rename.
SIDECARS = (".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")


def _check_writable(folder: Path) -> None:
    """Raise :class:`OutputError` unless a file can really be created in ``folder``."""
    probe = folder / f".hsscl-write-test-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"Cannot write into the folder '{folder}'.",
                          "Choose a folder where you have write permission (and free disk space).",
                          str(exc)) from exc


def prepare_outdir(outdir: str | os.PathLike, names: Iterable[str] = (), overwrite: bool = False) -> Path:
    """Create ``outdir`` if needed and check it can take the outputs ``names`` (file names in it).

    Raises :class:`OutputError` if the folder cannot be created or written to, and
    :class:`OutputExistsError` if one of ``names`` exists and ``overwrite`` is false.
    """
    folder = Path(outdir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder '{folder}'.",
                          "Choose another output folder (one you can write to).", str(exc)) from exc
    if not folder.is_dir():
        raise OutputError(f"The output path '{folder}' is not a folder.", "Choose a folder for the outputs.")
    existing = [n for n in names if (folder / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"Output(s) already exist in '{folder}': {', '.join(existing)}.",
                                "Use --overwrite (or tick 'Overwrite') to replace them, or choose another folder.")
    _check_writable(folder)
    return folder


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check one output file name: refuse an existing file unless ``overwrite``; folder must be writable."""
    final = Path(path)
    if final.is_dir():
        raise OutputError(f"The output '{final}' is a folder.", "Give a file name for the output.")
    if final.exists() and not overwrite:
        raise OutputExistsError(f"The output '{final}' already exists.",
                                "Use --overwrite (or tick 'Overwrite') to replace it, or choose another name.")
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"The folder of the output '{final}' does not exist.",
                          "Create the folder first or choose another output path.")
    _check_writable(parent)
    return final


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` if the block succeeds.

    The temporary name keeps the extension of ``final`` (drivers that look at it still work). On any
    exception (including :class:`~hsscl.engine.errors.CancelledError`) the temporary file and its
    side-cars are deleted and ``final`` is left untouched. Side-cars (``.aux.xml``...) of the temporary
    file are renamed with it; stale side-cars of a replaced ``final`` are removed.
    """
    final_s = os.fspath(final)
    folder, name = os.path.split(os.path.abspath(final_s))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{ext}")
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OutputError(f"Nothing was written for '{final_s}'.")
        try:
            os.replace(tmp, final_s)
        except OSError as exc:
            raise OutputError(f"Cannot write '{final_s}'.", "Check that the file is not open in another program.",
                              str(exc)) from exc
        for sfx in SIDECARS:
            if os.path.exists(tmp + sfx):
                os.replace(tmp + sfx, final_s + sfx)
            elif sfx in (".aux.xml", ".ovr", ".msk") and os.path.exists(final_s + sfx):
                _remove_quietly(final_s + sfx)  # stale side-car of the replaced file
    finally:
        for p in (tmp, *(tmp + s for s in SIDECARS)):
            if os.path.exists(p):
                _remove_quietly(p)
