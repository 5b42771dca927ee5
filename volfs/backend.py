"""The inode-level backend protocol that every volfs storage implements.

Theory of operation
-------------------
A backend is a filesystem seen the way the kernel's FUSE low-level interface
sees one: inodes addressed by number, directory entries addressed by
``(parent inode, name)``, open files addressed by a handle number. It knows
nothing of string paths, symlink resolution, parent creation, recursive
removal, copying or async: all of that lives once, above it, in
:mod:`volfs.pathfs`. The FUSE layer drives a backend 1:1 (it adds nothing but
option handling and its own bookkeeping), so every method here has a FUSE
counterpart and the same shape.

Names are ``bytes`` and always one component: never empty, never ``b"."`` or
``b".."``, never containing ``b"/"`` or ``b"\\0"``, at most :data:`NAME_MAX`
bytes. A backend checks this itself (EINVAL, ENAMETOOLONG) and never relies on
the caller, because it is the last line of defence against a hostile name.

Lookup counting (as in FUSE): every call that returns an :class:`Attr` for a
directory entry (``lookup``, ``mkdir``, ``mknod``, ``symlink``, ``link``,
``create``) adds one reference to that inode; ``forget(ino, n)`` drops ``n``.
A backend may keep per-inode state (an open descriptor, a cached inode) while
the count is above zero or a file handle is open, and must keep answering for
such an inode even after its last name is unlinked. The root inode is always
known and never counted. Calls on an inode the backend does not know (never
looked up, or forgotten) raise ESTALE.

Errors: every method raises only :class:`volfs.errors.VolfsError` (built with
:func:`volfs.errors.error`), never a raw ``OSError``, ``struct.error`` or
``IndexError``. The ``path`` of a backend error may be ``None`` or a hint; the
path layer replaces it with the volume-relative path. Every mutating method of
a read-only backend raises EROFS before touching anything (that includes
``open`` with ``WRITE``/``TRUNC``/``APPEND`` and ``setxattr``); reads still work.
Errnos listed in a docstring are the ones with a defined meaning; any method
may also raise EIO (storage failure), EUCLEAN (corruption, as
:class:`volfs.errors.CorruptError`), ESTALE (unknown inode or handle) and
ENOSPC/EDQUOT where it allocates.

Times are integer nanoseconds since the epoch. Sizes are bytes; ``blocks`` is
in 512-byte units, as ``st_blocks``.
"""

from __future__ import annotations

import enum
import errno as _errno
import os as _os
import stat as _stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NewType, Protocol, runtime_checkable

from volfs.errors import error

__all__ = [
    "Ino",
    "FileHandle",
    "NAME_MAX",
    "MAX_SYMLINK_HOPS",
    "Attr",
    "DirEntry",
    "StatFs",
    "TimeNow",
    "NOW",
    "SetAttr",
    "OpenFlags",
    "RenameFlags",
    "XattrFlags",
    "Backend",
    "check_name",
    "check_write_changes",
]

Ino = NewType("Ino", int)
"""An inode number, as the backend reports it (``Attr.ino``)."""

FileHandle = NewType("FileHandle", int)
"""An open-file handle returned by ``open``/``create``, valid until ``release``."""

NAME_MAX: Final = 255
"""Longest name (in bytes) of one directory entry."""

MAX_SYMLINK_HOPS: Final = 40
"""Symlinks followed while resolving one path before ELOOP (Linux's limit)."""


