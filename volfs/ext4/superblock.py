"""The ext4 superblock (super.rst): layout, features by name, checksum.

The primary superblock lives at byte 1024 whatever the block size.  Feature
words are reported by the names e2fsprogs prints; :func:`check_features`
is the read-side gate: an incompat bit the engine cannot interpret refuses
the open, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError, error
from volfs.ext4._struct import Record, Struct
from volfs.ext4.checksum import crc32c_raw

import errno

__all__ = ["SUPERBLOCK", "Superblock", "parse_superblock", "feature_names", "COMPAT", "INCOMPAT",
           "RO_COMPAT", "check_features", "SUPERBLOCK_OFFSET", "EXT4_MAGIC", "write_blockers",
           "update_superblock", "superblock_checksum", "EXT4_VALID_FS", "EXT4_ERROR_FS"]

SUPERBLOCK_OFFSET: Final = 1024
EXT4_MAGIC: Final = 0xEF53

SUPERBLOCK = Struct("ext4_super_block", [
    ("s_inodes_count", "I"), ("s_blocks_count_lo", "I"), ("s_r_blocks_count_lo", "I"),
    ("s_free_blocks_count_lo", "I"), ("s_free_inodes_count", "I"), ("s_first_data_block", "I"),
    ("s_log_block_size", "I"), ("s_log_cluster_size", "I"), ("s_blocks_per_group", "I"),
    ("s_clusters_per_group", "I"), ("s_inodes_per_group", "I"), ("s_mtime", "I"), ("s_wtime", "I"),
    ("s_mnt_count", "H"), ("s_max_mnt_count", "h"), ("s_magic", "H"), ("s_state", "H"),
    ("s_errors", "H"), ("s_minor_rev_level", "H"), ("s_lastcheck", "I"), ("s_checkinterval", "I"),
    ("s_creator_os", "I"), ("s_rev_level", "I"), ("s_def_resuid", "H"), ("s_def_resgid", "H"),
    ("s_first_ino", "I"), ("s_inode_size", "H"), ("s_block_group_nr", "H"),
    ("s_feature_compat", "I"), ("s_feature_incompat", "I"), ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"), ("s_volume_name", "16s"), ("s_last_mounted", "64s"),
    ("s_algorithm_usage_bitmap", "I"), ("s_prealloc_blocks", "B"), ("s_prealloc_dir_blocks", "B"),
    ("s_reserved_gdt_blocks", "H"), ("s_journal_uuid", "16s"), ("s_journal_inum", "I"),
    ("s_journal_dev", "I"), ("s_last_orphan", "I"), ("s_hash_seed", "16s"),
    ("s_def_hash_version", "B"), ("s_jnl_backup_type", "B"), ("s_desc_size", "H"),
    ("s_default_mount_opts", "I"), ("s_first_meta_bg", "I"), ("s_mkfs_time", "I"),
    ("s_jnl_blocks", "68s"), ("s_blocks_count_hi", "I"), ("s_r_blocks_count_hi", "I"),
    ("s_free_blocks_count_hi", "I"), ("s_min_extra_isize", "H"), ("s_want_extra_isize", "H"),
    ("s_flags", "I"), ("s_raid_stride", "H"), ("s_mmp_update_interval", "H"), ("s_mmp_block", "Q"),
    ("s_raid_stripe_width", "I"), ("s_log_groups_per_flex", "B"), ("s_checksum_type", "B"),
    ("s_encryption_level", "B"), ("s_reserved_pad", "B"), ("s_kbytes_written", "Q"),
    ("s_snapshot_inum", "I"), ("s_snapshot_id", "I"), ("s_snapshot_r_blocks_count", "Q"),
    ("s_snapshot_list", "I"), ("s_error_count", "I"), ("s_first_error_time", "I"),
    ("s_first_error_ino", "I"), ("s_first_error_block", "Q"), ("s_first_error_func", "32s"),
    ("s_first_error_line", "I"), ("s_last_error_time", "I"), ("s_last_error_ino", "I"),
    ("s_last_error_line", "I"), ("s_last_error_block", "Q"), ("s_last_error_func", "32s"),
    ("s_mount_opts", "64s"), ("s_usr_quota_inum", "I"), ("s_grp_quota_inum", "I"),
    ("s_overhead_clusters", "I"), ("s_backup_bgs", "8s"), ("s_encrypt_algos", "4s"),
    ("s_encrypt_pw_salt", "16s"), ("s_lpf_ino", "I"), ("s_prj_quota_inum", "I"),
    ("s_checksum_seed", "I"), ("s_wtime_hi", "B"), ("s_mtime_hi", "B"), ("s_mkfs_time_hi", "B"),
    ("s_lastcheck_hi", "B"), ("s_first_error_time_hi", "B"), ("s_last_error_time_hi", "B"),
    ("s_first_error_errcode", "B"), ("s_last_error_errcode", "B"), ("s_encoding", "H"),
    ("s_encoding_flags", "H"), ("s_orphan_file_inum", "I"), ("s_reserved", "376s"),
    ("s_checksum", "I"),
], size=1024)

# Feature bits by the names e2fsprogs (lib/e2p/feature.c) prints.
COMPAT: Final[dict[int, str]] = {
    0x1: "dir_prealloc", 0x2: "imagic_inodes", 0x4: "has_journal", 0x8: "ext_attr",
    0x10: "resize_inode", 0x20: "dir_index", 0x40: "lazy_bg", 0x80: "snapshot_bitmap",
    0x100: "exclude_bitmap", 0x200: "sparse_super2", 0x400: "fast_commit", 0x800: "stable_inodes",
    0x1000: "orphan_file",
}
INCOMPAT: Final[dict[int, str]] = {
    0x1: "compression", 0x2: "filetype", 0x4: "needs_recovery", 0x8: "journal_dev",
    0x10: "meta_bg", 0x40: "extent", 0x80: "64bit", 0x100: "mmp", 0x200: "flex_bg",
    0x400: "ea_inode", 0x1000: "dirdata", 0x2000: "metadata_csum_seed", 0x4000: "large_dir",
    0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold",
}
RO_COMPAT: Final[dict[int, str]] = {
    0x1: "sparse_super", 0x2: "large_file", 0x4: "btree_dir", 0x8: "huge_file", 0x10: "uninit_bg",
    0x20: "dir_nlink", 0x40: "extra_isize", 0x80: "snapshot", 0x100: "quota", 0x200: "bigalloc",
    0x400: "metadata_csum", 0x800: "replica", 0x1000: "read-only", 0x2000: "project",
    0x4000: "shared_blocks", 0x8000: "verity", 0x10000: "orphan_present",
}

# What the read side understands.  Everything else in incompat refuses the open.
READABLE_INCOMPAT: Final = (0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000
                            | 0x8000 | 0x10000 | 0x20000)

INCOMPAT_RECOVER: Final = 0x4
INCOMPAT_META_BG: Final = 0x10
INCOMPAT_EXTENTS: Final = 0x40
INCOMPAT_64BIT: Final = 0x80
INCOMPAT_FLEX_BG: Final = 0x200
INCOMPAT_EA_INODE: Final = 0x400
INCOMPAT_CSUM_SEED: Final = 0x2000
INCOMPAT_LARGEDIR: Final = 0x4000
INCOMPAT_INLINE_DATA: Final = 0x8000
INCOMPAT_FILETYPE: Final = 0x2
COMPAT_HAS_JOURNAL: Final = 0x4
COMPAT_DIR_INDEX: Final = 0x20
COMPAT_SPARSE_SUPER2: Final = 0x200
COMPAT_FAST_COMMIT: Final = 0x400
COMPAT_ORPHAN_FILE: Final = 0x1000
RO_COMPAT_SPARSE_SUPER: Final = 0x1
RO_COMPAT_HUGE_FILE: Final = 0x8
RO_COMPAT_GDT_CSUM: Final = 0x10
RO_COMPAT_METADATA_CSUM: Final = 0x400
RO_COMPAT_BIGALLOC: Final = 0x200
RO_COMPAT_ORPHAN_PRESENT: Final = 0x10000
FLAGS_UNSIGNED_HASH: Final = 0x2
EXT4_VALID_FS: Final = 0x1
EXT4_ERROR_FS: Final = 0x2

# What the write side implements (see write_blockers).  needs_recovery is
# allowed: the journal is replayed onto the disk before the first write.
WRITABLE_COMPAT: Final = 0x4 | 0x8 | 0x10 | 0x20 | 0x1000  # has_journal ext_attr resize_inode dir_index orphan_file
# filetype recover extent 64bit flex_bg csum_seed inline_data
WRITABLE_INCOMPAT: Final = 0x2 | 0x4 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x8000
# sparse_super large_file huge_file uninit_bg dir_nlink extra_isize metadata_csum (and orphan_present:
# pending orphan-file entries are processed on a writable open)
WRITABLE_RO_COMPAT: Final = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400 | 0x10000  # ... orphan_present


def feature_names(word: int, table: dict[int, str], prefix: str) -> list[str]:
    """Names of the set bits of ``word``; unknown bits as ``FEATURE_<prefix><bit>``."""
    out = []
    for bit in range(32):
        mask = 1 << bit
        if word & mask:
            out.append(table.get(mask, f"FEATURE_{prefix}{bit}"))
    return out


@dataclass(frozen=True, slots=True)
class Superblock:
    """The decoded superblock: the raw record plus derived geometry."""

    record: Record
    raw: bytes
    block_size: int
    cluster_size: int
    blocks_count: int
    free_blocks_count: int
    r_blocks_count: int
    inodes_count: int
    free_inodes_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    first_ino: int
    desc_size: int
    group_count: int
    compat: int
    incompat: int
    ro_compat: int
    uuid: bytes
    hash_seed: tuple[int, int, int, int]
    def_hash_version: int
    flags: int
    log_groups_per_flex: int
    first_meta_bg: int
    reserved_gdt_blocks: int
    journal_inum: int
    last_orphan: int
    orphan_file_inum: int
    checksum_type: int
    checksum_seed: int
    backup_bgs: tuple[int, int]
    min_extra_isize: int
    state: int

    @property
    def metadata_csum(self) -> bool:
        return bool(self.ro_compat & RO_COMPAT_METADATA_CSUM)

    @property
    def gdt_csum(self) -> bool:
        return bool(self.ro_compat & RO_COMPAT_GDT_CSUM) and not self.metadata_csum

    @property
    def has_64bit(self) -> bool:
        return bool(self.incompat & INCOMPAT_64BIT)

    def has_incompat(self, bit: int) -> bool:
        return bool(self.incompat & bit)

    def has_compat(self, bit: int) -> bool:
        return bool(self.compat & bit)

    def has_ro_compat(self, bit: int) -> bool:
        return bool(self.ro_compat & bit)

    def features(self) -> list[str]:
        return (feature_names(self.compat, COMPAT, "C") + feature_names(self.incompat, INCOMPAT, "I")
                + feature_names(self.ro_compat, RO_COMPAT, "R"))


def superblock_checksum(raw: bytes) -> int:
    return crc32c_raw(0xFFFFFFFF, raw[: SUPERBLOCK.offsets["s_checksum"]])


def parse_superblock(raw: bytes, *, verify: bool = True) -> Superblock:
    """Decode and validate a 1024-byte superblock."""
    if len(raw) < SUPERBLOCK.size:
        raise CorruptError("superblock", "image too small to hold a superblock")
    r = SUPERBLOCK.unpack(raw)
    if r.u("s_magic") != EXT4_MAGIC:
        raise CorruptError("superblock", f"bad magic 0x{r.u('s_magic'):04x} (not an ext2/3/4 image)")
    rev = r.u("s_rev_level")
    incompat = r.u("s_feature_incompat") if rev >= 1 else 0
    ro_compat = r.u("s_feature_ro_compat") if rev >= 1 else 0
    compat = r.u("s_feature_compat") if rev >= 1 else 0
    if ro_compat & RO_COMPAT_METADATA_CSUM:
        if r.u("s_checksum_type") != 1:
            raise CorruptError("superblock", f"unknown checksum type {r.u('s_checksum_type')}")
        want = superblock_checksum(raw)
        if verify and want != r.u("s_checksum"):
            raise CorruptError("superblock", f"checksum 0x{r.u('s_checksum'):08x} != computed 0x{want:08x}")
    log_bs = r.u("s_log_block_size")
    if log_bs > 6:
        raise CorruptError("superblock", f"s_log_block_size {log_bs} is absurd (block size > 64 KiB)")
    block_size = 1024 << log_bs
    log_cs = r.u("s_log_cluster_size")
    cluster_size = 1024 << log_cs if (ro_compat & RO_COMPAT_BIGALLOC and log_cs <= 30) else block_size
    is64 = bool(incompat & INCOMPAT_64BIT)
    blocks_count = r.u("s_blocks_count_lo") | ((r.u("s_blocks_count_hi") << 32) if is64 else 0)
    free_blocks = r.u("s_free_blocks_count_lo") | ((r.u("s_free_blocks_count_hi") << 32) if is64 else 0)
    r_blocks = r.u("s_r_blocks_count_lo") | ((r.u("s_r_blocks_count_hi") << 32) if is64 else 0)
    inode_size = r.u("s_inode_size") if rev >= 1 else 128
    first_ino = r.u("s_first_ino") if rev >= 1 else 11
    if inode_size < 128 or inode_size > block_size or inode_size & (inode_size - 1):
        raise CorruptError("superblock", f"s_inode_size {inode_size} is invalid")
    desc_size = r.u("s_desc_size") if is64 else 32
    if is64 and (desc_size < 64 or desc_size > 1024 or desc_size & (desc_size - 1)):
        raise CorruptError("superblock", f"s_desc_size {desc_size} is invalid for a 64bit filesystem")
    bpg = r.u("s_blocks_per_group")
    ipg = r.u("s_inodes_per_group")
    if bpg == 0 or bpg > 8 * block_size * (cluster_size // block_size):
        raise CorruptError("superblock", f"s_blocks_per_group {bpg} is invalid")
    if ipg == 0 or ipg > 8 * block_size:
        raise CorruptError("superblock", f"s_inodes_per_group {ipg} is invalid")
    first_data_block = r.u("s_first_data_block")
    if first_data_block >= blocks_count or first_data_block > 1:
        raise CorruptError("superblock", f"s_first_data_block {first_data_block} is invalid")
    group_count = (blocks_count - first_data_block + bpg - 1) // bpg
    if group_count == 0 or r.u("s_inodes_count") > group_count * ipg:
        raise CorruptError("superblock", f"s_inodes_count {r.u('s_inodes_count')} exceeds "
                           f"{group_count} groups of {ipg} inodes")
    if first_ino < 11 and rev >= 1:
        raise CorruptError("superblock", f"s_first_ino {first_ino} is invalid")
    seed = r.b("s_hash_seed")
    words = [int.from_bytes(seed[i : i + 4], "little") for i in range(0, 16, 4)]
    bgs = r.b("s_backup_bgs")
    return Superblock(
        record=r, raw=bytes(raw[: SUPERBLOCK.size]), block_size=block_size, cluster_size=cluster_size,
        blocks_count=blocks_count, free_blocks_count=free_blocks, r_blocks_count=r_blocks,
        inodes_count=r.u("s_inodes_count"), free_inodes_count=r.u("s_free_inodes_count"),
        first_data_block=first_data_block, blocks_per_group=bpg, inodes_per_group=ipg,
        inode_size=inode_size, first_ino=first_ino, desc_size=desc_size, group_count=group_count,
        compat=compat, incompat=incompat, ro_compat=ro_compat, uuid=r.b("s_uuid"),
        hash_seed=(words[0], words[1], words[2], words[3]), def_hash_version=r.u("s_def_hash_version"),
        flags=r.u("s_flags"), log_groups_per_flex=r.u("s_log_groups_per_flex"),
        first_meta_bg=r.u("s_first_meta_bg"), reserved_gdt_blocks=r.u("s_reserved_gdt_blocks"),
        journal_inum=r.u("s_journal_inum"), last_orphan=r.u("s_last_orphan"),
        orphan_file_inum=r.u("s_orphan_file_inum"), checksum_type=r.u("s_checksum_type"),
        checksum_seed=r.u("s_checksum_seed"),
        backup_bgs=(int.from_bytes(bgs[0:4], "little"), int.from_bytes(bgs[4:8], "little")),
        min_extra_isize=r.u("s_min_extra_isize"), state=r.u("s_state"),
    )


def check_features(sb: Superblock, path: str | None = None) -> None:
    """Refuse an image whose incompat features the read side cannot interpret."""
    unknown = sb.incompat & ~READABLE_INCOMPAT
    if unknown:
        names = ", ".join(feature_names(unknown, INCOMPAT, "I"))
        raise error(errno.EOPNOTSUPP, f"unsupported incompat feature(s): {names}", path)


def write_blockers(sb: Superblock) -> list[str]:
    """Why the write side must not write this image (empty: it may).

    A whitelist: every feature bit outside the implemented sets is named.
    """
    out = [f"feature {n} is not supported for writing"
           for n in feature_names(sb.compat & ~WRITABLE_COMPAT, COMPAT, "C")
           + feature_names(sb.incompat & ~WRITABLE_INCOMPAT, INCOMPAT, "I")
           + feature_names(sb.ro_compat & ~WRITABLE_RO_COMPAT, RO_COMPAT, "R")]
    if not sb.incompat & INCOMPAT_EXTENTS:
        out.append("no extent feature (ext2/ext3 block-mapped files are not written)")
    if not sb.incompat & INCOMPAT_FILETYPE:
        out.append("no filetype feature")
    if sb.record.u("s_rev_level") < 1:
        out.append("revision 0 superblock")
    if sb.cluster_size != sb.block_size:
        out.append("clusters larger than blocks")
    if sb.record.u("s_snapshot_inum") or sb.record.u("s_journal_dev") or (
            sb.has_compat(COMPAT_HAS_JOURNAL) and not sb.journal_inum):
        out.append("external journal or snapshot")
    return out


def update_superblock(raw: bytes, values: dict[str, int]) -> bytes:
    """The 1024-byte superblock ``raw`` with integer ``values`` set and s_checksum refreshed."""
    import struct as _s

    buf = bytearray(raw[: SUPERBLOCK.size])
    for name, value in values.items():
        code = dict(SUPERBLOCK.fields)[name]
        _s.pack_into("<" + code, buf, SUPERBLOCK.offsets[name], value)
    ro_compat = _s.unpack_from("<I", buf, SUPERBLOCK.offsets["s_feature_ro_compat"])[0]
    if ro_compat & RO_COMPAT_METADATA_CSUM:
        _s.pack_into("<I", buf, SUPERBLOCK.offsets["s_checksum"], superblock_checksum(bytes(buf)))
    return bytes(buf)
