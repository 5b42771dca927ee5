"""Directories (directory.rst): linear blocks, checksum tails, the htree index.

Linear entries are ``ext4_dir_entry_2`` records chained by ``rec_len``
inside one block; each is checked as the kernel's ``__ext4_check_dir_entry``
does (``rec_len`` at least 12, a multiple of 4, covering the name, inside the
block; the inode number at most ``s_inodes_count``).  Under metadata_csum a
leaf block ends in a 12-byte fake entry whose last word is
``crc(inode seed, block[:-12])``.

An htree directory (``EXT4_INDEX_FL`` with dir_index) keeps its index in
blocks that look empty to a linear reader: block 0 holds "." and a ".."
whose ``rec_len`` covers the ``dx_root``; interior nodes start with a fake
entry spanning the block.  Lookup hashes the name, binary-searches one
index block per level down to a leaf (O(depth) reads), and continues into
following leaves only while their starting hash, with the collision bit,
equals the name's hash.
"""

from __future__ import annotations

import bisect
import operator
import stat
import struct as _pystruct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4._records import maker
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.types import InodeNo

__all__ = ["DIR_ENTRY", "DIR_TAIL", "DX_ROOT_INFO", "DX_COUNTLIMIT", "DX_ENTRY", "DX_TAIL", "DirEntry",
           "parse_dir_block", "rec_len_from_disk", "DxIndex", "DxLevel", "parse_dx_root", "parse_dx_node",
           "dx_node_csum_ok", "FT_NAMES", "ft_to_mode", "is_dx_node_block", "DT_BY_FT", "rec_len_for",
           "mode_to_ft", "empty_leaf", "first_dir_block", "set_leaf_csum", "leaf_slack", "insert_in_block",
           "remove_from_block", "set_entry_inode", "leaf_end", "rec_len_to_disk", "last_record",
           "record_end", "entries_after_insert", "entries_after_remove", "entries_after_retarget"]

DIR_ENTRY = Struct("ext4_dir_entry_2", [
    ("inode", "I"), ("rec_len", "H"), ("name_len", "B"), ("file_type", "B"),
], size=8)
DIR_TAIL = Struct("ext4_dir_entry_tail", [
    ("det_reserved_zero1", "I"), ("det_rec_len", "H"), ("det_reserved_zero2", "B"), ("det_reserved_ft", "B"),
    ("det_checksum", "I"),
], size=12)
DX_ROOT_INFO = Struct("dx_root_info", [
    ("reserved_zero", "I"), ("hash_version", "B"), ("info_length", "B"), ("indirect_levels", "B"),
    ("unused_flags", "B"),
], size=8)
DX_COUNTLIMIT = Struct("dx_countlimit", [("limit", "H"), ("count", "H")], size=4)
DX_ENTRY = Struct("dx_entry", [("hash", "I"), ("block", "I")], size=8)
DX_TAIL = Struct("dx_tail", [("dt_reserved", "I"), ("dt_checksum", "I")], size=8)

FT_DIR_CSUM: Final = 0xDE
FT_NAMES: Final = {0: "unknown", 1: "reg", 2: "dir", 3: "chr", 4: "blk", 5: "fifo", 6: "sock", 7: "symlink"}
# ext4 file type -> DT_* value used by readdir(3).
DT_BY_FT: Final = {0: 0, 1: 8, 2: 4, 3: 2, 4: 6, 5: 1, 6: 12, 7: 10}
_FT_MODE: Final = {1: stat.S_IFREG, 2: stat.S_IFDIR, 3: stat.S_IFCHR, 4: stat.S_IFBLK, 5: stat.S_IFIFO,
                   6: stat.S_IFSOCK, 7: stat.S_IFLNK}


