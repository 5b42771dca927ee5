"""Inodes (inodes.rst): the record, timestamps, sizes, checksum.

An inode record is ``s_inode_size`` bytes: the 128-byte base, the extra
fields covered by ``i_extra_isize`` (checksum_hi, ``*_extra`` times, crtime,
version_hi, projid) and the in-inode xattr area after them.  Fields beyond
``128 + i_extra_isize`` are not valid and are read as absent.

Timestamps are signed 32-bit seconds widened by the two epoch bits of
``*_extra`` (whose upper 30 bits are nanoseconds); ``i_dtime`` is not
widened (it doubles as the orphan-list link).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4._records import maker
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc32c_raw, inode_seed
from volfs.ext4.types import InodeNo

__all__ = ["INODE", "Inode", "parse_inode", "with_attrs", "inode_checksum", "EXT4_INDEX_FL", "EXT4_EXTENTS_FL",
           "EXT4_INLINE_DATA_FL", "EXT4_ENCRYPT_FL", "EXT4_CASEFOLD_FL", "EXT4_EA_INODE_FL",
           "EXT4_HUGE_FILE_FL", "EXT4_VERITY_FL", "InodeEditor", "encode_time", "encode_rdev"]

INODE = Struct("ext4_inode", [
    ("i_mode", "H"), ("i_uid", "H"), ("i_size_lo", "I"), ("i_atime", "I"), ("i_ctime", "I"),
    ("i_mtime", "I"), ("i_dtime", "I"), ("i_gid", "H"), ("i_links_count", "H"), ("i_blocks_lo", "I"),
    ("i_flags", "I"), ("l_i_version", "I"), ("i_block", "60s"), ("i_generation", "I"),
    ("i_file_acl_lo", "I"), ("i_size_high", "I"), ("i_obso_faddr", "I"),
    ("l_i_blocks_high", "H"), ("l_i_file_acl_high", "H"), ("l_i_uid_high", "H"), ("l_i_gid_high", "H"),
    ("l_i_checksum_lo", "H"), ("l_i_reserved", "H"),
    ("i_extra_isize", "H"), ("i_checksum_hi", "H"), ("i_ctime_extra", "I"), ("i_mtime_extra", "I"),
    ("i_atime_extra", "I"), ("i_crtime", "I"), ("i_crtime_extra", "I"), ("i_version_hi", "I"),
    ("i_projid", "I"),
], size=160)
INODE_BASE_SIZE: Final = 128
_CSUM_LO: Final = INODE.offsets["l_i_checksum_lo"]
_CSUM_HI: Final = INODE.offsets["i_checksum_hi"]

EXT4_HUGE_FILE_FL: Final = 0x40000
EXT4_INDEX_FL: Final = 0x1000
EXT4_EXTENTS_FL: Final = 0x80000
EXT4_EA_INODE_FL: Final = 0x200000
EXT4_INLINE_DATA_FL: Final = 0x10000000
EXT4_ENCRYPT_FL: Final = 0x800
EXT4_CASEFOLD_FL: Final = 0x40000000
EXT4_VERITY_FL: Final = 0x100000

_NS: Final = 1_000_000_000


def _time_ns(seconds: int, extra: int | None) -> int:
    # The le32 seconds are signed ((x ^ 2^31) - 2^31 sign-extends them); written without a branch
    # or min(), since every decode of a record makes four of these.
    sec = (seconds ^ 0x80000000) - 0x80000000
    if extra is None:
        return sec * _NS
    nsec = extra >> 2
    return (sec + ((extra & 3) << 32)) * _NS + (nsec if nsec < _NS else _NS - 1)


@dataclass(frozen=True, slots=True)
class Inode:
    """One decoded inode record."""

    ino: InodeNo
    mode: int
    uid: int
    gid: int
    size: int
    links_count: int
    blocks_512: int
    flags: int
    generation: int
    file_acl: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    dtime: int
    i_block: bytes
    extra_isize: int
    projid: int
    version: int
    raw: bytes

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def rdev(self) -> int:
        """Device number of a character or block special file (0 otherwise)."""
        if not (stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode)):
            return 0
        old, new = struct.unpack_from("<II", self.i_block)
        if old:
            return os.makedev((old >> 8) & 0xFF, old & 0xFF)
        return os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))

    @property
    def may_have_xattrs(self) -> bool:
        """False when the inode certainly has no xattrs: no xattr block, and the in-inode area ends
        at its first entry (4 zero bytes after the magic, or no area at all)."""
        if self.file_acl:
            return True
        start = INODE_BASE_SIZE + self.extra_isize
        return any(self.raw[start + 4 : start + 8])

    @property
    def ibody_xattr_area(self) -> bytes:
        """The in-inode xattr area (after the extra fields), possibly empty."""
        start = INODE_BASE_SIZE + self.extra_isize
        return self.raw[start:] if start < len(self.raw) else b""


# Inode(...) with every field, positionally, without the frozen __init__'s cost (_records.py).
_make_inode: Final = maker(Inode)


def inode_checksum(seed: int, raw: bytes, extra_isize: int) -> int:
    """crc over the whole record with l_i_checksum_lo (and i_checksum_hi) zeroed."""
    has_hi = len(raw) > INODE_BASE_SIZE and extra_isize >= 4
    body = bytearray(raw)
    body[_CSUM_LO : _CSUM_LO + 2] = b"\0\0"
    if has_hi:
        body[_CSUM_HI : _CSUM_HI + 2] = b"\0\0"
    crc = crc32c_raw(seed, body)
    return crc if has_hi else crc & 0xFFFF


_I_BLOCK_OFF: Final = INODE.offsets["i_block"]
_S_IFMT: Final = 0o170000


def parse_inode(ino: int, raw: bytes, *, large_dir: bool, huge_file: bool, block_size: int,
                csum_seed: int | None, block: int | None = None) -> Inode:
    """Decode a record; with ``csum_seed`` (the fs seed under metadata_csum) verify it.

    Every inode the write side stores is decoded again here, so this is
    written for speed: the fields land in locals in one unpack.
    """
    n = len(raw)
    extended = n > INODE_BASE_SIZE
    (mode, uid, size, atime, ctime, mtime, dtime, gid, links, blocks, flags, version, i_block, generation,
     acl_lo, size_high, _faddr, blocks_high, acl_high, uid_high, gid_high, csum_lo, _reserved, extra_isize,
     csum_hi, ctime_x, mtime_x, atime_x, crtime, crtime_x, version_hi, projid) = \
        INODE.unpack_tuple(raw if n >= INODE.size else raw + bytes(INODE.size - n))
    if extended:
        if extra_isize & 3 or INODE_BASE_SIZE + extra_isize > n:
            raise CorruptError("inode", f"i_extra_isize {extra_isize} is invalid", inode=ino, block=block)
    else:
        extra_isize = 0
    if csum_seed is not None:
        want = inode_checksum(inode_seed(csum_seed, ino, generation), raw, extra_isize)
        stored = csum_lo | (csum_hi << 16) if extended and extra_isize >= 4 else csum_lo
        if want != stored:
            raise CorruptError("inode", f"checksum 0x{stored:08x} != computed 0x{want:08x}", inode=ino,
                               block=block)

    # Extra fields exist only when i_extra_isize covers them (offset from 128 + size, as the kernel);
    # extra_isize is 0 for a 128-byte record.
    fmt = mode & _S_IFMT
    if large_dir or fmt == stat.S_IFREG or fmt == stat.S_IFDIR:
        # ext4 keeps i_size_high for directories too (ext2's i_dir_acl was never used).
        size |= size_high << 32
    if huge_file:
        blocks |= blocks_high << 32
        if flags & EXT4_HUGE_FILE_FL:
            blocks *= block_size // 512
    # Each *_extra field counts only when i_extra_isize covers it.
    atime_ns = _time_ns(atime, atime_x if extra_isize >= 16 else None)
    mtime_ns = _time_ns(mtime, mtime_x if extra_isize >= 12 else None)
    ctime_ns = _time_ns(ctime, ctime_x if extra_isize >= 8 else None)
    crtime_ns = _time_ns(crtime, crtime_x if extra_isize >= 24 else None) if extra_isize >= 20 else None
    # Inode's fields in declaration order: ino, mode, uid, gid, size, links_count, blocks_512, flags,
    # generation, file_acl, atime_ns, mtime_ns, ctime_ns, crtime_ns, dtime, i_block, extra_isize, projid,
    # version, raw.  (InodeNo is a NewType: at run time the number itself.)
    return _make_inode(
        ino, mode, uid | (uid_high << 16), gid | (gid_high << 16), size, links, blocks, flags, generation,
        acl_lo | (acl_high << 32), atime_ns, mtime_ns, ctime_ns, crtime_ns, dtime, i_block, extra_isize,
        projid if extra_isize >= 32 else 0, version | ((version_hi if extra_isize >= 28 else 0) << 32),
        raw if type(raw) is bytes else bytes(raw),
    )


# --- the write side -----------------------------------------------------------

# Field name -> (offset, compiled little-endian struct, end offset): InodeEditor's hot path.
_FIELDS: Final = {name: (INODE.offsets[name], struct.Struct("<" + code), INODE.offsets[name] + INODE.field_size(name))
                  for name, code in INODE.fields}
_TIME_FIELDS: Final = {"a": ("i_atime", "i_atime_extra"), "m": ("i_mtime", "i_mtime_extra"),
                       "c": ("i_ctime", "i_ctime_extra"), "cr": ("i_crtime", "i_crtime_extra")}
# which -> (seconds field offset, its end, *_extra field offset, its end): set_times' hot path.
_TIME_SLOTS: Final = {w: (INODE.offsets[b], _FIELDS[b][2], INODE.offsets[e], _FIELDS[e][2])
                      for w, (b, e) in _TIME_FIELDS.items()}
_U32: Final = struct.Struct("<I")
_U16: Final = struct.Struct("<H")


def _base_field(name: str) -> tuple[int, struct.Struct]:
    """(offset, codec) of a field inside the 128-byte base, which every record has: the setters
    below write such fields without set()'s name lookup and i_extra_isize test."""
    off, st, end = _FIELDS[name]
    if end > INODE_BASE_SIZE:
        raise ValueError(f"{name} lies past the base record")
    return off, st


