"""mypy --strict holds over volfs/ and fuse/ (style rule 5), checked in the suite so it stays true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testsupport import need

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict(tmp_path: Path) -> None:
    need(subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode == 0,
         "mypy is not installed (pip install -e '.[test]')")  # fmt: skip
    # fuse/ installs as volfs_fuse; mypy finds it under that name through a link.
    shim = tmp_path / "shim"
    shim.mkdir()
    os.symlink(ROOT / "fuse", shim / "volfs_fuse")
    env = {**os.environ, "MYPYPATH": str(shim)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "-p", "volfs", "-p", "volfs_fuse"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_open_flags_from_os_for_every_combination() -> None:
    import itertools
    import os

    from volfs.backend import OpenFlags

    for acc, append, trunc, excl, other in itertools.product(
            (os.O_RDONLY, os.O_WRONLY, os.O_RDWR), (0, os.O_APPEND), (0, os.O_TRUNC), (0, os.O_EXCL),
            (0, os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC)):
        got = OpenFlags.from_os(acc | append | trunc | excl | other)
        want = OpenFlags(0)
        if acc != os.O_WRONLY:
            want |= OpenFlags.READ
        if acc != os.O_RDONLY:
            want |= OpenFlags.WRITE
        if append:
            want |= OpenFlags.APPEND
        if trunc:
            want |= OpenFlags.TRUNC
        if excl:
            want |= OpenFlags.EXCL
        assert got is want  # the very member (and type) the enum gives
        assert got.writes == bool(want & (OpenFlags.WRITE | OpenFlags.APPEND | OpenFlags.TRUNC))
        assert got.appends == bool(want & OpenFlags.APPEND)
        assert got.write_only == (bool(want & OpenFlags.WRITE) and not want & OpenFlags.READ)