def ft_to_mode(ft: int) -> int:
    return _FT_MODE.get(ft, 0)


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry; ``offset`` is its position, ``next_offset`` where readdir resumes after it."""

    name: bytes
    ino: InodeNo
    file_type: int  # on-disk EXT4_FT_* (0 when the image has no filetype feature)
    offset: int
    next_offset: int


# bisect keys as C callables (a lambda costs a Python call per probe).
_BY_OFFSET: Final = operator.attrgetter("offset")
# DirEntry(...) positionally, without the frozen __init__'s cost (_records.py): a parse makes one per entry.
_make_entry: Final = maker(DirEntry)


def rec_len_from_disk(v: int, block_size: int) -> int:
    if block_size < 65536:
        return v
    if v == 65535 or v == 0:
        return 65536
    return (v & 65532) | ((v & 3) << 16)


def _tail_at(data: bytes, end: int) -> bool:
    if end < 12:
        return False
    z1, rl, z2, ft, _ = DIR_TAIL.unpack_ints(data, end - 12)
    return z1 == 0 and rl == 12 and z2 == 0 and ft == FT_DIR_CSUM


def parse_dir_block(data: bytes, *, ino: int, block: int | None, base: int, has_filetype: bool,
                    inodes_count: int, csum_seed: int | None, block_size: int, start: int = 0,
                    end: int | None = None, salvage: bool = False, tail: bool = True) -> list[DirEntry]:
    """Live entries of one linear region ``data[start:end]`` (a block, or an inline area).

    ``base`` is the readdir position of ``data[0]``.  With ``csum_seed``
    (the inode seed) the block's checksum tail is required and verified;
    ``tail=False`` parses a region that has none (an htree root, inline data).
    """
    if end is None:
        end = len(data)

    def bad(msg: str) -> CorruptError:
        return CorruptError("directory entry", msg, inode=ino, block=block)

    if csum_seed is not None:
        if not _tail_at(data, end):
            if not salvage:
                raise CorruptError("directory block", "no checksum tail", inode=ino, block=block)
        else:
            end -= 12
            stored = int.from_bytes(data[end + 8 : end + 12], "little")
            want = crc32c_raw(csum_seed, data[:end])
            if stored != want and not salvage:
                raise CorruptError("directory block", f"checksum 0x{stored:08x} != computed 0x{want:08x}",
                                   inode=ino, block=block)
    elif tail and _tail_at(data, end):
        end -= 12
    out: list[DirEntry] = []
    pos = start
    while pos < end:
        if end - pos < 8:
            raise bad(f"truncated entry at offset {pos}")
        e_ino, raw_rec, name_len, ft = DIR_ENTRY.unpack_ints(data, pos)
        rec_len = rec_len_from_disk(raw_rec, block_size)
        if not has_filetype:
            name_len |= ft << 8
            ft = 0
        if rec_len < 8 or rec_len % 4:
            raise bad(f"rec_len {rec_len} at offset {pos} is invalid")
        if pos + rec_len > end:
            if salvage:
                break
            raise bad(f"rec_len {rec_len} at offset {pos} runs past the block")
        if 8 + name_len > rec_len:
            raise bad(f"name_len {name_len} at offset {pos} exceeds rec_len {rec_len}")
        if e_ino > inodes_count:
            raise bad(f"inode {e_ino} at offset {pos} exceeds s_inodes_count")
        if e_ino and name_len:
            out.append(_make_entry(bytes(data[pos + 8 : pos + 8 + name_len]), InodeNo(e_ino), ft, base + pos,
                                base + pos + rec_len))
        pos += rec_len
    return out


# --- htree -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DxLevel:
    """One index block: (hash, logical block) entries, the first hash meaning "lowest"."""

    entries: tuple[tuple[int, int], ...]
    lblock: int


@dataclass(frozen=True, slots=True)
class DxIndex:
    hash_version: int
    indirect_levels: int
    root: DxLevel


def _dx_entries(data: bytes, count_offset: int, ino: int, block: int | None, lblock: int, expect_limit: int,
                csum_seed: int | None, salvage: bool) -> DxLevel:
    def bad(msg: str) -> CorruptError:
        return CorruptError("htree", msg, inode=ino, block=block)

    limit, count = DX_COUNTLIMIT.unpack_ints(data, count_offset)
    if limit != expect_limit:
        raise bad(f"dx limit {limit}, expected {expect_limit}")
    if count == 0 or count > limit:
        raise bad(f"dx count {count} invalid (limit {limit})")
    if csum_seed is not None and not dx_node_csum_ok(data, count_offset, csum_seed) and not salvage:
        raise bad("index block checksum mismatch")
    entries: list[tuple[int, int]] = []
    prev = -1
    for k in range(count):
        h, blk = DX_ENTRY.unpack_ints(data, count_offset + 8 * k)
        if k == 0:
            h = 0
        elif h < prev:
            raise bad(f"dx entry {k} hash 0x{h:08x} out of order")
        prev = h
        entries.append((h, blk & 0x0FFFFFFF))
    return DxLevel(tuple(entries), lblock)


def dx_node_csum_ok(data: bytes, count_offset: int, csum_seed: int) -> bool:
    limit, count = DX_COUNTLIMIT.unpack_ints(data, count_offset)
    tail = count_offset + 8 * limit
    if tail + 8 > len(data) or count > limit:
        return False
    size = count_offset + 8 * count
    crc = crc32c_raw(csum_seed, data[:size])
    crc = crc32c_raw(crc, data[tail : tail + 4] + b"\0\0\0\0")
    return crc == int.from_bytes(data[tail + 4 : tail + 8], "little")


def _dx_limit(block_size: int, count_offset: int, csum: bool) -> int:
    return (block_size - count_offset) // 8 - (1 if csum else 0)


def parse_dx_root(data: bytes, *, ino: int, block: int | None, block_size: int, large_dir: bool,
                  csum_seed: int | None, salvage: bool = False) -> DxIndex:
    def bad(msg: str) -> CorruptError:
        return CorruptError("htree", msg, inode=ino, block=block)

    d_ino, d_rec, d_nl, _ = DIR_ENTRY.unpack_ints(data, 0)
    if d_rec != 12 or d_nl != 1 or data[8:9] != b".":
        raise bad("dx_root does not start with '.'")
    dd_rec = rec_len_from_disk(DIR_ENTRY.unpack_ints(data, 12)[1], block_size)
    if dd_rec != block_size - 12 or data[20:22] != b"..":
        raise bad("dx_root '..' does not cover the block")
    reserved, hash_version, info_length, levels, _flags = DX_ROOT_INFO.unpack_ints(data, 24)
    if reserved != 0 or info_length != 8:
        raise bad(f"dx_root_info invalid (reserved {reserved}, info_length {info_length})")
    max_levels = 3 if large_dir else 2
    if levels >= max_levels:
        raise bad(f"indirect_levels {levels} exceeds {max_levels - 1}")
    count_offset = 24 + info_length
    root = _dx_entries(data, count_offset, ino, block, 0, _dx_limit(block_size, count_offset, csum_seed is not None),
                       csum_seed, salvage)
    return DxIndex(hash_version, levels, root)


def is_dx_node_block(data: bytes, block_size: int) -> bool:
    """Whether a block looks like an htree interior node (a fake entry spanning it)."""
    e_ino, rl, nl, _ = DIR_ENTRY.unpack_ints(data, 0)
    return e_ino == 0 and nl == 0 and rec_len_from_disk(rl, block_size) == block_size


def parse_dx_node(data: bytes, *, ino: int, block: int | None, lblock: int, block_size: int,
                  csum_seed: int | None, salvage: bool = False) -> DxLevel:
    if not is_dx_node_block(data, block_size):
        raise CorruptError("htree", "interior index block has no fake entry", inode=ino, block=block)
    return _dx_entries(data, 8, ino, block, lblock, _dx_limit(block_size, 8, csum_seed is not None), csum_seed,
                       salvage)


def dx_find(level: DxLevel, hash_: int) -> int:
    """Index of the last entry whose hash is <= ``hash_`` (entry 0 covers everything below)."""
    lo, hi = 1, len(level.entries) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if level.entries[mid][0] > hash_:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo - 1


LeafFinder = Callable[[int], "DirEntry | None"]
NodeReader = Callable[[int], DxLevel]


def dx_lookup(index: DxIndex, name: bytes, hash_: int, read_node: NodeReader, find_in_leaf: LeafFinder,
              max_leaves: int) -> DirEntry | None:
    """Find ``name`` through the index; ``hash_`` is its major hash (low bit clear).

    ``find_in_leaf(lblock)`` is the first entry called ``name`` in leaf block
    ``lblock`` (in block order), or None.
    """
    path: list[tuple[DxLevel, int]] = []
    level = index.root
    for depth in range(index.indirect_levels + 1):
        at = dx_find(level, hash_)
        path.append((level, at))
        if depth < index.indirect_levels:
            level = read_node(level.entries[at][1])
    visited = 0
    while True:
        leaf_level, at = path[-1]
        visited += 1
        if visited > max_leaves:
            raise CorruptError("htree", "hash-collision chain longer than the directory")
        hit = find_in_leaf(leaf_level.entries[at][1])
        if hit is not None:
            return hit
        # Move to the next leaf only if it continues this hash (collision bit set).
        depth = len(path) - 1
        while depth >= 0 and path[depth][1] + 1 >= len(path[depth][0].entries):
            depth -= 1
        if depth < 0:
            return None
        lvl, at = path[depth]
        next_hash = lvl.entries[at + 1][0]
        if (next_hash & ~1) != hash_:
            return None
        path[depth] = (lvl, at + 1)
        for d in range(depth + 1, len(path)):
            node = read_node(path[d - 1][0].entries[path[d - 1][1]][1])
            path[d] = (node, 0)


# --- the write side -----------------------------------------------------------
# Leaf blocks are edited as the kernel does (ext4_insert_dentry, ext4_generic_delete_entry):
# a new entry takes the slack after a live entry's name, or an empty entry's
# whole record; a removed entry is merged into its predecessor in the block
# (the first entry of a block just gets inode 0).  Under metadata_csum the
# 12-byte tail stays at the end and is recomputed after each change.

_MODE_FT: Final = {v: k for k, v in _FT_MODE.items()}


def mode_to_ft(mode: int) -> int:
    return _MODE_FT.get(stat.S_IFMT(mode), 0)


def rec_len_for(name_len: int) -> int:
    """The smallest record for a name of ``name_len`` bytes (EXT4_DIR_REC_LEN)."""
    return (8 + name_len + 3) & ~3


def rec_len_to_disk(n: int, block_size: int) -> int:
    if block_size < 65536:
        return n
    if n == 65536:
        return 65535 if block_size == 65536 else 0
    return (n & 65532) | ((n >> 16) & 3)


def leaf_end(block_size: int, csum: bool) -> int:
    return block_size - 12 if csum else block_size


# The checksum tail of a leaf with its checksum still zero (the same for every block size).
_TAIL: Final = DIR_TAIL.pack({"det_reserved_zero1": 0, "det_rec_len": 12, "det_reserved_zero2": 0,
                             "det_reserved_ft": FT_DIR_CSUM, "det_checksum": 0})


def set_leaf_csum(buf: bytearray, csum_seed: int | None) -> None:
    """Recompute the tail checksum of leaf block ``buf`` (no-op without metadata_csum)."""
    if csum_seed is None:
        return
    end = len(buf) - 12
    buf[end:] = _TAIL
    buf[end + 8 : end + 12] = crc32c_raw(csum_seed, bytes(buf[:end])).to_bytes(4, "little")


def empty_leaf(block_size: int, csum_seed: int | None, csum: bool) -> bytearray:
    end = leaf_end(block_size, csum)
    buf = bytearray(block_size)
    buf[0:8] = DIR_ENTRY.pack({"inode": 0, "rec_len": rec_len_to_disk(end, block_size), "name_len": 0,
                               "file_type": 0})
    set_leaf_csum(buf, csum_seed)
    return buf


def first_dir_block(ino: int, parent: int, block_size: int, csum_seed: int | None, csum: bool) -> bytearray:
    """Block 0 of a new directory: "." and ".." (which covers the rest)."""
    end = leaf_end(block_size, csum)
    buf = bytearray(block_size)
    buf[0:12] = DIR_ENTRY.pack({"inode": ino, "rec_len": 12, "name_len": 1, "file_type": 2}) + b".\0\0\0"
    buf[12:24] = DIR_ENTRY.pack({"inode": parent, "rec_len": rec_len_to_disk(end - 12, block_size),
                                 "name_len": 2, "file_type": 2}) + b"..\0\0"
    set_leaf_csum(buf, csum_seed)
    return buf


_HEAD = _pystruct.Struct("<IHB")


def _entries(buf: bytes | bytearray, end: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """(offset, inode, rec_len, name_len) of every record in ``buf[:end]`` (already verified)."""
    out = []
    pos = 0
    unpack = _HEAD.unpack_from
    big = block_size >= 65536
    while pos < end:
        e_ino, raw_rec, name_len = unpack(buf, pos)
        rec = rec_len_from_disk(raw_rec, block_size) if big else raw_rec
        if rec < 8 or pos + rec > end:
            raise CorruptError("directory entry", f"rec_len {rec} at offset {pos} is invalid")
        out.append((pos, e_ino, rec, name_len))
        pos += rec
    return out


def leaf_slack(buf: bytes | bytearray, block_size: int, csum: bool) -> int:
    """The largest record a new entry could take in this leaf block."""
    best = 0
    for _pos, e_ino, rec, name_len in _entries(buf, leaf_end(block_size, csum), block_size):
        used = rec_len_for(name_len) if e_ino else 0
        best = max(best, rec - used)
    return best


def insert_in_block(buf: bytearray, name: bytes, ino: int, ft: int, block_size: int, csum: bool,
                    last: int | None = None) -> int | None:
    """Put the entry into ``buf`` if it fits; its offset, or None.  The caller recomputes the tail.

    ``last``, when given, must be the offset of the block's last record (see
    :func:`last_record`); the common append then needs no walk over the block.
    The bytes written are the same with or without it.
    """
    need = rec_len_for(len(name))
    end = leaf_end(block_size, csum)
    if last is not None:
        e_ino, raw_rec, name_len = _HEAD.unpack_from(buf, last)
        rec = rec_len_from_disk(raw_rec, block_size)
        if last + rec != end or rec < 8:
            raise ValueError(f"offset {last} is not the last record")
        used = rec_len_for(name_len) if e_ino else 0
        if rec - used >= need:
            return _put_entry(buf, last, e_ino, rec, used, name, ino, ft, block_size)
        # The last record is full: the walk below tries it again (cheaply) and then the others.
    entries = _entries(buf, end, block_size)
    # Appending is the common case: try the last record first.
    for pos, e_ino, rec, name_len in entries[-1:] + entries[:-1]:
        used = rec_len_for(name_len) if e_ino else 0
        if rec - used < need:
            continue
        return _put_entry(buf, pos, e_ino, rec, used, name, ino, ft, block_size)
    return None


def _put_entry(buf: bytearray, pos: int, e_ino: int, rec: int, used: int, name: bytes, ino: int, ft: int,
               block_size: int) -> int:
    """Write the new entry into the record at ``pos`` (splitting it if it is live); the entry's offset."""
    if e_ino:
        buf[pos + 4 : pos + 6] = rec_len_to_disk(used, block_size).to_bytes(2, "little")
        pos, rec = pos + used, rec - used
    # (inode, rec_len, name_len, file_type): DIR_ENTRY's table order.
    buf[pos : pos + 8] = DIR_ENTRY.pack_values(ino, rec_len_to_disk(rec, block_size), len(name), ft)
    buf[pos + 8 : pos + 8 + len(name)] = name
    pad_end = pos + rec_len_for(len(name))
    buf[pos + 8 + len(name) : pad_end] = bytes(pad_end - pos - 8 - len(name))
    return pos


