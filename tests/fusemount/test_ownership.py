"""Ownership models of a mount: --owner and --uid-map/--gid-map, checked as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import need_root, need_tool

from volfs.mounts import MountOptions
from volfs.sync import Volume

USER = 1000


def as_user(*cmd: str) -> subprocess.CompletedProcess[str]:
    setpriv = need_tool("setpriv")
    return subprocess.run([setpriv, f"--reuid={USER}", f"--regid={USER}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def open_mountpoint() -> Iterator[Path]:
    """A mount point the unprivileged user can reach (pytest's tmp dirs are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="volfs-own-"))
    os.chmod(top, 0o755)
    (top / "mnt").mkdir()
    yield top / "mnt"
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def guest_tree(home: Path) -> Path:
    need_root("files owned by other users, and running commands as another user")
    vol = Volume.create("own", home=home)
    (vol.path / "rootfile").write_text("guest root's")
    os.chmod(vol.path / "rootfile", 0o644)
    (vol.path / "appfile").write_text("guest uid 5's")
    os.chown(vol.path / "appfile", 5, 5)
    os.chmod(vol.path, 0o755)
    return vol.path


def test_owner_option(guest_tree: Path, mounter: Mounter, open_mountpoint: Path) -> None:
    rec = mounter("own", MountOptions(owner=(USER, USER), allow_other=True), open_mountpoint)
    mp = Path(rec.mountpoint)
    for name in ("rootfile", "appfile"):
        st = os.stat(mp / name)
        assert (st.st_uid, st.st_gid) == (USER, USER)
    r = as_user("sh", "-c", f"echo mine >> {mp / 'rootfile'} && echo new > {mp / 'created'}")
    assert r.returncode == 0, r.stderr
    assert (guest_tree / "rootfile").read_text() == "guest root'smine\n"
    st = os.stat(guest_tree / "created")
    assert (st.st_uid, st.st_gid) == (0, 0)  # stored as the volume's default owner, shown as the host user
    assert os.stat(guest_tree / "appfile").st_uid == 5  # unchanged underneath


def test_uid_map(guest_tree: Path, mounter: Mounter, open_mountpoint: Path) -> None:
    rec = mounter("own", MountOptions(uid_map=((0, USER, 1),), gid_map=((0, USER, 1),), allow_other=True),
                  open_mountpoint)  # fmt: skip
    mp = Path(rec.mountpoint)
    assert os.stat(mp / "rootfile").st_uid == USER
    assert os.stat(mp / "appfile").st_uid == 65534  # unmapped guest ids show as nobody
    r = as_user("sh", "-c", f"echo x > {mp / 'made'} && mkdir {mp / 'dir'}")
    assert r.returncode == 0, r.stderr
    for name in ("made", "dir"):
        st = os.stat(guest_tree / name)
        assert (st.st_uid, st.st_gid) == (0, 0)  # host 1000 is guest root
    r = as_user("sh", "-c", f"echo no >> {mp / 'appfile'}")
    assert r.returncode != 0 and "Permission denied" in r.stderr  # default_permissions on nobody's file