_SIZE_LO: Final = _base_field("i_size_lo")
_SIZE_HIGH: Final = _base_field("i_size_high")
_BLOCKS_LO: Final = _base_field("i_blocks_lo")
_BLOCKS_HIGH: Final = _base_field("l_i_blocks_high")
_FLAGS: Final = _base_field("i_flags")
_UID: Final = _base_field("i_uid")
_UID_HIGH: Final = _base_field("l_i_uid_high")
_GID: Final = _base_field("i_gid")
_GID_HIGH: Final = _base_field("l_i_gid_high")
_GENERATION_OFF: Final = INODE.offsets["i_generation"]
_S32_MIN: Final = -(1 << 31)
# Latest time representable with the epoch bits: (2^31 - 1) + (3 << 32) seconds.
_MAX_SEC_EXTRA: Final = (1 << 31) - 1 + (3 << 32)


def encode_time(ns: int, has_extra: bool) -> tuple[int, int]:
    """(le32 seconds field, ``*_extra`` field) for ``ns``, as ext4_encode_extra_time.

    Without the extra field the time is clamped to signed 32-bit seconds.
    """
    sec, nsec = divmod(ns, _NS)
    if not has_extra:
        sec = max(min(sec, (1 << 31) - 1), _S32_MIN)
        return sec & 0xFFFFFFFF, 0
    if sec < _S32_MIN:
        sec, nsec = _S32_MIN, 0
    elif sec > _MAX_SEC_EXTRA:
        sec, nsec = _MAX_SEC_EXTRA, _NS - 1
    low = sec & 0xFFFFFFFF
    s32 = low - (1 << 32) if low & 0x80000000 else low
    epoch = ((sec - s32) >> 32) & 3
    return low, epoch | (nsec << 2)