def last_record(buf: bytes | bytearray, block_size: int, csum: bool) -> int:
    """Offset of the last record of a leaf (the one ending at the tail or the block end)."""
    entries = _entries(buf, leaf_end(block_size, csum), block_size)
    if not entries:
        raise CorruptError("directory block", "no records")
    return entries[-1][0]


def record_end(buf: bytes | bytearray, pos: int, block_size: int) -> int:
    """Where the record at ``pos`` ends (its offset plus ``rec_len``)."""
    return pos + rec_len_from_disk(int.from_bytes(buf[pos + 4 : pos + 6], "little"), block_size)


def entries_after_insert(entries: list[DirEntry], buf: bytes | bytearray, pos: int, name: bytes, ino: int,
                         ft: int, base: int, block_size: int) -> list[DirEntry]:
    """``parse_dir_block``'s result for ``buf`` given its result before :func:`insert_in_block`.

    ``entries`` are the live entries of the block before the insert that put
    ``name`` at ``pos`` (block offset ``base``); only the new entry and the
    live record it was carved from (if any) differ.  The block must have the
    filetype feature's layout (``name_len`` one byte).
    """
    start = base + pos
    stop = base + record_end(buf, pos, block_size)
    out = list(entries)
    i = bisect.bisect_right(out, start, key=_BY_OFFSET)
    if i and out[i - 1].next_offset == stop and out[i - 1].offset < start:
        prev = out[i - 1]
        out[i - 1] = _make_entry(prev.name, prev.ino, prev.file_type, prev.offset, start)
    out.insert(i, _make_entry(bytes(name), InodeNo(ino), ft, start, stop))
    return out


