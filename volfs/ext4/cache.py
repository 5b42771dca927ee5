"""The block cache: every metadata block the engine reads comes through here.

Theory of operation.  A :class:`BlockCache` sits on one :class:`BlockDevice`
and hands out whole filesystem blocks as immutable ``bytes``.  Beneath the
LRU of clean blocks lies an *overlay*: a map from block number to contents
that supersede the device.  On a read-only open the journal's committed
transactions are replayed into this overlay, so the image is shown as it
will be after recovery without writing it.

The write side slots in at the same place: a transaction
(:mod:`volfs.ext4.transaction`) collects dirty metadata blocks in
:attr:`BlockCache.dirty` (reads see them first), then commits them (to the
journal, once it is written, and) in place, after which they join the LRU
as clean blocks.  Records the transaction has *deferred* (small changes not
yet patched into their block, :attr:`BlockCache.deferred`) are patched in by
the transaction before a read of their block returns.  File data never
passes through ``dirty``: it is written straight to the device in whole
runs, and :meth:`forget_range` drops any stale cached copy of the blocks it
overwrites.

``reads`` counts device reads of metadata blocks (tests use it to prove
that an htree lookup touches O(log n) blocks); ``run_reads`` counts data
run reads.

The epoch.  Decoded structures above this cache (parsed inodes, group
descriptors, runlists, directory name indexes in :mod:`volfs.ext4.filesystem`)
must never outlive the bytes they were decoded from.  :attr:`BlockCache.epoch`
is a counter that moves whenever the contents :meth:`BlockCache.read` would
return for some block may have changed, and the block is stamped with the
new epoch (:meth:`changed`).  The events: any change to :attr:`dirty` (a map
that reports its own mutations, so the transaction code needs no
cooperation), a block taken in by :meth:`remember` that is not the dirty copy
already being served, and data written over blocks (:meth:`forget_range`).
Events that touch everything (a new overlay, a very large data write) move
:attr:`floor` instead (:meth:`changed_all`), as does the stamp table when it
is full.  Evicting a clean block moves nothing: the device still holds the
same bytes, so a re-read returns equal contents.

A decoded structure remembers the epoch at which it was last known exact
and the blocks it came from.  Same epoch: still exact.  Otherwise
:meth:`unchanged` (epoch not below the floor, no block stamped later) proves
it exact without a read; failing that, it must be re-checked against the
bytes it came from (identity of the ``bytes`` object this cache returns,
else equality of the raw record) before it is trusted again.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from volfs.errors import CorruptError
from volfs.ext4.device import BlockDevice

if TYPE_CHECKING:
    from volfs.ext4.transaction import Pending

__all__ = ["BlockCache"]

# Per-block change stamps kept before they are folded into the floor (memory bound).
_MAX_TRACKED_BLOCKS = 1 << 16
# A data write over more blocks than this moves the floor instead of stamping each block.
_MAX_TRACKED_RUN = 256


class _DirtyMap(dict[int, bytes]):
    """The transaction's dirty blocks; every mutation is reported to the owning cache.

    A plain dict for readers (``get``, ``[]``, iteration stay the C
    implementations); only the mutators are wrapped.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: BlockCache) -> None:
        super().__init__()
        self._owner = owner

    def __setitem__(self, block: int, data: bytes) -> None:
        dict.__setitem__(self, block, data)
        self._owner.changed(block)

    def __delitem__(self, block: int) -> None:
        dict.__delitem__(self, block)
        self._owner.changed(block)

    def pop(self, block: int, *default: bytes | None) -> bytes | None:  # type: ignore[override]
        self._owner.changed(block)
        return dict.pop(self, block, *default)

    def popitem(self) -> tuple[int, bytes]:
        item = dict.popitem(self)
        self._owner.changed(item[0])
        return item

    def clear(self) -> None:
        for block in self:
            self._owner.changed(block)
        dict.clear(self)

    def update(self, other: Mapping[int, bytes], /) -> None:  # type: ignore[override]
        for block in other:
            self[block] = other[block]

    def setdefault(self, block: int, default: bytes) -> bytes:
        self._owner.changed(block)
        return dict.setdefault(self, block, default)

    def __ior__(self, other: Mapping[int, bytes]) -> _DirtyMap:  # type: ignore[override,misc]
        self.update(other)
        return self


