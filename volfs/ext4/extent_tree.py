"""Incremental editing of one inode's extent tree (ifork.rst "Extent Tree").

Theory of operation.  An :class:`ExtentTree` is a short-lived editor for
one operation on one inode: it starts from the 60-byte root in ``i_block``,
reads interior nodes and leaves through a :class:`TreeIO` (the writer's
transaction and block cache), keeps every node it decoded, and at
:meth:`ExtentTree.finish` packs the nodes it changed (header, entries, tail
checksum from the inode seed) and hands them back to the transaction.  It
never writes the device itself.

*Finding things* descends the index like the kernel's ``ext4_find_extent``:
in every index node the last entry whose key (``ei_block``) is <= the
logical block, so a lookup reads ``depth`` blocks.  Every node read is
verified first (magic, ``eh_depth`` one less than its parent, ``eh_entries
<= eh_max <= capacity``, keys sorted and inside the parent's key range,
blocks inside the filesystem, the tail checksum); a corrupt node raises
:class:`~volfs.errors.CorruptError` (EUCLEAN) before anything is changed,
so the caller's operation rolls back and the block stays as it was.

*Changing the mapping* (:meth:`ExtentTree.replace`) works leaf by leaf:
leaves to the right of the one holding the start of the range lose the
entries the range covers (a leaf left empty is freed and its index entry
removed, recursively); the start leaf gets its entries rewritten around the
range: an extent cut by the range keeps its outer parts (an unwritten extent
written in the middle becomes up to three), the new extents go in between,
and neighbours in the leaf merge when logically and physically adjacent, of
the same written state, and within ``ee_len``'s limits (32768 written, 32767
unwritten).  As in the kernel, extents in different leaves are not merged.
When a leaf's first extent changes, the index keys above it follow
(``ext4_ext_correct_indexes``): every key equals the first logical block
below it, which e2fsck insists on.

*Overflow.*  A full root in ``i_block`` grows the tree by one level
(``ext4_ext_grow_indepth``): its entries move to a new block and the root
becomes an index with one entry.  A full node elsewhere splits and the new
node's key goes into the parent, which may split in turn.  Depth stays <= 5.

*Keeping e2fsck quiet.*  e2fsck -fn prints "extent tree (at level N) could
be narrower/shorter.  Optimize? no" (exit 0, but a message) when a level has
more than one block's worth of free slots, counting a non-full non-root node
as one slot smaller (e2fsck/extents.c e2fsck_should_rebuild_extents), or
when a level's entries would fit into a shallower level.  The editor keeps
trees *packed*: every node except the rightmost one of its level is full.
Appends keep that for free: a node on the rightmost path splits with its
left part full and the overflow in a new rightmost node (kernel trees split
in the middle, and get the message).  Truncation only shortens the rightmost
path; a root left with one child that fits in ``i_block`` pulls it up.  Any
other change (a split or a shrink away from the rightmost path), and any
edit of a non-full leaf away from it (a tree that was loose already, as the
kernel leaves them), marks the tree *suspect*.  Checking a suspect tree means reading all of it, so it is
not done per edit: the writer remembers suspect inodes and, before each
commit, calls :meth:`ExtentTree.compact`, which checks e2fsck's two rules
over all nodes and, when one fails, repacks the whole tree into the blocks
it already has.  An edit therefore costs its path; a commit after edits in
the middle of a full tree costs one pass over that tree.
"""

from __future__ import annotations

import bisect
import errno
import operator
import struct
from dataclasses import dataclass, field
from typing import Final, Protocol

from volfs.errors import CorruptError, error
from volfs.ext4.checksum import crc32c_raw
from volfs.ext4.extents import (
    EXT4_EXT_MAGIC,
    EXTENT,
    EXTENT_HEADER,
    EXTENT_IDX,
    INIT_MAX_LEN,
    MAX_DEPTH,
    UNWRITTEN_MAX_LEN,
    Extent,
    build_extent_tree,
    make_extent,
    split_long,
    tree_nodes_needed,
)

