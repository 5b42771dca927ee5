"""Write-behind: consecutive appends through one write-only handle reach the backend as one write.

A write-only open bypasses the page cache (see ``VolfsOperations._file_info``),
so every ``write(2)`` arrives as its own WRITE request: ``tar`` sends 10 KiB at
a time, and each backend write of a disk volume is a block allocation, an
extent edit and an inode store. This module keeps at most one *run*: bytes
acknowledged to the kernel but not yet given to the backend, all for one
handle and contiguous, starting at the end of the file. The run is written
out ("drained") before the daemon handles any other request, so every other
request, of any process, sees exactly the state it would have seen without
the run. The only thing a run changes is when the backend does the work, and
so when a failure of that work can be reported:

- ENOSPC cannot happen at the drain: a run starts only when the whole run
  (plus room for extent-tree growth) is known to be free, and nothing else
  allocates before the drain, because any other request drains first. "Known"
  is a lower bound on the free blocks, so that a run does not cost a statfs
  (which sums every block group): the bound is measured, then lowered by an
  upper bound of what each request since may have allocated, and measured
  again only when it is too low for a run.
- Any other failure (EIO, a corrupt structure: EUCLEAN) is logged and reported
  by the next ``write`` or ``fsync`` on that handle, as the kernel reports a
  failed writeback at the next fsync. A ``close`` without ``fsync`` does not
  see it, as on ext4.

A SETATTR of the run's own file (tar's ``futimens`` right after the data)
goes to the backend with the run, as one write with attribute changes
(``drain``'s ``then``), so that the engine stores the file's record once. If
that combined write fails, the run is written alone and the SETATTR made
apart, so each failure is reported where it would have been without it.

Owner changes are made late too. ``tar`` changes each file's owner and
then its mode, in two SETATTRs back to back; made apart, they cost two
engine operations. An owner-only SETATTR (no mode, size or time) is
therefore answered at once, with the attributes it will give (those of the
file with the new owner, and a ctime taken now), and kept pending
(``owner``); a SETATTR of the same file that comes next takes it along
(``setattr_with_owner``: one backend call), and any other request makes it
first (``drain``), with the ctime it was answered with. Changing an owner
allocates nothing, so ENOSPC cannot happen; any other failure is logged.
After a failure, or a result other than the one answered (say, a ctime the
record stores in whole seconds only), the kernel is told to forget the
attributes it was given. If the combined call fails, the owner change is
made alone and then the second SETATTR, whose error is the one reported.
A pending owner change and a pending run never coexist: each is drained
before the other starts.

Only mounts that are the storage's sole writer use it (a disk volume): there,
nothing outside the daemon can look at the storage while a run is pending.
The daemon also drains about once a second, so an idle writer's bytes do not
wait for the next request.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import time
from collections.abc import Callable

from volfs.backend import Attr, Backend, FileHandle, Ino, SetAttr

__all__ = ["WriteBehind", "owner_only"]

log = logging.getLogger("volfs.fuse")

RUN_MAX = 1 << 20
"""The most bytes a run holds before it is written out (the backend gets one write of at most this)."""

REQUEST_BLOCKS = 32
"""At least what any request but a write can allocate: a directory insert that splits an htree leaf and
its index and deepens the directory's extent tree (at most 5 levels), plus a new inode's own block (a
directory's, a long symlink's) and an inherited ACL's xattr block: about 15; doubled."""

_LARGEST_START = 1 << 40
"""Runs start only below this offset, so that the backend's EFBIG cannot be what the drain meets."""


class _Run:
    __slots__ = ("fh", "ino", "offset", "chunks", "size", "room")

    def __init__(self, fh: int, ino: Ino, offset: int, room: int) -> None:
        self.fh = fh
        self.ino = ino
        self.offset = offset
        self.chunks: list[bytes] = []
        self.size = 0
        self.room = room


class _Owner:
    """An owner change answered but not yet made: the attributes before it and the ctime answered."""

    __slots__ = ("ino", "uid", "gid", "ctime_ns", "before")

    def __init__(self, ino: Ino, uid: int | None, gid: int | None, ctime_ns: int, before: Attr) -> None:
        self.ino = ino
        self.uid = uid
        self.gid = gid
        self.ctime_ns = ctime_ns
        self.before = before

    def answered(self) -> Attr:
        """The attributes the SETATTR was answered with."""
        b = self.before
        return dataclasses.replace(b, uid=b.uid if self.uid is None else self.uid,
                                   gid=b.gid if self.gid is None else self.gid, ctime_ns=self.ctime_ns)


