"""Writing the htree directory index (directory.rst "Hash Tree Directories").

Theory of operation.  An indexed directory keeps, in logical block 0, a
``dx_root`` ("." and a ".." whose ``rec_len`` covers the block, then
``dx_root_info`` and the ``dx_countlimit``/``dx_entry`` array) and, with
``indirect_levels`` = 1, one level of ``dx_node`` blocks (a fake empty dirent
spanning the block, then the same array).  Every index block maps hash
ranges to blocks: entry *k* covers ``[hash_k, hash_k+1)`` (entry 0's hash
slot holds the count/limit and means "lowest").  Leaves are ordinary dirent
blocks, unsorted inside.

*Insert* (the kernel's ``ext4_dx_add_entry``): hash the name, walk down one
index block per level to the leaf whose range holds the hash, and put the
entry anywhere in that leaf.  Nothing else changes.

*Leaf split* (``do_split``): when the leaf is full, its entries and the new
one are sorted by (major, minor) hash and cut where the upper part holds
about half the bytes.  The upper part moves to a new block at the end of the
directory; its first hash ``hash2`` is inserted into the parent index right
after the old leaf's entry.  When the cut falls between two equal hashes,
the parent entry gets the collision bit (``hash2 | 1``): lookups of that
hash start in the lower leaf (``hash2|1 > hash2``) and continue into the
next one because its hash, without the bit, matches (``dx_lookup``).

*Index growth* (``ext4_dx_add_entry`` "split index"): when the parent is
full, a ``dx_node`` splits in halves like a leaf, the upper half's first
hash going into the root; when the root itself is full and has no interior
level, its entries move into a new ``dx_node`` and the root keeps one entry
pointing at it (``indirect_levels`` 0 -> 1).  e2fsprogs lib/ext2fs/link.c
and the kernel without largedir allow at most one interior level, so a full
root over full nodes is "directory index full" (ENOSPC), as in the kernel.

*Conversion* (``make_indexed_dir``): a linear directory of exactly one block
that cannot take a new entry becomes indexed: its entries and the new one
are split into two new leaves (blocks 1 and 2) and block 0 becomes the
``dx_root`` with two entries.  Linear directories of several blocks (made
by other writers) stay linear, as in the kernel.

*Checksums* (metadata_csum): ``limit`` is one entry smaller and the last
8 bytes are ``dx_tail {dt_reserved, dt_checksum}``; ``dt_checksum`` is
crc(inode seed, block[0 : count_offset + 8*count], dt_reserved, zero word).
Leaves keep their 12-byte dirent tail.  Every function here edits bytes
only; the writer reads, allocates and puts blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.directory import (
    DIR_ENTRY,
    DX_COUNTLIMIT,
    DX_ENTRY,
    DX_ROOT_INFO,
    empty_leaf,
    leaf_end,
    rec_len_for,
    rec_len_to_disk,
    set_leaf_csum,
)

__all__ = ["ROOT_COUNT_OFFSET", "NODE_COUNT_OFFSET", "LeafEntry", "dx_limit", "dx_write",
           "set_dx_csum", "new_dx_root", "new_dx_node", "pack_leaf", "split_point", "insert_dx_entry",
           "MAX_INDIRECT_LEVELS"]

ROOT_COUNT_OFFSET: Final = 32  # "." (12) + ".." header and name (12) + dx_root_info (8)
NODE_COUNT_OFFSET: Final = 8  # the fake dirent of a dx_node
MAX_INDIRECT_LEVELS: Final = 1  # without largedir (e2fsprogs link.c, kernel ext4_dir_htree_level)


@dataclass(frozen=True, slots=True)
class LeafEntry:
    """One live entry of a leaf, with its hash (major has the low bit clear)."""

    hash: int
    minor: int
    name: bytes
    ino: int
    file_type: int

    @property
    def size(self) -> int:
        return rec_len_for(len(self.name))


def dx_limit(block_size: int, count_offset: int, csum: bool) -> int:
    """``dx_countlimit.limit``: entries that fit, one fewer when a dx_tail ends the block."""
    return (block_size - count_offset) // 8 - (1 if csum else 0)


def set_dx_csum(buf: bytearray, count_offset: int, csum_seed: int | None) -> None:
    """Recompute ``dx_tail.dt_checksum`` (no-op without metadata_csum)."""
    if csum_seed is None:
        return
    limit, count = DX_COUNTLIMIT.unpack_ints(buf, count_offset)
    tail = count_offset + 8 * limit
    if tail + 8 > len(buf):
        raise CorruptError("htree", f"dx limit {limit} leaves no room for dx_tail")
    crc = crc32c_raw(csum_seed, bytes(buf[: count_offset + 8 * count]))
    crc = crc32c_raw(crc, bytes(buf[tail : tail + 4]) + b"\0\0\0\0")
    buf[tail + 4 : tail + 8] = crc.to_bytes(4, "little")


def dx_write(buf: bytearray, count_offset: int, entries: Sequence[tuple[int, int]], csum_seed: int | None) -> None:
    """Store ``entries`` as the block's dx_entry array (count updated, unused slots zeroed)."""
    limit, _count = DX_COUNTLIMIT.unpack_ints(buf, count_offset)
    if not 0 < len(entries) <= limit:
        raise CorruptError("htree", f"{len(entries)} index entries for limit {limit}")
    area = bytearray(8 * limit)
    for k, (h, blk) in enumerate(entries):
        area[8 * k : 8 * k + 8] = DX_ENTRY.pack({"hash": h, "block": blk})
    # dx_countlimit overlays entry 0's hash slot.
    area[0:4] = DX_COUNTLIMIT.pack({"limit": limit, "count": len(entries)})
    buf[count_offset : count_offset + 8 * limit] = area
    set_dx_csum(buf, count_offset, csum_seed)


