"""Formatting a disk volume's image: the one place volfs runs ``mkfs.ext4``.

Until volfs's own mkfs lands (the ext4 write-side issue), a disk volume's
``disk.raw`` is a sparse file of the requested capacity formatted by
e2fsprogs. Only metadata is written (lazy inode table and journal init), so
a large capacity costs little host space.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

from volfs.errors import error

__all__ = ["format_disk_image"]

_MKFS_TIMEOUT = 600.0


def _find_mkfs() -> str:
    found = shutil.which("mkfs.ext4") or next(
        (p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise error(errno.ENOENT, "mkfs.ext4 is not installed (Debian package e2fsprogs)", "mkfs.ext4")
    return found


def format_disk_image(path: Path, capacity_bytes: int) -> None:
    """Create ``path`` as a sparse ext4 image of ``capacity_bytes`` (must not exist)."""
    mkfs = _find_mkfs()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot create disk image: {exc.strerror}", str(path)) from None
    try:
        os.ftruncate(fd, capacity_bytes)
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot size disk image: {exc.strerror}", str(path)) from None
    finally:
        os.close(fd)
    proc = subprocess.run(
        [mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(path)],
        capture_output=True,
        text=True,
        timeout=_MKFS_TIMEOUT,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {proc.returncode}"
        code = errno.ENOSPC if "No space left" in reason else errno.EIO
        raise error(code, f"mkfs.ext4 failed: {reason}", str(path))