def owner_only(changes: SetAttr) -> bool:
    """Whether ``changes`` change the owner (uid, gid or both) and nothing else."""
    return (changes.uid is not None or changes.gid is not None) and changes.mode is None \
        and changes.size is None and changes.atime_ns is None and changes.mtime_ns is None


class WriteBehind:
    """At most one pending run of appended bytes for one handle, or one pending owner change
    (see the module header).

    ``invalidate(ino)``: make the kernel forget the attributes it caches for
    ``ino`` (after an owner change that did not give what was answered).
    """

    def __init__(self, backend: Backend, invalidate: Callable[[Ino], None] | None = None) -> None:
        self._backend = backend
        self._invalidate = invalidate
        self.run: _Run | None = None
        self.owner: _Owner | None = None
        self._errors: dict[int, OSError] = {}
        self._floor: int | None = None  # at most this many blocks are free (None: not measured yet)
        self._bsize = 4096

    def _blocks_for(self, nbytes: int) -> int:
        """At least the blocks a write of ``nbytes`` can allocate: its data blocks (one more when it
        straddles block edges), an extent per block at worst and the tree blocks they fill, REQUEST_BLOCKS."""
        n = -(-nbytes // self._bsize) + 1
        return n + n // 32 + REQUEST_BLOCKS

    def charge(self, blocks: int = REQUEST_BLOCKS) -> None:
        """A request that may allocate up to ``blocks`` is about to run: lower the free bound."""
        if self._floor is not None:
            self._floor -= blocks

    def charge_write(self, nbytes: int) -> None:
        """A write of ``nbytes`` is about to go to the backend directly."""
        self.charge(self._blocks_for(nbytes))

    def _room(self, nbytes: int) -> int:
        """How large a run may grow, 0 if it cannot even hold ``nbytes``."""
        if self._floor is None or self._floor < self._blocks_for(RUN_MAX):
            s = self._backend.statfs()
            self._bsize, self._floor = s.bsize, s.bfree
        floor = self._floor
        if floor >= self._blocks_for(RUN_MAX):
            return RUN_MAX
        room = min(RUN_MAX, max(floor - REQUEST_BLOCKS - 2, 0) * 32 // 33 * self._bsize)
        while room > 0 and self._blocks_for(room) > floor:
            room -= self._bsize
        return room if room >= nbytes else 0

    def extend(self, fh: int, offset: int, data: bytes) -> bool:
        """Add ``data`` to the pending run if it continues it and fits; False: the caller must drain."""
        run = self.run
        if run is None or run.fh != fh or offset != run.offset + run.size or run.size + len(data) > run.room:
            return False
        run.chunks.append(bytes(data))
        run.size += len(data)
        return True

    def start(self, fh: int, ino: Ino, offset: int, data: bytes) -> bool:
        """Begin a run with ``data`` if it appends at the end of the file and the space is free.

        There must be no pending run. False: the caller writes ``data`` through
        (which also reports ENOSPC at this very write).
        """
        assert self.run is None and self.owner is None
        if len(data) >= RUN_MAX or offset >= _LARGEST_START or self._backend.getattr(ino).size != offset:
            return False
        room = self._room(len(data))
        if not room:
            return False
        run = _Run(fh, ino, offset, room)
        run.chunks.append(bytes(data))
        run.size = len(data)
        self.run = run
        return True

    def drain(self, then: SetAttr | None = None) -> bool:
        """Make the pending owner change, then give the pending run (if any) to the backend; a failure is
        kept for the run's handle (logged for an owner change), never raised.

        ``then``: a SETATTR of the run's file, which the caller is about to
        make: given to the backend with the run (``Backend.write``'s ``then``),
        so that the ext4 engine stores the file's record once for both, unless
        it changes the size or nothing. True: it was made (the caller answers
        with the file's attributes). False: the caller makes it itself, as
        after a plain drain. That is also what happens when the write with
        the changes fails: the run is then written alone (so its failure is
        the run's, reported as any other drain's) unless the file's size shows
        the write stood (a backend that does the two in one step leaves
        neither done), and the caller's own setattr reports the changes' error.
        """
        if self.owner is not None:
            self._make_owner()
        run = self.run
        if run is None:
            return False
        self.run = None
        data = b"".join(run.chunks)
        self.charge_write(len(data))
        made = then is not None and then.size is None and not then.is_empty()
        try:
            done: int | None = None
            if made:
                try:
                    done = self._backend.write(FileHandle(run.fh), run.offset, data, then)
                except OSError:
                    if self._stood(run):
                        return False  # the caller's setattr meets the changes' error again
                    made = False
            if done is None:
                done = self._backend.write(FileHandle(run.fh), run.offset, data)
            if done != len(data):
                raise OSError(errno.EIO, f"the backend wrote {done} of {len(data)} bytes")
        except OSError as exc:
            log.warning("write-behind of %d bytes at offset %d of inode %d failed (reported to the handle's "
                        "next write or fsync): %s", len(data), run.offset, run.ino, exc)  # fmt: skip
            self._errors.setdefault(run.fh, exc)
        except Exception:
            # A bug, not a storage error. Drains run outside any handler's error mapping (before
            # a request, from the idle task), where an exception would end the FUSE main loop.
            log.exception("internal error in the write-behind of inode %d", run.ino)
            self._errors.setdefault(run.fh, OSError(errno.EIO, "internal error while writing behind"))
            made = False  # (whether the changes were made is unknown: the caller makes them)
        return made

    # -- owner changes ---------------------------------------------------------

    def defer_owner(self, ino: Ino, changes: SetAttr) -> tuple[Attr, int]:
        """Answer the owner-only SETATTR ``changes`` of ``ino`` now and make it later. Returns the
        attributes before it and the ctime to answer with: the answer is those, with the new owner
        and that ctime. Nothing may be pending (the caller drains first)."""
        assert self.run is None and self.owner is None and owner_only(changes)
        before = self._backend.getattr(ino)
        now = time.time_ns()
        self.owner = _Owner(ino, changes.uid, changes.gid, now, before)
        return before, now

    def setattr_with_owner(self, ino: Ino, changes: SetAttr, fh: FileHandle | None) -> Attr:
        """Make ``changes`` (no size) of ``ino``, whose owner change is pending, and that change, in one
        backend call; the error reported is that of ``changes`` (see the module header)."""
        owner = self.owner
        assert owner is not None and owner.ino == ino and changes.size is None
        self.owner = None
        both = SetAttr(mode=changes.mode, uid=owner.uid if changes.uid is None else changes.uid,
                       gid=owner.gid if changes.gid is None else changes.gid, atime_ns=changes.atime_ns,
                       mtime_ns=changes.mtime_ns, ctime_ns=changes.ctime_ns)
        try:
            return self._backend.setattr(ino, both, fh)
        except OSError:
            self.owner = owner
            self._make_owner()
            return self._backend.setattr(ino, changes, fh)

    def _make_owner(self) -> None:
        owner = self.owner
        assert owner is not None
        self.owner = None
        try:
            made = self._backend.setattr(owner.ino, SetAttr(uid=owner.uid, gid=owner.gid, ctime_ns=owner.ctime_ns))
        except OSError as exc:
            log.warning("the owner change of inode %d, already answered, failed: %s", owner.ino, exc)
            made = None
        except Exception:
            # A bug, not a storage error: as for a run, never raised out of a drain.
            log.exception("internal error in the deferred owner change of inode %d", owner.ino)
            made = None
        if made != owner.answered() and self._invalidate is not None:
            self._invalidate(owner.ino)

    def _stood(self, run: _Run) -> bool:
        """Whether the run's bytes are in the file: runs start at its end, and nothing else writes it."""
        try:
            return self._backend.getattr(run.ino).size > run.offset
        except OSError:
            return False

    def take_error(self, fh: int) -> OSError | None:
        """The failure of a drained run of ``fh`` not yet reported, once."""
        return self._errors.pop(fh, None)

    def forget(self, fh: int) -> None:
        """``fh`` was released: a failure nobody asked about stays only in the log."""
        self._errors.pop(fh, None)
