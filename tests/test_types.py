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
