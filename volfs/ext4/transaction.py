"""The write transaction: how every metadata change reaches the image.

Theory of operation.  An operation (create, write, rename, ...) never
writes metadata to the device.  It reads blocks through the block cache and
*puts* new contents of whole blocks into the running transaction
(:attr:`BlockCache.dirty`, which reads consult first).  File data is
different: it moves straight to the device in one ``pwrite`` per contiguous
run (:meth:`Transaction.write_data`), always into blocks that the on-disk
metadata does not yet point at, or that already belong to the file.

Inode records are rewritten several times per file between commits (its
creation, its data, each attribute change, its directory's times), so they
are *deferred* instead (:meth:`Transaction.defer`): kept as bytes per place
and patched into their block only at the commit, or as soon as anything
reads that block through the cache (:meth:`BlockCache.read` has the
transaction materialise it first). Readers cannot tell a deferred record
from a put one; the gain is one block copy per commit instead of per change.
Group descriptors change on every allocation; theirs wait as a
:class:`LazyRecord`, whose bytes (and checksum) are made only when patched in.
(Deferring does not move the cache's epoch: only the record's own decoded
entry depends on those bytes, and the store replaces it. On a hostile image
that keeps other metadata inside an inode table, a structure decoded from
such a block sees the record once it is patched in, at the latest at the
commit; every decode is still checked, so that is stale garbage at worst.)

Operations are atomic in memory: :meth:`begin` opens an undo log that
records the previous dirty contents of every block the operation touches
(and the previous deferred record of every place it defers to);
:meth:`abort` puts them back (an ENOSPC in the middle of an operation leaves
nothing half done), :meth:`end` drops the log.

:meth:`commit` makes the transaction durable, in this order:

0. the deferred records are patched into their blocks (puts);
1. *data*: fsync, so file data is on disk before any metadata that points at it
   (ordered mode);
2. *collect*: the dirty blocks, sorted; **the jbd2 journal slots in here**:
   the next issue writes these blocks as one journal transaction
   (descriptor, copies, commit block), fsyncs, and only then goes on;
3. *write in place*: adjacent dirty blocks coalesced into one ``pwrite``;
4. fsync; the blocks become clean cached copies.

Without a journal a crash between steps 3 and 4 can leave metadata half
written; the filesystem is therefore marked not clean (``s_state`` without
VALID) while it is open for writing, as fuse2fs does, so the next e2fsck
checks it.  Blocks freed by an uncommitted transaction are never handed out
again before it commits (:attr:`freed`), so new data can never land in a
block that on-disk metadata still points at.
"""

from __future__ import annotations

from typing import Protocol

from volfs.ext4.cache import BlockCache
from volfs.ext4.device import WritableBlockDevice

__all__ = ["LazyRecord", "Transaction"]


class LazyRecord(Protocol):
    """A deferred record whose bytes are worked out only when it is patched in.

    For records whose encoding costs more than keeping their decoded form (a
    group descriptor changes on every allocation, and its bytes carry a
    checksum): :meth:`encode` gets the ``size`` bytes it replaces.
    """

    @property
    def size(self) -> int: ...

    def encode(self, old: bytes) -> bytes: ...


Pending = tuple[int, bytes | LazyRecord]
"""A deferred record: (owner, its bytes or a :class:`LazyRecord`)."""