def check_name(name: bytes) -> None:
    """Raise EINVAL or ENAMETOOLONG unless ``name`` is one valid entry name.

    Every backend calls this on every name it receives (see the module header).
    """
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise error(_errno.EINVAL, f"invalid entry name {name!r}")
    if len(name) > NAME_MAX:
        raise error(_errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")


@dataclass(frozen=True, slots=True)
class Attr:
    """The attributes of one inode, as ``stat(2)`` would report them.

    ``mode`` is the full ``st_mode`` (type bits and permission bits).
    ``crtime_ns`` is ``None`` when the storage does not record a birth time;
    ``generation`` is 0 when the storage has none.
    """

    ino: Ino
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None = None
    generation: int = 0

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return _stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.mode)


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a directory listing.

    ``type`` holds the ``S_IFMT`` bits of the entry's inode (``stat.S_IFREG``,
    ``stat.S_IFDIR``, ...) or 0 if unknown without a lookup. ``offset`` is the
    cookie to pass to ``readdir`` to continue *after* this entry.
    """

    name: bytes
    ino: Ino
    type: int
    offset: int


@dataclass(frozen=True, slots=True)
class StatFs:
    """Filesystem-wide counters, as ``statvfs(3)``."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class TimeNow(enum.Enum):
    """Marker type for "set this timestamp to the current time" (``UTIME_NOW``)."""

    NOW = "now"


NOW: Final = TimeNow.NOW
"""Pass as ``SetAttr.atime_ns``/``mtime_ns`` to mean the backend's current time."""


@dataclass(frozen=True, slots=True)
class SetAttr:
    """Which attributes ``setattr`` changes: ``None`` leaves a field alone.

    ``mode`` holds permission bits only (``0o7777``); the file type never
    changes. ``size`` truncates or extends (with a hole) a regular file.
    ``atime_ns``/``mtime_ns`` take nanoseconds or :data:`NOW`. Any change
    also sets ctime, to now, as the kernel does, or to ``ctime_ns`` when
    given: for a caller that has already reported the change, with the time
    it reported (the FUSE layer's deferred owner change). A backend that
    cannot choose the ctime (a directory volume: the host kernel sets it)
    sets now. ``ctime_ns`` alone is not a change.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | TimeNow | None = None
    mtime_ns: int | TimeNow | None = None
    ctime_ns: int | None = None

    def is_empty(self) -> bool:
        """True when nothing would change."""
        return (
            self.mode is None
            and self.uid is None
            and self.gid is None
            and self.size is None
            and self.atime_ns is None
            and self.mtime_ns is None
        )


def check_write_changes(then: SetAttr | None) -> None:
    """Raise EINVAL if ``then``, the attribute changes of a ``write``, includes a size.

    Every backend calls this before its write does anything (see ``Backend.write``).
    """
    if then is not None and then.size is not None:
        raise error(_errno.EINVAL, "a write's attribute changes cannot include a size")


class OpenFlags(enum.IntFlag):
    """How a file handle is opened (``open``/``create``).

    Neither READ nor WRITE set is treated as READ. APPEND makes every write go
    to the end of the file whatever its offset. TRUNC empties the file at open.
    EXCL (``create`` only) fails with EEXIST if the name exists.
    """

    READ = 1
    WRITE = 2
    APPEND = 4
    TRUNC = 8
    EXCL = 16

    @classmethod
    def from_os(cls, flags: int) -> OpenFlags:
        """Translate ``os.O_*`` flags (as FUSE passes them) into OpenFlags."""
        # Built as a plain int and turned into a member once: each | of two IntFlags runs enum code.
        acc = flags & _os.O_ACCMODE
        value = 0
        if acc in (_os.O_RDONLY, _os.O_RDWR):
            value |= _READ
        if acc in (_os.O_WRONLY, _os.O_RDWR):
            value |= _WRITE
        if flags & _os.O_APPEND:
            value |= _APPEND
        if flags & _os.O_TRUNC:
            value |= _TRUNC
        if flags & _os.O_EXCL:
            value |= _EXCL
        return cls(value)

    @property
    def writes(self) -> bool:
        """True if a handle opened with these flags may change the file."""
        return bool(int(self) & _WRITES)

    @property
    def appends(self) -> bool:
        """True if every write of such a handle goes to the end of the file."""
        return bool(int(self) & _APPEND)

    @property
    def write_only(self) -> bool:
        """True if such a handle may write but not read."""
        f = int(self)
        return bool(f & _WRITE) and not f & _READ


# The flags as plain ints, for the properties above (each | or & of two IntFlags runs enum code).
_READ, _WRITE, _APPEND, _TRUNC, _EXCL = (f.value for f in (OpenFlags.READ, OpenFlags.WRITE, OpenFlags.APPEND,
                                                            OpenFlags.TRUNC, OpenFlags.EXCL))
_WRITES: Final = _WRITE | _APPEND | _TRUNC


class RenameFlags(enum.IntFlag):
    """``renameat2`` flags; the values are Linux's, so FUSE flags pass through."""

    NOREPLACE = 1
    EXCHANGE = 2


