"""Writes that need a structure failing verification are refused, and that structure is never rewritten."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem

ROOT = Ino(2)


def _flip(image: Path, offset: int) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


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
    _flip(image, block * bs + 100)  # the block's content no longer matches its checksum
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
