"""Output checks and atomic writes: nothing is ever left half-written under a final name.

``prepare_outdir`` validates an output folder before any work starts; ``atomic_path`` hands out a
temporary name in the same folder, fsyncs it and renames it onto the final name only when the block
succeeds. A full disk (ENOSPC, EDQUOT, EFBIG, or a GDAL/SQLite write error on a disk with next to no
free space) becomes one :class:`DiskFullError` that says so (``disk_full_error``). Sets of outputs
(one folder, one lock, one record) are in :mod:`.outputset`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DiskFullError, FolderLockedError, HSSCLError, OutputError, OutputExistsError

#: Side-car files GDAL/SQLite may write next to a dataset; they travel with it on rename.
SIDECARS = (".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")


#: errno values that mean "no room": no space, quota exceeded, file too large for the file system.
FULL_ERRNOS = frozenset(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None),
                                    getattr(errno, "EFBIG", None)) if e is not None)
#: Below this many free bytes a write error is taken for a full disk (GDAL and SQLite rarely say ENOSPC).
NEARLY_FULL_BYTES = 1 << 20
_FULL_WORDS = ("no space left", "disk is full", "disk full", "quota exceeded", "file too large")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the disk holding ``folder`` (its nearest existing parent), or None if unknown."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def megabytes(n: int | None) -> str:
    if n is None:
        return "?"
    mb = n / 1e6
    return f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def full_message(folder: str | os.PathLike, needed: int | None, free: int | None = None) -> DiskFullError:
    """``the disk holding FOLDER is full (about N MB needed, M MB free)`` as a :class:`DiskFullError`."""
    free = free_bytes(folder) if free is None else free
    need = f"about {megabytes(needed)} MB needed, " if needed else ""
    return DiskFullError(f"the disk holding {os.fspath(folder)} is full ({need}{megabytes(free)} MB free)",
                         "Free some space or choose a folder on another disk; the previous outputs were left as they "
                         "were and no temporary file was left behind.")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(exc: BaseException, free_before_cleanup: int | None) -> bool:
    """True when ``exc`` (or what caused it) says the disk is full, or is a write error on a nearly full disk."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, (FolderLockedError, OutputExistsError)) or (
            isinstance(exc, HSSCLError) and not isinstance(exc, OutputError)):
        return False
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        text = " ".join(str(x) for x in (e, getattr(e, "details", ""))).lower()
        if any(w in text for w in _FULL_WORDS):
            return True
    writeish = any(isinstance(e, (OSError, RuntimeError, OutputError)) for e in _chain(exc))
    return writeish and free_before_cleanup is not None and free_before_cleanup < NEARLY_FULL_BYTES


def disk_full_error(exc: BaseException, folder: str | os.PathLike, needed: int | None,
                    free_before_cleanup: int | None) -> DiskFullError | None:
    """The :class:`DiskFullError` to raise instead of ``exc``, or None when ``exc`` is not about space."""
    if isinstance(exc, DiskFullError):
        return exc
    if not is_disk_full(exc, free_before_cleanup):
        return None
    err = full_message(folder, needed)
    err.details = f"{type(exc).__name__}: {exc}"
    return err


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to the disk (its data and size); errors (e.g. a full disk) are raised."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames) to the disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (e.g. some FUSE/SMB mounts) refuse fsync on a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def sha256_and_fsync(path: str | os.PathLike, chunk: int = 1 << 22) -> tuple[int, str]:
    """(size, sha256 hex) of a file just written, read back once, and fsync it through the same handle."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            size += len(b)
        os.fsync(f.fileno())
    return size, h.hexdigest()


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
        try:
            yield tmp
            if not os.path.exists(tmp):
                raise OutputError(f"Nothing was written for '{final_s}'.")
            fsync_file(tmp)
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
            fsync_dir(folder)
        except Exception as exc:
            free = free_bytes(folder)  # measured before the clean-up gives the space back
            _remove_temporaries(tmp)
            full = disk_full_error(exc, folder, None, free)
            if full is not None and full is not exc:
                raise full from exc
            raise
    finally:
        _remove_temporaries(tmp)


def _remove_temporaries(tmp: str) -> None:
    for p in (tmp, *(tmp + s for s in SIDECARS)):
        if os.path.exists(p):
            _remove_quietly(p)


@contextmanager
def gdal_close_checked(path: str | os.PathLike, quiet: bool = False) -> Iterator[None]:
    """Around ``ds = None``: the errors GDAL reports while closing a dataset are raised, never ignored.

    GDAL before 3.8 has no ``Dataset.Close()``; a failed close (a full disk while the last blocks or the
    GeoPackage index are flushed) would only print "Exception ignored". Here it raises ``RuntimeError``
    with GDAL's messages (``quiet``: collect and drop them, for a clean-up after another error).
    """
    from osgeo import gdal

    errors: list[str] = []

    def handler(cls: int, _no: int, msg: str) -> None:
        if cls >= gdal.CE_Failure:
            errors.append(msg)
            gdal.ErrorReset()

    gdal.PushErrorHandler(handler)
    try:
        yield
    finally:
        gdal.PopErrorHandler()
    if errors and not quiet:
        raise RuntimeError(f"closing '{os.fspath(path)}' failed: {'; '.join(errors[:4])}")
