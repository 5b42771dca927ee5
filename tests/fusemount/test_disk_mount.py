"""Mounting a disk volume: the ext4 image served by volfs, compared with the kernel's view."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean, need_root, need_tool

from volfs.sync import Volume


def tree_facts(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a host tool sees of a tree: type, mode, ids, size, nlink, mtime ns, target, xattrs, bytes."""
    facts: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            extra: object = None
            if os.path.islink(p):
                extra = os.readlink(p)
            elif p.is_file():
                extra = p.read_bytes()
            try:
                xattrs = {x: os.getxattr(p, x, follow_symlinks=False) for x in sorted(os.listxattr(p, follow_symlinks=False))}
            except OSError:
                xattrs = {}
            facts[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                                               st.st_mtime_ns, extra, tuple(xattrs.items()))  # fmt: skip
    return facts


@pytest.fixture
def kernel_view(tmp_path: Path) -> Iterator[Path]:
    need_root("loop-mounting an ext4 image")
    mnt = tmp_path / "kernel"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_volume_mount_matches_the_kernel(home: Path, mounter: Mounter, tmp_path: Path, kernel_view: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "app" / "lib").mkdir(parents=True)
    (tree / "app" / "main.py").write_text("print('hi')\n")
    (tree / "app" / "lib" / "blob").write_bytes(os.urandom(1 << 20))
    os.symlink("../app/main.py", tree / "app" / "lib" / "link")
    os.link(tree / "app" / "main.py", tree / "app" / "hard")
    os.setxattr(tree / "app" / "main.py", "user.note", b"kept")
    os.chown(tree / "app" / "main.py", 1000, 1000)
    vol = Volume.create("disk", home=home, kind="disk", size_mib=64)
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-d", str(tree), str(vol.disk_path)], check=True)

    rec = mounter("disk")
    mp = Path(rec.mountpoint)
    ours = tree_facts(mp)
    assert "app/lib/blob" in ours and ours["app/main.py"][1] == 1000
    with pytest.raises(OSError) as info:
        (mp / "new").write_text("x")
    assert info.value.errno == errno.EROFS  # the ext4 write side is not wired yet
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "disk")
    e2fsck_clean(vol.disk_path)
    subprocess.run(["mount", "-o", "loop,ro,noload", str(vol.disk_path), str(kernel_view)], check=True)
    assert tree_facts(kernel_view) == ours
