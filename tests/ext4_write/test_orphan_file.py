"""orphan_file images (mke2fs -O orphan_file) are writable: unlinked-open inodes go to the orphan file."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from ext4_write.support import check, debugfs, images
from testsupport import need_root
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4 import Filesystem

ROOT = Ino(2)
RW = OpenFlags.READ | OpenFlags.WRITE
ORPHAN_PRESENT = 0x10000


def _ro_compat(image: Path) -> int:
    with open(image, "rb") as f:
        f.seek(1024 + 0x64)
        return int(struct.unpack("<I", f.read(4))[0])


def _orphan_file_entries(image: Path) -> list[int]:
    """Nonzero le32 entries of the orphan file (inode 12 in mke2fs images), read with debugfs."""
    fs = Filesystem.open(image)
    try:
        ino = fs.sb.orphan_file_inum
    finally:
        fs.close()
    raw = images.run(images.tool("debugfs"), "-R", f"cat <{ino}>", str(image)).stdout
    bs = 4096
    out = []
    for k in range(0, len(raw), bs):
        block = raw[k : k + bs]
        assert struct.unpack_from("<I", block, bs - 8)[0] == 0x0B10CA04  # ob_magic
        out += [v for (v,) in struct.iter_unpack("<I", block[: bs - 8]) if v]
    return out


def test_orphan_file_records_and_recovers(make_image: Callable[..., Path], tmp_path: Path) -> None:
    image = make_image("default", opts=("-O", "orphan_file"))
    assert "orphan_file" in images.run(images.tool("dumpe2fs"), "-h", str(image)).stdout.decode()
    b = Ext4Backend(image, readonly=False)
    assert not b.readonly, b.readonly_reason
    fh, a = b.create(ROOT, b"tmp", 0o644, RW, 0, 0)
    b.write(fh, 0, b"x" * 300_000)
    fh2, a2 = b.create(ROOT, b"tmp2", 0o644, RW, 0, 0)
    b.unlink(ROOT, b"tmp")
    b.unlink(ROOT, b"tmp2")
    b.release(fh2)  # freed at once, its slot cleared
    b.sync()
    # A crash now: the orphan file names the open inode, ORPHAN_PRESENT is set, no s_last_orphan chain.
    crashed = tmp_path / "crashed.img"
    shutil.copyfile(image, crashed)
    assert _orphan_file_entries(crashed) == [a.ino]
    assert _ro_compat(crashed) & ORPHAN_PRESENT
    assert "First orphan inode" not in debugfs(crashed, "stats")
    kernel_copy = tmp_path / "kernel.img"
    shutil.copyfile(crashed, kernel_copy)
    b.release(fh)
    b.close()
    check(image)
    assert _orphan_file_entries(image) == []
    assert not _ro_compat(image) & ORPHAN_PRESENT
    # Our next writable open processes the entry: inode freed, slot zeroed, flag cleared.
    b = Ext4Backend(crashed, readonly=False)
    assert not b.readonly
    b.close()
    check(crashed)
    assert _orphan_file_entries(crashed) == [] and not _ro_compat(crashed) & ORPHAN_PRESENT
    assert "is not in use" in debugfs(crashed, f"testi <{a.ino}>")
    # The kernel accepts our orphan-file block (ob_magic, ob_checksum) and recovers the same way.
    need_root("loop mounts")
    with images.loop_mount(kernel_copy, "rw"):
        pass
    check(kernel_copy)
    assert "is not in use" in debugfs(kernel_copy, f"testi <{a.ino}>")
    assert _orphan_file_entries(kernel_copy) == []
