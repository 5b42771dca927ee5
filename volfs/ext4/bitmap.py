"""Block and inode bitmaps (bitmaps.rst): reading and checksum checks.

Checksums cover ``s_clusters_per_group / 8`` (block bitmap) and
``s_inodes_per_group / 8`` (inode bitmap) bytes, chained from the fs seed;
the group number is NOT mixed in (kernel and e2fsprogs, despite the doc).
BLOCK_UNINIT / INODE_UNINIT groups have no on-disk bitmap to check.

Two representations of the same bits (bit ``i`` is block or inode ``i`` of
the group, bit 0 the low bit of byte 0): one Python integer (the definition,
and what checks and mkfs use), and the bitmap block's own bytes, which the
allocator edits in place.  The byte helpers (:func:`find_clear_run`,
:func:`fill_run`, :func:`run_is_set`) exist because converting a 4 KiB
bitmap to an integer and back costs more than the whole search: they measure
runs of full (or empty) bytes with the regex engine (C speed) and only do bit
arithmetic on single bytes.  They answer
exactly as :func:`find_free_run` and :func:`set_bits` do on the integer.
"""

from __future__ import annotations

import re
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.group import BG_BLOCK_UNINIT, BG_INODE_UNINIT, GroupDesc
from volfs.ext4.superblock import Superblock

__all__ = ["verify_block_bitmap", "verify_inode_bitmap", "bit_is_set", "block_bitmap_csum",
           "inode_bitmap_csum", "find_free_run", "set_bits", "count_zero_bits", "find_clear_run", "fill_run",
           "run_is_set"]


def _compare(sb: Superblock, stored: int, computed: int, what: str, desc: GroupDesc, block: int) -> None:
    if sb.desc_size < 64:
        computed &= 0xFFFF
    if stored != computed:
        raise CorruptError(what, f"group {desc.group}: checksum 0x{stored:08x} != computed 0x{computed:08x}",
                           block=block)


