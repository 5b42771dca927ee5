"""Writes that need a structure failing verification are refused, and that structure is never rewritten."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from volfs.backend import Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem
from testsupport import e2fsck_clean, flip_bits

ROOT = Ino(2)


def _block_bitmap(image: Path) -> tuple[int, int]:
    with Filesystem.open(image) as fs:
        return fs.group_desc(0).block_bitmap, fs.block_size


def _root_dir_block(image: Path) -> tuple[int, int]:
    with Filesystem.open(image) as fs:
        runs = fs.runlist(fs.inode(2))
        block = next(phys for _logical, _count, phys in runs.segments(0, 1) if phys is not None)
        return block, fs.block_size


def _write_data(b: Ext4Backend) -> None:
    """Needs new blocks: the block bitmap of the goal group."""
    fh, _ = b.create(ROOT, b"data-file", 0o644, OpenFlags.WRITE, 0, 0)
    try:
        b.write(fh, 0, b"x" * 100_000)
        b.fsync(fh)
    finally:
        b.release(fh)


def _create_name(b: Ext4Backend) -> None:
    """Needs the root directory's block."""
    fh, _ = b.create(ROOT, b"new-name", 0o644, OpenFlags.WRITE, 0, 0)
    b.release(fh)


@pytest.mark.parametrize(("locate", "operation"), [(_block_bitmap, _write_data), (_root_dir_block, _create_name)])
def test_refused_and_the_corrupt_block_is_left_alone(make_image: Callable[..., Path],
                                                     locate: Callable[[Path], tuple[int, int]],
                                                     operation: Callable[[Ext4Backend], None]) -> None:  # fmt: skip
    image = make_image("default")
    block, bs = locate(image)
    flip_bits(image, block * bs + 100)  # the block's content no longer matches its checksum
    corrupt = image.read_bytes()[block * bs : (block + 1) * bs]
    b = Ext4Backend(image, readonly=False)
    with pytest.raises(VolfsError) as info:
        operation(b)
    assert info.value.errno == errno.EUCLEAN, info.value
    b.close()
    assert image.read_bytes()[block * bs : (block + 1) * bs] == corrupt  # never "repaired" into something worse
    with Filesystem.open(image, salvage=True) as fs:
        names = {e.name for e in fs.readdir(2)}
        assert b"new-name" not in names
        if b"data-file" in names:  # an empty file may exist: creating it needed no new block
            assert fs.getattr(fs.lookup_ino(2, b"data-file")).size == 0


# --- more structures: the inode bitmap, an inode, an extent leaf, an xattr block -----------------------

def _prepare(image: Path, build: Callable[[Ext4Backend], None]) -> None:
    b = Ext4Backend(image, readonly=False)
    try:
        build(b)
    finally:
        b.close()


def _file(b: Ext4Backend, name: bytes, chunks: list[tuple[int, bytes]] = []) -> int:
    fh, attr = b.create(ROOT, name, 0o644, OpenFlags.WRITE, 0, 0)
    try:
        for offset, data in chunks:
            b.write(fh, offset, data)
    finally:
        b.release(fh)
    return attr.ino


def _build_victims(b: Ext4Backend) -> None:
    _file(b, b"victim", [(0, b"v" * 5000)])
    # Every other block: 300 extents, too many for the inode's four slots, so the tree has a leaf block.
    _file(b, b"frag", [(i * 2 * 4096, b"f" * 4096) for i in range(300)])
    ino = _file(b, b"xa")
    b.setxattr(Ino(ino), b"user.big", b"x" * 700)  # too big for the inode body: an xattr block


# Each locator gives (start, length, byte to flip) of one structure: the flipped byte is inside what the
# structure's checksum covers and outside any value the final checks read back.

def _inode_bitmap(image: Path) -> tuple[int, int, int]:
    with Filesystem.open(image) as fs:
        start = fs.group_desc(0).inode_bitmap * fs.block_size
        return start, fs.block_size, start + 40  # inodes 321..328 of group 0: inside the checksummed bits


def _victim_inode(image: Path) -> tuple[int, int, int]:
    with Filesystem.open(image) as fs:
        _group, block, offset = fs.inode_location(fs.lookup_ino(2, b"victim"))
        start = block * fs.block_size + offset
        return start, fs.sb.inode_size, start + 0x10  # i_mtime