__all__ = ["TreeIO", "ExtentTree", "KEY_END", "Memo"]

# bisect keys as C callables (a lambda costs a Python call per probe).
_FIRST: Final = operator.itemgetter(0)
_LOGICAL: Final = operator.attrgetter("logical")
KEY_END: Final = 1 << 32  # one past the largest logical block an extent tree can address
_ROOT: Final = 0  # the block "number" of the root node, which lives in i_block
_ROOT_MAX: Final = 4  # (60 - 12) // 12 entries fit in i_block
_MEMO_MAX: Final = 4096  # decoded tree blocks a writer keeps
# Codecs of the declared structs, for iter_unpack over a whole node (derived, not re-declared).
_EXTENT_ST: Final = struct.Struct("<" + "".join(code for _, code in EXTENT.fields))
_INDEX_ST: Final = struct.Struct("<" + "".join(code for _, code in EXTENT_IDX.fields))


def _last_end(node: _Node) -> int:
    return node.extents[-1].end if not node.depth else node.index[-1][0] + 1


class TreeIO(Protocol):
    """What the editor needs from the writer: blocks through the transaction, and the allocator."""

    def read(self, block: int) -> bytes:
        """The current contents of metadata block ``block`` (the transaction's copy if dirty)."""
        ...

    def write(self, block: int, data: bytes) -> None:
        """Put the new contents of tree block ``block`` into the transaction."""
        ...

    def alloc(self, goal: int) -> int:
        """One new block, at or after ``goal`` when possible (ENOSPC otherwise)."""
        ...

    def free(self, block: int) -> None:
        """Give tree block ``block`` back to the allocator."""
        ...


