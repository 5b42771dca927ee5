"""Inline data (inlinedata.rst): small files and directories kept inside the inode.

Theory of operation.  An inode with ``EXT4_INLINE_DATA_FL`` has no data
blocks: its bytes are the 60 bytes of ``i_block`` followed by the value of
the in-inode xattr ``system.data`` (name index 7, name ``data``).  That
xattr exists on every inline inode, empty while the data fits ``i_block``
(e2fsck requires it since 1.43.4), and it must stay in the inode body.

*Capacity* is what the kernel's ``ext4_get_max_inline_size`` allows: 60
bytes plus the largest ``system.data`` value that still packs into the
in-inode xattr area next to the other in-inode xattrs (each entry takes
16 bytes plus its name rounded to 4, each value its size rounded to 4; the
area also holds the 4-byte magic and a 4-byte terminator).  Values are
sized in multiples of 4, so the capacity is too.

*Regular files* keep ``i_size`` bytes: the first 60 in ``i_block``, the
rest (``i_size - 60``) as the value; bytes of ``i_block`` past ``i_size``
are zero (as the kernel's ``ext4_inline_data_truncate`` leaves them).

*Directories* hold the parent's inode number in the first 4 bytes of
``i_block``; ``.`` and ``..`` are not stored.  The remaining 56 bytes, and
the whole value, are two separate regions of ``ext4_dir_entry_2`` records,
each chained by ``rec_len`` to its own end, without checksum tails (the
inode checksum covers them).  ``i_size`` is 60 plus the value's size.  When
an entry fits neither region, the value grows to the capacity at once (the
kernel's ``ext4_update_inline_dir``: the last record of the value, or a new
empty one, covers the new space); when even that is not enough, the
directory becomes one block (``.``, ``..``, the entries) and the block code
takes over.  Readdir positions: ``.`` is 0, ``..`` is 1, entries are at
their byte offset in ``i_block`` (4..59) or at 60 plus their offset in the
value.

This module only decodes and encodes; the writer (inline_write.py) moves
the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4.directory import (
    DIR_ENTRY,
    DirEntry,
    first_dir_block,
    insert_in_block,
    last_record,
    parse_dir_block,
    rec_len_from_disk,
    remove_from_block,
    set_entry_inode,
    set_leaf_csum,
)
from volfs.ext4.inode import Inode
from volfs.ext4.types import InodeNo
from volfs.ext4.xattr import XATTR_ENTRY, XattrEntry, parse_ibody

__all__ = ["MIN_INLINE_DATA_SIZE", "DATA_INDEX", "DATA_NAME", "data_entry", "inline_bytes", "value_capacity",
           "capacity", "file_layout", "file_content", "parse_inline_dir", "InlineDir", "HEAD_SIZE"]

MIN_INLINE_DATA_SIZE: Final = 60  # EXT4_MIN_INLINE_DATA_SIZE: all of i_block
DATA_INDEX: Final = 7  # EXT4_XATTR_INDEX_SYSTEM
DATA_NAME: Final = b"data"
_PARENT_SIZE: Final = 4  # EXT4_INLINE_DOTDOT_SIZE
HEAD_SIZE: Final = MIN_INLINE_DATA_SIZE - _PARENT_SIZE  # the i_block region of entries of a directory


def _entry_len(name_len: int) -> int:
    """EXT4_XATTR_LEN: an in-inode entry head with its name, rounded to 4."""
    return (XATTR_ENTRY.size + name_len + 3) & ~3


def data_entry(entries: Sequence[XattrEntry]) -> XattrEntry | None:
    """The ``system.data`` entry among in-inode xattr entries, if there is one."""
    for e in entries:
        if e.name_index == DATA_INDEX and e.name == DATA_NAME:
            return e
    return None


def inline_bytes(rec: Inode) -> bytes:
    """``i_block`` followed by the value of ``system.data`` (only ``i_block`` when it is missing)."""
    e = data_entry(parse_ibody(rec.ibody_xattr_area, ino=rec.ino))
    if e is not None and e.value is None:
        raise CorruptError("inline data", "system.data lives in an EA inode", inode=rec.ino)
    return rec.i_block + (e.value or b"") if e is not None else rec.i_block


def value_capacity(others: Sequence[tuple[int, bytes, bytes]], area_size: int) -> int:
    """The largest ``system.data`` value that packs next to ``others`` in an area of ``area_size``.

    -1 when not even an empty ``system.data`` entry fits (then the inode
    cannot hold inline data).
    """
    used = 4 + 4  # magic, terminator
    for _index, name, value in others:
        used += _entry_len(len(name)) + ((len(value) + 3) & ~3)
    free = area_size - used - _entry_len(len(DATA_NAME))
    if area_size < 8 or free < 0:
        return -1
    return free & ~3


def _others(rec: Inode) -> list[tuple[int, bytes, bytes]]:
    out = []
    for e in parse_ibody(rec.ibody_xattr_area, ino=rec.ino):
        if e.value is None:
            raise CorruptError("inline data", "an in-inode xattr lives in an EA inode", inode=rec.ino)
        if not (e.name_index == DATA_INDEX and e.name == DATA_NAME):
            out.append((e.name_index, e.name, e.value))
    return out


def capacity(rec: Inode) -> int:
    """How many bytes ``rec`` can hold inline; 0 when it cannot grow there at all.

    As the kernel's ``ext4_get_max_inline_size``: 0 without extra inode
    fields, and 0 (not 60) when ``system.data`` could take no bytes, so
    files convert rather than stay inline in a full inode body.
    """
    if rec.extra_isize == 0:
        return 0
    v = value_capacity(_others(rec), len(rec.ibody_xattr_area))
    return 0 if v <= 0 else MIN_INLINE_DATA_SIZE + v


def file_layout(data: bytes) -> tuple[bytes, bytes]:
    """(``i_block``, ``system.data`` value) holding the bytes of an inline regular file."""
    head = data[:MIN_INLINE_DATA_SIZE]
    return head + bytes(MIN_INLINE_DATA_SIZE - len(head)), data[MIN_INLINE_DATA_SIZE:]


def _stored_value(rec: Inode) -> bytes:
    e = data_entry(parse_ibody(rec.ibody_xattr_area, ino=rec.ino))
    if e is None:
        raise CorruptError("inline data", "inline inode has no system.data xattr", inode=rec.ino)
    if e.value is None:
        raise CorruptError("inline data", "system.data lives in an EA inode", inode=rec.ino)
    return e.value


def file_content(rec: Inode) -> bytes:
    """The ``i_size`` bytes of inline regular file ``rec`` (EUCLEAN if they are not all stored)."""
    value = _stored_value(rec)
    if rec.size > MIN_INLINE_DATA_SIZE + len(value):
        raise CorruptError("inline data", f"i_size {rec.size} exceeds the {MIN_INLINE_DATA_SIZE + len(value)} "
                           "bytes stored inline", inode=rec.ino)
    return (rec.i_block + value)[: rec.size]


def _parse_region(data: bytes, ino: int, base: int, inodes_count: int, has_filetype: bool) -> list[DirEntry]:
    if not data:
        return []
    return parse_dir_block(data, ino=ino, block=None, base=base, has_filetype=has_filetype,
                           inodes_count=inodes_count, csum_seed=None, block_size=len(data), tail=False)


def parse_inline_dir(rec: Inode, value: bytes, *, inodes_count: int, has_filetype: bool) -> list[DirEntry]:
    """Every entry of inline directory ``rec`` (``.`` and ``..`` first) given its ``system.data`` value."""
    parent = int.from_bytes(rec.i_block[:_PARENT_SIZE], "little")
    if parent > inodes_count:
        raise CorruptError("inline directory", f"parent inode {parent} exceeds s_inodes_count", inode=rec.ino)
    out = [DirEntry(b".", rec.ino, 2, 0, 1), DirEntry(b"..", InodeNo(parent), 2, 1, _PARENT_SIZE)]
    out += [DirEntry(e.name, e.ino, e.file_type, e.offset + _PARENT_SIZE, e.next_offset + _PARENT_SIZE)
            for e in _parse_region(rec.i_block[_PARENT_SIZE:], rec.ino, 0, inodes_count, has_filetype)]
    out += _parse_region(value, rec.ino, MIN_INLINE_DATA_SIZE, inodes_count, has_filetype)
    return out


@dataclass(slots=True)
class InlineDir:
    """The two entry regions of an inline directory, decoded for editing.

    ``head`` is ``i_block[4:60]``, ``tail`` the ``system.data`` value.  A
    position is (region, offset in it): region 0 is the head, 1 the tail.
    """

    ino: int
    parent: int
    head: bytearray
    tail: bytearray
    entries: list[DirEntry]

    @classmethod
    def load(cls, rec: Inode, *, inodes_count: int) -> InlineDir:
        """Decode (and check) inline directory ``rec``: EUCLEAN for a missing value or a wrong i_size."""
        value = _stored_value(rec)
        if rec.size != MIN_INLINE_DATA_SIZE + len(value) or len(value) % 4:
            raise CorruptError("inline directory", f"i_size {rec.size} does not match {len(value)} bytes of "
                               "system.data", inode=rec.ino)
        entries = parse_inline_dir(rec, value, inodes_count=inodes_count, has_filetype=True)
        return cls(rec.ino, entries[1].ino, bytearray(rec.i_block[_PARENT_SIZE:]), bytearray(value), entries[2:])

    def find(self, name: bytes) -> tuple[int, int, int, int] | None:
        """(region, offset, inode, file type) of ``name``."""
        for e in self.entries:
            if e.name == name:
                if e.offset < MIN_INLINE_DATA_SIZE:
                    return 0, e.offset - _PARENT_SIZE, e.ino, e.file_type
                return 1, e.offset - MIN_INLINE_DATA_SIZE, e.ino, e.file_type
        return None

    def _region(self, region: int) -> bytearray:
        return self.head if region == 0 else self.tail

    def insert(self, name: bytes, ino: int, ft: int) -> bool:
        """Put the entry into the first region with room; whether one had."""
        for buf in (self.head, self.tail):
            if buf and insert_in_block(buf, name, ino, ft, len(buf), False) is not None:
                return True
        return False

    def grow(self, size: int) -> None:
        """Make the tail ``size`` bytes: its last record (or a new empty one) covers the new space."""
        old = len(self.tail)
        if size <= old:
            return
        if old == 0:
            self.tail = bytearray(size)
            self.tail[0:8] = DIR_ENTRY.pack({"inode": 0, "rec_len": size, "name_len": 0, "file_type": 0})
            return
        last = last_record(self.tail, old, False)
        rec_len = rec_len_from_disk(struct.unpack_from("<H", self.tail, last + 4)[0], old)
        self.tail += bytes(size - old)
        struct.pack_into("<H", self.tail, last + 4, rec_len + size - old)

    def remove(self, region: int, offset: int) -> None:
        """Remove the record at ``offset`` of ``region`` (as in a block: merged into its predecessor)."""
        buf = self._region(region)
        remove_from_block(buf, offset, len(buf), False)

    def retarget(self, region: int, offset: int, ino: int, ft: int) -> None:
        set_entry_inode(self._region(region), offset, ino, ft)

    def i_block(self) -> bytes:
        return self.parent.to_bytes(_PARENT_SIZE, "little") + bytes(self.head)

    def to_block(self, block_size: int, csum_seed: int | None, csum: bool) -> bytearray | None:
        """The directory as one block: ``.``, ``..``, every entry (None if they do not fit)."""
        buf = first_dir_block(self.ino, self.parent, block_size, csum_seed, csum)
        for e in self.entries:
            if insert_in_block(buf, e.name, e.ino, e.file_type, block_size, csum) is None:
                return None
        set_leaf_csum(buf, csum_seed)
        return buf
