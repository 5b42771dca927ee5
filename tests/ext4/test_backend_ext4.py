"""The read-only Ext4Backend over a mkfs.ext4 image (the engine itself is tested elsewhere)."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from volfs.backend import Backend, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError


def _errno(code: int, fn: Callable[[], object]) -> None:
    with pytest.raises(VolfsError) as info:
        fn()
    assert info.value.errno == code, str(info.value)


def test_backend_reads_and_refuses_writes(image_factory: Callable[[str], Path], rich_tree: Path) -> None:
    b: Backend = Ext4Backend(image_factory("default"))
    try:
        assert b.readonly and b.root == 2
        names = {e.name for e in b.readdir(b.root)}
        assert b"small.txt" in names and b"." not in names and b".." not in names
        a = b.lookup(b.root, b"big.bin")
        fh = b.open(a.ino, OpenFlags.READ)
        data = b.read(fh, 0, a.size + 100)
        assert data == (rich_tree / "big.bin").read_bytes()
        b.release(fh)
        _errno(errno.EBADF, lambda: b.read(fh, 0, 1))
        link = b.lookup(b.root, b"fast-link")
        assert b.readlink(link.ino) == b"small.txt"
        _errno(errno.ELOOP, lambda: b.open(link.ino, OpenFlags.READ))
        _errno(errno.ENXIO, lambda: b.open(b.lookup(b.root, b"fifo").ino, OpenFlags.READ))
        d = b.lookup(b.root, b"dir")
        _errno(errno.EISDIR, lambda: b.open(d.ino, OpenFlags.READ))
        _errno(errno.ENOENT, lambda: b.lookup(b.root, b"missing"))
        _errno(errno.EINVAL, lambda: b.lookup(b.root, b".."))
        _errno(errno.ENAMETOOLONG, lambda: b.lookup(b.root, b"x" * 256))
        _errno(errno.ESTALE, lambda: b.getattr(999))
        x = b.lookup(b.root, b"xattrs.txt")
        assert b"user.small" in b.listxattr(x.ino) and b.getxattr(x.ino, b"user.small") == b"v"
        _errno(errno.EROFS, lambda: b.open(a.ino, OpenFlags.WRITE))
        _errno(errno.EROFS, lambda: b.mkdir(b.root, b"new", 0o755, 0, 0))
        _errno(errno.EROFS, lambda: b.unlink(b.root, b"small.txt"))
        _errno(errno.EROFS, lambda: b.setattr(a.ino, SetAttr(mode=0o600)))
        _errno(errno.EROFS, lambda: b.setxattr(x.ino, b"user.n", b"v"))
        _errno(errno.EROFS, lambda: b.create(b.root, b"n", 0o644, OpenFlags.WRITE, 0, 0))
        st = b.statfs()
        assert st.namemax == 255 and st.blocks > st.bfree > 0
        # readdir cookies resume after the entry they came from.
        many = b.lookup(b.root, b"many")
        all_entries = list(b.readdir(many.ino))
        resumed = list(b.readdir(many.ino, all_entries[99].offset))
        assert [e.name for e in resumed] == [e.name for e in all_entries[100:]]
        assert all(e.type == stat.S_IFREG for e in all_entries)
        b.forget(a.ino, 1)
    finally:
        b.close()
