"""mkfs: make an empty ext4 filesystem in a sparse image file, as mkfs.ext4 would.

Theory of operation.  The filesystem is planned completely in memory and
then written in one pass of a few hundred ``pwrite`` calls; only metadata
is written, everything else stays a hole of the freshly truncated file.

1. Geometry (:func:`volfs.ext4._mkfs_layout.plan_geometry`): the numbers of
   mke2fs 1.47.0 with Debian 12's ``mke2fs.conf`` (size class picks the
   inode ratio, 5% reserved blocks, flex_bg of 16, journal size from
   ``ext2fs_default_journal_size``, reserved GDT blocks for 1024x growth).
2. Placement, in mke2fs's order, on a :class:`UsedMap` of used extents:
   superblock/GDT/reserved-GDT copies of group 0 and the sparse_super
   backup groups; every group's bitmaps and inode table packed per flex
   group (``ext2fs_allocate_group_table``); the root directory block; the
   lost+found blocks (16 KiB, at least two blocks); the resize inode's
   double-indirect block; the journal, first-fit from the middle group
   (``get_midpoint_journal_block``) in extents of at most 32768 blocks,
   with an extent leaf block when it needs more than four; with
   orphan_file, inode 12 and its 32-512 blocks, first-fit from block 0.
3. Lazy initialisation as mkfs.ext4 on a file whose discard zeroes
   (which is what it does on an image file): every group is
   ``ITABLE_ZEROED`` (the file was just truncated, so inode tables read as
   zeros); groups without allocated inodes are ``INODE_UNINIT`` with
   ``bg_itable_unused`` = all; groups, other than the last, whose only used
   blocks are their own superblock/GDT copy (and, without flex_bg, their
   own tables) are ``BLOCK_UNINIT``.  Their bitmaps are not written, and
   their bitmap checksums stay 0, as mke2fs leaves them.
4. Encoding: superblock, descriptors (metadata_csum checksums), bitmaps
   (padding bits set past the last block and past ``s_inodes_per_group``),
   reserved inodes 1 and 3-10 (checksummed zeros), root, lost+found,
   resize inode (block-mapped, listing every reserved GDT block and its
   backups) and journal inode (extents, jbd2 v2 superblock), directory
   blocks with checksum tails.

Every free count and checksum is computed from the placement, never
adjusted afterwards.  The result matches mkfs.ext4 1.47.0 run with the same
UUID, hash seed and time (``E2FSPROGS_FAKE_TIME``) byte for byte in every
metadata block, except ``s_kbytes_written`` (volfs counts its own writes).
One difference in the file, not the filesystem: mkfs.ext4 zeroes the
journal with ``fallocate(ZERO_RANGE)``, which allocates it in the image
file; volfs leaves the journal a hole (it reads as zeros all the same).

The image file is the only I/O: :class:`_ImageWriter` is the small
writable device of this module (``volfs.ext4.device`` is read-only).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
import uuid as _uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from volfs.errors import error
from volfs.ext4._mkfs_layout import (
    MAX_INIT_EXTENT,
    Geometry,
    UsedMap,
    place_group_tables,
    plan_geometry,
)
from volfs.ext4.checksum import crc32c_raw, fs_seed, inode_seed
from volfs.ext4.directory import DIR_ENTRY, DIR_TAIL
from volfs.ext4.extents import EXT4_EXT_MAGIC, EXTENT, EXTENT_HEADER, EXTENT_IDX
from volfs.ext4.group import BG_BLOCK_UNINIT, BG_INODE_UNINIT, BG_INODE_ZEROED, GROUP_DESC64, group_desc_checksum
from volfs.ext4.inode import EXT4_EXTENTS_FL, INODE, inode_checksum
from volfs.ext4.journal import JBD2_MAGIC, JOURNAL_SUPERBLOCK
from volfs.ext4.orphan import ORPHAN_BLOCK_MAGIC, orphan_block_checksum
from volfs.ext4.superblock import (
    COMPAT,
    EXT4_MAGIC,
    INCOMPAT,
    RO_COMPAT,
    SUPERBLOCK,
    SUPERBLOCK_OFFSET,
    Superblock,
    parse_superblock,
)
from volfs.ext4.types import InodeNo

__all__ = ["mkfs", "MkfsResult", "DEFAULT_FEATURES", "SUPPORTED_FEATURES"]

#: mkfs.ext4 1.47.0's default features on Debian 12 (``mke2fs.conf`` base_features + ext4).
DEFAULT_FEATURES: Final = frozenset({
    "has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent", "64bit", "flex_bg",
    "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize", "metadata_csum",
})
#: Features volfs mkfs can make; the first three and large_file are required.
SUPPORTED_FEATURES: Final = DEFAULT_FEATURES | {"metadata_csum_seed", "orphan_file"}
_REQUIRED: Final = frozenset({"filetype", "extent", "metadata_csum", "large_file"})

_ROOT_INO: Final = InodeNo(2)
_RESIZE_INO: Final = InodeNo(7)
_JOURNAL_INO: Final = InodeNo(8)
_FIRST_INO: Final = 11
_LPF_INO: Final = InodeNo(11)
_DIND_SLOT: Final = 13  # i_block[EXT2_DIND_BLOCK]
_JBD2_SUPERBLOCK_V2: Final = 4
_FT_DIR: Final = 2
_FT_DIR_CSUM: Final = 0xDE
_S_FLAGS_SIGNED_HASH: Final = 0x1
_DEFAULT_MOUNT_OPTS: Final = 0x4 | 0x8  # user_xattr, acl
_EXTRA_ISIZE: Final = 32
_HASH_HALF_MD4: Final = 1
_JNL_BACKUP_BLOCKS: Final = 1
_CRC32C: Final = 1


def _feature_bits() -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for word, table in (("s_feature_compat", COMPAT), ("s_feature_incompat", INCOMPAT),
                        ("s_feature_ro_compat", RO_COMPAT)):
        for bit, name in table.items():
            out[name] = (word, bit)
    return out


_FEATURE_BITS: Final = _feature_bits()


@dataclass(frozen=True, slots=True)
class MkfsResult:
    """What :func:`mkfs` made (the numbers ``dumpe2fs -h`` shows)."""

    path: str
    size: int
    block_size: int
    blocks_count: int
    inodes_count: int
    free_blocks: int
    free_inodes: int
    r_blocks_count: int
    blocks_per_group: int
    inodes_per_group: int
    group_count: int
    inode_size: int
    reserved_gdt_blocks: int
    journal_blocks: int
    overhead_clusters: int
    uuid: _uuid.UUID
    features: frozenset[str]
    bytes_written: int


# ---------------------------------------------------------------- the device


class _ImageWriter:
    """The one writable device of mkfs: a regular file, truncated to its size, written with pwrite."""

    __slots__ = ("path", "_fd", "written")

    def __init__(self, path: str, size: int, overwrite: bool) -> None:
        self.path = path
        self.written = 0
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if overwrite else os.O_EXCL)
        try:
            self._fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise error(errno.EEXIST, "image exists (pass overwrite=True to replace it)", path) from None
            raise error(exc.errno or errno.EIO, f"cannot create image: {exc.strerror}", path) from None
        try:
            regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
            if regular:
                # Truncating to 0 first drops every old block: what is not written below reads as zeros.
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, size)
        except OSError as exc:
            os.close(self._fd)
            raise error(exc.errno or errno.EIO, f"cannot size image: {exc.strerror}", path) from None
        if not regular:
            os.close(self._fd)
            raise error(errno.EINVAL, "mkfs makes regular image files only", path)

    def write_runs(self, chunks: dict[int, bytes]) -> None:
        """Write ``{byte offset: data}``, coalescing adjacent chunks into single pwrites."""
        pending: list[bytes] = []
        run_start = -1
        run_end = -1
        for off in sorted(chunks):
            data = chunks[off]
            if off == run_end:
                pending.append(data)
                run_end += len(data)
                continue
            if pending:
                self._pwrite(b"".join(pending), run_start)
            pending = [data]
            run_start = off
            run_end = off + len(data)
        if pending:
            self._pwrite(b"".join(pending), run_start)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"write error at byte {offset + done}: {exc.strerror}",
                        self.path) from None
        self.written += len(data)

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"fsync failed: {exc.strerror}", self.path) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---------------------------------------------------------------- helpers


def _as_uuid(value: _uuid.UUID | bytes | str | None, what: str, path: str) -> _uuid.UUID:
    if value is None:
        return _uuid.uuid4()
    if isinstance(value, _uuid.UUID):
        return value
    try:
        if isinstance(value, bytes):
            return _uuid.UUID(bytes=value)
        return _uuid.UUID(value)
    except ValueError:
        raise error(errno.EINVAL, f"{what} {value!r} is not a UUID", path) from None


def _set_bits(buf: bytearray, lo: int, hi: int) -> None:
    """Set bits ``[lo, hi)`` of a little-endian bitmap."""
    if lo >= hi:
        return
    first_full = (lo + 7) // 8
    last_full = hi // 8
    if first_full > last_full:  # inside one byte
        for bit in range(lo, hi):
            buf[bit >> 3] |= 1 << (bit & 7)
        return
    for bit in range(lo, first_full * 8):
        buf[bit >> 3] |= 1 << (bit & 7)
    buf[first_full:last_full] = b"\xff" * (last_full - first_full)
    for bit in range(last_full * 8, hi):
        buf[bit >> 3] |= 1 << (bit & 7)


def _time_fields(t: int) -> tuple[int, int]:
    """(32-bit seconds, *_extra epoch bits) of a timestamp, as the kernel encodes them."""
    lo = t & 0xFFFFFFFF
    signed = lo - (1 << 32) if lo & 0x80000000 else lo
    return lo, ((t - signed) >> 32) & 3


def _extents_of(blocks: list[int]) -> list[tuple[int, int, int]]:
    """(logical, physical, length) extents of a list of physical blocks in logical order."""
    out: list[tuple[int, int, int]] = []
    for lblk, pblk in enumerate(blocks):
        if out:
            l0, p0, n = out[-1]
            if p0 + n == pblk and n < MAX_INIT_EXTENT:
                out[-1] = (l0, p0, n + 1)
                continue
        out.append((lblk, pblk, 1))
    return out


def _pack_extents(extents: Iterable[tuple[int, int, int]]) -> bytes:
    return b"".join(EXTENT.pack({"ee_block": l, "ee_len": n, "ee_start_hi": p >> 32, "ee_start_lo": p & 0xFFFFFFFF})
                    for l, p, n in extents)


def _extent_header(entries: int, emax: int, depth: int) -> bytes:
    return EXTENT_HEADER.pack({"eh_magic": EXT4_EXT_MAGIC, "eh_entries": entries, "eh_max": emax,
                               "eh_depth": depth, "eh_generation": 0})


def _extent_root(extents: list[tuple[int, int, int]], leaf: int | None) -> bytes:
    """The 60-byte i_block of an extent tree (depth 0, or depth 1 over one ``leaf``)."""
    if leaf is None:
        body = _extent_header(len(extents), 4, 0) + _pack_extents(extents)
    else:
        # libext2fs splits a full root by moving its entries to the leaf and writing one index over
        # the first slot; the stale copies of entries 1-3 stay behind it (unused: eh_entries is 1).
        body = _extent_header(1, 4, 1) + EXTENT_IDX.pack(
            {"ei_block": 0, "ei_leaf_lo": leaf & 0xFFFFFFFF, "ei_leaf_hi": leaf >> 32, "ei_unused": 0})
        body += _pack_extents(extents[1:4])
    return body.ljust(60, b"\0")


def _extent_leaf(extents: list[tuple[int, int, int]], block_size: int, seed: int) -> bytes:
    emax = (block_size - 12) // 12
    body = (_extent_header(len(extents), emax, 0) + _pack_extents(extents)).ljust(12 + 12 * emax, b"\0")
    tail = struct.pack("<I", crc32c_raw(seed, body))
    return (body + tail).ljust(block_size, b"\0")


def _dirent(ino: int, rec_len: int, name: bytes, ft: int) -> bytes:
    head = DIR_ENTRY.pack({"inode": ino, "rec_len": rec_len, "name_len": len(name), "file_type": ft})
    return (head + name).ljust(rec_len, b"\0")


def _dir_block(entries: list[tuple[int, bytes]], block_size: int, seed: int) -> bytes:
    """A leaf block of ``(ino, name)`` directories (all of type dir) with its checksum tail."""
    parts = []
    room = block_size - 12
    used = 0
    for k, (ino, name) in enumerate(entries):
        rec = (8 + len(name) + 3) & ~3
        if k == len(entries) - 1:
            rec = room - used
        parts.append(_dirent(ino, rec, name, _FT_DIR))
        used += rec
    if not entries:
        parts.append(_dirent(0, room, b"", 0))
    body = b"".join(parts)
    tail = DIR_TAIL.pack({"det_reserved_zero1": 0, "det_rec_len": 12, "det_reserved_zero2": 0,
                          "det_reserved_ft": _FT_DIR_CSUM, "det_checksum": crc32c_raw(seed, body)})
    return body + tail


# ---------------------------------------------------------------- inodes


@dataclass(slots=True)
class _InodeSpec:
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    links: int = 0
    blocks_512: int = 0
    flags: int = 0
    i_block: bytes = b"\0" * 60
    atime: int = 0
    ctime: int = 0
    mtime: int = 0
    crtime: int = 0
    extra_isize: int = _EXTRA_ISIZE


def _encode_inode(spec: _InodeSpec, ino: int, inode_size: int, seed: int) -> bytes:
    if inode_size == 128:
        spec.extra_isize = 0
    a, a_x = _time_fields(spec.atime)
    c, c_x = _time_fields(spec.ctime)
    m, m_x = _time_fields(spec.mtime)
    cr, cr_x = _time_fields(spec.crtime)
    large = spec.extra_isize > 0
    values: dict[str, int | bytes] = {
        "i_mode": spec.mode, "i_uid": spec.uid & 0xFFFF, "i_size_lo": spec.size & 0xFFFFFFFF, "i_atime": a,
        "i_ctime": c, "i_mtime": m, "i_dtime": 0, "i_gid": spec.gid & 0xFFFF, "i_links_count": spec.links,
        "i_blocks_lo": spec.blocks_512 & 0xFFFFFFFF, "i_flags": spec.flags, "l_i_version": 0,
        "i_block": spec.i_block, "i_generation": 0, "i_file_acl_lo": 0, "i_size_high": spec.size >> 32,
        "i_obso_faddr": 0, "l_i_blocks_high": (spec.blocks_512 >> 32) & 0xFFFF, "l_i_file_acl_high": 0,
        "l_i_uid_high": spec.uid >> 16, "l_i_gid_high": spec.gid >> 16, "l_i_checksum_lo": 0,
        "l_i_reserved": 0, "i_extra_isize": spec.extra_isize if large else 0, "i_checksum_hi": 0,
        "i_ctime_extra": c_x if large else 0, "i_mtime_extra": m_x if large else 0,
        "i_atime_extra": a_x if large else 0, "i_crtime": cr if large else 0,
        "i_crtime_extra": cr_x if large else 0, "i_version_hi": 0, "i_projid": 0,
    }
    raw = bytearray(INODE.pack(values)[: max(128, 128 + spec.extra_isize)].ljust(inode_size, b"\0"))
    csum = inode_checksum(inode_seed(seed, ino, 0), bytes(raw), spec.extra_isize)
    struct.pack_into("<H", raw, INODE.offsets["l_i_checksum_lo"], csum & 0xFFFF)
    if spec.extra_isize >= 4:
        struct.pack_into("<H", raw, INODE.offsets["i_checksum_hi"], csum >> 16)
    return bytes(raw)


# ---------------------------------------------------------------- mkfs


def mkfs(path: str | os.PathLike[str], size: int, *, block_size: int = 4096, inode_size: int = 256,
         inode_ratio: int | None = None, inodes_count: int | None = None, reserved_ratio: float = 5.0,
         label: str | bytes | None = None, uuid: _uuid.UUID | bytes | str | None = None,
         hash_seed: _uuid.UUID | bytes | str | None = None, features: Iterable[str] = DEFAULT_FEATURES,
         journal: bool = True, journal_blocks: int | None = None, lost_found: bool = True,
         root_owner: tuple[int, int] = (0, 0), root_mode: int = 0o755, flex_bg_size: int = 16,
         timestamp: int | None = None, overwrite: bool = False, fsync: bool = True) -> MkfsResult:
    """Create a sparse image file of ``size`` bytes holding an empty ext4 filesystem.

    The defaults give what ``mkfs.ext4`` 1.47.0 makes on Debian 12 for an
    image of that size and block size (see the module docstring for the
    rules); ``block_size`` defaults to 4096 (mkfs.ext4 itself would pick
    1024 below 512 MiB).  ``inode_ratio`` (bytes per inode) defaults by size
    class; ``inodes_count`` overrides it.  ``reserved_ratio`` is the percentage
    of blocks reserved for root.  ``label`` is at most 16 bytes.  ``uuid`` and
    ``hash_seed`` are random unless given (the hash seed is independent of
    the UUID, as in mke2fs).  ``features`` is a set of e2fsprogs feature names
    from :data:`SUPPORTED_FEATURES`; ``journal=False`` drops has_journal;
    ``journal_blocks`` overrides the journal size.  ``lost_found=False`` leaves
    out /lost+found.  ``root_owner`` is the (uid, gid) of the root directory.
    ``timestamp`` (seconds) stamps the superblock and the inodes (default:
    now).  An existing file is replaced only with ``overwrite=True``.

    Raises EEXIST (image exists), EINVAL (impossible geometry or option),
    EOPNOTSUPP (a feature volfs cannot make), EFBIG (too big without 64bit),
    or the OSError of the image file.
    """
    p = os.fspath(path)
    feats = frozenset(features)
    unknown = feats - SUPPORTED_FEATURES
    if unknown:
        raise error(errno.EOPNOTSUPP, f"mkfs cannot make feature(s): {', '.join(sorted(unknown))}", p)
    missing = _REQUIRED - feats
    if missing:
        raise error(errno.EOPNOTSUPP, f"mkfs always needs feature(s): {', '.join(sorted(missing))}", p)
    if not journal:
        feats -= {"has_journal"}
    if "resize_inode" in feats and "sparse_super" not in feats:
        raise error(errno.EINVAL, "resize_inode needs sparse_super", p)
    if size <= 0:
        raise error(errno.EINVAL, f"size {size} is not positive", p)
    label_bytes = label.encode() if isinstance(label, str) else (label or b"")
    if len(label_bytes) > 16:
        raise error(errno.EINVAL, f"label {label!r} is longer than 16 bytes", p)
    uid, gid = root_owner
    if not (0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
        raise error(errno.EINVAL, f"root owner {root_owner} is out of range", p)
    fs_uuid = _as_uuid(uuid, "uuid", p)
    seed_uuid = _as_uuid(hash_seed, "hash seed", p)
    now = int(time.time()) if timestamp is None else int(timestamp)

    geo = plan_geometry(
        size, block_size=block_size, inode_size=inode_size, inode_ratio=inode_ratio, inodes_count=inodes_count,
        reserved_ratio=reserved_ratio, flex_bg_size=flex_bg_size if "flex_bg" in feats else 0,
        is_64bit="64bit" in feats, resize_inode="resize_inode" in feats, sparse_super="sparse_super" in feats,
        journal="has_journal" in feats, journal_blocks=journal_blocks, path=p)
    if "orphan_file" in feats and "has_journal" not in feats:
        raise error(errno.EINVAL, "orphan_file needs a journal", p)
    if "has_journal" in feats and geo.journal_blocks == 0:
        feats -= {"has_journal", "orphan_file"}  # mke2fs: "Filesystem too small for a journal"
    if geo.reserved_gdt_blocks == 0:
        feats -= {"resize_inode"}
    plan = _Plan(geo, feats, p)
    plan.place_files(lost_found)
    image = _Image(plan, fs_uuid=fs_uuid, seed_uuid=seed_uuid, label=label_bytes, now=now, lost_found=lost_found,
                   root=(uid, gid, root_mode & 0o7777))
    chunks = image.encode()

    writer = _ImageWriter(p, size, overwrite)
    try:
        # s_kbytes_written counts what is written now (mke2fs starts it at 1 and adds its writes at close).
        writer.write_runs(image.finish(chunks, expected_written=sum(len(c) for c in chunks.values())))
        if fsync:
            writer.sync()
        written = writer.written
    finally:
        writer.close()
    return MkfsResult(
        path=p, size=size, block_size=geo.block_size, blocks_count=geo.blocks_count, inodes_count=geo.inodes_count,
        free_blocks=image.free_blocks, free_inodes=image.free_inodes, r_blocks_count=geo.r_blocks_count,
        blocks_per_group=geo.blocks_per_group, inodes_per_group=geo.inodes_per_group, group_count=geo.group_count,
        inode_size=geo.inode_size, reserved_gdt_blocks=geo.reserved_gdt_blocks, journal_blocks=plan.journal_len,
        overhead_clusters=plan.overhead, uuid=fs_uuid, features=feats, bytes_written=written,
    )


class _Plan:
    """Where everything goes: steps 1-2 of the module docstring."""

    def __init__(self, geo: Geometry, feats: frozenset[str], path: str) -> None:
        self.geo = geo
        self.feats = feats
        self.path = path
        fdb = geo.first_data_block
        used = UsedMap(geo.blocks_count, fdb)
        self.used = used
        for g in (0, *geo.backups):
            first, count = geo.super_and_gdt_blocks(g)
            used.add(first, count)
        self.tables = place_group_tables(geo, used, path)
        self.overhead = used.used_in(fdb, geo.blocks_count) + fdb
        self.root_blocks: list[int] = []
        self.lpf_blocks: list[int] = []
        self.resize_dind = 0
        self.journal_extents: list[tuple[int, int, int]] = []
        self.journal_leaf: int | None = None
        self.journal_len = geo.journal_blocks if "has_journal" in feats else 0
        self.overhead += self.journal_len
        self.orphan_ino = 0
        self.orphan_blocks: list[int] = []

    def _alloc(self, goal: int) -> int:
        b = self.used.new_block(goal)
        if b is None:
            raise error(errno.ENOSPC, "no free block left while making the filesystem", self.path)
        self.used.add(b, 1)
        return b

    def _inode_goal(self, ino: int) -> int:
        geo = self.geo
        group = (ino - 1) // geo.inodes_per_group
        if geo.log_groups_per_flex:
            group &= ~((1 << geo.log_groups_per_flex) - 1)
        return geo.group_first_block(group)

    def place_files(self, lost_found: bool) -> None:
        geo = self.geo
        self.root_blocks = [self._alloc(self._inode_goal(_ROOT_INO))]
        if lost_found:
            count = 1
            lpf_size = 0
            for _ in range(1, 12):
                lpf_size += geo.block_size
                if lpf_size >= 16 * 1024 and lpf_size >= 2 * geo.block_size:
                    break
                count += 1
            blk = self._alloc(self._inode_goal(_LPF_INO))
            self.lpf_blocks = [blk]
            for _ in range(count - 1):
                blk = self._alloc(blk + 1)
                self.lpf_blocks.append(blk)
        if "resize_inode" in self.feats:
            goal = (max(geo.first_data_block, 1 if geo.block_size == 1024 else 0) + geo.desc_blocks
                    + geo.reserved_gdt_blocks + 2 + geo.inode_blocks_per_group)
            self.resize_dind = self._alloc(goal)
        if self.journal_len:
            self._place_journal()
        if "orphan_file" in self.feats:
            # ext2fs_create_orphan_file: the first free inode after the reserved ones, blocks first-fit
            # from the start of the filesystem; 32 to 512 blocks (1/4096 of the filesystem in between).
            self.orphan_ino = _FIRST_INO + (1 if lost_found else 0)
            n = 32 if geo.blocks_count < 128 * 1024 else min(512, geo.blocks_count // 4096)
            blk = 0
            for _ in range(n):
                blk = self._alloc(blk)
                self.orphan_blocks.append(blk)

    def _group_free(self, group: int) -> int:
        geo = self.geo
        first = geo.group_first_block(group)
        last = geo.group_last_block(group)
        return last - first + 1 - self.used.used_in(first, last + 1)

    def _place_journal(self) -> None:
        geo = self.geo
        fdb = geo.first_data_block
        # get_midpoint_journal_block
        group = ((geo.blocks_count - fdb) // 2 - fdb) // geo.blocks_per_group
        flex = 1 << geo.log_groups_per_flex
        if geo.log_groups_per_flex and group > flex:
            group &= ~(flex - 1)
            while group < geo.group_count and self._group_free(group) == 0:
                group += 1
            if group == geo.group_count:
                group = 0
            start = group
        else:
            start = group - 1 if group > 0 else group
        end = group + 1 if group + 1 < geo.group_count else group
        best = start
        for g in range(start + 1, end + 1):
            if self._group_free(g) > self._group_free(best):
                best = g
        goal = geo.group_first_block(best)
        # ext2fs_fallocate (FORCE_INIT): first-fit runs from the goal, at most 32768 blocks each.
        first = self.used.first_free(goal, geo.blocks_count - 1)
        pblk = goal if first is None else first
        remaining = self.journal_len
        lblk = 0
        extents: list[tuple[int, int, int]] = []
        while remaining:
            found = self.used.new_range(pblk, min(remaining, MAX_INIT_EXTENT))
            if found is None:
                raise error(errno.ENOSPC, "no room for the journal", self.path)
            start_blk, count = found
            self.used.add(start_blk, count)
            extents.append((lblk, start_blk, count))
            if len(extents) == 5:
                # The root holds four extents; the fifth splits it into a leaf placed before the first.
                self.journal_leaf = self._alloc(extents[0][1] - 1)
            lblk += count
            remaining -= count
            pblk = start_blk + count
            if pblk >= geo.blocks_count:
                pblk = geo.first_data_block
        if len(extents) > (geo.block_size - 12) // 12:
            raise error(errno.ENOSPC, "journal too fragmented for one extent leaf", self.path)
        self.journal_extents = extents


class _Image:
    """Steps 3-4: flags, counts, and the bytes of every metadata block."""

    def __init__(self, plan: _Plan, *, fs_uuid: _uuid.UUID, seed_uuid: _uuid.UUID, label: bytes, now: int,
                 lost_found: bool, root: tuple[int, int, int]) -> None:
        self.plan = plan
        self.geo = plan.geo
        self.fs_uuid = fs_uuid
        self.seed_uuid = seed_uuid
        self.label = label
        self.now = now
        self.lost_found = lost_found
        self.root = root
        self.free_blocks = 0
        self.free_inodes = 0
        self.csum_seed = ("metadata_csum_seed" in plan.feats)
        self.seed = fs_seed(fs_uuid.bytes, False, 0)

    # -- superblock

    def _superblock(self, group: int, free_blocks: int, free_inodes: int, kbytes: int) -> bytes:
        geo = self.geo
        plan = self.plan
        vals: dict[str, int | bytes] = {}
        for name, code in SUPERBLOCK.fields:
            vals[name] = bytes(int(code[:-1])) if code.endswith("s") else 0
        words = {"s_feature_compat": 0, "s_feature_incompat": 0, "s_feature_ro_compat": 0}
        for f in plan.feats:
            word, bit = _FEATURE_BITS[f]
            words[word] |= bit
        now_lo, _ = _time_fields(self.now)
        now_hi = (self.now >> 32) & 0xFF
        log_bs = geo.block_size.bit_length() - 11
        jnl = b""
        if plan.journal_len:
            jnl = self._journal_inode_iblock() + struct.pack("<II", (plan.journal_len * geo.block_size) >> 32,
                                                             (plan.journal_len * geo.block_size) & 0xFFFFFFFF)
        vals.update({
            "s_inodes_count": geo.inodes_count, "s_blocks_count_lo": geo.blocks_count & 0xFFFFFFFF,
            "s_r_blocks_count_lo": geo.r_blocks_count & 0xFFFFFFFF,
            "s_free_blocks_count_lo": free_blocks & 0xFFFFFFFF, "s_free_inodes_count": free_inodes,
            "s_first_data_block": geo.first_data_block, "s_log_block_size": log_bs, "s_log_cluster_size": log_bs,
            "s_blocks_per_group": geo.blocks_per_group, "s_clusters_per_group": geo.blocks_per_group,
            "s_inodes_per_group": geo.inodes_per_group, "s_wtime": now_lo, "s_max_mnt_count": -1,
            "s_magic": EXT4_MAGIC, "s_state": 1 if group == 0 else 0, "s_errors": 1, "s_lastcheck": now_lo, "s_rev_level": 1,
            "s_first_ino": _FIRST_INO, "s_inode_size": geo.inode_size, "s_block_group_nr": group & 0xFFFF,
            **words, "s_uuid": self.fs_uuid.bytes, "s_volume_name": self.label.ljust(16, b"\0"),
            "s_reserved_gdt_blocks": geo.reserved_gdt_blocks,
            "s_journal_inum": _JOURNAL_INO if plan.journal_len else 0,
            "s_hash_seed": self.seed_uuid.bytes, "s_def_hash_version": _HASH_HALF_MD4,
            "s_jnl_backup_type": _JNL_BACKUP_BLOCKS if plan.journal_len else 0,
            "s_desc_size": geo.desc_size if "64bit" in plan.feats else 0,
            "s_default_mount_opts": _DEFAULT_MOUNT_OPTS, "s_mkfs_time": now_lo, "s_jnl_blocks": jnl.ljust(68, b"\0"),
            "s_blocks_count_hi": geo.blocks_count >> 32, "s_r_blocks_count_hi": geo.r_blocks_count >> 32,
            "s_free_blocks_count_hi": free_blocks >> 32,
            "s_min_extra_isize": _EXTRA_ISIZE if geo.inode_size >= 160 else 0,
            "s_want_extra_isize": _EXTRA_ISIZE if geo.inode_size >= 160 else 0,
            "s_flags": _S_FLAGS_SIGNED_HASH, "s_log_groups_per_flex": geo.log_groups_per_flex,
            "s_checksum_type": _CRC32C, "s_kbytes_written": kbytes, "s_overhead_clusters": plan.overhead,
            "s_checksum_seed": self.seed if self.csum_seed else 0, "s_orphan_file_inum": plan.orphan_ino,
            "s_wtime_hi": now_hi, "s_mkfs_time_hi": now_hi, "s_lastcheck_hi": now_hi,
        })
        raw = bytearray(SUPERBLOCK.pack(vals))
        struct.pack_into("<I", raw, SUPERBLOCK.offsets["s_checksum"],
                         crc32c_raw(0xFFFFFFFF, bytes(raw[: SUPERBLOCK.offsets["s_checksum"]])))
        return bytes(raw)

    # -- inodes

    def _journal_inode_iblock(self) -> bytes:
        return _extent_root(self.plan.journal_extents, self.plan.journal_leaf)

    def _inodes(self) -> dict[int, bytes]:
        geo = self.geo
        plan = self.plan
        bs = geo.block_size
        now = self.now
        sectors = bs // 512
        out: dict[int, bytes] = {}
        for ino in range(1, _FIRST_INO):
            spec = _InodeSpec(extra_isize=0)
            if ino == 1:  # the bad blocks inode, stamped when its (empty) list is written
                spec.atime = spec.mtime = spec.ctime = now
            out[ino] = _encode_inode(spec, ino, geo.inode_size, self.seed)
        uid, gid, mode = self.root
        root = _InodeSpec(mode=stat.S_IFDIR | mode, uid=uid, gid=gid, size=bs, links=3 if self.lost_found else 2,
                          blocks_512=sectors, flags=EXT4_EXTENTS_FL,
                          i_block=_extent_root(_extents_of(plan.root_blocks), None),
                          atime=now, ctime=now, mtime=now, crtime=now)
        out[_ROOT_INO] = _encode_inode(root, _ROOT_INO, geo.inode_size, self.seed)
        if self.lost_found:
            n = len(plan.lpf_blocks)
            lpf = _InodeSpec(mode=stat.S_IFDIR | 0o700, size=n * bs, links=2, blocks_512=n * sectors,
                             flags=EXT4_EXTENTS_FL, i_block=_extent_root(_extents_of(plan.lpf_blocks), None),
                             atime=now, ctime=now, mtime=now, crtime=now)
            out[_LPF_INO] = _encode_inode(lpf, _LPF_INO, geo.inode_size, self.seed)
        if "resize_inode" in plan.feats:
            apb = bs // 4
            nblocks = 1 + geo.reserved_gdt_blocks * (1 + len(geo.backups))
            words = [0] * 15
            words[_DIND_SLOT] = plan.resize_dind
            rsz = _InodeSpec(mode=stat.S_IFREG | 0o600, size=(apb * apb + apb + 12) * bs, links=1,
                             blocks_512=nblocks * sectors, i_block=struct.pack("<15I", *words),
                             atime=now, ctime=now, mtime=now, crtime=now)
            out[_RESIZE_INO] = _encode_inode(rsz, _RESIZE_INO, geo.inode_size, self.seed)
        if plan.orphan_ino:
            n = len(plan.orphan_blocks)
            orphan = _InodeSpec(mode=stat.S_IFREG | 0o600, size=n * bs, links=1, blocks_512=n * sectors,
                                flags=EXT4_EXTENTS_FL, i_block=_extent_root(_extents_of(plan.orphan_blocks), None),
                                atime=now, ctime=now, mtime=now, crtime=now)
            out[plan.orphan_ino] = _encode_inode(orphan, plan.orphan_ino, geo.inode_size, self.seed)
        if plan.journal_len:
            nblocks = plan.journal_len + (1 if plan.journal_leaf is not None else 0)
            jnl = _InodeSpec(mode=stat.S_IFREG | 0o600, size=plan.journal_len * bs, links=1,
                             blocks_512=nblocks * sectors, flags=EXT4_EXTENTS_FL, i_block=self._journal_inode_iblock(),
                             atime=now, ctime=now, mtime=now, crtime=now)
            out[_JOURNAL_INO] = _encode_inode(jnl, _JOURNAL_INO, geo.inode_size, self.seed)
        return out

    # -- blocks

    def _file_blocks(self) -> dict[int, bytes]:
        geo = self.geo
        plan = self.plan
        bs = geo.block_size
        out: dict[int, bytes] = {}
        root_seed = inode_seed(self.seed, _ROOT_INO, 0)
        entries = [(int(_ROOT_INO), b"."), (int(_ROOT_INO), b"..")]
        if self.lost_found:
            entries.append((int(_LPF_INO), b"lost+found"))
        out[plan.root_blocks[0]] = _dir_block(entries, bs, root_seed)
        if self.lost_found:
            lpf_seed = inode_seed(self.seed, _LPF_INO, 0)
            out[plan.lpf_blocks[0]] = _dir_block([(int(_LPF_INO), b"."), (int(_ROOT_INO), b"..")], bs, lpf_seed)
            empty = _dir_block([], bs, lpf_seed)
            for blk in plan.lpf_blocks[1:]:
                out[blk] = empty
        if "resize_inode" in plan.feats:
            apb = bs // 4
            dind = [0] * apb
            sb_blk = geo.first_data_block
            for rsv_off in range(geo.reserved_gdt_blocks):
                gdt_blk = sb_blk + 1 + geo.desc_blocks + rsv_off
                dind[(geo.desc_blocks + rsv_off) % apb] = gdt_blk
                backups = [gdt_blk + g * geo.blocks_per_group for g in geo.backups]
                out[gdt_blk] = struct.pack(f"<{len(backups)}I", *backups).ljust(bs, b"\0")
            out[plan.resize_dind] = struct.pack(f"<{apb}I", *dind)
        if plan.journal_len:
            jsb = {name: (bytes(int(code[:-1])) if code.endswith("s") else 0) for name, code in JOURNAL_SUPERBLOCK.fields}
            jsb.update({"h_magic": JBD2_MAGIC, "h_blocktype": _JBD2_SUPERBLOCK_V2, "s_blocksize": bs,
                        "s_maxlen": plan.journal_len, "s_first": 1, "s_sequence": 1, "s_nr_users": 1,
                        "s_uuid": self.fs_uuid.bytes})
            out[plan.journal_extents[0][1]] = JOURNAL_SUPERBLOCK.pack(jsb).ljust(bs, b"\0")
            if plan.journal_leaf is not None:
                out[plan.journal_leaf] = _extent_leaf(plan.journal_extents, bs,
                                                      inode_seed(self.seed, _JOURNAL_INO, 0))
        for blk in plan.orphan_blocks:
            block = bytearray(bs)
            struct.pack_into("<I", block, bs - 8, ORPHAN_BLOCK_MAGIC)
            struct.pack_into("<I", block, bs - 4,
                             orphan_block_checksum(self.seed, plan.orphan_ino, 0, blk, bytes(block)))
            out[blk] = bytes(block)
        return out

    def encode(self) -> dict[int, bytes]:
        """Every metadata write as ``{byte offset: bytes}``, the superblocks still to come (see finish)."""
        geo = self.geo
        plan = self.plan
        bs = geo.block_size
        ipg = geo.inodes_per_group
        bpg = geo.blocks_per_group
        tables = plan.tables
        used = plan.used
        chunks: dict[int, bytes] = {}

        inodes = self._inodes()
        used_inodes = set(range(1, _FIRST_INO)) | ({int(_LPF_INO)} if self.lost_found else set())
        if plan.orphan_ino:
            used_inodes.add(plan.orphan_ino)
        dirs = {int(_ROOT_INO)} | ({int(_LPF_INO)} if self.lost_found else set())

        descs: list[dict[str, int]] = []
        total_free_blocks = 0
        total_free_inodes = 0
        for g in range(geo.group_count):
            first = geo.group_first_block(g)
            last = geo.group_last_block(g)
            nblocks = last - first + 1
            n_used = used.used_in(first, last + 1)
            own = 0
            if geo.has_super(g):
                own += geo.super_and_gdt_blocks(g)[1]
            for start, n in ((tables.block_bitmap[g], 1), (tables.inode_bitmap[g], 1),
                             (tables.inode_table[g], geo.inode_blocks_per_group)):
                if first <= start <= last:
                    own += n
            flags = BG_INODE_ZEROED
            bb_csum = 0
            if g != geo.group_count - 1 and n_used == own:
                flags |= BG_BLOCK_UNINIT
            else:
                bitmap = bytearray(b"\xff" * bs)
                bitmap[: bpg // 8] = bytes(bpg // 8)
                for lo, hi in used.runs_in(first, last + 1):
                    _set_bits(bitmap, lo - first, hi - first)
                _set_bits(bitmap, nblocks, bpg)  # padding past the end of a short last group
                bb_csum = crc32c_raw(self.seed, bytes(bitmap[: bpg // 8]))
                chunks[tables.block_bitmap[g] * bs] = bytes(bitmap)
            g_inodes = sorted(i for i in used_inodes if (i - 1) // ipg == g)
            ib_csum = 0
            reserved_hw = min(ipg, max(0, _FIRST_INO - g * ipg))
            high = max([reserved_hw] + [(i - 1) % ipg + 1 for i in g_inodes])
            if g_inodes:
                ibitmap = bytearray(b"\xff" * bs)
                ibitmap[: ipg // 8] = bytes(ipg // 8)
                for i in g_inodes:
                    k = (i - 1) % ipg
                    ibitmap[k >> 3] |= 1 << (k & 7)
                ib_csum = crc32c_raw(self.seed, bytes(ibitmap[: ipg // 8]))
                chunks[tables.inode_bitmap[g] * bs] = bytes(ibitmap)
                # The inode table blocks holding these inodes (the rest of the table stays zero).
                per_block = bs // geo.inode_size
                for tblk in sorted({((i - 1) % ipg) // per_block for i in g_inodes}):
                    buf = bytearray(bs)
                    for i in g_inodes:
                        k = (i - 1) % ipg
                        if k // per_block == tblk:
                            off = (k % per_block) * geo.inode_size
                            buf[off : off + geo.inode_size] = inodes.get(i, bytes(geo.inode_size))
                    chunks[(tables.inode_table[g] + tblk) * bs] = bytes(buf)
            else:
                flags |= BG_INODE_UNINIT
            free_b = nblocks - n_used
            free_i = ipg - len(g_inodes)
            total_free_blocks += free_b
            total_free_inodes += free_i
            descs.append({
                "block_bitmap": tables.block_bitmap[g], "inode_bitmap": tables.inode_bitmap[g],
                "inode_table": tables.inode_table[g], "free_blocks": free_b, "free_inodes": free_i,
                "used_dirs": sum(1 for i in g_inodes if i in dirs), "flags": flags,
                "itable_unused": ipg - high, "bb_csum": bb_csum, "ib_csum": ib_csum,
            })
        self.free_blocks = total_free_blocks
        self.free_inodes = total_free_inodes
        self._descs = descs
        for blk, data in self._file_blocks().items():
            chunks[blk * bs] = data
        return chunks

    def _gdt(self, sb: Superblock) -> bytes:
        geo = self.geo
        out = []
        size = geo.desc_size
        for g, d in enumerate(self._descs):
            vals: dict[str, int | bytes] = {}
            for key, lo, hi in (("block_bitmap", "bg_block_bitmap_lo", "bg_block_bitmap_hi"),
                                ("inode_bitmap", "bg_inode_bitmap_lo", "bg_inode_bitmap_hi"),
                                ("inode_table", "bg_inode_table_lo", "bg_inode_table_hi"),
                                ("bb_csum", "bg_block_bitmap_csum_lo", "bg_block_bitmap_csum_hi"),
                                ("ib_csum", "bg_inode_bitmap_csum_lo", "bg_inode_bitmap_csum_hi")):
                bits = GROUP_DESC64.field_size(lo) * 8
                vals[lo] = d[key] & ((1 << bits) - 1)
                vals[hi] = d[key] >> bits
            for key, lo, hi in (("free_blocks", "bg_free_blocks_count_lo", "bg_free_blocks_count_hi"),
                                ("free_inodes", "bg_free_inodes_count_lo", "bg_free_inodes_count_hi"),
                                ("used_dirs", "bg_used_dirs_count_lo", "bg_used_dirs_count_hi"),
                                ("itable_unused", "bg_itable_unused_lo", "bg_itable_unused_hi")):
                vals[lo] = d[key] & 0xFFFF
                vals[hi] = d[key] >> 16
            vals.update({"bg_flags": d["flags"], "bg_exclude_bitmap_lo": 0, "bg_exclude_bitmap_hi": 0,
                         "bg_checksum": 0, "bg_reserved": 0})
            raw = bytearray(GROUP_DESC64.pack(vals)[:size])
            struct.pack_into("<H", raw, GROUP_DESC64.offsets["bg_checksum"],
                             group_desc_checksum(sb, self.seed, g, bytes(raw)))
            out.append(bytes(raw))
        return b"".join(out).ljust(geo.desc_blocks * geo.block_size, b"\0")

    def finish(self, chunks: dict[int, bytes], expected_written: int) -> dict[int, bytes]:
        """Add the superblocks and descriptor tables (primary and backups) to ``chunks``."""
        geo = self.geo
        bs = geo.block_size
        n_copies = 1 + len(geo.backups)
        total = expected_written + n_copies * (SUPERBLOCK.size + geo.desc_blocks * bs)
        kbytes = max(1, total >> 10)
        primary = self._superblock(0, self.free_blocks, self.free_inodes, kbytes)
        sb = parse_superblock(primary)
        gdt = self._gdt(sb)
        out = dict(chunks)
        for g in (0, *geo.backups):
            first = geo.group_first_block(g)
            sb_off = SUPERBLOCK_OFFSET if g == 0 else first * bs
            out[sb_off] = primary if g == 0 else self._superblock(g, self.free_blocks, self.free_inodes, kbytes)
            out[(first + 1) * bs] = gdt
        return out