class Transaction:
    __slots__ = ("cache", "device", "_undo", "_undo_freed", "freed", "data_dirty", "commits", "blocks_written",
                 "deferred", "_undo_deferred")

    def __init__(self, cache: BlockCache, device: WritableBlockDevice) -> None:
        self.cache = cache
        self.device = device
        self._undo: dict[int, bytes | None] | None = None
        self._undo_freed: int = 0
        # (start, count) runs freed since the last commit: not reusable until it.
        self.freed: list[tuple[int, int]] = []
        self.data_dirty = False
        self.commits = 0
        self.blocks_written = 0
        # Records not yet patched into their blocks (block -> {offset: (owner, record)}): see defer().
        self.deferred: dict[int, dict[int, Pending]] = {}
        self._undo_deferred: list[tuple[int, int, Pending | None]] | None = None
        cache.deferred = self.deferred
        cache.materialise = self.materialise

    # -- operations --------------------------------------------------------

    def begin(self) -> None:
        self._undo = {}
        self._undo_freed = len(self.freed)
        self._undo_deferred = []

    def end(self) -> None:
        self._undo = None
        self._undo_deferred = None

    def abort(self) -> None:
        undo = self._undo
        self._undo = None
        log = self._undo_deferred
        self._undo_deferred = None
        if log:
            deferred = self.deferred
            changed = self.cache.changed
            for block, offset, prev in reversed(log):
                # What a read of the block returns changes back: whoever was handed the record
                # (the read side's inode cache) must look at the block again.
                changed(block)
                if prev is None:
                    pend = deferred.get(block)
                    if pend is not None:
                        pend.pop(offset, None)
                        if not pend:
                            del deferred[block]
                else:
                    deferred.setdefault(block, {})[offset] = prev
        if undo is None:
            return
        dirty = self.cache.dirty
        for block, old in undo.items():
            if old is None:
                dirty.pop(block, None)
            else:
                dirty[block] = old
        del self.freed[self._undo_freed :]

    @property
    def pending(self) -> int:
        """Dirty metadata blocks waiting for the commit (counting those with deferred records)."""
        return len(self.cache.dirty) + len(self.deferred)

    # -- blocks ------------------------------------------------------------

    def read(self, block: int, structure: str = "block", inode: int | None = None) -> bytes:
        return self.cache.read(block, structure, inode)

    def put(self, block: int, data: bytes | bytearray) -> None:
        """The new contents of metadata block ``block`` (a whole block)."""
        if len(data) != self.cache.block_size:
            raise ValueError(f"block {block}: {len(data)} bytes is not one block")
        if self.deferred and block in self.deferred:
            self._drop_deferred(block)  # the whole block, written after them, supersedes them
        dirty = self.cache.dirty
        undo = self._undo
        if undo is not None and block not in undo:
            undo[block] = dirty.get(block)
        dirty[block] = bytes(data)

    def defer(self, block: int, offset: int, data: bytes | LazyRecord, owner: int) -> bool:
        """Put ``data`` at ``offset`` of metadata block ``block`` later: at the commit, or as soon as
        anything reads the block (:meth:`BlockCache.read` asks :meth:`materialise`), whichever is first.

        For small records rewritten many times between commits (inode records, ``owner`` their
        number; group descriptors, as a :class:`LazyRecord`, ``owner`` minus one minus their
        group): each change costs a dict entry instead of a copy of the whole block. Undone with
        the operation like a put. False, and nothing done, if a record of another owner is waiting
        at the same place (a hostile image whose inode tables overlap): then the caller puts it now,
        so that what its readers were given is checked against the block's bytes again.
        """
        pend = self.deferred.get(block)
        if pend is None:
            pend = self.deferred[block] = {}
            prev = None
        else:
            prev = pend.get(offset)
            if prev is not None and prev[0] != owner:
                return False
        log = self._undo_deferred
        if log is not None:
            log.append((block, offset, prev))
        pend[offset] = (owner, data)
        return True

    def _drop_deferred(self, block: int) -> dict[int, Pending]:
        pend = self.deferred.pop(block)
        log = self._undo_deferred
        if log is not None:
            log.extend((block, off, data) for off, data in pend.items())
        return pend

    def materialise(self, block: int) -> bytes:
        """Patch ``block``'s deferred records into it (a put); returns its new contents."""
        pend = self._drop_deferred(block)
        buf = bytearray(self.cache.read(block))
        for off, (_owner, data) in pend.items():
            if not isinstance(data, bytes):
                data = data.encode(bytes(buf[off : off + data.size]))
            buf[off : off + len(data)] = data
        self.put(block, buf)
        return self.cache.dirty[block]

    def patch(self, block: int, offset: int, data: bytes, structure: str = "block",
              inode: int | None = None) -> bytes:
        """Put metadata block ``block`` with ``data`` in place of its bytes at ``offset``; returns the new
        contents (one copy of the block: joined from views of the current one around ``data``)."""
        old = memoryview(self.read(block, structure, inode))
        new = b"".join((old[:offset], data, old[offset + len(data) :]))
        self.put(block, new)  # (bytes already: put keeps this very object)
        return new

    def note_freed(self, start: int, count: int) -> None:
        self.freed.append((start, count))

    def write_data(self, block: int, *parts: bytes | bytearray | memoryview) -> None:
        """File data for the blocks from ``block``: ``parts`` one after the other, straight to the device
        (ordered), without joining them first."""
        bs = self.cache.block_size
        n = sum(map(len, parts))
        if n == 0:
            return
        if len(parts) == 1:
            self.device.pwrite(parts[0], block * bs)
        else:
            self.device.pwritev(parts, block * bs)
        self.cache.forget_range(block, (n + bs - 1) // bs)
        self.data_dirty = True

    # -- commit ------------------------------------------------------------

    def commit(self) -> int:
        """Write the transaction (see the module header); returns blocks written."""
        if self._undo is not None:
            raise RuntimeError("commit inside an operation")
        for block in list(self.deferred):
            self.materialise(block)
        if self.data_dirty:
            self.device.sync()
            self.data_dirty = False
        dirty = self.cache.dirty
        if not dirty:
            self.freed.clear()
            return 0
        blocks = sorted(dirty)
        # (The journal writes ``blocks`` as one transaction here, then checkpoints below.)
        bs = self.cache.block_size
        i = 0
        while i < len(blocks):
            j = i + 1
            while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and j - i < 256:
                j += 1
            self.device.pwrite(b"".join(dirty[b] for b in blocks[i:j]), blocks[i] * bs)
            i = j
        self.device.sync()
        for b in blocks:
            self.cache.remember(b, dirty[b])
        dirty.clear()
        self.freed.clear()
        self.commits += 1
        self.blocks_written += len(blocks)
        return len(blocks)