@dataclass(slots=True, eq=False)
class _Node:
    """A decoded tree node: extents when ``depth == 0``, else (key, child block) index entries."""

    block: int  # _ROOT for the root in i_block
    depth: int
    emax: int
    generation: int
    extents: list[Extent] = field(default_factory=list)
    index: list[tuple[int, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.index) if self.depth else len(self.extents)

    @property
    def first_key(self) -> int:
        if self.depth:
            return self.index[0][0]
        return self.extents[0].logical


# block -> (the bytes it was decoded from, inode, checksum seed, the decoded node): kept by the
# writer across operations so a leaf is decoded once per change, not once per write.
Memo = dict[int, tuple[bytes, int, "int | None", _Node]]


@dataclass(slots=True)
class _Step:
    """One node on a path from the root, and the entry the path follows in it."""

    node: _Node
    idx: int


def _max_len(unwritten: bool) -> int:
    return UNWRITTEN_MAX_LEN if unwritten else INIT_MAX_LEN


def _clip(e: Extent, lo: int, hi: int) -> Extent:
    """The part of ``e`` inside ``[lo, hi)`` (which must overlap it)."""
    a = max(e.logical, lo)
    b = min(e.end, hi)
    return make_extent(a, b - a, e.physical + (a - e.logical), e.unwritten)


def _merge_run(seq: list[Extent]) -> list[Extent]:
    """``seq`` (sorted, non-overlapping) with mergeable neighbours joined."""
    out: list[Extent] = []
    for e in seq:
        if out:
            p = out[-1]
            if (p.end == e.logical and p.unwritten == e.unwritten and p.physical + p.length == e.physical
                    and p.length + e.length <= _max_len(e.unwritten)):
                out[-1] = make_extent(p.logical, p.length + e.length, p.physical, p.unwritten)
                continue
        out.append(e)
    return out


class ExtentTree:
    """The editor of one inode's extent tree (see the module header)."""

    __slots__ = ("io", "ino", "block_size", "blocks_count", "csum_seed", "cap", "root", "nodes_delta",
                 "_nodes", "_dirty", "_suspect", "_goal", "_writes", "_memo")

    def __init__(self, io: TreeIO, ino: int, i_block: bytes, block_size: int, blocks_count: int,
                 csum_seed: int | None, goal: int = 0, memo: Memo | None = None) -> None:
        self.io = io
        self.ino = ino
        self.block_size = block_size
        self.blocks_count = blocks_count
        self.csum_seed = csum_seed
        self.cap = (block_size - 12) // 12  # entries of a tree block (the tail needs 4 of the 12 spare bytes)
        # Tree blocks allocated minus tree blocks freed by this editor (for i_blocks).
        self.nodes_delta = 0
        self._nodes: dict[int, _Node] = {}
        self._dirty: set[int] = set()
        self._suspect = False
        self._goal = goal  # where new tree blocks go when nothing better is known
        self._writes: dict[int, bytes] = {}  # whole blocks from a repack
        self._memo = memo
        self.root = self._parse(i_block, _ROOT, -1, 0, KEY_END)

    @classmethod
    def empty_root(cls) -> bytes:
        """The ``i_block`` of a file without blocks: a leaf root with no entries."""
        return _pack_header(0, _ROOT_MAX, 0, 0) + bytes(48)

    # -- decoding and verification ------------------------------------------------

    def _bad(self, block: int, msg: str) -> CorruptError:
        return CorruptError("extent tree", msg, inode=self.ino, block=block or None)

    def _parse(self, data: bytes, block: int, expect_depth: int, lo: int, hi: int) -> _Node:
        magic, entries, emax, depth, gen = EXTENT_HEADER.unpack_ints(data)
        if magic != EXT4_EXT_MAGIC:
            raise self._bad(block, f"bad extent header magic 0x{magic:04x}")
        capacity = _ROOT_MAX if block == _ROOT else self.cap
        if emax > capacity or entries > emax or emax == 0:
            raise self._bad(block, f"eh_entries {entries} / eh_max {emax} exceed node capacity {capacity}")
        if expect_depth < 0:
            if depth > MAX_DEPTH:
                raise self._bad(block, f"eh_depth {depth} exceeds {MAX_DEPTH}")
        elif depth != expect_depth:
            raise self._bad(block, f"eh_depth {depth}, expected {expect_depth}")
        if block != _ROOT and self.csum_seed is not None:
            tail = 12 + 12 * emax
            stored = int.from_bytes(data[tail : tail + 4], "little")
            want = crc32c_raw(self.csum_seed, data[:tail])
            if stored != want:
                raise self._bad(block, f"checksum 0x{stored:08x} != computed 0x{want:08x}")
        node = _Node(block, depth, emax, gen)
        prev = lo
        body = data[12 : 12 + 12 * entries]
        if depth == 0:
            for k, (ee_block, ee_len, hi16, lo32) in enumerate(_EXTENT_ST.iter_unpack(body)):
                unwritten = ee_len > INIT_MAX_LEN
                length = ee_len - INIT_MAX_LEN if unwritten else ee_len
                start = (hi16 << 32) | lo32
                if length == 0:
                    raise self._bad(block, f"extent {k} has zero length")
                if ee_block < prev or ee_block + length > hi:
                    raise self._bad(block, f"extent {k} (logical {ee_block}+{length}) out of order "
                                           f"or outside [{lo}, {hi})")
                if start == 0 or start + length > self.blocks_count:
                    raise self._bad(block, f"extent {k} maps blocks {start}+{length} outside the filesystem")
                node.extents.append(make_extent(ee_block, length, start, unwritten))
                prev = ee_block + length
            return node
        if entries == 0:
            raise self._bad(block, "index node without entries")
        for k, (ei_block, leaf_lo, leaf_hi, _unused) in enumerate(_INDEX_ST.iter_unpack(body)):
            child = (leaf_hi << 32) | leaf_lo
            if (k and ei_block <= prev) or ei_block < lo or ei_block >= hi:
                raise self._bad(block, f"index {k} (logical {ei_block}) out of order or outside [{lo}, {hi})")
            if child == 0 or child >= self.blocks_count:
                raise self._bad(block, f"index {k} points at block {child} outside the filesystem")
            node.index.append((ei_block, child))
            prev = ei_block
        return node

    def _decode(self, block: int, depth: int, lo: int, hi: int) -> _Node:
        """Tree block ``block``, verified; decoded once per contents thanks to the writer's memo."""
        data = self.io.read(block)
        memo = self._memo
        hit = memo.get(block) if memo is not None else None
        if hit is not None and hit[0] is data and hit[1] == self.ino and hit[2] == self.csum_seed:
            # Same bytes object: same contents, verified when decoded or built by an editor.  Only
            # the range the parent now gives is left to check.
            m = hit[3]
            if m.depth == depth and (m.count == 0 or (m.first_key >= lo and _last_end(m) <= hi)):
                return _Node(block, m.depth, m.emax, m.generation, list(m.extents), list(m.index))
        node = self._parse(data, block, depth, lo, hi)
        self._remember(block, data, node)
        return node

    def _remember(self, block: int, data: bytes, node: _Node) -> None:
        memo = self._memo
        if memo is None:
            return
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[block] = (data, self.ino, self.csum_seed,
                       _Node(block, node.depth, node.emax, node.generation, list(node.extents), list(node.index)))

    def _child(self, parent: _Node, i: int, lo: int, hi: int) -> _Node:
        """Child ``i`` of ``parent``, read and verified once per editor."""
        key, block = parent.index[i]
        node = self._nodes.get(block)
        if node is None:
            c_lo = key if i else lo
            c_hi = parent.index[i + 1][0] if i + 1 < len(parent.index) else hi
            node = self._decode(block, parent.depth - 1, c_lo, c_hi)
            self._nodes[block] = node
        elif node.depth != parent.depth - 1:
            raise self._bad(block, "extent block is referenced twice")
        return node

    def _path(self, x: int) -> list[_Step]:
        """The nodes from the root to the leaf whose key range holds logical block ``x``."""
        node = self.root
        lo, hi = 0, KEY_END
        path: list[_Step] = []
        while node.depth:
            i = max(bisect.bisect_right(node.index, x, key=_FIRST) - 1, 0)
            path.append(_Step(node, i))
            child = self._child(node, i, lo, hi)
            if i:
                lo = node.index[i][0]
            if i + 1 < len(node.index):
                hi = node.index[i + 1][0]
            node = child
        path.append(_Step(node, bisect.bisect_right(node.extents, x, key=_LOGICAL) - 1))
        return path

    @staticmethod
    def _next_key(path: list[_Step]) -> int | None:
        """The first key of the leaf after the one ``path`` ends in (None for the last leaf)."""
        for step in reversed(path[:-1]):
            if step.idx + 1 < len(step.node.index):
                return step.node.index[step.idx + 1][0]
        return None

    # -- queries --------------------------------------------------------------------

    def mapped(self, lo: int, hi: int) -> list[Extent]:
        """The extents inside ``[lo, hi)``, cut at its edges, in logical order."""
        out: list[Extent] = []
        x = lo
        while x < hi:
            path = self._path(x)
            leaf = path[-1].node.extents
            k = bisect.bisect_right(leaf, x, key=lambda e: e.end)
            for e in leaf[k:]:
                if e.logical >= hi:
                    return out
                out.append(_clip(e, lo, hi))
            nk = self._next_key(path)
            if nk is None or nk >= hi or nk <= x:
                return out
            x = nk
        return out

    def goal(self, lblock: int, default: int) -> int:
        """Where a block for logical ``lblock`` should go: after the extent before it, else ``default``."""
        step = self._path(lblock)[-1]
        leaf = step.node.extents
        if step.idx >= 0:
            e = leaf[step.idx]
            return e.physical + (lblock - e.logical)
        if leaf:
            return max(leaf[0].physical - (leaf[0].logical - lblock), 0)
        return default

    @property
    def depth(self) -> int:
        return self.root.depth

    # -- edits ---------------------------------------------------------------------

    def replace(self, lo: int, hi: int, new: list[Extent]) -> None:
        """Map ``[lo, hi)`` to ``new`` (sorted extents inside it; gaps become holes).

        The old mappings of the range are dropped from the tree, not freed:
        the caller knows which blocks it reuses.
        """
        if hi <= lo:
            return
        pieces: list[Extent] = []
        for e in new:
            pieces.extend(split_long(e))
        if pieces:
            self._goal = pieces[0].physical
        # Leaves after the one holding ``lo`` lose what the range covers, until one leaf holds it all.
        while True:
            pa = self._path(lo)
            pb = self._path(hi - 1)
            leaf_b = pb[-1].node
            if leaf_b is pa[-1].node:
                break
            keep: list[Extent] = []
            for e in leaf_b.extents:
                if e.end <= hi:
                    continue
                keep.append(_clip(e, hi, KEY_END) if e.logical < hi else e)
            leaf_b.extents = keep
            self._touch(leaf_b)
            self._suspect = True
            if keep:
                self._fix_keys(pb, len(pb) - 1)
                # Its key now starts at or after ``hi``; if it does not, the next round would find the
                # same leaf again (a loop), so an index that does not follow its child is corruption.
                if pb[-2].node.index[pb[-2].idx][0] < hi:
                    raise self._bad(pb[-2].node.block, f"index key below the first extent of block {leaf_b.block}")
            else:
                self._delete(pb, len(pb) - 1)
        path = pa
        leaf = path[-1].node
        ext = leaf.extents
        i0 = bisect.bisect_right(ext, lo, key=lambda e: e.end)
        i1 = bisect.bisect_left(ext, hi, key=_LOGICAL)
        mid: list[Extent] = []
        if i0 < i1 and ext[i0].logical < lo:
            mid.append(_clip(ext[i0], 0, lo))
        mid.extend(pieces)
        if i0 < i1 and ext[i1 - 1].end > hi:
            mid.append(_clip(ext[i1 - 1], hi, KEY_END))
        start = max(i0 - 1, 0)
        stop = min(i1 + 1, len(ext))
        merged = _merge_run(ext[start:i0] + mid + ext[i1:stop])
        old_count = len(ext)
        old_first = ext[0].logical if ext else None
        leaf.extents = ext[:start] + merged + ext[stop:]
        if len(leaf.extents) == old_count and leaf.extents == ext:
            return
        self._touch(leaf)
        if len(leaf.extents) < old_count or (leaf.count < leaf.emax and not self._rightmost(path, len(path) - 1)):
            # Fewer entries, or a non-full leaf away from the right edge (a tree someone else
            # left loose, the kernel for one): e2fsck may want it packed.
            self._suspect = True
        if not leaf.extents:
            self._delete(path, len(path) - 1)
            return
        if leaf.extents[0].logical != old_first:
            self._fix_keys(path, len(path) - 1)
        if leaf.count > leaf.emax:
            self._split(path, len(path) - 1)

    def truncate(self, keep: int) -> list[Extent]:
        """Drop every mapping at or after logical block ``keep``; the dropped extents (to free)."""
        removed: list[Extent] = []
        while True:
            path = self._path(KEY_END - 1)
            leaf = path[-1].node
            ext = leaf.extents
            if not ext:
                if len(path) == 1:
                    break
                self._delete(path, len(path) - 1)
                continue
            if ext[-1].end <= keep:
                break
            k = bisect.bisect_right(ext, keep, key=lambda e: e.end)
            rest = ext[:k]
            for e in ext[k:]:
                if e.logical < keep:
                    rest.append(_clip(e, 0, keep))
                removed.append(_clip(e, keep, KEY_END))
            leaf.extents = rest
            self._touch(leaf)
            self._suspect = True
            if rest:
                break
            self._delete(path, len(path) - 1)
        self._shrink()
        return removed

    # -- structure -------------------------------------------------------------------

    def _touch(self, node: _Node) -> None:
        if node.block != _ROOT:
            self._dirty.add(node.block)

    def _fix_keys(self, path: list[_Step], level: int) -> None:
        """The first key of ``path[level]`` changed: correct the index keys above it."""
        for k in range(level - 1, -1, -1):
            parent = path[k].node
            i = path[k].idx
            first = path[k + 1].node.first_key
            if parent.index[i][0] == first:
                return
            parent.index[i] = (first, parent.index[i][1])
            self._touch(parent)
            if i:
                return

    def _alloc(self, near: int) -> int:
        block = self.io.alloc(near or self._goal)
        self.nodes_delta += 1
        return block

    def _free(self, node: _Node) -> None:
        self._nodes.pop(node.block, None)
        self._dirty.discard(node.block)
        self._writes.pop(node.block, None)
        self.io.free(node.block)
        self.nodes_delta -= 1

    @staticmethod
    def _rightmost(path: list[_Step], level: int) -> bool:
        """Whether ``path[level]`` is the last node of its level."""
        return all(s.idx == s.node.count - 1 for s in path[:level])

    def _split(self, path: list[_Step], level: int) -> None:
        """``path[level]`` holds more than ``eh_max`` entries: grow the root or split the node."""
        node = path[level].node
        if level == 0:
            if node.depth + 1 > MAX_DEPTH:
                raise error(errno.EFBIG, f"inode {self.ino}: extent tree would exceed depth {MAX_DEPTH}")
            child = _Node(self._alloc(self._goal), node.depth, self.cap, 0, node.extents, node.index)
            self._nodes[child.block] = child
            self._touch(child)
            node.extents, node.index = [], [(child.first_key, child.block)]
            node.depth += 1
            path[0:1] = [_Step(node, 0), _Step(child, path[0].idx)]
            level = 1
            node = child
            if node.count <= node.emax:
                return
        parent_step = path[level - 1]
        parent = parent_step.node
        rightmost = self._rightmost(path, level)
        n = node.count
        if rightmost:
            # Appends: the left part stays full, the overflow starts the new rightmost node.
            cuts = list(range(0, n, node.emax))
        else:
            self._suspect = True
            parts = -(-n // node.emax)
            cuts = [n * j // parts for j in range(parts)]
        bounds = list(zip(cuts, cuts[1:] + [n]))
        siblings: list[_Node] = []
        near = node.block
        for a, b in bounds[1:]:
            sib = _Node(self._alloc(near), node.depth, self.cap, 0, node.extents[a:b], node.index[a:b])
            near = sib.block
            self._nodes[sib.block] = sib
            self._touch(sib)
            siblings.append(sib)
        a, b = bounds[0]
        node.extents, node.index = node.extents[a:b], node.index[a:b]
        self._touch(node)
        new_entries = [(sib.first_key, sib.block) for sib in siblings]
        at = parent_step.idx + 1
        parent.index[at:at] = new_entries
        self._touch(parent)
        if parent.count > parent.emax:
            self._split(path, level - 1)

    def _delete(self, path: list[_Step], level: int) -> None:
        """``path[level]`` is empty: free it and drop its index entry (recursively)."""
        node = path[level].node
        if level == 0:
            node.depth, node.extents, node.index = 0, [], []
            return
        self._free(node)
        step = path[level - 1]
        del step.node.index[step.idx]
        self._touch(step.node)
        if not step.node.index:
            self._delete(path, level - 1)
        elif step.idx == 0:
            self._fix_keys(path, level - 1)

    def _shrink(self) -> None:
        """Pull single children whose entries fit into the root back into ``i_block``."""
        root = self.root
        while root.depth and len(root.index) == 1:
            child = self._child(root, 0, 0, KEY_END)
            if child.count > root.emax:
                return
            root.depth, root.extents, root.index = child.depth, child.extents, child.index
            self._free(child)

    # -- e2fsck's optimisation rules, and the repack --------------------------------------

    def _levels(self) -> tuple[list[int], list[int], list[Extent], list[int]]:
        """Per level (root = 0): entries, e2fsck's notion of room; all extents; all tree blocks."""
        num = [0] * (self.root.depth + 1)
        room = [0] * (self.root.depth + 1)
        extents: list[Extent] = []
        blocks: list[int] = []
        seen: set[int] = set()

        def walk(node: _Node, level: int, lo: int, hi: int) -> None:
            if node.block in seen:
                raise self._bad(node.block, "extent block is referenced twice")
            if node.block != _ROOT:
                seen.add(node.block)
            num[level] += node.count
            # e2fsck counts a non-full block as one entry smaller (its split-on-append wart).
            room[level] += node.emax - (1 if level and node.count < node.emax else 0)
            if not node.depth:
                extents.extend(node.extents)
                return
            for i, (key, block) in enumerate(node.index):
                blocks.append(block)
                c_hi = node.index[i + 1][0] if i + 1 < len(node.index) else hi
                walk(self._child(node, i, lo, hi), level + 1, key if i else lo, c_hi)

        walk(self.root, 0, 0, KEY_END)
        return num, room, extents, blocks

    def _compact_enough(self, num: list[int], room: list[int]) -> bool:
        for i in range(len(num)):
            if room[i] - num[i] > self.cap:
                return False  # "could be narrower"
            if any(num[i] < room[j] for j in range(i)):
                return False  # "could be shorter"
        return True

    def _repack(self) -> None:
        """Rewrite the whole tree packed, in the blocks it has (plus or minus the difference)."""
        num, room, extents, blocks = self._levels()
        if self._compact_enough(num, room):
            return
        flat = _merge_run(extents)
        need = tree_nodes_needed(len(flat), self.block_size)
        blocks = sorted(blocks)
        while len(blocks) < need:
            blocks.append(self._alloc(blocks[-1] + 1 if blocks else self._goal))
        for b in blocks[need:]:
            self._free(_Node(b, 0, 0, 0))
        root, out = build_extent_tree(flat, blocks[:need], self.block_size, self.csum_seed)
        self._nodes.clear()
        self._dirty.clear()
        self._writes = out
        self.root = self._parse(root, _ROOT, -1, 0, KEY_END)

    # -- output --------------------------------------------------------------------------

    @property
    def suspect(self) -> bool:
        """Whether an edit may have left the tree less packed than e2fsck likes (see the header)."""
        return self._suspect

    def compact(self) -> None:
        """Check e2fsck's optimisation rules over the whole tree; repack it if one fails."""
        self._shrink()
        self._repack()
        self._suspect = False

    def finish(self) -> bytes:
        """Put every changed node into the transaction; the new 60-byte ``i_block``."""
        for block, data in self._writes.items():
            if self.io.read(block) != data:
                self.io.write(block, data)
        self._writes = {}
        for block in sorted(self._dirty):
            node = self._nodes[block]
            data = self._pack(node)
            self.io.write(block, data)
            self._remember(block, data, node)
        self._dirty.clear()
        return self._pack(self.root)

    def _pack(self, node: _Node) -> bytes:
        body = bytearray(_pack_header(node.count, node.emax, node.depth, node.generation))
        if node.depth:
            for key, child in node.index:
                body += _INDEX_ST.pack(key, child & 0xFFFFFFFF, child >> 32, 0)
        else:
            pack = _EXTENT_ST.pack
            body += b"".join(pack(e.logical, e.length + (INIT_MAX_LEN if e.unwritten else 0), e.physical >> 32,
                                  e.physical & 0xFFFFFFFF) for e in node.extents)
        body += bytes(12 + 12 * node.emax - len(body))
        if node.block == _ROOT:
            return bytes(body) + bytes(60 - len(body))
        tail = crc32c_raw(self.csum_seed, bytes(body)) if self.csum_seed is not None else 0
        body += struct.pack("<I", tail)
        return bytes(body) + bytes(self.block_size - len(body))

    def all_extents(self) -> list[Extent]:
        """Every extent of the tree, in logical order (reads every node)."""
        return self._levels()[2]


def _pack_header(entries: int, emax: int, depth: int, generation: int) -> bytes:
    # (eh_magic, eh_entries, eh_max, eh_depth, eh_generation): EXTENT_HEADER's table order.
    return EXTENT_HEADER.pack_values(EXT4_EXT_MAGIC, entries, emax, depth, generation)
