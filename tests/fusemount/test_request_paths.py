"""The shortened request paths of the FUSE layer and the ext4 backend behave as the long ones did.

- FLUSH answers ENOSYS (the kernel then stops sending it): close(2) still
  reports nothing, data written before close is there for the next open and,
  after unmount, for the kernel.
- ``Ext4Backend.create`` lets the engine find an existing name (EEXIST) instead
  of looking the name up first; the existing-name cases (open, TRUNC, EXCL,
  wrong types) and the rolled-back attempt must leave everything as it was.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean, loop_mount, need, need_root, need_tool

from volfs.backend import OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.sync import Volume


def _image(tmp_path: Path) -> Path:
    need_tool("mkfs.ext4")
    image = tmp_path / "img.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "hash_seed=12345678-1234-1234-1234-123456789abc",
                    "-U", "12345678-1234-1234-1234-123456789abc", str(image), "16M"],
                   check=True, capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})
    return image


def _errno(fn: object, *args: object) -> int:
    with pytest.raises(VolfsError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.errno is not None
    return info.value.errno


def test_flush_is_enosys(tmp_path: Path) -> None:
    try:  # the FUSE extra; every other test here goes through a real mount instead
        import pyfuse3
        import trio

        from volfs_fuse.idmap import IdMap
        from volfs_fuse.operations import VolfsOperations
    except ImportError:
        need(False, "pyfuse3 is not installed")
    backend = Ext4Backend(_image(tmp_path), readonly=True)
    try:
        ops = VolfsOperations(backend, IdMap((0, 0)), exclusive=True)
        with pytest.raises(pyfuse3.FUSEError) as info:
            trio.run(ops.flush, 1)
        assert info.value.errno == errno.ENOSYS
    finally:
        backend.close()


def test_create_existing_names(tmp_path: Path) -> None:
    image = _image(tmp_path)
    b = Ext4Backend(image, readonly=False)
    try:
        root = b.root
        d = b.mkdir(root, b"d", 0o755, 0, 0)
        names = [f"f{i:04d}".encode() for i in range(300)]  # enough for an indexed directory
        inos = {}
        for name in names:
            fh, attr = b.create(d.ino, name, 0o644, OpenFlags.WRITE, 0, 0)
            b.write(fh, 0, name * 10)
            b.release(fh)
            inos[name] = attr.ino
        b.mknod(d.ino, b"fifo", stat.S_IFIFO | 0o644, 0, 0, 0)
        b.symlink(d.ino, b"link", b"f0000", 0, 0)
        b.mkdir(d.ino, b"sub", 0o755, 0, 0)

        # Without EXCL an existing regular file is opened as it is (mode and owner unchanged).
        fh, attr = b.create(d.ino, b"f0007", 0o600, OpenFlags.READ, 5, 5)
        assert attr.ino == inos[b"f0007"] and stat.S_IMODE(attr.mode) == 0o644 and attr.uid == 0
        assert b.read(fh, 0, 100) == b"f0007" * 10
        b.release(fh)
        # With TRUNC it is emptied.
        fh, attr = b.create(d.ino, b"f0008", 0o644, OpenFlags.WRITE | OpenFlags.TRUNC, 0, 0)
        assert attr.ino == inos[b"f0008"] and attr.size == 0
        b.write(fh, 0, b"new")
        b.release(fh)
        assert _errno(b.create, d.ino, b"f0009", 0o644, OpenFlags.WRITE | OpenFlags.EXCL, 0, 0) == errno.EEXIST
        assert _errno(b.create, d.ino, b"fifo", 0o644, OpenFlags.WRITE, 0, 0) == errno.ENXIO
        assert _errno(b.create, d.ino, b"link", 0o644, OpenFlags.WRITE, 0, 0) == errno.EEXIST
        assert _errno(b.create, d.ino, b"sub", 0o644, OpenFlags.WRITE, 0, 0) == errno.EISDIR

        # Every rolled-back attempt left the directory and the files as they were; new names still go in.
        fh, attr = b.create(d.ino, b"after", 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        listed = {e.name for e in b.readdir(d.ino)}
        assert listed == set(names) | {b"fifo", b"link", b"sub", b"after"}
        for name in names:
            a = b.lookup(d.ino, name)
            assert a.ino == inos[name]
            fh = b.open(a.ino, OpenFlags.READ)
            want = b"new" if name == b"f0008" else name * 10
            assert b.read(fh, 0, 100) == want
            b.release(fh)
    finally:
        b.close()
    e2fsck_clean(image)


def test_close_without_flush_keeps_data(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    """Files written and closed (no FLUSH reaches the daemon) read back on the mount and in the kernel."""
    need_root("loop-mounts the image to compare with the kernel")
    vol = Volume.create("flushvol", home=home, kind="disk", size_mib=32)
    mnt = Path(mounter("flushvol").mountpoint)
    expect: dict[str, bytes] = {}
    for i in range(50):
        data = os.urandom(1 + i * 997)
        with open(mnt / f"f{i}", "wb") as f:
            f.write(data)
        expect[f"f{i}"] = data
    with open(mnt / "f3", "ab") as f:  # and again through a second open
        f.write(b"tail")
    expect["f3"] += b"tail"
    for name, data in expect.items():
        assert (mnt / name).read_bytes() == data
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "flushvol")
    e2fsck_clean(vol.disk_path)
    with loop_mount(vol.disk_path) as kmnt:
        for name, data in expect.items():
            assert (kmnt / name).read_bytes() == data
