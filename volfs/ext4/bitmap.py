"""Block and inode bitmaps (bitmaps.rst): reading and checksum checks.

Checksums cover ``s_clusters_per_group / 8`` (block bitmap) and
``s_inodes_per_group / 8`` (inode bitmap) bytes, chained from the fs seed;
the group number is NOT mixed in (kernel and e2fsprogs, despite the doc).
BLOCK_UNINIT / INODE_UNINIT groups have no on-disk bitmap to check.

For the allocator, a bitmap is handled as one Python integer (bit ``i`` is
block or inode ``i`` of the group): finding a free run is a few big-integer
operations, never a loop over bits.
"""

from __future__ import annotations

from volfs.errors import CorruptError
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.group import BG_BLOCK_UNINIT, BG_INODE_UNINIT, GroupDesc
from volfs.ext4.superblock import Superblock

__all__ = ["verify_block_bitmap", "verify_inode_bitmap", "bit_is_set", "block_bitmap_csum",
           "inode_bitmap_csum", "find_free_run", "set_bits", "count_zero_bits"]


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
