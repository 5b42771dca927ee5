"""Extent trees (ifork.rst "Extent Tree") into runlists.

The tree's root is the 60-byte ``i_block``; interior nodes hold
``ext4_extent_idx`` entries, leaves ``ext4_extent`` entries.  Every node is
checked: magic, ``eh_entries <= eh_max <= capacity``, ``eh_depth`` exactly
one less than its parent (which also rules out cycles), keys sorted and
inside the parent's key range, and, for non-root nodes under metadata_csum,
the tail checksum stored right after ``eh_max`` entries.  ``ee_len`` above
32768 marks an unwritten extent of ``ee_len - 32768`` blocks.

For the write side this module keeps the codecs: :class:`Extent`,
:func:`read_extents` (a whole verified tree, for freeing an inode) and
:func:`build_extent_tree`, which packs a sorted extent list into a tree
whose nodes are all full except the last of each level (used for new
inodes and for repacking a loose tree).  Editing an existing tree in place
is extent_tree.py's job.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4._records import maker
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.runlist import Run

__all__ = ["EXTENT_HEADER", "EXTENT", "EXTENT_IDX", "EXTENT_TAIL", "extent_runs", "EXT4_EXT_MAGIC",
           "MAX_DEPTH", "Extent", "read_extents", "tree_nodes_needed", "build_extent_tree", "split_long",
           "INIT_MAX_LEN", "UNWRITTEN_MAX_LEN", "make_extent"]

EXTENT_HEADER = Struct("ext4_extent_header", [
    ("eh_magic", "H"), ("eh_entries", "H"), ("eh_max", "H"), ("eh_depth", "H"), ("eh_generation", "I"),
], size=12)
EXTENT = Struct("ext4_extent", [
    ("ee_block", "I"), ("ee_len", "H"), ("ee_start_hi", "H"), ("ee_start_lo", "I"),
], size=12)
EXTENT_IDX = Struct("ext4_extent_idx", [
    ("ei_block", "I"), ("ei_leaf_lo", "I"), ("ei_leaf_hi", "H"), ("ei_unused", "H"),
], size=12)
EXTENT_TAIL = Struct("ext4_extent_tail", [("eb_checksum", "I")], size=4)

EXT4_EXT_MAGIC: Final = 0xF30A
MAX_DEPTH: Final = 5
_INIT_MAX_LEN: Final = 32768
INIT_MAX_LEN: Final = 32768
UNWRITTEN_MAX_LEN: Final = 32767
_KEY_END: Final = 1 << 32

ReadBlock = Callable[[int], bytes]


def extent_runs(ino: int, i_block: bytes, read_block: ReadBlock, block_size: int, blocks_count: int,
                csum_seed: int | None) -> list[Run]:
    """All leaf extents of the tree rooted in ``i_block``, in logical order.

    ``csum_seed`` is the per-inode seed when extent tail checksums are to be
    verified.
    """
    out: list[Run] = []
    visited: set[int] = set()
    _walk(ino, i_block, None, -1, 0, _KEY_END, read_block, block_size, blocks_count, csum_seed, out, visited)
    return out


def _walk(ino: int, node: bytes, block: int | None, expect_depth: int, lo: int, hi: int, read_block: ReadBlock,
          block_size: int, blocks_count: int, csum_seed: int | None, out: list[Run], visited: set[int]) -> None:
    def bad(msg: str) -> CorruptError:
        return CorruptError("extent tree", msg, inode=ino, block=block)

    magic, entries, emax, depth, _gen = EXTENT_HEADER.unpack_ints(node)
    if magic != EXT4_EXT_MAGIC:
        raise bad(f"bad extent header magic 0x{magic:04x}")
    capacity = (len(node) - 12) // 12
    if emax > capacity or entries > emax:
        raise bad(f"eh_entries {entries} / eh_max {emax} exceed node capacity {capacity}")
    if expect_depth < 0:
        if depth > MAX_DEPTH:
            raise bad(f"eh_depth {depth} exceeds {MAX_DEPTH}")
    elif depth != expect_depth:
        raise bad(f"eh_depth {depth}, expected {expect_depth}")
    if block is not None and csum_seed is not None:
        tail = 12 + 12 * emax
        if tail + 4 > len(node):
            raise bad("no room for the extent tail checksum")
        stored = int.from_bytes(node[tail : tail + 4], "little")
        want = crc32c_raw(csum_seed, node[:tail])
        if stored != want:
            raise bad(f"checksum 0x{stored:08x} != computed 0x{want:08x}")
    prev_end = lo
    if depth == 0:
        for k in range(entries):
            ee_block, ee_len, hi16, lo32 = EXTENT.unpack_ints(node, 12 + 12 * k)
            unwritten = ee_len > _INIT_MAX_LEN
            length = ee_len - _INIT_MAX_LEN if unwritten else ee_len
            if length == 0:
                raise bad(f"extent {k} has zero length")
            if ee_block < prev_end or ee_block + length > hi:
                raise bad(f"extent {k} (logical {ee_block}+{length}) out of order or outside [{lo}, {hi})")
            start = (hi16 << 32) | lo32
            if start + length > blocks_count or start == 0:
                raise bad(f"extent {k} maps blocks {start}+{length} outside the filesystem")
            out.append(Run(ee_block, length, None if unwritten else start))
            prev_end = ee_block + length
        return
    keys: list[tuple[int, int]] = []
    for k in range(entries):
        ei_block, leaf_lo, leaf_hi, _unused = EXTENT_IDX.unpack_ints(node, 12 + 12 * k)
        if (k and ei_block <= prev_end) or ei_block < lo or ei_block >= hi:
            raise bad(f"index {k} (logical {ei_block}) out of order or outside [{lo}, {hi})")
        prev_end = ei_block
        keys.append((ei_block, (leaf_hi << 32) | leaf_lo))
    for k, (key, child) in enumerate(keys):
        if child >= blocks_count or child == 0:
            raise bad(f"index {k} points at block {child} outside the filesystem")
        if child in visited:
            raise bad(f"extent block {child} is referenced twice")
        visited.add(child)
        nxt = keys[k + 1][0] if k + 1 < len(keys) else hi
        data = read_block(child)
        _walk(ino, data, child, depth - 1, key if k else lo, nxt, read_block, block_size, blocks_count,
              csum_seed, out, visited)


# --- the write side -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extent:
    logical: int
    length: int
    physical: int
    unwritten: bool = False

    @property
    def end(self) -> int:
        return self.logical + self.length


# Extent(logical, length, physical, unwritten), all four given, without the frozen __init__'s cost
# (_records.py): every write edits a few.
make_extent: Final = maker(Extent)


def read_extents(ino: int, i_block: bytes, read_block: ReadBlock, block_size: int, blocks_count: int,
                 csum_seed: int | None) -> tuple[list[Extent], list[int]]:
    """(leaf extents in logical order, tree node blocks in tree order) of a verified tree."""
    out: list[Extent] = []
    nodes: list[int] = []

    def walk(node: bytes) -> None:
        _magic, entries, _emax, depth, _gen = EXTENT_HEADER.unpack_ints(node)
        if depth == 0:
            for k in range(entries):
                ee_block, ee_len, hi16, lo32 = EXTENT.unpack_ints(node, 12 + 12 * k)
                unwritten = ee_len > _INIT_MAX_LEN
                out.append(Extent(ee_block, ee_len - _INIT_MAX_LEN if unwritten else ee_len, (hi16 << 32) | lo32,
                                  unwritten))
            return
        for k in range(entries):
            _b, leaf_lo, leaf_hi, _u = EXTENT_IDX.unpack_ints(node, 12 + 12 * k)
            child = (leaf_hi << 32) | leaf_lo
            nodes.append(child)
            walk(read_block(child))

    # Verify the whole tree first (structure, order, checksums, cycles).
    extent_runs(ino, i_block, read_block, block_size, blocks_count, csum_seed)
    walk(i_block)
    return out, nodes


def split_long(ext: Extent) -> list[Extent]:
    """``ext`` cut into pieces no longer than ee_len allows."""
    cap = UNWRITTEN_MAX_LEN if ext.unwritten else INIT_MAX_LEN
    if ext.length <= cap:
        return [ext]
    out = []
    pos = 0
    while pos < ext.length:
        n = min(cap, ext.length - pos)
        out.append(Extent(ext.logical + pos, n, ext.physical + pos, ext.unwritten))
        pos += n
    return out


def _node_capacity(block_size: int) -> int:
    return (block_size - 12) // 12


def tree_nodes_needed(n_extents: int, block_size: int) -> int:
    """Blocks (leaves and index nodes) a tree of ``n_extents`` extents needs outside the inode."""
    cap = _node_capacity(block_size)
    total = 0
    n = n_extents
    while n > 4:
        n = (n + cap - 1) // cap
        total += n
    return total


def _header(entries: int, emax: int, depth: int) -> bytes:
    return EXTENT_HEADER.pack({"eh_magic": EXT4_EXT_MAGIC, "eh_entries": entries, "eh_max": emax,
                               "eh_depth": depth, "eh_generation": 0})


def build_extent_tree(extents: Sequence[Extent], nodes: Sequence[int], block_size: int,
                      csum_seed: int | None) -> tuple[bytes, dict[int, bytes]]:
    """(new 60-byte i_block, {node block: contents}) for ``extents`` (sorted, each within ee_len).

    ``nodes`` are exactly :func:`tree_nodes_needed` blocks, used in order.
    """
    if len(nodes) != tree_nodes_needed(len(extents), block_size):
        raise ValueError("wrong number of extent tree blocks")
    cap = _node_capacity(block_size)
    # Level 0: (first logical block, packed entry) per extent.
    level: list[tuple[int, bytes]] = []
    for e in extents:
        ee_len = e.length + (_INIT_MAX_LEN if e.unwritten else 0)
        level.append((e.logical, struct.pack("<IHHI", e.logical, ee_len, e.physical >> 32,
                                             e.physical & 0xFFFFFFFF)))
    blocks: dict[int, bytes] = {}
    depth = 0
    it = iter(nodes)
    while len(level) > 4:
        if depth >= MAX_DEPTH:
            raise ValueError("extent tree deeper than 5 levels")
        upper: list[tuple[int, bytes]] = []
        for i in range(0, len(level), cap):
            chunk = level[i : i + cap]
            blk = next(it)
            body = _header(len(chunk), cap, depth) + b"".join(p for _, p in chunk)
            body += bytes(12 + 12 * cap - len(body))
            tail = struct.pack("<I", crc32c_raw(csum_seed, body)) if csum_seed is not None else bytes(4)
            data = body + tail
            blocks[blk] = data + bytes(block_size - len(data))
            upper.append((chunk[0][0], struct.pack("<IIHH", chunk[0][0], blk & 0xFFFFFFFF, blk >> 32, 0)))
        level = upper
        depth += 1
    root = _header(len(level), 4, depth) + b"".join(p for _, p in level)
    return root + bytes(60 - len(root)), blocks
