"""One writer per folder: an exclusive ``flock`` on a lock file inside it.

The OS releases the lock when the process dies, so a killed run never blocks the next one; the
file is removed when the holder is done, and a process that locked a file the previous holder had
just removed retries on the new one. (Not the filelock package, which the caches use: it leaves
the lock file behind in the user's folder.) On NFS v4, ``flock`` is emulated with byte-range locks
that the server arbitrates, so the lock also holds across the hosts of a cluster.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable


class DirLock:
    """Hold ``path`` (a lock file) exclusively. When another process holds it: with ``wait``,
    block until it is released; else raise ``busy()`` (a user-facing error saying who and what
    to do). The holder's pid is written into the file."""

    def __init__(self, path: str | Path, busy: Callable[[], Exception], wait: bool = False):
        self.path = Path(path)
        self.busy = busy
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(self._fd)
                self._fd = None
                raise self.busy() from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(self._fd)  # locked a file the previous holder removed on exit: lock the new one
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: no one can hold this file next
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(path: str | Path) -> int | None:
    """The pid written by the process that holds the :class:`DirLock` file ``path`` (0 when it
    wrote none yet), or None when no process holds it. Reads only: a shared ``flock`` that the
    holder's exclusive one refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
