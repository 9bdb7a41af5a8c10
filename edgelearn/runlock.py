"""One process at a time in a run directory: an exclusive `flock` on DIR/.lock, held by whoever executes the run.

`edgelearn train --out D` and every sweep run take it, so a second `train` on the same directory, a second sweep over
the same results, or a rerun while an orphaned worker still trains are told the run is busy instead of writing into it
at the same time. The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a lock never
outlives its process and there is nothing to clean up by hand; the file itself is left in place (removing a lock file
races with a process about to take it). The lock is re-entrant within a process (a sweep worker holds it around
`train()`, which takes it too). Where `fcntl` does not exist (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from pathlib import Path

from .errors import EdgelearnError

LOCK_NAME = ".lock"

_held: dict[str, list] = {}  # resolved directory -> [fd, depth], locks this process holds
_guard = threading.Lock()


class RunBusy(EdgelearnError):
    """The run directory is locked by another live process (which is executing that run)."""

    def __init__(self, directory, holder: str):
        self.directory = str(directory)
        self.holder = holder
        super().__init__(f"{directory}: in use by another edgelearn process ({holder or 'holder unknown'}); "
                         "wait for it to finish, or stop it first")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text


@contextlib.contextmanager
def run_lock(directory: str | Path):
    """Hold DIR/.lock exclusively for the block (creating DIR), or raise RunBusy at once if another process holds
    it. The lock file records the holder's pid and host, for the message the next process gets."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: unlocked
        yield
        return
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgelearnError(f"{directory}: cannot create the run directory ({exc.strerror or exc})") from None
    key = str(directory.resolve())
    with _guard:
        if key in _held:
            _held[key][1] += 1
            fd = None
        else:
            path = directory / LOCK_NAME
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise EdgelearnError(f"{path}: cannot open the run's lock file ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunBusy(directory, holder) from None
                raise EdgelearnError(f"{path}: cannot lock the run directory ({exc.strerror or exc}): its filesystem "
                                     "does not support flock") from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            except OSError:
                pass  # the note is informational; the lock is what counts
            _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                fd = _held.pop(key)[0]
                os.close(fd)  # releases the flock