def with_attrs(rec: Inode, raw: bytes, mode: int | None, uid: int | None, gid: int | None,
               atime_ns: int | None, mtime_ns: int | None, ctime_ns: int | None) -> Inode | None:
    """What :func:`parse_inode` gives for ``raw``, the record of ``rec`` after an :class:`InodeEditor`
    set ``i_mode`` to ``mode``, the owner (``set_uid``, ``set_gid``) and the times (``set_times``) to
    the values given (None: left alone) and nothing else, then finished it: built from ``rec``
    without decoding ``raw``.

    The write side stores many records whose only changes are these (setattr,
    a directory's times), and decoding one costs more than the rest of the
    store. Each time is the decode of its encoding (:func:`encode_time`,
    :func:`_time_ns`), so it is what a decode of ``raw`` reads. None (decode
    ``raw`` instead) for a record without every ``*_extra`` time field, where
    the encoding depends on the field.
    """
    if rec.extra_isize < 24:
        return None
    return _make_inode(
        rec.ino, rec.mode if mode is None else mode & 0xFFFF, rec.uid if uid is None else uid & 0xFFFFFFFF,
        rec.gid if gid is None else gid & 0xFFFFFFFF, rec.size, rec.links_count, rec.blocks_512, rec.flags,
        rec.generation, rec.file_acl,
        rec.atime_ns if atime_ns is None else _time_ns(*encode_time(atime_ns, True)),
        rec.mtime_ns if mtime_ns is None else _time_ns(*encode_time(mtime_ns, True)),
        rec.ctime_ns if ctime_ns is None else _time_ns(*encode_time(ctime_ns, True)),
        rec.crtime_ns, rec.dtime, rec.i_block, rec.extra_isize, rec.projid, rec.version, raw,
    )


