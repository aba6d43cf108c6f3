"""One writer per output folder: an advisory lock held for a whole run.

The lock is ``FOLDER/.hsscl-partial/lock``, locked with ``fcntl.flock`` (POSIX) or ``msvcrt.locking``
(Windows). The operating system releases it when the process ends in any way (also SIGKILL), so a lock
never outlives a killed run. The file holds who took it (pid, host, start time, run id) so that a second
run can say which run holds the folder.

On POSIX the holder removes the lock file (and the then empty ``.hsscl-partial`` folder) before it lets
go; a run that opened the old file checks after locking that the path still names the file it locked, and
tries again otherwise, so two runs can never both believe they hold the folder.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from ..errors import FolderLockedError, OutputError

#: Hidden folder of the engine's own inside an output folder: the lock and the in-flight files of runs.
PARTIAL_DIR = ".hsscl-partial"
LOCK_NAME = "lock"
_INFO_OFFSET = 1  # byte 0 is the one locked on Windows (it cannot be read there while locked)

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):  # how some network file systems say "held"
                return False
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):  # no locks on this file system: go on
                return True  # unlocked, as before locks existed (documented in docs/batch.md)
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def new_run_id() -> str:
    """A run id that sorts by time and names this process: ``20261206T141500-12345-1a2b3c4d``."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, _INFO_OFFSET, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def holder_text(info: dict) -> str:
    """``pid 1234, started 14:05`` (and the host when it is another machine)."""
    pid = info.get("pid", "?")
    started = info.get("started")
    when = time.strftime("%H:%M", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {pid}{where}, started {when}"


class FolderLock:
    """Exclusive lock on an output folder for the duration of a ``with`` block (or acquire/release).

    Raises :class:`FolderLockedError` at once (no waiting) if another run holds the folder.
    """

    def __init__(self, folder: str | os.PathLike, run_id: str | None = None) -> None:
        self.folder = Path(folder)
        self.run_id = run_id or new_run_id()
        self.dir = self.folder / PARTIAL_DIR
        self.path = self.dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        for _attempt in range(50):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # the folder was removed by a run that just finished: try again
            except OSError as exc:
                raise OutputError(f"Cannot write into the folder '{self.folder}'.",
                                  "Choose a folder where you have write permission (and free disk space).",
                                  str(exc)) from exc
            if not _try_lock(fd):
                info = _read_info(fd)
                os.close(fd)
                raise FolderLockedError(
                    f"another run ({holder_text(info)}) is writing into {self.folder}",
                    "Wait until it has finished, or choose another output folder.")
            if os.name != "nt":
                try:
                    same = os.path.samestat(os.stat(self.path), os.fstat(fd))
                except FileNotFoundError:
                    same = False
                if not same:  # the holder we waited for removed this file: lock the new one
                    os.close(fd)
                    continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "run_id": self.run_id}
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, b" " + json.dumps(info).encode("utf-8"))
            except OSError:
                pass  # a full disk: the lock holds all the same, only the holder's name is missing
            self._fd = fd
            return self
        raise OutputError(f"Could not lock the folder '{self.folder}' (it keeps changing).",  # pragma: no cover
                          "Check that no other program removes files in it, and run again.")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.name != "nt":  # remove the lock while still holding it (see the module docstring)
                try:
                    os.unlink(self.path)
                    self.dir.rmdir()  # only when empty: other runs' leftovers stay for the next holder
                except OSError:
                    pass
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(folder: str | os.PathLike) -> str | None:
    """The holder's description when another run holds ``folder``, else None (takes nothing)."""
    path = Path(folder) / PARTIAL_DIR / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return holder_text(_read_info(fd))
    finally:
        os.close(fd)