def _frag_leaf(image: Path) -> tuple[int, int, int]:
    with Filesystem.open(image) as fs:
        i_block = fs.inode(fs.lookup_ino(2, b"frag")).i_block
        assert int.from_bytes(i_block[6:8], "little") == 1, "frag should have a depth-1 extent tree"
        leaf = int.from_bytes(i_block[16:20], "little") | int.from_bytes(i_block[20:22], "little") << 32
        return leaf * fs.block_size, fs.block_size, leaf * fs.block_size + 12 + 5 * 12  # the sixth extent


def _xattr_block(image: Path) -> tuple[int, int, int]:
    with Filesystem.open(image) as fs:
        block = fs.inode(fs.lookup_ino(2, b"xa")).file_acl
        assert block
        return block * fs.block_size, fs.block_size, block * fs.block_size + 12  # h_hash


def _ino(b: Ext4Backend, name: bytes) -> Ino:
    attr = b.lookup(ROOT, name)
    return attr.ino


def _chmod_victim(b: Ext4Backend) -> None:
    b.setattr(_ino(b, b"victim"), SetAttr(mode=0o600))


def _unlink_victim(b: Ext4Backend) -> None:
    b.unlink(ROOT, b"victim")


def _rename_over_victim(b: Ext4Backend) -> None:
    _file(b, b"newcomer")
    b.rename(ROOT, b"newcomer", ROOT, b"victim")


def _write_frag(b: Ext4Backend) -> None:
    fh = b.open(_ino(b, b"frag"), OpenFlags.WRITE)
    try:
        b.write(fh, 4096, b"n" * 4096)  # fills a hole: needs the leaf
    finally:
        b.release(fh)


def _truncate_frag(b: Ext4Backend) -> None:
    b.setattr(_ino(b, b"frag"), SetAttr(size=10_000))


def _unlink_frag(b: Ext4Backend) -> None:
    b.unlink(ROOT, b"frag")


def _setxattr_xa(b: Ext4Backend) -> None:
    b.setxattr(_ino(b, b"xa"), b"user.more", b"y" * 100)


def _removexattr_xa(b: Ext4Backend) -> None:
    b.removexattr(_ino(b, b"xa"), b"user.big")


def _unlink_xa(b: Ext4Backend) -> None:
    b.unlink(ROOT, b"xa")


def _create_many(b: Ext4Backend) -> None:
    for i in range(20):
        _file(b, f"n{i}".encode())


CASES = {
    "inode-bitmap/create": (_inode_bitmap, _create_many),
    "inode/chmod": (_victim_inode, _chmod_victim),
    "inode/unlink": (_victim_inode, _unlink_victim),
    "inode/rename-over": (_victim_inode, _rename_over_victim),
    "extent-leaf/write": (_frag_leaf, _write_frag),
    "extent-leaf/truncate": (_frag_leaf, _truncate_frag),
    "extent-leaf/unlink": (_frag_leaf, _unlink_frag),
    "xattr-block/set": (_xattr_block, _setxattr_xa),
    "xattr-block/remove": (_xattr_block, _removexattr_xa),
    "xattr-block/unlink": (_xattr_block, _unlink_xa),
}


@pytest.mark.parametrize("variant", ["default", "b1024"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_more_structures_refused_and_left_alone(make_image: Callable[..., Path], variant: str, case: str) -> None:
    locate, operation = CASES[case]
    image = make_image(variant)
    _prepare(image, _build_victims)
    e2fsck_clean(image)
    start, length, where = locate(image)
    flip_bits(image, where)
    before = image.read_bytes()
    b = Ext4Backend(image, readonly=False)
    with pytest.raises(VolfsError) as info:
        operation(b)
    assert info.value.errno == errno.EUCLEAN, info.value
    b.close()
    after = image.read_bytes()
    assert after[start : start + length] == before[start : start + length]  # the corrupt structure is untouched
    with Filesystem.open(image, salvage=True) as fs:
        names = {e.name for e in fs.readdir(2)}
        # Nothing half done: the names the failed operation would have removed or added are as they were.
        assert {b"victim", b"frag", b"xa"} <= names
        assert not {n for n in names if n.startswith(b"n") and n[1:].isdigit()}
        if case == "inode/rename-over":
            assert b"newcomer" in names  # created before the failing rename, which moved nothing
        if case.startswith("extent-leaf"):
            assert fs.getattr(fs.lookup_ino(2, b"frag")).size == 599 * 4096
        if case.startswith("xattr-block"):
            assert fs.getxattr(fs.lookup_ino(2, b"xa"), b"user.big") == b"x" * 700
