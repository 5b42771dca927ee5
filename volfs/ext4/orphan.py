"""Orphans (orphan.rst): inodes unlinked or truncated while still open.

Two records exist.  The classic one is a singly linked list: the superblock's
``s_last_orphan`` names the first inode and each orphan's ``i_dtime`` the
next.  The orphan_file feature keeps an inode (``s_orphan_file_inum``) whose
blocks are arrays of le32 inode numbers ending in a tail
``{ob_magic 0x0B10CA04, ob_checksum}``; its entries count only while
RO_COMPAT_ORPHAN_PRESENT is set.  The checksum is
``crc(fs seed, le32 ino, le32 generation, le64 physical block, entries)``.

Writing (the kernel's orphan.c): an inode unlinked while open takes the first
zero slot of the orphan file (else, when the file is full, the classic
chain); RO_COMPAT_ORPHAN_PRESENT is set in the same transaction and
cleared on a clean close once every slot is zero again.  A writable open
first processes the entries left by a crash (frees unlinked inodes,
truncates the rest to ``i_size``) and zeroes them.

Readers show neither kind as a live file when its link count is zero (the
kernel or e2fsck would delete it on the next mount).  Walks are bounded by
the inode count, so a cycle in the chain cannot hang.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4.checksum import crc32c_raw

__all__ = ["ORPHAN_BLOCK_MAGIC", "walk_orphan_chain", "orphan_file_entries", "orphan_block_checksum",
           "orphan_slots", "set_orphan_slot"]

ORPHAN_BLOCK_MAGIC: Final = 0x0B10CA04


def walk_orphan_chain(first: int, inodes_count: int, next_of: Callable[[int], int]) -> list[int]:
    """Inode numbers on the ``s_last_orphan`` chain, in order."""
    out: list[int] = []
    seen: set[int] = set()
    ino = first
    while ino:
        if ino > inodes_count or ino in seen:
            raise CorruptError("orphan list", f"orphan chain reaches invalid or repeated inode {ino}", inode=ino)
        seen.add(ino)
        out.append(ino)
        ino = next_of(ino)
    return out


def orphan_block_checksum(fs_seed: int, ino: int, generation: int, block: int, data: bytes) -> int:
    crc = crc32c_raw(fs_seed, struct.pack("<IIQ", ino, generation, block))
    return crc32c_raw(crc, data[: len(data) - 8])


def orphan_file_entries(data: bytes, *, ino: int, generation: int, block: int, fs_seed: int | None,
                        inodes_count: int, salvage: bool = False) -> list[int]:
    """Nonzero inode numbers of one orphan-file block, after checking its tail."""
    bs = len(data)
    magic, stored = struct.unpack_from("<II", data, bs - 8)
    if magic != ORPHAN_BLOCK_MAGIC:
        raise CorruptError("orphan file", f"bad block magic 0x{magic:08x}", inode=ino, block=block)
    if fs_seed is not None and not salvage:
        want = orphan_block_checksum(fs_seed, ino, generation, block, data)
        if want != stored:
            raise CorruptError("orphan file", f"checksum 0x{stored:08x} != computed 0x{want:08x}", inode=ino,
                               block=block)
    out = []
    for (entry,) in struct.iter_unpack("<I", data[: bs - 8]):
        if entry:
            if entry > inodes_count:
                raise CorruptError("orphan file", f"entry names inode {entry} beyond s_inodes_count", inode=ino,
                                   block=block)
            out.append(entry)
    return out


def orphan_slots(block_size: int) -> int:
    """le32 entries per orphan-file block (the tail takes the last 8 bytes)."""
    return (block_size - 8) // 4


def set_orphan_slot(data: bytes, slot: int, value: int, *, ino: int, generation: int, block: int,
                    fs_seed: int | None) -> bytearray:
    """The block with entry ``slot`` set to ``value``; ob_magic kept and ob_checksum recomputed."""
    buf = bytearray(data)
    bs = len(buf)
    if not 0 <= slot < orphan_slots(bs):
        raise CorruptError("orphan file", f"slot {slot} beyond the block", inode=ino, block=block)
    struct.pack_into("<I", buf, 4 * slot, value)
    struct.pack_into("<I", buf, bs - 8, ORPHAN_BLOCK_MAGIC)  # ob_magic
    if fs_seed is not None:
        struct.pack_into("<I", buf, bs - 4, orphan_block_checksum(fs_seed, ino, generation, block, bytes(buf)))
    return buf
