"""The small-file write path's shortcuts answer exactly as the slow paths they replace.

Pinned here: the allocator's byte-level bitmap search against the integer
definition (find_free_run over the bitmap with the transaction's freed blocks
marked).  Every image ends e2fsck-clean.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem
from volfs.ext4.bitmap import fill_run, find_clear_run, find_free_run, run_is_set, set_bits
from volfs.ext4.group import group_blocks, group_first_block


def _random_bitmap(rnd: random.Random, size: int) -> bytes:
    kind = rnd.random()
    if kind < 0.3:
        return bytes(rnd.randrange(256) for _ in range(size))
    if kind < 0.6:
        return bytes(rnd.choice([0, 0xFF, 0xFF, 0x7F, 0xFE, 0x80, 0x01]) for _ in range(size))
    return bytes(rnd.choice([0, 0xFF]) for _ in range(size))


def test_byte_bitmap_helpers_match_the_integer_definitions() -> None:
    rnd = random.Random(7)
    for _ in range(30000):
        size = rnd.choice([1, 2, 3, 8, 64, 128, 1024])
        data = _random_bitmap(rnd, size)
        bits = int.from_bytes(data, "little")
        nbits = rnd.randint(1, size * 8 + 16)  # (bits past the data read as clear, as in the integer)
        start = rnd.randint(0, nbits + 3)
        want = rnd.randint(1, nbits + 10)
        assert find_clear_run(data, nbits, start, want) == find_free_run(bits, nbits, start, want), \
            (data.hex(), nbits, start, want)
        first = rnd.randint(0, size * 8 - 1)
        count = rnd.randint(0, size * 8 - first)
        value = rnd.random() < 0.5
        buf = bytearray(data)
        fill_run(buf, first, count, value)
        assert int.from_bytes(buf, "little") == set_bits(bits, first, count, value)
        mask = ((1 << count) - 1) << first
        assert run_is_set(data, first, count) == (bits & mask == mask)


def _freed_mask(fs: Filesystem, group: int) -> int:
    """The definition the allocator's search follows: blocks of ``group`` freed by the running transaction."""
    sb = fs.sb
    first = group_first_block(sb, group)
    n = group_blocks(sb, group)
    mask = 0
    for start, count in fs.writer.txn.freed:
        lo, hi = max(start, first), min(start + count, first + n)
        if lo < hi:
            mask = set_bits(mask, lo - first, hi - lo, True)
    return mask


def _expected_runs(fs: Filesystem, goal: int, count: int) -> list[tuple[int, int]] | None:
    """alloc_blocks as the integer definition answers it (None: ENOSPC), without changing anything."""
    sb = fs.sb
    alloc = fs.writer.alloc
    if not sb.first_data_block <= goal < sb.blocks_count:
        goal = sb.first_data_block
    goal_group = (goal - sb.first_data_block) // sb.blocks_per_group
    out: list[tuple[int, int]] = []
    left = count
    for step in range(sb.group_count + 1):
        g = (goal_group + step) % sb.group_count
        if step == sb.group_count and g != goal_group:
            break
        if fs.group_desc(g).free_blocks == 0:
            continue
        data, _desc = alloc._block_bits(g)
        search = int.from_bytes(data, "little") | _freed_mask(fs, g)
        first = group_first_block(sb, g)
        pos = goal - first if (step == 0 and goal >= first) else 0
        limit = group_blocks(sb, g)
        if step == sb.group_count:
            pos, limit = 0, goal - first
        while left:
            run = find_free_run(search, limit, pos, left)
            if run is None:
                break
            start, length = run
            search = set_bits(search, start, length, True)
            if out and out[-1][0] + out[-1][1] == first + start:
                out[-1] = (out[-1][0], out[-1][1] + length)
            else:
                out.append((first + start, length))
            left -= length
            pos = start + length
        if not left:
            return out
    return None


@pytest.mark.parametrize("variant", ["default", "b1024", "nocsum"])
def test_allocations_match_the_integer_search(variant: str, make_image: Callable[..., Path]) -> None:
    """Random allocations and frees (frees pending in the transaction included): every run and every
    inode number is the one the integer search over the bitmap gives."""
    image = make_image(variant, size="32M")
    rnd = random.Random(13)
    with Filesystem.open(image, readonly=False) as fs:
        w = fs.writer
        sb = fs.sb
        held: list[tuple[int, int]] = []
        inodes: list[int] = []
        for step in range(600):
            roll = rnd.random()
            goal = rnd.randrange(sb.blocks_count)
            count = rnd.choice([1, 1, 2, 7, 64, 300, 5000])
            if roll >= 0.6 and _expected_runs(fs, goal, count) is None:
                with pytest.raises(VolfsError) as info, w.op():  # (the operation rolls back)
                    w.alloc.alloc_blocks(goal, count)
                assert info.value.errno == errno.ENOSPC
                continue
            with w.op():
                if held and roll < 0.35:
                    start, length = held.pop(rnd.randrange(len(held)))
                    cut = rnd.randint(1, length)  # free part of a run, keep the rest
                    w.alloc.free_blocks(start, cut)
                    if cut < length:
                        held.append((start + cut, length - cut))
                elif inodes and roll < 0.45:
                    w.alloc.free_inode(inodes.pop(rnd.randrange(len(inodes))), False)
                elif roll < 0.6:
                    ino = w.alloc.alloc_inode(rnd.choice([2, 11, rnd.randrange(1, sb.inodes_count)]), False)
                    g, index = divmod(ino - 1, sb.inodes_per_group)
                    # The group the policy picked; inside it, the lowest free inode.
                    before = int.from_bytes(fs.cache.read(fs.group_desc(g).inode_bitmap), "little") \
                        & ~(1 << index)
                    lowest = find_free_run(before, sb.inodes_per_group, sb.first_ino - 1 if g == 0 else 0, 1)
                    assert lowest == (index, 1), (ino, lowest)
                    inodes.append(ino)
                else:
                    want = _expected_runs(fs, goal, count)
                    got = w.alloc.alloc_blocks(goal, count)
                    assert got == want, (goal, count)
                    held.extend(got)
            if step % 50 == 49:
                w.commit()
        # Hand everything back, so that the image is consistent without inodes that own nothing.
        with w.op():
            for start, length in held:
                w.alloc.free_blocks(start, length)
            for ino in inodes:
                w.alloc.free_inode(ino, False)
    check(image)
