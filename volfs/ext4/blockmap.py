"""Legacy block maps (ext2/ext3): direct, indirect, double and triple indirect.

``i_block`` holds 12 direct pointers, then one single, one double and one
triple indirect pointer.  Only logical blocks below ``ceil(i_size / bs)``
are mapped, so a corrupt pointer cannot make the walk larger than the file;
a zero pointer at any level is a hole of the whole subtree.  Pointers
outside the filesystem are corruption.  Block-mapped files have no checksum.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from volfs.errors import CorruptError
from volfs.ext4.runlist import Run

__all__ = ["blockmap_runs"]

ReadBlock = Callable[[int], bytes]


def blockmap_runs(ino: int, i_block: bytes, size: int, read_block: ReadBlock, block_size: int,
                  blocks_count: int) -> list[Run]:
    per = block_size // 4
    nblocks = (size + block_size - 1) // block_size
    limit = 12 + per + per * per + per * per * per
    nblocks = min(nblocks, limit)
    ptrs = struct.unpack_from("<15I", i_block)
    out: list[Run] = []
    visited: set[int] = set()

    def emit(logical: int, phys: int) -> None:
        if phys >= blocks_count:
            raise CorruptError("block map", f"logical block {logical} maps to block {phys} outside the filesystem",
                               inode=ino)
        if out:
            last = out[-1]
            if last.physical is not None and last.logical + last.length == logical \
                    and last.physical + last.length == phys:
                out[-1] = Run(last.logical, last.length + 1, last.physical)
                return
        out.append(Run(logical, 1, phys))

    def walk(ptr: int, level: int, base: int) -> None:
        # ``ptr`` is an indirect block of ``level`` (1 single, 2 double, 3 triple) covering from ``base``.
        if ptr >= blocks_count:
            raise CorruptError("block map", f"indirect block {ptr} lies outside the filesystem", inode=ino)
        if ptr in visited:
            raise CorruptError("block map", f"indirect block {ptr} is referenced twice", inode=ino, block=ptr)
        visited.add(ptr)
        span = per ** (level - 1)
        entries = struct.unpack_from(f"<{per}I", read_block(ptr))
        for k, child in enumerate(entries):
            first = base + k * span
            if first >= nblocks:
                return
            if not child:
                continue
            if level == 1:
                emit(first, child)
            else:
                walk(child, level - 1, first)

    for k in range(min(12, nblocks)):
        if ptrs[k]:
            emit(k, ptrs[k])
    base = 12
    for level, ptr in ((1, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])):
        if base >= nblocks:
            break
        if ptr:
            walk(ptr, level, base)
        base += per ** level
    return out
