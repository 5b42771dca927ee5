"""Every backend mutation on every image variant, checked by e2fsck -fn and the kernel."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import WRITE_VARIANTS, assert_subset, check, debugfs, kernel_tree
from volfs.backend import Ino, OpenFlags, RenameFlags, SetAttr, XattrFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError

ROOT = Ino(2)
RW = OpenFlags.READ | OpenFlags.WRITE
T1 = 1_600_000_000_123_456_789
T2 = 2_208_988_800 * 10**9 + 999_999_999  # past 2038: needs the epoch bits


def _write(b: Ext4Backend, parent: Ino, name: bytes, data: bytes, mode: int = 0o644) -> Ino:
    fh, attr = b.create(parent, name, mode, RW, 1000, 1000)
    if data:
        assert b.write(fh, 0, data) == len(data)
    b.release(fh)
    return attr.ino


def scenario(b: Ext4Backend, big: bytes) -> dict[str, dict[str, object]]:
    """Run every kind of mutation; return what the kernel must show afterwards."""
    exp: dict[str, dict[str, object]] = {}
    d = b.mkdir(ROOT, b"dir", 0o750, 1000, 2000).ino
    sub = b.mkdir(d, b"sub", 0o700, 0, 0).ino
    _write(b, d, b"hello.txt", b"hello\n")
    f_big = _write(b, ROOT, b"big.bin", big)
    # Sparse: data, hole, data, trailing hole via truncate up.
    fh, a = b.create(ROOT, b"sparse", 0o600, RW, 0, 0)
    b.write(fh, 5, b"A" * 5000)
    b.write(fh, 300_000, b"B" * 7000)
    b.setattr(a.ino, SetAttr(size=1_000_000), fh)
    b.release(fh)
    sparse = bytearray(1_000_000)
    sparse[5:5005] = b"A" * 5000
    sparse[300_000:307_000] = b"B" * 7000
    # Overwrite in the middle and append.
    fh = b.open(f_big, RW | OpenFlags.APPEND)
    b.write(fh, 0, b"tail!")
    b.release(fh)
    fh = b.open(f_big, RW)
    b.write(fh, 4000, b"Z" * 10000)
    b.release(fh)
    big2 = bytearray(big + b"tail!")
    big2[4000:14000] = b"Z" * 10000
    # Truncate down to a partial block, then extend again: the tail must read as zeros.
    _write(b, ROOT, b"shrink", b"x" * 100_000)
    sh = b.lookup(ROOT, b"shrink").ino
    b.setattr(sh, SetAttr(size=5000))
    b.setattr(sh, SetAttr(size=9000))
    # Special files, symlinks, hard links.
    b.symlink(ROOT, b"fast", b"dir/hello.txt", 0, 0)
    slow_target = b"/".join([b"component"] * 30)
    b.symlink(d, b"slow", slow_target, 5, 6)
    b.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o640, 0, 0, 0)
    b.mknod(ROOT, b"sock", stat.S_IFSOCK | 0o600, 0, 0, 0)
    b.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), 0, 0)
    b.mknod(ROOT, b"bigdev", stat.S_IFBLK | 0o600, os.makedev(259, 70000), 0, 0)
    h = b.lookup(d, b"hello.txt").ino
    b.link(h, ROOT, b"hardlink")
    # Attributes: mode, owner, times with ns and past 2038.
    b.setattr(h, SetAttr(mode=0o4755, uid=100000, gid=200000, mtime_ns=T1, atime_ns=T1))
    # Xattrs.
    b.setxattr(h, b"user.color", b"blue")
    b.setxattr(h, b"user.empty", b"")
    b.setxattr(h, b"user.gone", b"x")
    b.removexattr(h, b"user.gone")
    b.setxattr(h, b"user.color", b"red", XattrFlags.REPLACE)
    # Renames: within a dir, across dirs, over a file, a directory across parents.
    _write(b, ROOT, b"a", b"aaa")
    _write(b, ROOT, b"b", b"bbb")
    b.rename(ROOT, b"a", ROOT, b"b")  # over an existing file
    _write(b, ROOT, b"x1", b"one")
    _write(b, d, b"x2", b"two")
    b.rename(ROOT, b"x1", d, b"x2", RenameFlags.EXCHANGE)
    b.mkdir(ROOT, b"moving", 0o755, 0, 0)
    _write(b, ROOT, b"moving-file", b"m")
    b.rename(ROOT, b"moving-file", ROOT, b"moving-file2")
    b.rename(ROOT, b"moving", sub, b"moved")  # '..' fix-up, link counts of both parents
    b.mkdir(ROOT, b"emptydir", 0o755, 0, 0)
    b.mkdir(ROOT, b"replacer", 0o755, 0, 0)
    b.rename(ROOT, b"replacer", ROOT, b"emptydir")  # a directory over an empty directory
    # Removals.
    _write(b, ROOT, b"doomed", b"x" * 50_000)
    b.unlink(ROOT, b"doomed")
    b.mkdir(ROOT, b"doomed-dir", 0o755, 0, 0)
    b.rmdir(ROOT, b"doomed-dir")
    with pytest.raises(VolfsError) as info:
        b.rmdir(ROOT, b"dir")
    assert info.value.errno == errno.ENOTEMPTY
    b.setattr(sub, SetAttr(mtime_ns=T2))

    exp["/dir"] = {"mode": stat.S_IFDIR | 0o750, "uid": 1000, "gid": 2000, "nlink": 3}
    exp["/dir/sub"] = {"mode": stat.S_IFDIR | 0o700, "nlink": 3, "mtime_ns": T2}
    exp["/dir/sub/moved"] = {"mode": stat.S_IFDIR | 0o755, "nlink": 2}
    exp["/dir/hello.txt"] = {"mode": stat.S_IFREG | 0o4755, "uid": 100000, "gid": 200000, "nlink": 2,
                             "mtime_ns": T1, "data": b"hello\n",
                             "xattrs": {"user.color": b"red", "user.empty": b""}}
    exp["/hardlink"] = dict(exp["/dir/hello.txt"])
    exp["/dir/slow"] = {"target": slow_target, "uid": 5, "gid": 6}
    exp["/dir/x2"] = {"data": b"one"}
    exp["/x1"] = {"data": b"two"}
    exp["/big.bin"] = {"data": bytes(big2), "size": len(big2)}
    exp["/sparse"] = {"data": bytes(sparse), "mode": stat.S_IFREG | 0o600}
    exp["/shrink"] = {"data": b"x" * 5000 + bytes(4000)}
    exp["/fast"] = {"target": b"dir/hello.txt"}
    exp["/fifo"] = {"mode": stat.S_IFIFO | 0o640}
    exp["/sock"] = {"mode": stat.S_IFSOCK | 0o600}
    exp["/null"] = {"mode": stat.S_IFCHR | 0o666, "rdev": os.makedev(1, 3)}
    exp["/bigdev"] = {"mode": stat.S_IFBLK | 0o600, "rdev": os.makedev(259, 70000)}
    exp["/b"] = {"data": b"aaa", "nlink": 1}
    exp["/moving-file2"] = {"data": b"m"}
    exp["/emptydir"] = {"mode": stat.S_IFDIR | 0o755, "nlink": 2}
    return exp


@pytest.mark.parametrize("variant", sorted(WRITE_VARIANTS))
def test_every_operation(variant: str, make_image: Callable[..., Path]) -> None:
    image = make_image(variant)
    big = os.urandom(3 * 1024 * 1024 + 77)
    b = Ext4Backend(image, readonly=False)
    assert not b.readonly, b.readonly_reason
    try:
        exp = scenario(b, big)
        if variant == "i128":
            # 128-byte inodes keep whole seconds, clamped to signed 32 bits (as the kernel does).
            exp["/dir/sub"]["mtime_ns"] = ((1 << 31) - 1) * 10**9
            exp["/dir/hello.txt"]["mtime_ns"] = exp["/hardlink"]["mtime_ns"] = T1 // 10**9 * 10**9
        # Our own view agrees before closing.
        assert b.readlink(b.lookup(ROOT, b"fast").ino) == b"dir/hello.txt"
    finally:
        b.close()
    check(image)
    got = kernel_tree(image)
    assert_subset(exp, got)
    # The sparse file kept its holes: far fewer blocks than its size.
    assert int(got["/sparse"]["blocks"]) * 512 < 64 * 1024  # type: ignore[call-overload]
    # debugfs agrees on the hard-linked file's xattrs and times.
    out = debugfs(image, "ea_list /hardlink")
    assert "color (3) = \"red\"" in out or "color = \"red\"" in out, out
    if variant != "i128":
        out = debugfs(image, "stat /dir/sub")
        assert "mtime: 0x83aa7e80:ee6b27fc" in out or "2040" in out, out


def test_reopen_and_state(make_image: Callable[..., Path]) -> None:
    """Close marks the image clean; mount count and kbytes written move; reopen reads back."""
    image = make_image("default")
    before = debugfs(image, "stats")
    b = Ext4Backend(image, readonly=False)
    _write(b, ROOT, b"f", b"q" * 1_000_000)
    b.close()
    check(image)
    after = debugfs(image, "stats")

    def field(text: str, name: str) -> str:
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":"))

    assert field(after, "Filesystem state") == "clean"
    assert int(field(after, "Mount count")) == int(field(before, "Mount count")) + 1
    assert field(after, "Lifetime writes") != field(before, "Lifetime writes")
    b = Ext4Backend(image, readonly=False)
    try:
        fh = b.open(b.lookup(ROOT, b"f").ino, OpenFlags.READ)
        assert b.read(fh, 0, 2_000_000) == b"q" * 1_000_000
        b.release(fh)
    finally:
        b.close()
    check(image)
