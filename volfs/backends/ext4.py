"""Ext4Backend: the backend protocol over the pure-Python ext4 engine (read-only for now).

The engine (:mod:`volfs.ext4`) does the format work; this adapter adds what
the protocol asks of every backend: name checks, lookup counting and ESTALE
for unknown inodes, file handles, thread safety (one lock around the engine,
whose caches are not thread-safe), and EROFS for every mutation until the
write side lands (issue 5).  Readdir never yields "." or "..".
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator

from volfs.backend import (
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
)
from volfs.errors import VolfsError, error
from volfs.ext4 import ROOT_INO, Filesystem
from volfs.ext4 import Attr as EngineAttr
from volfs.ext4.directory import ft_to_mode

__all__ = ["Ext4Backend"]


def _erofs() -> VolfsError:
    return error(errno.EROFS, "the ext4 backend is read-only (write support arrives with issue 5)")


class Ext4Backend:
    """A read-only backend over the ext4 image at ``image``.

    ``salvage=True`` reads past checksum mismatches (inspection tools).  Opening
    raises EOPNOTSUPP for images with features the engine cannot read and
    EUCLEAN for corrupt ones; an image that needs journal recovery is shown as
    after recovery, without writing it.
    """

    def __init__(self, image: str | os.PathLike[str], *, salvage: bool = False) -> None:
        self._engine: Filesystem | None = Filesystem.open(image, salvage=salvage)
        self._lock = threading.RLock()
        self._lookups: dict[int, int] = {}
        self._handles: dict[int, int] = {}
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
        return True

    @property
    def root(self) -> Ino:
        return Ino(ROOT_INO)

    # -- helpers ---------------------------------------------------------------

    def _known(self, ino: Ino) -> None:
        if int(ino) != int(ROOT_INO) and ino not in self._lookups and ino not in self._handles.values():
            raise error(errno.ESTALE, f"unknown inode {ino}")

    @staticmethod
    def _attr(a: EngineAttr) -> Attr:
        return Attr(Ino(a.ino), a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks, a.atime_ns, a.mtime_ns,
                    a.ctime_ns, a.crtime_ns, a.generation)

    def _getattr(self, ino: int) -> Attr:
        try:
            return self._attr(self._fs.getattr(ino))
        except VolfsError as exc:
            if exc.errno == errno.ENOENT:
                raise error(errno.ESTALE, f"inode {ino} no longer exists") from None
            raise

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

    def setattr(self, ino: Ino, changes: SetAttr, fh: FileHandle | None = None) -> Attr:
        raise _erofs()

    def readlink(self, ino: Ino) -> bytes:
        with self._lock:
            self._known(ino)
            return self._fs.readlink(ino)

    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        with self._lock:
            self._known(ino)
            entries = [DirEntry(e.name, Ino(e.ino), ft_to_mode(e.file_type), e.next_offset)
                       for e in self._fs.readdir(ino, offset)
                       if e.name not in (b".", b"..")]
        yield from entries

    # -- mutations: EROFS -------------------------------------------------------------

    def mkdir(self, parent: Ino, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        raise _erofs()

    def mknod(self, parent: Ino, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        raise _erofs()

    def symlink(self, parent: Ino, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        raise _erofs()

    def link(self, ino: Ino, new_parent: Ino, new_name: bytes) -> Attr:
        raise _erofs()

    def unlink(self, parent: Ino, name: bytes) -> None:
        raise _erofs()

    def rmdir(self, parent: Ino, name: bytes) -> None:
        raise _erofs()

    def rename(self, old_parent: Ino, old_name: bytes, new_parent: Ino, new_name: bytes,
               flags: RenameFlags = RenameFlags(0)) -> None:
        raise _erofs()

    def create(self, parent: Ino, name: bytes, mode: int, flags: OpenFlags, uid: int,
               gid: int) -> tuple[FileHandle, Attr]:
        raise _erofs()

    def write(self, fh: FileHandle, offset: int, data: bytes | bytearray | memoryview) -> int:
        with self._lock:
            if fh not in self._handles:
                raise error(errno.EBADF, "unknown file handle")
        raise error(errno.EBADF, "handle not opened for writing")

    def setxattr(self, ino: Ino, name: bytes, value: bytes, flags: XattrFlags = XattrFlags(0)) -> None:
        raise _erofs()

    def removexattr(self, ino: Ino, name: bytes) -> None:
        raise _erofs()

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
                raise _erofs()
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = ino
            return FileHandle(fh)

    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise error(errno.EINVAL, "negative offset or size")
        with self._lock:
            ino = self._handles.get(fh)
            if ino is None:
                raise error(errno.EBADF, "unknown file handle")
            return self._fs.read(ino, offset, size)

    def fsync(self, fh: FileHandle, datasync: bool = False) -> None:
        with self._lock:
            if fh not in self._handles:
                raise error(errno.EBADF, "unknown file handle")

    def release(self, fh: FileHandle) -> None:
        with self._lock:
            if self._handles.pop(fh, None) is None:
                raise error(errno.EBADF, "unknown file handle")

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
        pass

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            self._lookups.clear()
            self._handles.clear()