def verify_block_bitmap(sb: Superblock, fs_seed: int, desc: GroupDesc, data: bytes) -> None:
    if not sb.metadata_csum or desc.flags & BG_BLOCK_UNINIT:
        return
    clusters = sb.record.u("s_clusters_per_group") or sb.blocks_per_group
    _compare(sb, desc.block_bitmap_csum, crc32c_raw(fs_seed, data[: clusters // 8]), "block bitmap", desc,
             desc.block_bitmap)


def verify_inode_bitmap(sb: Superblock, fs_seed: int, desc: GroupDesc, data: bytes) -> None:
    if not sb.metadata_csum or desc.flags & BG_INODE_UNINIT:
        return
    _compare(sb, desc.inode_bitmap_csum, crc32c_raw(fs_seed, data[: sb.inodes_per_group // 8]),
             "inode bitmap", desc, desc.inode_bitmap)


def bit_is_set(data: bytes, index: int) -> bool:
    return bool(data[index >> 3] & (1 << (index & 7)))


def block_bitmap_csum(sb: Superblock, fs_seed: int, data: bytes) -> int:
    clusters = sb.record.u("s_clusters_per_group") or sb.blocks_per_group
    return crc32c_raw(fs_seed, data[: clusters // 8])


def inode_bitmap_csum(sb: Superblock, fs_seed: int, data: bytes) -> int:
    return crc32c_raw(fs_seed, data[: sb.inodes_per_group // 8])


def count_zero_bits(bits: int, nbits: int) -> int:
    return nbits - (bits & ((1 << nbits) - 1)).bit_count()


def find_free_run(bits: int, nbits: int, start: int, want: int) -> tuple[int, int] | None:
    """The first run of clear bits at or after ``start`` (below ``nbits``): (first, length <= want)."""
    if start >= nbits:
        return None
    free = ~bits & ((1 << nbits) - 1)
    free >>= start
    if not free:
        return None
    skip = (free & -free).bit_length() - 1
    first = start + skip
    used = bits >> first
    # Length of the clear run: position of the next set bit (or the end).
    length = ((used & -used).bit_length() - 1) if used else nbits - first
    length = min(length, nbits - first, want)
    return first, length


def set_bits(bits: int, first: int, count: int, value: bool) -> int:
    mask = ((1 << count) - 1) << first
    return bits | mask if value else bits & ~mask


# --- the same on the bitmap's bytes (see the module header) -----------------------------------

# Runs of full (0xFF) and empty bytes: ``match(...).end()`` is where the run stops.  (A repeated
# literal is the regex engine's tight loop; a negated class searched for is several times slower.)
_FULL_RUN: Final = re.compile(rb"\xff*")
_EMPTY_RUN: Final = re.compile(rb"\x00*")


def _run_end(run: re.Pattern[bytes], data: bytes | bytearray, pos: int, endpos: int) -> int:
    """Where the run of ``run``'s byte starting at ``pos`` stops (``endpos`` at most)."""
    m = run.match(data, pos, endpos)
    return m.end() if m is not None else pos  # (a starred literal always matches, if only empty)


def _low_bit(byte: int) -> int:
    """Index of the lowest set bit of a non-zero byte."""
    return (byte & -byte).bit_length() - 1


def find_clear_run(data: bytes | bytearray, nbits: int, start: int, want: int) -> tuple[int, int] | None:
    """:func:`find_free_run` of ``int.from_bytes(data, "little")``, without building the integer.

    Bits past the end of ``data`` read as clear, as they do in the integer.
    """
    if start >= nbits:
        return None
    size = len(data)
    index = start >> 3
    # Bits below ``start`` in its byte count as taken.
    byte = (data[index] if index < size else 0) | ((1 << (start & 7)) - 1)
    if byte == 0xFF:
        index = _run_end(_FULL_RUN, data, index + 1, size)
        # (At the end of data everything was taken; past it reads as clear.)
        byte = data[index] if index < size else 0
    first = (index << 3) + _low_bit(~byte & 0xFF)
    if first >= nbits:
        return None
    limit = min(nbits, first + want)
    # The run ends at the next set bit at or after ``first`` (or at ``limit``).
    index = first >> 3
    rest = (data[index] if index < size else 0) >> (first & 7)
    if rest:
        end = first + _low_bit(rest)
    else:
        stop = min((limit + 7) >> 3, size)
        taken = _run_end(_EMPTY_RUN, data, index + 1, stop) if index + 1 < stop else stop
        end = (taken << 3) + _low_bit(data[taken]) if taken < stop else limit
    return first, min(end, limit) - first


def fill_run(buf: bytearray, first: int, count: int, value: bool) -> None:
    """:func:`set_bits` on the bytes: bits ``[first, first + count)`` set (or cleared) in place."""
    if count <= 0:
        return
    end = first + count
    lo, hi = first >> 3, end >> 3
    if lo == hi:
        mask = ((1 << count) - 1) << (first & 7)
        buf[lo] = buf[lo] | mask if value else buf[lo] & ~mask
        return
    if first & 7:
        mask = (0xFF << (first & 7)) & 0xFF
        buf[lo] = buf[lo] | mask if value else buf[lo] & ~mask
        lo += 1
    if hi > lo:
        buf[lo:hi] = (b"\xff" if value else b"\0") * (hi - lo)
    if end & 7:
        mask = (1 << (end & 7)) - 1
        buf[hi] = buf[hi] | mask if value else buf[hi] & ~mask


def run_is_set(data: bytes | bytearray, first: int, count: int) -> bool:
    """Whether every bit of ``[first, first + count)`` is set."""
    if count <= 0:
        return True
    lo, hi = first >> 3, (first + count + 7) >> 3
    window = int.from_bytes(data[lo:hi], "little") >> (first & 7)
    mask = (1 << count) - 1
    return window & mask == mask
