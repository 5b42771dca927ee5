"""Fixtures for FUSE tests (see support.py for the teardown rules)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fusemount.support import Mounter, fuse_available, teardown
from testsupport import need, need_tool

from volfs.home import resolve_home
from volfs.mounts import MountOptions, MountRecord, mount
from volfs.sync import Volume


@pytest.fixture
def mounter(home: Path, tmp_path: Path) -> Iterator[Mounter]:
    """mounter(name, options=MountOptions()) mounts an existing volume at a fresh directory."""
    need(fuse_available(), "/dev/fuse is not available")
    need_tool("fusermount3")
    made: list[tuple[str, Path]] = []

    def do(name: str, options: MountOptions | None = None, mountpoint: Path | None = None) -> MountRecord:
        mp = mountpoint or tmp_path / f"mnt-{name}-{len(made)}"
        mp.mkdir(exist_ok=True)
        made.append((name, mp))
        opts = options or MountOptions()
        if opts.log is None:
            opts = replace(opts, log=str(tmp_path / f"daemon-{name}.log"))
        return mount(resolve_home(home), name, mp, opts)

    yield do
    for name, mp in reversed(made):
        teardown(home, name, mp)
    # An internal error in the daemon is a bug even when the test passed.
    for log in sorted(tmp_path.glob("daemon-*.log")):
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, f"{log.name}:\n{text}"


@pytest.fixture
def dir_mount(home: Path, mounter: Mounter) -> tuple[Path, Path]:
    """A mounted directory volume: (mount point, the volume's host directory)."""
    vol = Volume.create("dvol", home=home)
    rec = mounter("dvol")
    return Path(rec.mountpoint), vol.path