def entries_after_remove(entries: list[DirEntry], base: int, pos: int) -> list[DirEntry] | None:
    """``parse_dir_block``'s result after :func:`remove_from_block` took the entry at ``pos``.

    The removed record either joins the live record before it (whose
    ``next_offset`` moves to the removed one's) or, first in its block, is
    emptied and no longer listed.  None when ``entries`` has no live entry at
    ``pos`` (the caller then drops its parse).
    """
    start = base + pos
    i = bisect.bisect_left(entries, start, key=_BY_OFFSET)
    if i == len(entries) or entries[i].offset != start:
        return None
    gone = entries[i]
    out = entries[:i] + entries[i + 1 :]
    if i and out[i - 1].next_offset == start:
        prev = out[i - 1]
        out[i - 1] = _make_entry(prev.name, prev.ino, prev.file_type, prev.offset, gone.next_offset)
    return out


def entries_after_retarget(entries: list[DirEntry], base: int, pos: int, ino: int,
                           ft: int) -> list[DirEntry] | None:
    """``parse_dir_block``'s result after :func:`set_entry_inode` at ``pos`` (None: no entry there)."""
    start = base + pos
    i = bisect.bisect_left(entries, start, key=_BY_OFFSET)
    if i == len(entries) or entries[i].offset != start:
        return None
    e = entries[i]
    return entries[:i] + [_make_entry(e.name, InodeNo(ino), ft, e.offset, e.next_offset)] + entries[i + 1 :]


def remove_from_block(buf: bytearray, offset: int, block_size: int, csum: bool) -> None:
    """Remove the entry at ``offset``: merged into its predecessor, or emptied if first."""
    prev: int | None = None
    for pos, _e_ino, rec, _nl in _entries(buf, leaf_end(block_size, csum), block_size):
        if pos == offset:
            if prev is None:
                buf[pos : pos + 4] = b"\0\0\0\0"
            else:
                prev_rec = rec_len_from_disk(int.from_bytes(buf[prev + 4 : prev + 6], "little"), block_size)
                buf[prev + 4 : prev + 6] = rec_len_to_disk(prev_rec + rec, block_size).to_bytes(2, "little")
            return
        prev = pos
    raise CorruptError("directory entry", f"no entry at offset {offset}")


def set_entry_inode(buf: bytearray, offset: int, ino: int, ft: int) -> None:
    """Point the entry at ``offset`` at another inode (rename over, "..")."""
    buf[offset : offset + 4] = ino.to_bytes(4, "little")
    buf[offset + 7] = ft
