"""Block and inode bitmaps (bitmaps.rst): reading and checksum checks.

Checksums cover ``s_clusters_per_group / 8`` (block bitmap) and
``s_inodes_per_group / 8`` (inode bitmap) bytes, chained from the fs seed;
the group number is NOT mixed in (kernel and e2fsprogs, despite the doc).
BLOCK_UNINIT / INODE_UNINIT groups have no on-disk bitmap to check.
"""

from __future__ import annotations

from volfs.errors import CorruptError
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.group import BG_BLOCK_UNINIT, BG_INODE_UNINIT, GroupDesc
from volfs.ext4.superblock import Superblock

__all__ = ["verify_block_bitmap", "verify_inode_bitmap", "bit_is_set"]


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