class BlockCache:
    __slots__ = ("device", "block_size", "blocks_count", "capacity", "reads", "run_reads",
                 "_lru", "_overlay", "_overlay_keys", "dirty", "epoch", "floor", "_changed", "deferred",
                 "materialise")

    def __init__(self, device: BlockDevice, block_size: int, blocks_count: int, capacity: int = 2048) -> None:
        self.device = device
        self.block_size = block_size
        self.blocks_count = blocks_count
        self.capacity = capacity
        self.reads = 0
        self.run_reads = 0
        self._lru: OrderedDict[int, bytes] = OrderedDict()
        self._overlay: dict[int, bytes] = {}
        self._overlay_keys: list[int] = []
        self.epoch = 0
        self.floor = 0
        self._changed: dict[int, int] = {}
        self.dirty: dict[int, bytes] = _DirtyMap(self)
        # The transaction's records not yet patched into their blocks (empty without one), and how
        # it patches them in: a read of such a block does that first.
        self.deferred: dict[int, dict[int, Pending]] = {}
        self.materialise: Callable[[int], bytes] | None = None

    def set_overlay(self, blocks: dict[int, bytes]) -> None:
        """Install blocks that supersede the device (journal replay)."""
        self._overlay = dict(blocks)
        self._overlay_keys = sorted(self._overlay)
        self._lru.clear()
        self.changed_all()

    @property
    def overlay(self) -> dict[int, bytes]:
        return dict(self._overlay)

    def _check(self, block: int, count: int, structure: str, inode: int | None) -> None:
        if block < 0 or count < 0 or block + count > self.blocks_count:
            raise CorruptError(structure, f"block {block}+{count} lies outside the filesystem "
                               f"({self.blocks_count} blocks)", inode=inode, block=block)

    # -- change stamps (see "The epoch" in the module header) ---------------------

    def changed(self, block: int) -> None:
        """The bytes served for ``block`` may have changed: a new epoch, stamped on the block."""
        self.epoch += 1
        changed = self._changed
        if len(changed) >= _MAX_TRACKED_BLOCKS:
            # Bounded memory: forget the per-block stamps, and with them every older stamp's worth.
            changed.clear()
            self.floor = self.epoch
        changed[block] = self.epoch

    def changed_run(self, block: int, count: int) -> None:
        """:meth:`changed` of the ``count`` blocks from ``block``, as one event: one new epoch,
        stamped on each of them (nothing can look at the cache between the per-block events)."""
        self.epoch += 1
        changed = self._changed
        if len(changed) + count > _MAX_TRACKED_BLOCKS:
            changed.clear()
            self.floor = self.epoch
        changed.update(dict.fromkeys(range(block, block + count), self.epoch))

    def changed_all(self) -> None:
        """Anything served may have changed (a new overlay, a large data write)."""
        self.epoch += 1
        self.floor = self.epoch
        self._changed.clear()

    def unchanged(self, block: int, since: int) -> bool:
        """Whether the bytes served for ``block`` are still those served at epoch ``since``.

        True is a guarantee; False only means "read the block and compare".
        """
        return since >= self.floor and self._changed.get(block, 0) <= since

    def read(self, block: int, structure: str = "block", inode: int | None = None) -> bytes:
        """One metadata block, from the transaction, the overlay, the LRU or the device."""
        if self.deferred and block in self.deferred:
            return self.materialise(block)  # type: ignore[misc]
        d = self.dirty.get(block)
        if d is not None:
            return d
        hit = self._lru.get(block)
        if hit is not None:
            self._lru.move_to_end(block)
            return hit
        ov = self._overlay.get(block)
        if ov is not None:
            return ov
        self._check(block, 1, structure, inode)
        bs = self.block_size
        data = self.device.pread(bs, block * bs)
        self.reads += 1
        if len(data) != bs:
            raise CorruptError(structure, "block lies beyond the end of the image", inode=inode, block=block)
        self._lru[block] = data
        if len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return data

    def read_run(self, block: int, count: int, inode: int | None = None, *, byte_offset: int = 0,
                 size: int | None = None) -> bytes:
        """``size`` bytes starting ``byte_offset`` into the run of ``count`` blocks at ``block``.

        One device read for the whole run; overlay blocks inside it are
        patched in afterwards.
        """
        self._check(block, count, "file data", inode)
        bs = self.block_size
        total = count * bs
        if size is None:
            size = total - byte_offset
        if byte_offset < 0 or size < 0 or byte_offset + size > total:
            raise ValueError("range outside run")
        start = block * bs + byte_offset
        data = self.device.pread(size, start)
        self.run_reads += 1
        if len(data) != size:
            raise CorruptError("file data", "data lies beyond the end of the image", inode=inode, block=block)
        keys = self._overlay_keys
        if keys:
            first = block + byte_offset // bs
            last = block + (byte_offset + size - 1) // bs if size else first - 1
            i = bisect.bisect_left(keys, first)
            if i < len(keys) and keys[i] <= last:
                buf = bytearray(data)
                while i < len(keys) and keys[i] <= last:
                    b = keys[i]
                    src = self._overlay[b]
                    lo = max(b * bs, start)
                    hi = min((b + 1) * bs, start + size)
                    buf[lo - start : hi - start] = src[lo - b * bs : hi - b * bs]
                    i += 1
                data = bytes(buf)
        return data

    def drop(self) -> None:
        # Clean copies only: the device holds the same bytes, so the epoch stays.
        self._lru.clear()

    def clear_overlay(self) -> None:
        """Forget the overlay (once it has been written to the device)."""
        self._overlay = {}
        self._overlay_keys = []
        self._lru.clear()
        self.changed_all()

    def remember(self, block: int, data: bytes) -> None:
        """Keep a block just written to the device as a clean cached copy."""
        if self.dirty.get(block) is not data:
            # Not the copy already being served from the transaction: readers may see new bytes.
            self.changed(block)
        self._lru[block] = data
        self._lru.move_to_end(block)
        if len(self._lru) > self.capacity:
            self._lru.popitem(last=False)

    def forget_range(self, block: int, count: int) -> None:
        """Drop cached copies of ``count`` blocks from ``block`` (file data overwrote them)."""
        # The device bytes changed: whatever was decoded from these blocks is suspect.
        if count <= _MAX_TRACKED_RUN:
            self.changed_run(block, count)
        else:
            self.changed_all()
        lru = self._lru
        if not lru:
            return
        if count < len(lru):
            for b in range(block, block + count):
                lru.pop(b, None)
        else:
            for b in [b for b in lru if block <= b < block + count]:
                del lru[b]