def _blank_index(buf: bytearray, count_offset: int, block_size: int, csum: bool) -> None:
    limit = dx_limit(block_size, count_offset, csum)
    buf[count_offset : count_offset + 4] = DX_COUNTLIMIT.pack({"limit": limit, "count": 0})
    # dx_tail.dt_reserved stays zero (bytes already zero).


def new_dx_root(ino: int, parent: int, block_size: int, hash_version: int, levels: int,
                entries: Sequence[tuple[int, int]], csum_seed: int | None, csum: bool) -> bytearray:
    """A ``dx_root`` block: "." / ".." (covering the block), ``dx_root_info``, the entries."""
    buf = bytearray(block_size)
    buf[0:12] = DIR_ENTRY.pack({"inode": ino, "rec_len": 12, "name_len": 1, "file_type": 2}) + b".\0\0\0"
    buf[12:24] = DIR_ENTRY.pack({"inode": parent, "rec_len": rec_len_to_disk(block_size - 12, block_size),
                                 "name_len": 2, "file_type": 2}) + b"..\0\0"
    buf[24:32] = DX_ROOT_INFO.pack({"reserved_zero": 0, "hash_version": hash_version, "info_length": 8,
                                    "indirect_levels": levels, "unused_flags": 0})
    _blank_index(buf, ROOT_COUNT_OFFSET, block_size, csum)
    dx_write(buf, ROOT_COUNT_OFFSET, entries, csum_seed)
    return buf


def new_dx_node(block_size: int, entries: Sequence[tuple[int, int]], csum_seed: int | None,
                csum: bool) -> bytearray:
    """A ``dx_node`` block: a fake dirent (inode 0, rec_len = block) and the entries."""
    buf = bytearray(block_size)
    buf[0:8] = DIR_ENTRY.pack({"inode": 0, "rec_len": rec_len_to_disk(block_size, block_size), "name_len": 0,
                               "file_type": 0})
    _blank_index(buf, NODE_COUNT_OFFSET, block_size, csum)
    dx_write(buf, NODE_COUNT_OFFSET, entries, csum_seed)
    return buf


def pack_leaf(entries: Sequence[LeafEntry], block_size: int, csum_seed: int | None, csum: bool) -> bytearray:
    """A leaf holding ``entries`` back to back; the last record runs to the tail (dx_pack_dirents)."""
    if not entries:
        return empty_leaf(block_size, csum_seed, csum)
    end = leaf_end(block_size, csum)
    buf = bytearray(block_size)
    pos = 0
    for k, e in enumerate(entries):
        rec = e.size if k + 1 < len(entries) else end - pos
        if pos + max(rec, e.size) > end:
            raise CorruptError("directory", "entries do not fit one leaf block")
        buf[pos : pos + 8] = DIR_ENTRY.pack({"inode": e.ino, "rec_len": rec_len_to_disk(rec, block_size),
                                             "name_len": len(e.name), "file_type": e.file_type})
        buf[pos + 8 : pos + 8 + len(e.name)] = e.name
        pos += rec
    set_leaf_csum(buf, csum_seed)
    return buf


def split_point(entries: Sequence[LeafEntry]) -> tuple[int, int]:
    """Where to cut hash-sorted ``entries``: (index of the first moved entry, index key for it).

    The upper part gets about half the bytes; the key is the first moved
    hash, with the collision bit when the entry before it has the same hash.
    """
    if len(entries) < 2:
        raise CorruptError("directory", "a leaf split needs at least two entries")
    total = sum(e.size for e in entries)
    acc = 0
    cut = len(entries) - 1
    for k, e in enumerate(entries):
        acc += e.size
        if acc * 2 >= total:
            cut = k + 1
            break
    cut = min(max(cut, 1), len(entries) - 1)
    key = entries[cut].hash
    if entries[cut - 1].hash == key:
        key |= 1
    return cut, key


def insert_dx_entry(entries: list[tuple[int, int]], at: int, key: int, block: int) -> None:
    """Insert (key, block) right after position ``at`` (the entry that covered the split leaf)."""
    if at + 1 < len(entries) and entries[at + 1][0] < key:
        raise CorruptError("htree", f"split hash 0x{key:08x} beyond the next index entry")
    entries.insert(at + 1, (key, block))
