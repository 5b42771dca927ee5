"""Ext4Backend: the backend protocol over the pure-Python ext4 engine.

The engine (:mod:`volfs.ext4`) does the format work; this adapter adds what
the protocol asks of every backend: name checks, lookup counting and ESTALE
for unknown inodes, file handles (an open handle pins its inode, so an
unlinked open file lives until its last release), thread safety (one lock
around the engine, whose caches are not thread-safe), and EROFS for every
mutation when read-only.  Readdir never yields "." or "..".

``Ext4Backend(image, readonly=False)`` writes; an image with features the
write side does not implement opens read-only instead, and every mutation
then raises EROFS naming them.  ``fsync``, ``sync`` and ``close`` commit.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final, TypeVar

from volfs.backend import (
    NOW,
    Attr,
    DirEntry,
    FileHandle,
    Ino,
    OpenFlags,
    RenameFlags,
    SetAttr,
    StatFs,
    XattrFlags,
    check_name,
    check_write_changes,
)
from volfs.errors import VolfsError, error
from volfs.ext4 import ROOT_INO, Filesystem
from volfs.ext4 import Attr as EngineAttr
from volfs.ext4._records import maker
from volfs.ext4.directory import ft_to_mode
from volfs.ext4.writer import AttrChange, Writer

__all__ = ["Ext4Backend"]

T = TypeVar("T")
_ROOT = Ino(ROOT_INO)
_ATTR_MEMO = 8192  # protocol Attrs remembered (see _attr); the memo starts over when full
# Attr(...) with every field, positionally, without the frozen __init__'s cost (volfs/ext4/_records.py).
_make_attr = maker(Attr)


def _erofs(reason: str = "opened read-only") -> VolfsError:
    return error(errno.EROFS, f"the ext4 backend is read-only: {reason}")


class _Handle:
    """An open file: its inode and what its flags allow, decided once at open (flag arithmetic on
    the IntFlag enum runs Python code, and a write or read asks on every call)."""

    __slots__ = ("ino", "flags", "writes", "append", "write_only")

    def __init__(self, ino: int, flags: OpenFlags) -> None:
        self.ino = ino
        self.flags = flags
        self.writes = flags.writes
        self.append = flags.appends
        self.write_only = flags.write_only


class Ext4Backend:
    """A backend over the ext4 image at ``image``.

    ``readonly=True`` (the default) never writes.  ``readonly=False`` writes
    when the engine supports every feature of the image (see
    :attr:`readonly` and :attr:`readonly_reason` otherwise).
    ``salvage=True`` reads past checksum mismatches (inspection tools; never
    writable).  Opening raises EOPNOTSUPP for images with features the engine
    cannot read and EUCLEAN for corrupt ones; an image that needs journal
    recovery is shown as after recovery (and, when writable, recovered on disk).
    """

    def __init__(self, image: str | os.PathLike[str], *, salvage: bool = False, readonly: bool = True) -> None:
        self._engine: Filesystem | None = Filesystem.open(image, readonly=readonly, salvage=salvage)
        self._lock = threading.RLock()
        self._lookups: dict[int, int] = {}
        self._handles: dict[int, _Handle] = {}
        # Open handles per inode, so that _known is O(1) (kept with _handles, in _new_handle/release).
        self._open: dict[int, int] = {}
        self._attrs: dict[int, tuple[EngineAttr, Attr]] = {}
        self._next_fh = 1

    @property
    def _fs(self) -> Filesystem:
        """The engine; EBADF once the backend is closed (the protocol's rule)."""
        if self._engine is None:
            raise error(errno.EBADF, "the backend is closed")
        return self._engine

    @property
    def filesystem(self) -> Filesystem:
        return self._fs

    @property
    def readonly(self) -> bool:
        return self._fs.readonly

    @property
    def readonly_reason(self) -> str:
        return self._fs.readonly_reason

    @property
    def root(self) -> Ino:
        return Ino(ROOT_INO)

    # -- helpers ---------------------------------------------------------------

    def _w(self) -> Writer:
        fs = self._fs
        if fs.readonly:
            raise _erofs(fs.readonly_reason)
        return fs.writer

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run one engine operation; on ENOSPC, commit (blocks freed since the last commit become
        reusable only then) and try once more.  A failed operation leaves nothing behind."""
        try:
            return fn()
        except VolfsError as exc:
            fs = self._fs
            if exc.errno != errno.ENOSPC or fs.readonly or not fs.writer.txn.freed:
                raise
            fs.commit()
            return fn()

    def _known(self, ino: Ino) -> None:
        if ino not in self._lookups and ino not in self._open and ino != _ROOT:
            raise error(errno.ESTALE, f"unknown inode {ino}")

    def _attr(self, a: EngineAttr) -> Attr:
        # The engine hands out the same (frozen) Attr object while the inode is unchanged, so the
        # protocol's copy is made once per version of the inode, not once per call.
        memo = self._attrs.get(a.ino)
        if memo is not None and memo[0] is a:
            return memo[1]
        out = _make_attr(Ino(a.ino), a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks, a.atime_ns,
                         a.mtime_ns, a.ctime_ns, a.crtime_ns, a.generation)
        if len(self._attrs) >= _ATTR_MEMO:
            self._attrs.clear()
        self._attrs[a.ino] = (a, out)
        return out

    def _getattr(self, ino: int) -> Attr:
        try:
            return self._attr(self._fs.getattr(ino))
        except VolfsError as exc:
            if exc.errno == errno.ENOENT:
                raise error(errno.ESTALE, f"inode {ino} no longer exists") from None
            raise

    def _ref(self, ino: int) -> Attr:
        attr = self._getattr(ino)
        self._lookups[ino] = self._lookups.get(ino, 0) + 1
        return attr

    # -- names and attributes -------------------------------------------------------

    def lookup(self, parent: Ino, name: bytes) -> Attr:
        check_name(name)
        with self._lock:
            self._known(parent)
            attr = self._attr(self._fs.lookup(parent, name))
            self._lookups[attr.ino] = self._lookups.get(attr.ino, 0) + 1
            return attr

    def forget(self, ino: Ino, nlookup: int = 1) -> None:
        with self._lock:
            n = self._lookups.get(ino, 0) - nlookup
            if n > 0:
                self._lookups[ino] = n
            else:
                self._lookups.pop(ino, None)

    def getattr(self, ino: Ino) -> Attr:
        with self._lock:
            self._known(ino)
            return self._getattr(ino)

    @staticmethod
    def _change(changes: SetAttr) -> AttrChange:
        """The engine's form of ``changes`` but the size: NOW becomes the current time."""
        atime, mtime = changes.atime_ns, changes.mtime_ns
        if atime is NOW or mtime is NOW:
            now = time.time_ns()
            atime = now if atime is NOW else atime
            mtime = now if mtime is NOW else mtime
        return AttrChange(changes.mode, changes.uid, changes.gid, atime if isinstance(atime, int) else None,
                          mtime if isinstance(mtime, int) else None)

    def setattr(self, ino: Ino, changes: SetAttr, fh: FileHandle | None = None) -> Attr:
        with self._lock:
            w = self._w()
            self._known(ino)
            c = self._change(changes)
            # The engine refuses what the protocol refuses (a size for anything but a regular file,
            # a mode for a symlink) before it changes anything.
            try:
                self._retry(lambda: w.setattr(ino, mode=c.mode, uid=c.uid, gid=c.gid, size=changes.size,
                                              atime_ns=c.atime_ns, mtime_ns=c.mtime_ns, ctime_ns=changes.ctime_ns))
            except VolfsError as exc:
                if exc.errno == errno.ENOENT:
                    raise error(errno.ESTALE, f"inode {ino} no longer exists") from None
                raise
            return self._getattr(ino)

    def readlink(self, ino: Ino) -> bytes:
        with self._lock:
            self._known(ino)
            return self._fs.readlink(ino)

    def readdirplus(self, ino: Ino, offset: int = 0) -> Iterator[tuple[DirEntry, Attr]]:
        """See :meth:`volfs.backend.Backend.readdirplus`: attributes by inode number, no name lookups."""
        for entry in self.readdir(ino, offset):
            with self._lock:
                try:
                    attr = self._ref(entry.ino)
                except VolfsError as exc:
                    if exc.errno == errno.ESTALE:
                        continue  # removed since it was listed
                    raise
            yield entry, attr

    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        with self._lock:
            self._known(ino)
            entries = [DirEntry(e.name, Ino(e.ino), ft_to_mode(e.file_type), e.next_offset)
                       for e in self._fs.readdir(ino, offset)
                       if e.name not in (b".", b"..")]
        yield from entries

    # -- mutations ---------------------------------------------------------------------

    def _parent(self, parent: Ino, name: bytes) -> Writer:
        check_name(name)
        w = self._w()
        self._known(parent)
        return w

    def mkdir(self, parent: Ino, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        with self._lock:
            w = self._parent(parent, name)
            return self._ref(self._retry(lambda: w.mkdir(parent, name, mode & 0o7777, uid, gid)))

    def mknod(self, parent: Ino, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        with self._lock:
            w = self._parent(parent, name)
            fmt = stat.S_IFMT(mode)
            if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
                raise error(errno.EINVAL, "mknod cannot create directories or symlinks")
            dev = rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0
            return self._ref(self._retry(lambda: w.create(parent, name, mode, uid, gid, dev)))

    def symlink(self, parent: Ino, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        with self._lock:
            w = self._parent(parent, name)
            return self._ref(self._retry(lambda: w.symlink(parent, name, target, uid, gid)))

    def link(self, ino: Ino, new_parent: Ino, new_name: bytes) -> Attr:
        with self._lock:
            w = self._parent(new_parent, new_name)
            self._known(ino)
            self._retry(lambda: w.link(ino, new_parent, new_name))
            return self._ref(ino)

    def unlink(self, parent: Ino, name: bytes) -> None:
        with self._lock:
            w = self._parent(parent, name)
            w.unlink(parent, name)

    def rmdir(self, parent: Ino, name: bytes) -> None:
        with self._lock:
            w = self._parent(parent, name)
            w.rmdir(parent, name)

    def rename(self, old_parent: Ino, old_name: bytes, new_parent: Ino, new_name: bytes,
               flags: RenameFlags = RenameFlags(0)) -> None:
        with self._lock:
            w = self._parent(old_parent, old_name)
            check_name(new_name)
            self._known(new_parent)
            self._retry(lambda: w.rename(old_parent, old_name, new_parent, new_name, int(flags)))

    def create(self, parent: Ino, name: bytes, mode: int, flags: OpenFlags, uid: int,
               gid: int) -> tuple[FileHandle, Attr]:
        with self._lock:
            w = self._parent(parent, name)
            fs = self._fs
            # The engine's create checks for the name itself (EEXIST); asking first would look
            # the name up twice on the common path (FUSE sends CREATE only after a failed LOOKUP).
            try:
                ino = self._retry(lambda: w.create(parent, name, stat.S_IFREG | (mode & 0o7777), uid, gid))
                exists = False
            except VolfsError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                exists = True
            if exists:
                existing = fs.lookup_ino(parent, name)
                if flags & OpenFlags.EXCL:
                    raise error(errno.EEXIST, f"{name!r} exists")
                attr = self._getattr(existing)
                if stat.S_ISLNK(attr.mode):
                    raise error(errno.EEXIST, "a symlink has that name")
                if stat.S_ISDIR(attr.mode):
                    raise error(errno.EISDIR, "is a directory")
                if not stat.S_ISREG(attr.mode):
                    raise error(errno.ENXIO, "not a regular file")
                ino = existing
                if flags & OpenFlags.TRUNC and attr.size:
                    w.truncate(ino, 0)
            attr = self._ref(ino)
            return self._new_handle(ino, flags), attr

    def _new_handle(self, ino: int, flags: OpenFlags) -> FileHandle:
        fh = self._next_fh
        self._next_fh += 1
        self._fs.pin(ino)
        self._handles[fh] = _Handle(ino, flags)
        self._open[ino] = self._open.get(ino, 0) + 1
        return FileHandle(fh)

    def write(self, fh: FileHandle, offset: int, data: bytes | bytearray | memoryview,
              then: SetAttr | None = None) -> int:
        with self._lock:
            h = self._handles.get(fh)
            if h is None:
                raise error(errno.EBADF, "unknown file handle")
            if not h.writes:
                raise error(errno.EBADF, "handle not opened for writing")
            if offset < 0:
                raise error(errno.EINVAL, "negative offset")
            check_write_changes(then)
            w = self._w()
            if h.append:
                offset = self._fs.inode(h.ino).size
            hino = h.ino
            # One engine operation for both: the record is stored once, and a failure leaves neither done.
            c = self._change(then) if then is not None else None
            return self._retry(lambda: w.write_data(hino, offset, data, then=c))

    def setxattr(self, ino: Ino, name: bytes, value: bytes, flags: XattrFlags = XattrFlags(0)) -> None:
        with self._lock:
            w = self._w()
            self._known(ino)
            self._retry(lambda: w.setxattr(ino, name, bytes(value), int(flags)))

    def removexattr(self, ino: Ino, name: bytes) -> None:
        with self._lock:
            w = self._w()
            self._known(ino)
            w.removexattr(ino, name)

    # -- file handles ------------------------------------------------------------------

    def open(self, ino: Ino, flags: OpenFlags) -> FileHandle:
        with self._lock:
            self._known(ino)
            attr = self._getattr(ino)
            if stat.S_ISDIR(attr.mode):
                raise error(errno.EISDIR, "is a directory")
            if stat.S_ISLNK(attr.mode):
                raise error(errno.ELOOP, "is a symbolic link")
            if not stat.S_ISREG(attr.mode):
                raise error(errno.ENXIO, "not a regular file")
            if flags.writes:
                w = self._w()
                if flags & OpenFlags.TRUNC and attr.size:
                    w.truncate(ino, 0)
            return self._new_handle(ino, flags)

    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise error(errno.EINVAL, "negative offset or size")
        with self._lock:
            h = self._handles.get(fh)
            if h is None:
                raise error(errno.EBADF, "unknown file handle")
            if h.write_only:
                raise error(errno.EBADF, "handle not opened for reading")
            return self._fs.read(h.ino, offset, size)

    def fsync(self, fh: FileHandle, datasync: bool = False) -> None:
        with self._lock:
            if fh not in self._handles:
                raise error(errno.EBADF, "unknown file handle")
            self._fs.commit()

    def release(self, fh: FileHandle) -> None:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                raise error(errno.EBADF, "unknown file handle")
            n = self._open.get(h.ino, 0) - 1
            if n > 0:
                self._open[h.ino] = n
            else:
                self._open.pop(h.ino, None)
            self._fs.unpin(h.ino)

    # -- xattrs and filesystem-wide ------------------------------------------------------

    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        with self._lock:
            self._known(ino)
            return self._fs.getxattr(ino, name)

    def listxattr(self, ino: Ino) -> list[bytes]:
        with self._lock:
            self._known(ino)
            return self._fs.listxattr(ino)

    def statfs(self) -> StatFs:
        with self._lock:
            s = self._fs.statfs()
        return StatFs(s.block_size, s.fragment_size, s.blocks, s.blocks_free, s.blocks_available, s.files,
                      s.files_free, s.files_free, s.name_max)

    def sync(self) -> None:
        with self._lock:
            self._fs.commit()

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                engine = self._engine
                self._engine = None
                self._lookups.clear()
                self._handles.clear()
                self._open.clear()
                self._attrs.clear()
                engine.close()
