"""Big, fragmented and truncated files; large directories; htree directories; ENOSPC; orphans."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs, images, kernel_tree
from volfs.backend import Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem

ROOT = Ino(2)
RW = OpenFlags.READ | OpenFlags.WRITE


_EX_ROW = re.compile(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+")


def _ex_rows(image: Path, path: str) -> list[tuple[int, int]]:
    """(level, max level) of every row debugfs ``ex`` prints."""
    out = debugfs(image, f"ex {path}")
    return [(int(m.group(1)), int(m.group(2))) for m in map(_EX_ROW.match, out.splitlines()) if m]


def _depth(image: Path, path: str) -> int:
    return max((d for _, d in _ex_rows(image, path)), default=0)


@pytest.mark.parametrize("variant", ["b1024", "default"])
def test_fragmented_file_grows_and_shrinks_its_tree(variant: str, make_image: Callable[..., Path]) -> None:
    """Every other block written: one extent per block, the tree gains levels, then truncate shrinks it."""
    image = make_image(variant)
    b = Ext4Backend(image, readonly=False)
    bs = b.filesystem.block_size
    nblocks = 700  # 1 KiB blocks: depth 2 (84 per leaf); 4 KiB: depth 1
    fh, a = b.create(ROOT, b"frag", 0o644, RW, 0, 0)
    fh2, _ = b.create(ROOT, b"filler", 0o644, RW, 0, 0)
    expect = bytearray((2 * nblocks) * bs)
    for i in range(nblocks):
        chunk = (b"%08d" % i) * (bs // 8)
        b.write(fh, 2 * i * bs, chunk)
        b.write(fh2, i * bs, b"f" * bs)  # interleaved allocations keep the extents apart
        expect[2 * i * bs : 2 * i * bs + bs] = chunk
    b.release(fh2)
    b.fsync(fh)
    b.close()
    check(image)
    assert _depth(image, "/frag") >= (2 if bs == 1024 else 1)
    got = kernel_tree(image)
    assert got["/frag"]["data"] == bytes(expect[: (2 * nblocks - 1) * bs])
    # Fill the holes: extents merge back where physically adjacent, tree stays valid.
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    fh = b.open(ino, RW)
    b.write(fh, bs, b"h" * bs)
    expect[bs : 2 * bs] = b"h" * bs
    b.release(fh)
    # Truncate back to 3 blocks: the tree returns into the inode.
    b.setattr(ino, SetAttr(size=3 * bs - 100))
    b.close()
    check(image)
    assert _depth(image, "/frag") == 0
    got = kernel_tree(image)
    assert got["/frag"]["data"] == bytes(expect[: 3 * bs - 100])


def test_large_file_is_contiguous_and_exact(make_image: Callable[..., Path]) -> None:
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    data = os.urandom(40 * 1024 * 1024 + 12345)
    fh, a = b.create(ROOT, b"large", 0o644, RW, 0, 0)
    step = 3 * 1024 * 1024 + 7  # unaligned chunks
    for off in range(0, len(data), step):
        b.write(fh, off, data[off : off + step])
    b.release(fh)
    attr = b.getattr(a.ino)
    b.close()
    check(image)
    rows = [r for r in _ex_rows(image, "/large") if r[0] == r[1]]
    assert len(rows) <= 4, rows  # a few maximal extents (32768 blocks each), not one per write
    got = kernel_tree(image)
    assert got["/large"]["data"] == data
    assert got["/large"]["blocks"] == attr.blocks  # i_blocks exact (includes no tree blocks here)


def test_unwritten_extents_are_converted(make_image: Callable[..., Path], tmp_path: Path) -> None:
    """A file fallocated by the kernel (unwritten extents), then written by volfs in the middle."""
    image = make_image("default")
    with images.loop_mount(image, "rw") as mnt:
        with open(mnt / "prealloc", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 1024 * 1024)
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"prealloc").ino
    fh = b.open(ino, RW)
    assert b.read(fh, 0, 100) == bytes(100)
    b.write(fh, 100_000, b"W" * 50_000)
    b.release(fh)
    b.close()
    check(image)
    want = bytearray(1024 * 1024)
    want[100_000:150_000] = b"W" * 50_000
    assert kernel_tree(image)["/prealloc"]["data"] == bytes(want)
    assert "Uninit" in debugfs(image, "ex /prealloc")  # the rest stays unwritten


@pytest.mark.parametrize("variant", ["default", "b1024"])
def test_thousands_of_files_in_one_directory(variant: str, make_image: Callable[..., Path]) -> None:
    image = make_image(variant)
    b = Ext4Backend(image, readonly=False)
    d = b.mkdir(ROOT, b"many", 0o755, 0, 0).ino
    names = [b"file-%05d-%s" % (i, b"z" * (i % 37)) for i in range(4000)]
    for n in names:
        fh, _ = b.create(d, n, 0o644, RW, 0, 0)
        b.write(fh, 0, n)
        b.release(fh)
    for n in names[::3]:
        b.unlink(d, n)
    for n in names[::3][:500]:  # reuse the gaps
        b.mkdir(d, n, 0o700, 0, 0)
    b.close()
    check(image)
    got = kernel_tree(image)
    kept = {n for i, n in enumerate(names) if i % 3}
    files = {p.rsplit("/", 1)[1].encode() for p, v in got.items() if p.startswith("/many/") and stat.S_ISREG(
        int(v["mode"]))}  # type: ignore[call-overload]
    assert files == kept
    for n in list(kept)[:200]:
        assert got["/many/" + n.decode()]["data"] == n
    assert got["/many"]["nlink"] == 2 + 500


def test_htree_directory_gains_entries(make_image: Callable[..., Path], tmp_path: Path) -> None:
    """An indexed directory from mkfs -d: inserts (fallback: index cleared), removals keep the rest findable."""
    tree = tmp_path / "tree"
    names = images.build_big_dir(tree / "big", 3000)
    image = make_image("default", tree=tree)
    images.run(images.tool("e2fsck"), "-fyD", str(image), check=False)  # index every directory
    check(image)
    assert re.search(r"Flags: 0x[0-9a-f]*1[0-9a-f]{3}\b", debugfs(image, "stat /big")), debugfs(image, "stat /big")
    b = Ext4Backend(image, readonly=False)
    d = b.lookup(ROOT, b"big").ino
    for n in names[:300]:
        b.unlink(d, n.encode())
    b.close()
    check(image)  # removal from an indexed directory keeps the index valid
    b = Ext4Backend(image, readonly=False)
    d = b.lookup(ROOT, b"big").ino
    for i in range(200):
        b.create(d, b"new-%04d" % i, 0o644, OpenFlags.WRITE, 0, 0)
    b.close()
    check(image)
    got = kernel_tree(image)
    listed = {p.rsplit("/", 1)[1] for p in got if p.startswith("/big/")}
    assert listed == set(names[300:]) | {"new-%04d" % i for i in range(200)}
    out = debugfs(image, "stat /big/new-0199")
    assert "Type: regular" in out


def test_enospc_is_clean_and_space_is_reused(make_image: Callable[..., Path]) -> None:
    image = make_image(None, size="4M", opts=("-b", "1024", "-N", "64"))
    b = Ext4Backend(image, readonly=False)
    fh, a = b.create(ROOT, b"fill", 0o644, RW, 0, 0)
    chunk = b"f" * (256 * 1024)
    off = 0
    with pytest.raises(VolfsError) as info:
        while True:
            b.write(fh, off, chunk)
            off += len(chunk)
    assert info.value.errno == errno.ENOSPC
    assert b.getattr(a.ino).size == off  # the failed write left nothing behind
    b.release(fh)
    # Inodes run out too.
    made = 0
    with pytest.raises(VolfsError) as info:
        for i in range(1000):
            b.create(ROOT, b"i%04d" % i, 0o644, OpenFlags.WRITE, 0, 0)
            made += 1
    assert info.value.errno == errno.ENOSPC
    b.sync()
    check(image)
    b.unlink(ROOT, b"fill")
    for i in range(made):
        b.unlink(ROOT, b"i%04d" % i)
    fh, a = b.create(ROOT, b"again", 0o644, RW, 0, 0)
    b.write(fh, 0, chunk)  # freed space is usable again
    b.release(fh)
    b.close()
    check(image)
    assert kernel_tree(image)["/again"]["data"] == chunk


def test_unlinked_open_file_lives_until_release(make_image: Callable[..., Path], tmp_path: Path) -> None:
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fh, a = b.create(ROOT, b"tmp", 0o644, RW, 0, 0)
    b.write(fh, 0, b"x" * 100_000)
    free_before = b.statfs().bfree
    b.unlink(ROOT, b"tmp")
    b.write(fh, 100_000, b"y")
    assert b.read(fh, 99_999, 10) == b"xy"
    assert b.getattr(a.ino).nlink == 0
    b.sync()
    # A crash now: the on-disk orphan chain records the inode.
    crashed = tmp_path / "crashed.img"
    shutil.copyfile(image, crashed)
    assert f"Inode: {a.ino}" in debugfs(crashed, "stat <%d>" % a.ino)
    assert "First orphan inode:" in debugfs(crashed, "stats")
    b.release(fh)
    assert b.statfs().bfree > free_before - 30
    b.close()
    check(image)
    # The next writer recovers the crashed copy: orphan freed, image clean.
    fs = Filesystem.open(crashed, readonly=False)
    assert not fs.readonly
    fs.close()
    check(crashed)
    assert "First orphan inode" not in debugfs(crashed, "stats")


@pytest.mark.parametrize(("opts", "fstype", "feature"), [
    (("-O", "encrypt"), "ext4", "encrypt"),
    ((), "ext3", "extent"),
    (("-O", "bigalloc", "-C", "16384"), "ext4", "bigalloc"),
])
def test_unsupported_features_open_read_only(opts: tuple[str, ...], fstype: str, feature: str,
                                             tmp_path: Path) -> None:
    image = images.mkfs(tmp_path / "x.img", None, "64M", *opts, fstype=fstype)
    b = Ext4Backend(image, readonly=False)
    try:
        assert b.readonly
        assert feature in b.readonly_reason
        with pytest.raises(VolfsError) as info:
            b.mkdir(ROOT, b"d", 0o755, 0, 0)
        assert info.value.errno == errno.EROFS and feature in str(info.value)
    finally:
        b.close()
    images.run(images.tool("e2fsck"), "-fn", str(image))