def encode_rdev(rdev: int) -> bytes:
    """i_block for a device node (old 16-bit encoding when it fits, as the kernel)."""
    major, minor = os.major(rdev), os.minor(rdev)
    if major < 256 and minor < 256:
        return struct.pack("<I", (major << 8) | minor) + bytes(56)
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return struct.pack("<II", 0, new & 0xFFFFFFFF) + bytes(52)


class InodeEditor:
    """A mutable inode record: set fields by kernel name, then :meth:`finish` with the checksum.

    Fields past ``128 + i_extra_isize`` do not exist in the record and are
    silently not written (times lose their nanoseconds on 128-byte inodes).
    """

    __slots__ = ("buf", "extra_isize")

    def __init__(self, raw: bytes) -> None:
        self.buf = bytearray(raw)
        self.extra_isize = struct.unpack_from("<H", self.buf, INODE.offsets["i_extra_isize"])[0] \
            if len(raw) > INODE_BASE_SIZE else 0

    @classmethod
    def new(cls, inode_size: int, want_extra_isize: int) -> InodeEditor:
        ed = cls(bytes(inode_size))
        if inode_size > INODE_BASE_SIZE:
            extra = min(want_extra_isize or 32, inode_size - INODE_BASE_SIZE) & ~3
            struct.pack_into("<H", ed.buf, INODE.offsets["i_extra_isize"], extra)
            ed.extra_isize = extra
        return ed

    def has(self, name: str) -> bool:
        off, _st, end = _FIELDS[name]
        return off < INODE_BASE_SIZE or end <= INODE_BASE_SIZE + self.extra_isize

    def get(self, name: str) -> int:
        off, st, end = _FIELDS[name]
        if off >= INODE_BASE_SIZE and end > INODE_BASE_SIZE + self.extra_isize:
            return 0
        v: int = st.unpack_from(self.buf, off)[0]
        return v

    def set(self, name: str, value: int) -> None:
        off, st, end = _FIELDS[name]
        if off < INODE_BASE_SIZE or end <= INODE_BASE_SIZE + self.extra_isize:
            st.pack_into(self.buf, off, value)

    def set_time(self, which: str, ns: int) -> None:
        self.set_times((which,), ns)

    def set_times(self, which: tuple[str, ...], ns: int) -> None:
        """Set each of the times named in ``which`` ("a", "m", "c", "cr") to ``ns``.

        As :meth:`set` of the seconds and ``*_extra`` fields, skipping those the
        record does not have; ``ns`` is encoded once for all of them.
        """
        limit = INODE_BASE_SIZE + self.extra_isize
        buf = self.buf
        wide: tuple[int, int] | None = None
        narrow: tuple[int, int] | None = None
        for w in which:
            base_off, base_end, extra_off, extra_end = _TIME_SLOTS[w]
            if base_off >= INODE_BASE_SIZE and base_end > limit:
                continue  # (i_crtime on a small record)
            if extra_off < INODE_BASE_SIZE or extra_end <= limit:
                if wide is None:
                    wide = encode_time(ns, True)
                _U32.pack_into(buf, base_off, wide[0])
                _U32.pack_into(buf, extra_off, wide[1])
            else:
                if narrow is None:
                    narrow = encode_time(ns, False)
                _U32.pack_into(buf, base_off, narrow[0])

    def set_size(self, size: int) -> None:
        buf = self.buf
        _SIZE_LO[1].pack_into(buf, _SIZE_LO[0], size & 0xFFFFFFFF)
        _SIZE_HIGH[1].pack_into(buf, _SIZE_HIGH[0], size >> 32)

    def set_blocks(self, blocks_512: int) -> None:
        if blocks_512 >= 1 << 48:
            raise ValueError("i_blocks beyond 48 bits")
        buf = self.buf
        _BLOCKS_LO[1].pack_into(buf, _BLOCKS_LO[0], blocks_512 & 0xFFFFFFFF)
        _BLOCKS_HIGH[1].pack_into(buf, _BLOCKS_HIGH[0], blocks_512 >> 32)
        off, st = _FLAGS
        st.pack_into(buf, off, st.unpack_from(buf, off)[0] & ~EXT4_HUGE_FILE_FL)

    def set_uid(self, uid: int) -> None:
        buf = self.buf
        _UID[1].pack_into(buf, _UID[0], uid & 0xFFFF)
        _UID_HIGH[1].pack_into(buf, _UID_HIGH[0], (uid >> 16) & 0xFFFF)

    def set_gid(self, gid: int) -> None:
        buf = self.buf
        _GID[1].pack_into(buf, _GID[0], gid & 0xFFFF)
        _GID_HIGH[1].pack_into(buf, _GID_HIGH[0], (gid >> 16) & 0xFFFF)

    def set_i_block(self, data: bytes) -> None:
        if len(data) != 60:
            raise ValueError("i_block is 60 bytes")
        off = INODE.offsets["i_block"]
        self.buf[off : off + 60] = data

    def set_file_acl(self, block: int) -> None:
        self.set("i_file_acl_lo", block & 0xFFFFFFFF)
        self.set("l_i_file_acl_high", block >> 32)

    def set_ibody(self, area: bytes) -> None:
        """Replace the in-inode xattr area (everything after the extra fields)."""
        start = INODE_BASE_SIZE + self.extra_isize
        if len(area) != len(self.buf) - start:
            raise ValueError("xattr area size mismatch")
        self.buf[start:] = area

    def finish(self, fs_seed: int | None, ino: int) -> bytes:
        """The record with its checksum (``fs_seed`` under metadata_csum, else None).

        :func:`inode_checksum` of the record, computed in place: the checksum
        fields are zeroed in the buffer itself (they are rewritten right after)
        instead of in a copy.
        """
        buf = self.buf
        if fs_seed is not None:
            seed = inode_seed(fs_seed, ino, _U32.unpack_from(buf, _GENERATION_OFF)[0])
            has_hi = len(buf) > INODE_BASE_SIZE and self.extra_isize >= 4
            _U16.pack_into(buf, _CSUM_LO, 0)
            if has_hi:
                _U16.pack_into(buf, _CSUM_HI, 0)
            crc = crc32c_raw(seed, bytes(buf))
            _U16.pack_into(buf, _CSUM_LO, crc & 0xFFFF)
            if has_hi:
                _U16.pack_into(buf, _CSUM_HI, crc >> 16)
        return bytes(buf)
