"""Group descriptors (group_descr.rst) and where they live.

The descriptor table follows the primary superblock, except under meta_bg,
where descriptor block ``i >= s_first_meta_bg`` sits in the first group of
meta group ``i`` (after that group's superblock backup, if any).  Bitmaps and
inode tables are always located through the descriptor fields, never by
arithmetic (flex_bg packs them elsewhere).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4._records import maker
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc16, crc32c_raw
from volfs.ext4.superblock import (
    COMPAT_SPARSE_SUPER2,
    INCOMPAT_META_BG,
    RO_COMPAT_SPARSE_SUPER,
    Superblock,
)
from volfs.ext4.types import BlockNo, GroupNo

__all__ = ["GROUP_DESC32", "GROUP_DESC64", "GroupDesc", "parse_group_desc", "descriptor_block",
           "group_has_super", "BG_INODE_UNINIT", "BG_BLOCK_UNINIT", "BG_INODE_ZEROED",
           "group_desc_checksum", "group_first_block", "update_group_desc", "updated_desc", "group_blocks",
           "PendingDesc"]

BG_INODE_UNINIT: Final = 0x1
BG_BLOCK_UNINIT: Final = 0x2
BG_INODE_ZEROED: Final = 0x4

_FIELDS32 = [
    ("bg_block_bitmap_lo", "I"), ("bg_inode_bitmap_lo", "I"), ("bg_inode_table_lo", "I"),
    ("bg_free_blocks_count_lo", "H"), ("bg_free_inodes_count_lo", "H"), ("bg_used_dirs_count_lo", "H"),
    ("bg_flags", "H"), ("bg_exclude_bitmap_lo", "I"), ("bg_block_bitmap_csum_lo", "H"),
    ("bg_inode_bitmap_csum_lo", "H"), ("bg_itable_unused_lo", "H"), ("bg_checksum", "H"),
]
GROUP_DESC32 = Struct("ext4_group_desc(32)", _FIELDS32, size=32)
GROUP_DESC64 = Struct("ext4_group_desc", _FIELDS32 + [
    ("bg_block_bitmap_hi", "I"), ("bg_inode_bitmap_hi", "I"), ("bg_inode_table_hi", "I"),
    ("bg_free_blocks_count_hi", "H"), ("bg_free_inodes_count_hi", "H"), ("bg_used_dirs_count_hi", "H"),
    ("bg_itable_unused_hi", "H"), ("bg_exclude_bitmap_hi", "I"), ("bg_block_bitmap_csum_hi", "H"),
    ("bg_inode_bitmap_csum_hi", "H"), ("bg_reserved", "I"),
], size=64)
_CSUM_OFF: Final = GROUP_DESC32.offsets["bg_checksum"]


@dataclass(frozen=True, slots=True)
class GroupDesc:
    group: GroupNo
    block_bitmap: BlockNo
    inode_bitmap: BlockNo
    inode_table: BlockNo
    free_blocks: int
    free_inodes: int
    used_dirs: int
    flags: int
    itable_unused: int
    block_bitmap_csum: int
    inode_bitmap_csum: int
    checksum: int


# GroupDesc(...) positionally, without the frozen __init__'s cost (_records.py).
_make_desc: Final = maker(GroupDesc)


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def group_has_super(sb: Superblock, group: int) -> bool:
    """Whether ``group`` holds a superblock (and GDT) backup."""
    if group == 0:
        return True
    if sb.has_compat(COMPAT_SPARSE_SUPER2):
        return group in sb.backup_bgs
    if group <= 1 or not sb.has_ro_compat(RO_COMPAT_SPARSE_SUPER):
        return True
    if not group & 1:
        return False
    return _is_power(group, 3) or _is_power(group, 5) or _is_power(group, 7)


def group_first_block(sb: Superblock, group: int) -> int:
    return sb.first_data_block + group * sb.blocks_per_group


def descriptor_block(sb: Superblock, index: int) -> BlockNo:
    """Block number of descriptor-table block ``index`` (primary copy)."""
    if not sb.has_incompat(INCOMPAT_META_BG) or index < sb.first_meta_bg:
        return BlockNo(sb.first_data_block + 1 + index)
    per_block = sb.block_size // sb.desc_size
    group = per_block * index
    first = group_first_block(sb, group)
    adjust = 1 if (group == 0 and sb.block_size == 1024 and sb.first_data_block == 0) else 0
    return BlockNo(first + (1 if group_has_super(sb, group) else 0) + adjust)


def group_desc_checksum(sb: Superblock, fs_seed: int, group: int, raw: bytes) -> int:
    """bg_checksum as metadata_csum or gdt_csum would store it."""
    size = sb.desc_size
    body = raw[:_CSUM_OFF] + b"\0\0" + raw[_CSUM_OFF + 2 : size]
    if sb.metadata_csum:
        return crc32c_raw(crc32c_raw(fs_seed, struct.pack("<I", group)), body) & 0xFFFF
    crc = crc16(0xFFFF, sb.uuid)
    crc = crc16(crc, struct.pack("<I", group))
    crc = crc16(crc, raw[:_CSUM_OFF])
    if size > _CSUM_OFF + 2:
        crc = crc16(crc, raw[_CSUM_OFF + 2 : size])
    return crc


def _positions(table: Struct) -> dict[str, int]:
    return {name: i for i, (name, _code) in enumerate(table.fields)}


_POS32: Final = _positions(GROUP_DESC32)
_POS64: Final = _positions(GROUP_DESC64)
# (lo, hi) field positions of the wide values, in GroupDesc order after the three locations.
_PAIRS: Final = [(_POS64[lo], _POS64[hi], 32 if GROUP_DESC64.field_size(hi) == 4 else 16) for lo, hi in (
    ("bg_block_bitmap_lo", "bg_block_bitmap_hi"), ("bg_inode_bitmap_lo", "bg_inode_bitmap_hi"),
    ("bg_inode_table_lo", "bg_inode_table_hi"), ("bg_free_blocks_count_lo", "bg_free_blocks_count_hi"),
    ("bg_free_inodes_count_lo", "bg_free_inodes_count_hi"), ("bg_used_dirs_count_lo", "bg_used_dirs_count_hi"),
    ("bg_itable_unused_lo", "bg_itable_unused_hi"), ("bg_block_bitmap_csum_lo", "bg_block_bitmap_csum_hi"),
    ("bg_inode_bitmap_csum_lo", "bg_inode_bitmap_csum_hi"))]
_LOS32: Final = [_POS32[lo] for lo in ("bg_block_bitmap_lo", "bg_inode_bitmap_lo", "bg_inode_table_lo",
                                       "bg_free_blocks_count_lo", "bg_free_inodes_count_lo",
                                       "bg_used_dirs_count_lo", "bg_itable_unused_lo", "bg_block_bitmap_csum_lo",
                                       "bg_inode_bitmap_csum_lo")]


def parse_group_desc(sb: Superblock, fs_seed: int, group: int, raw: bytes, *, verify: bool,
                     block: int | None = None) -> GroupDesc:
    """Decode one descriptor (``raw`` is ``s_desc_size`` bytes); check it when asked."""
    # Positional unpacking (no per-field name lookups): descriptors are decoded on every allocation.
    if sb.desc_size >= 64:
        v = GROUP_DESC64.unpack_ints(raw)
        bb, ib, it, fb, fi, ud, iu, bbc, ibc = [v[lo] | (v[hi] << shift) for lo, hi, shift in _PAIRS]
        pos = _POS64
    else:
        v = GROUP_DESC32.unpack_ints(raw)
        bb, ib, it, fb, fi, ud, iu, bbc, ibc = [v[lo] for lo in _LOS32]
        pos = _POS32
    desc = _make_desc(GroupNo(group), BlockNo(bb), BlockNo(ib), BlockNo(it), fb, fi, ud, v[pos["bg_flags"]],
                      iu, bbc, ibc, v[pos["bg_checksum"]])
    if verify:
        if sb.metadata_csum or sb.gdt_csum:
            want = group_desc_checksum(sb, fs_seed, group, raw)
            if want != desc.checksum:
                raise CorruptError("group descriptor", f"group {group}: checksum 0x{desc.checksum:04x} "
                                   f"!= computed 0x{want:04x}", block=block)
        itable_blocks = (sb.inodes_per_group * sb.inode_size + sb.block_size - 1) // sb.block_size
        for what, blk, n in (("block bitmap", bb, 1), ("inode bitmap", ib, 1), ("inode table", it, itable_blocks)):
            if blk < sb.first_data_block or blk + n > sb.blocks_count:
                raise CorruptError("group descriptor", f"group {group}: {what} at block {blk} lies outside "
                                   "the filesystem", block=block)
        if iu > sb.inodes_per_group or fi > sb.inodes_per_group:
            raise CorruptError("group descriptor", f"group {group}: inode counts exceed s_inodes_per_group",
                               block=block)
    return desc


# GroupDesc attribute -> (lo field, hi field) of the descriptor tables.
_WIDE: Final = {
    "free_blocks": ("bg_free_blocks_count_lo", "bg_free_blocks_count_hi"),
    "free_inodes": ("bg_free_inodes_count_lo", "bg_free_inodes_count_hi"),
    "used_dirs": ("bg_used_dirs_count_lo", "bg_used_dirs_count_hi"),
    "itable_unused": ("bg_itable_unused_lo", "bg_itable_unused_hi"),
    "block_bitmap_csum": ("bg_block_bitmap_csum_lo", "bg_block_bitmap_csum_hi"),
    "inode_bitmap_csum": ("bg_inode_bitmap_csum_lo", "bg_inode_bitmap_csum_hi"),
}


# The same as byte offsets (update_group_desc runs on every allocation).
_WIDE_OFFSETS: Final = {key: (GROUP_DESC32.offsets[lo], GROUP_DESC64.offsets[hi]) for key, (lo, hi) in _WIDE.items()}
_FLAGS_OFF: Final = GROUP_DESC32.offsets["bg_flags"]
_U16: Final = struct.Struct("<H")


def update_group_desc(sb: Superblock, fs_seed: int, group: int, raw: bytes, values: dict[str, int]) -> bytes:
    """``raw`` (one ``s_desc_size`` descriptor) with ``values`` set and bg_checksum recomputed.

    Keys are :class:`GroupDesc` attribute names (``free_blocks``, ``flags``...);
    16-bit halves go to the ``_lo``/``_hi`` fields as the descriptor size allows.
    """
    buf = bytearray(raw[: sb.desc_size])
    wide = sb.desc_size >= 64
    for key, value in values.items():
        if key == "flags":
            _U16.pack_into(buf, _FLAGS_OFF, value)
            continue
        lo, hi = _WIDE_OFFSETS[key]
        _U16.pack_into(buf, lo, value & 0xFFFF)
        if wide:
            _U16.pack_into(buf, hi, (value >> 16) & 0xFFFF)
        elif value >> 16 and not key.endswith("_csum"):
            raise ValueError(f"{key} {value} does not fit a 32-byte descriptor")
    if sb.metadata_csum:
        # group_desc_checksum, computed on this copy: its checksum field zeroed in place.
        _U16.pack_into(buf, _CSUM_OFF, 0)
        _U16.pack_into(buf, _CSUM_OFF, crc32c_raw(_group_seed(fs_seed, group), bytes(buf)) & 0xFFFF)
    elif sb.gdt_csum:
        _U16.pack_into(buf, _CSUM_OFF, group_desc_checksum(sb, fs_seed, group, bytes(buf)))
    return bytes(buf)


def updated_desc(sb: Superblock, old: GroupDesc, values: dict[str, int]) -> GroupDesc:
    """``old`` with ``values`` set (keys as :func:`update_group_desc`'s), each as the record stores
    it (16 bits in a 32-byte descriptor, 32 in a 64-byte one; ``bg_flags`` 16), so that it is what
    :func:`parse_group_desc` will give once the record is encoded (:class:`PendingDesc`).

    The allocator changes a descriptor on every allocation and keeps the
    decoded form; ``checksum`` stays the one of the record as last encoded
    (the new one is computed when the record is patched in). ValueError, as
    :func:`update_group_desc` would give, for a value a 32-byte descriptor
    cannot hold.
    """
    wide = sb.desc_size >= 64
    mask = 0xFFFFFFFF if wide else 0xFFFF
    if not wide:
        for key, value in values.items():
            if value >> 16 and key != "flags" and not key.endswith("_csum"):
                raise ValueError(f"{key} {value} does not fit a 32-byte descriptor")
    get = values.get
    fb, fi, ud, fl, iu, bbc, ibc = (get("free_blocks"), get("free_inodes"), get("used_dirs"), get("flags"),
                                    get("itable_unused"), get("block_bitmap_csum"), get("inode_bitmap_csum"))
    return _make_desc(old.group, old.block_bitmap, old.inode_bitmap, old.inode_table,
                      old.free_blocks if fb is None else fb & mask,
                      old.free_inodes if fi is None else fi & mask,
                      old.used_dirs if ud is None else ud & mask,
                      old.flags if fl is None else fl & 0xFFFF,
                      old.itable_unused if iu is None else iu & mask,
                      old.block_bitmap_csum if bbc is None else bbc & mask,
                      old.inode_bitmap_csum if ibc is None else ibc & mask,
                      old.checksum)


class PendingDesc:
    """The record of ``desc``, made when it is patched into its block (a transaction's
    :class:`~volfs.ext4.transaction.LazyRecord`).

    Every field the allocator changes (the counters, ``bg_flags``, the bitmap
    checksums) is written over the record it replaces, and ``bg_checksum`` is
    recomputed: the bytes the same changes made one by one with
    :func:`update_group_desc` would give, at the cost of one encoding per
    commit instead of one per allocation.
    """

    __slots__ = ("sb", "fs_seed", "desc", "size")

    def __init__(self, sb: Superblock, fs_seed: int, desc: GroupDesc) -> None:
        self.sb = sb
        self.fs_seed = fs_seed
        self.desc = desc
        self.size = sb.desc_size

    def encode(self, old: bytes) -> bytes:
        d = self.desc
        return update_group_desc(self.sb, self.fs_seed, d.group, old, {
            "free_blocks": d.free_blocks, "free_inodes": d.free_inodes, "used_dirs": d.used_dirs,
            "flags": d.flags, "itable_unused": d.itable_unused, "block_bitmap_csum": d.block_bitmap_csum,
            "inode_bitmap_csum": d.inode_bitmap_csum})


# crc(fs seed, le32 group) by (fs seed, group): a pure function of its key, so never stale; bounded.
_GROUP_SEEDS: dict[tuple[int, int], int] = {}
_GROUP_SEEDS_MAX: Final = 4096


def _group_seed(fs_seed: int, group: int) -> int:
    key = (fs_seed, group)
    seed = _GROUP_SEEDS.get(key)
    if seed is None:
        seed = crc32c_raw(fs_seed, struct.pack("<I", group))
        if len(_GROUP_SEEDS) >= _GROUP_SEEDS_MAX:
            _GROUP_SEEDS.clear()
        _GROUP_SEEDS[key] = seed
    return seed


def group_blocks(sb: Superblock, group: int) -> int:
    """Blocks in ``group`` (the last group may be short)."""
    if group == sb.group_count - 1:
        return sb.blocks_count - sb.first_data_block - group * sb.blocks_per_group
    return sb.blocks_per_group
