"""Writing microsandbox-formatted images: e2fsck-clean, the kernel agrees, the legacy quirk survives."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path

import ext4_images as images
from ext4_walk import diff_trees, engine_tree, kernel_tree
from testsupport import e2fsck_clean, need_root

from volfs.backend import OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4 import Filesystem


def test_write_microsandbox_lookalike(tmp_path: Path) -> None:
    need_root("loop-mounting the result")
    tree = tmp_path / "tree"
    (tree / "var" / "lib").mkdir(parents=True)
    (tree / "var" / "lib" / "existing").write_bytes(b"written by the guest\n")
    image = images.microsandbox_lookalike(tmp_path / "msb.img", tree)
    b = Ext4Backend(image, readonly=False)
    assert not b.readonly, b.readonly_reason
    var = b.lookup(b.root, b"var")
    lib = b.lookup(var.ino, b"lib")
    fh, f = b.create(lib.ino, b"from-host.bin", 0o640, OpenFlags.WRITE, 0, 0)
    b.write(fh, 0, os.urandom(3 << 20))
    b.release(fh)
    d = b.mkdir(b.root, b"cache", 0o755, 1000, 1000)
    for i in range(300):
        fh, a = b.create(d.ino, b"entry-%04d" % i, 0o644, OpenFlags.WRITE, 1000, 1000)
        b.write(fh, 0, b"%d\n" % i)
        b.release(fh)
        b.forget(a.ino)
    b.unlink(lib.ino, b"existing")
    b.setattr(f.ino, SetAttr(mtime_ns=1_900_000_000_123_456_789))
    b.symlink(b.root, b"link", b"var/lib/from-host.bin", 0, 0)
    b.close()
    e2fsck_clean(image)
    with open(image, "rb") as raw:
        sb = raw.read(2048)[1024:]
    assert struct.unpack_from("<I", sb, 0x194)[0] == 0x3000  # the legacy value is left alone
    assert struct.unpack_from("<H", sb, 0x3A)[0] & 1 and not struct.unpack_from("<H", sb, 0x3A)[0] & 2  # clean, no errors
    with Filesystem.open(image) as fs:
        ours = engine_tree(fs)
    with images.loop_mount(image) as mnt:
        theirs = kernel_tree(mnt)
        assert (mnt / "cache" / "entry-0299").read_text() == "299\n"
        assert stat.S_IMODE(os.stat(mnt / "var" / "lib" / "from-host.bin").st_mode) == 0o640
    assert diff_trees(ours, theirs) == []
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert "flex_bg" not in out and "needs_recovery" not in out