class XattrFlags(enum.IntFlag):
    """``setxattr`` flags; the values are Linux's ``XATTR_CREATE``/``XATTR_REPLACE``."""

    CREATE = 1
    REPLACE = 2


@runtime_checkable
class Backend(Protocol):
    """An inode-level filesystem (see the module header for shared rules).

    Implementations must be safe to call from several threads at once.
    """

    @property
    def readonly(self) -> bool:
        """True if every mutation raises EROFS."""
        ...

    @property
    def root(self) -> Ino:
        """The inode number of the volume root (always known, never forgotten)."""
        ...

    # -- names and attributes -------------------------------------------------

    def lookup(self, parent: Ino, name: bytes) -> Attr:
        """Find ``name`` in directory ``parent``; adds one lookup reference.

        Does not follow a symlink named ``name``.
        Errors: ENOENT (no such entry), ENOTDIR (``parent`` is not a
        directory), EINVAL (invalid name), ENAMETOOLONG, EACCES.
        Changes nothing (no atime update required).
        """
        ...

    def forget(self, ino: Ino, nlookup: int = 1) -> None:
        """Drop ``nlookup`` lookup references to ``ino``. Never raises.

        When the count reaches zero and no handle is open, the backend may free
        what it keeps for the inode (and, if its link count is zero, the inode).
        Forgetting the root or an unknown inode is a no-op.
        """
        ...

    def getattr(self, ino: Ino) -> Attr:
        """Return the attributes of ``ino``. Errors: ESTALE. Changes nothing."""
        ...

    def setattr(self, ino: Ino, changes: SetAttr, fh: FileHandle | None = None) -> Attr:
        """Apply ``changes`` to ``ino`` and return the new attributes.

        ``fh``, if given, is an open handle on ``ino`` (FUSE passes it for
        ``ftruncate``). Setting ``size`` on a directory raises EISDIR, on
        anything else that is not a regular file EINVAL; ``mode`` on a symlink
        raises EOPNOTSUPP (Linux has no lchmod). Changing ``uid``/``gid`` may
        raise EPERM where the storage lacks the privilege. EROFS if read-only.
        Changes: the given fields and ctime.
        """
        ...

    def readlink(self, ino: Ino) -> bytes:
        """Return a symlink's target bytes, exactly as stored.

        Errors: EINVAL (not a symlink). Changes nothing.
        """
        ...

    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        """Yield the entries of directory ``ino`` after cookie ``offset``.

        ``offset`` 0 starts at the beginning; any other value is the ``offset``
        of an entry yielded earlier. Never yields ``.`` or ``..``. Offsets are
        stable while entries are added and removed: an entry that exists for a
        whole pass over the directory (possibly split over many calls) is
        yielded exactly once; one added or removed during the pass may or may
        not be (as POSIX ``readdir``).
        Errors: ENOTDIR. Changes nothing (the caller may stop at any time).
        """
        ...

    def readdirplus(self, ino: Ino, offset: int = 0) -> Iterator[tuple[DirEntry, Attr]]:
        """Like :meth:`readdir`, with each entry's attributes (FUSE's READDIRPLUS).

        Every pair yielded adds one lookup reference to the entry's inode, as
        :meth:`lookup` would; a caller that does not keep an entry forgets it
        at once. An entry that disappears between listing and attributes is
        skipped. Errors and offsets as :meth:`readdir`. Changes nothing.
        """
        ...

    # -- creating and removing names -------------------------------------------

    def mkdir(self, parent: Ino, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """Create directory ``name`` in ``parent``; adds one lookup reference.

        ``mode`` holds permission bits (no umask is applied here); the new
        directory is owned by ``uid``:``gid``. Errors: EEXIST (any entry of that
        name, including a dangling symlink), ENOENT (``parent`` was removed),
        ENOTDIR, EINVAL, ENAMETOOLONG, EMLINK, EPERM (ownership not settable),
        EROFS. Changes: the new inode; ``parent``'s mtime, ctime and nlink.
        """
        ...

    def mknod(self, parent: Ino, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        """Create a special file (or empty regular file) ``name``; adds a reference.

        ``mode`` includes the type bits (``S_IFREG``, ``S_IFIFO``, ``S_IFSOCK``,
        ``S_IFCHR``, ``S_IFBLK``); ``rdev`` is the device number for devices.
        Errors: as :meth:`mkdir`, plus EINVAL (directory or symlink type) and
        EPERM (devices where the storage's host forbids them).
        Changes: the new inode; ``parent``'s mtime and ctime.
        """
        ...

    def symlink(self, parent: Ino, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        """Create symlink ``name`` -> ``target``; adds one lookup reference.

        ``target`` is stored verbatim and never interpreted here (it may point
        anywhere, including nowhere). Errors: as :meth:`mkdir`, plus
        ENAMETOOLONG for a target over 4095 bytes and EINVAL for an empty one.
        Changes: the new inode; ``parent``'s mtime and ctime.
        """
        ...

    def link(self, ino: Ino, new_parent: Ino, new_name: bytes) -> Attr:
        """Add the hard link ``new_name`` in ``new_parent`` to inode ``ino``.

        Adds one lookup reference to ``ino``. Errors: EEXIST, EPERM (``ino`` is a
        directory), EMLINK, ENOENT, ENOTDIR, EINVAL, ENAMETOOLONG, EXDEV (the
        storage cannot link across its parts), EROFS.
        Changes: ``ino``'s nlink and ctime; ``new_parent``'s mtime and ctime.
        """
        ...

    def unlink(self, parent: Ino, name: bytes) -> None:
        """Remove the non-directory entry ``name`` from ``parent``.

        Errors: ENOENT, EISDIR (``name`` is a directory), ENOTDIR, EINVAL,
        ENAMETOOLONG, EROFS. Changes: the entry; the inode's nlink and ctime
        (the inode lives on while referenced or open); ``parent``'s mtime, ctime.
        """
        ...

    def rmdir(self, parent: Ino, name: bytes) -> None:
        """Remove the empty directory ``name`` from ``parent``.

        Errors: ENOENT, ENOTDIR (``name`` is not a directory), ENOTEMPTY,
        EINVAL, ENAMETOOLONG, EBUSY (the root), EROFS.
        Changes: the entry; ``parent``'s nlink, mtime and ctime.
        """
        ...

    def rename(
        self,
        old_parent: Ino,
        old_name: bytes,
        new_parent: Ino,
        new_name: bytes,
        flags: RenameFlags = RenameFlags(0),
    ) -> None:
        """Move entry ``old_name`` of ``old_parent`` to ``new_name`` of ``new_parent``.

        Replaces an existing target atomically as ``rename(2)``: a file may
        replace a non-directory, a directory may replace an empty directory.
        ``NOREPLACE`` fails with EEXIST if the target exists; ``EXCHANGE``
        swaps two existing entries (ENOENT if the target is missing). Renaming
        an entry onto itself (same inode) succeeds and changes nothing.
        Errors: ENOENT, EEXIST, ENOTDIR (directory onto non-directory or a
        parent that is not a directory), EISDIR (non-directory onto
        directory), ENOTEMPTY (target directory not empty), EINVAL (a directory
        into its own subtree, both NOREPLACE and EXCHANGE, or unknown flags),
        ENAMETOOLONG, EXDEV, EROFS.
        Changes: both parents' entries, mtimes and ctimes (and nlinks when a
        directory moves), the moved inode's ctime (and ``..``), the replaced
        inode's nlink.
        """
        ...

    # -- file handles -------------------------------------------------------------

    def open(self, ino: Ino, flags: OpenFlags) -> FileHandle:
        """Open regular file ``ino`` for I/O and return a new handle.

        Only regular files open: EISDIR for a directory, ELOOP for a symlink,
        ENXIO for devices, FIFOs and sockets (a backend never opens those on its
        host, so a FIFO can never hang the caller). EROFS if the flags write and
        the backend is read-only. Changes: with TRUNC, size, mtime and ctime.
        """
        ...

    def create(
        self, parent: Ino, name: bytes, mode: int, flags: OpenFlags, uid: int, gid: int
    ) -> tuple[FileHandle, Attr]:
        """Create and open regular file ``name`` (permission bits ``mode``).

        Adds one lookup reference to the returned inode. If ``name`` exists and
        EXCL is not set, opens the existing regular file as :meth:`open` would
        (ownership and mode unchanged). Errors: EEXIST (with EXCL, or a
        dangling symlink), EISDIR, ENOENT, ENOTDIR, EINVAL, ENAMETOOLONG,
        EPERM (ownership not settable), EROFS.
        Changes: the new inode; ``parent``'s mtime and ctime.
        """
        ...

    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``.

        Returns fewer than ``size`` bytes only at end of file (b"" at or past
        it); holes read as zeros. A backend moves large requests in few
        storage calls. Errors: EBADF (handle not opened for reading), EINVAL
        (negative offset or size). Changes nothing (atime at most).
        """
        ...

    def write(self, fh: FileHandle, offset: int, data: bytes | bytearray | memoryview,
              then: SetAttr | None = None) -> int:
        """Write all of ``data`` at ``offset`` and return ``len(data)``.

        With APPEND the data goes to the end of the file, whatever ``offset``.
        Writing past the end leaves a hole. Errors: EBADF (handle not opened
        for writing), EINVAL, EFBIG, ENOSPC, EROFS.
        Changes: the data, size, blocks, mtime and ctime.

        ``then``: attribute changes to make right after the write, as
        :meth:`setattr` of the handle's inode makes them (EINVAL if they
        include a size), with its errors. A backend that can does both in one
        step, so that an error leaves neither done (the ext4 backend: one
        engine operation, which also stores the inode once instead of twice);
        otherwise (a directory backend) the write stands when the changes fail.
        """
        ...

    def fsync(self, fh: FileHandle, datasync: bool = False) -> None:
        """Make the file's data (and, unless ``datasync``, metadata) durable.

        Changes nothing visible.
        """
        ...

    def release(self, fh: FileHandle) -> None:
        """Close handle ``fh``. Never raises for a valid handle; EBADF otherwise.

        Changes: frees the handle (and an unlinked, unreferenced inode).
        """
        ...

    # -- extended attributes ------------------------------------------------------

    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        """Return the value of xattr ``name`` (e.g. ``b"user.comment"``).

        Errors: ENODATA (no such attribute), EOPNOTSUPP (not supported here,
        e.g. ``user.`` attributes on symlinks or special files), ERANGE.
        Changes nothing.
        """
        ...

    def setxattr(self, ino: Ino, name: bytes, value: bytes, flags: XattrFlags = XattrFlags(0)) -> None:
        """Set xattr ``name`` to ``value``.

        ``CREATE`` fails with EEXIST if it exists, ``REPLACE`` with ENODATA if
        it does not. Errors: EOPNOTSUPP, ENOSPC/E2BIG (too large), ERANGE,
        EROFS. Changes: the attribute and ctime.
        """
        ...

    def listxattr(self, ino: Ino) -> list[bytes]:
        """Return the names of all xattrs of ``ino``. Changes nothing."""
        ...

    def removexattr(self, ino: Ino, name: bytes) -> None:
        """Remove xattr ``name``. Errors: ENODATA, EOPNOTSUPP, EROFS.

        Changes: the attribute and ctime.
        """
        ...

    # -- whole filesystem -----------------------------------------------------------

    def statfs(self) -> StatFs:
        """Return filesystem-wide counters. Changes nothing."""
        ...

    def sync(self) -> None:
        """Make everything written so far durable. EROFS never (no-op if read-only)."""
        ...

    def close(self) -> None:
        """Sync (if writable), release every handle and reference, free resources.

        Idempotent. After ``close`` every other method raises EBADF.
        """
        ...
