"""File locks between processes: one process creates a store, one process trains a run.

The locks are ``flock`` locks on small files that are never deleted: the kernel releases them
when their holder exits, however it exits (SIGKILL included), so a stale lock cannot exist.
``flock`` locks belong to an open file, not to a process: two threads of one process that
lock the same file exclude each other too. (Over NFS, Linux emulates them with POSIX locks,
which the server also releases when the client process dies.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Optional

from continual.errors import UserError


class RunBusyError(UserError):
    """Another process holds the run (it is training it now)."""


class FileLock:
    """An exclusive lock on ``path`` (created if missing, never removed)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once if another holder has it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        # Who holds it, for the message another process prints (informative only: the lock is
        # the flock, not this text).
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder(self) -> str:
        """What the holder wrote into the file ("" if nothing)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a holder dropped without release (an error before its finally)
        try:
            self.release()
        except Exception:  # at interpreter exit, modules may be gone: the kernel releases it anyway
            pass


class RunLock:
    """The lock of the run a process trains: ``<checkpoints>/<run_id>.lock``, beside the run's
    checkpoint folder, held from before the run is (re)opened until the process is done with it.

    ``acquire(run_id)`` never waits: if another process holds the run, it raises
    :class:`RunBusyError` with a one-line message (who holds it and what to do).
    """

    def __init__(self, checkpoints: Path) -> None:
        self.checkpoints = Path(checkpoints)
        self.run_id: Optional[str] = None
        self._lock: Optional[FileLock] = None

    def acquire(self, run_id: str) -> None:
        if self.run_id == run_id:
            return
        self.release()
        lock = FileLock(self.checkpoints / f"{run_id}.lock")
        if not lock.acquire(blocking=False):
            holder = lock.holder()
            raise RunBusyError(f"run {run_id} is being trained by another process ({holder or 'holder unknown'}; "
                               f"lock {lock.path}); wait for it to finish, or add --fresh to start a new run")
        self.run_id, self._lock = run_id, lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
        self.run_id, self._lock = None, None
