"""Locks, taken the way microsandbox takes them, so volfs and a sandbox never
write one volume at once.

Two kinds, both ``flock(2)`` (released by the kernel when the process dies, so
a crash never leaves a stale lock):

* the **name lock**, ``<home>/volumes/.locks/<name>.lock`` held exclusively
  around create and remove (microsandbox holds the same file around the same
  steps);
* the **access lock**, held for as long as a volume is being accessed: on a
  disk volume's ``disk.raw`` (``LOCK_EX`` for read-write, ``LOCK_SH`` for
  read-only: exactly what microsandbox takes when it attaches the image to a
  VM), and on a directory volume's directory itself (microsandbox takes none
  there; volfs processes still exclude each other, and remove checks it).

Access locks never wait: a conflict is an immediate :class:`VolumeBusy`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volfs.errors import VolumeBusy, error

__all__ = ["name_lock", "AccessLock", "is_locked"]

_NAME_LOCK_TIMEOUT = 30.0


@contextmanager
def name_lock(lock_file: Path, name: str, timeout: float = _NAME_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the per-name lock file exclusively; VolumeBusy after ``timeout`` seconds."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot open the volume's lock file: {exc.strerror}", str(lock_file)) from None
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise VolumeBusy(name, f"timed out after {timeout:g}s waiting for the volume's lock") from None
                time.sleep(delay)  # polling a lock held by another process
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


class AccessLock:
    """An access lock on a volume's image or directory, held until :meth:`release`.

    ``exclusive=True`` is for read-write access (``LOCK_EX``), ``False`` for
    read-only access (``LOCK_SH``). Raises :class:`VolumeBusy` at once on a
    conflict, naming the volume.
    """

    def __init__(self, path: Path, name: str, *, exclusive: bool) -> None:
        self.path = path
        self.name = name
        self.exclusive = exclusive
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"cannot open volume {name!r} for locking: {exc.strerror}", str(path)) from None
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            held = "in use" if exclusive else "in use for writing"
            raise VolumeBusy(name, f"volume is {held} (a sandbox or another volfs process holds its lock)") from None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def downgrade(self) -> None:
        """Turn an exclusive lock into a shared one (never blocks; readers may then join)."""
        if self._fd is not None and self.exclusive:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            self.exclusive = False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> AccessLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def is_locked(path: Path) -> bool:
    """True if another open file holds any flock on ``path`` (probe, never waits)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
