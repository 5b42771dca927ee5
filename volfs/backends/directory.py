"""The directory backend: the backend protocol over a host directory.

Theory of operation
-------------------
The guest owns everything under the volume root and may be hostile: it can
plant symlinks to ``/etc/passwd``, swap a directory for a symlink between two
of our calls, or hard-link files it should not see. So this backend never
resolves a host path inside the volume. It keeps an **inode table**: inode
number -> an ``O_PATH | O_NOFOLLOW`` descriptor of that host inode, opened
relative to its parent's descriptor with ``openat``. Every operation works
through those descriptors:

* entry operations (``lookup``, ``mkdir``, ``unlink``, ``rename``, ...) are
  ``*at`` calls on the parent's descriptor with a single, validated name;
  ``O_NOFOLLOW`` means a symlink is opened as itself, never followed;
* inode operations that Linux does not offer on an ``O_PATH`` descriptor
  (``chmod``, ``chown``, ``utimensat``, ``truncate``, xattrs, reopening for
  I/O, ``linkat``) go through ``/proc/self/fd/N``, a magic link that jumps to
  the exact inode held by the descriptor without walking any path, the same
  technique virtiofsd uses.

A descriptor names an inode, not a path, so a guest renaming or swapping
entries between two calls can only change *which* inode inside the volume a
later lookup finds; it can never make us touch a host path outside the root.

Why an ``O_PATH`` table rather than ``inode -> (parent, name)``: names go
stale the moment the guest renames something, and re-walking them would
reopen exactly the race we want to avoid. Descriptors follow the inode and
also pin it, so a host inode number cannot be reused for a different file while
we hold it. The cost is one descriptor per referenced inode; references are
counted like FUSE lookups and ``forget`` closes the descriptor when the count
drops to zero. The path layer forgets what it looked up after every call, so
only the FUSE layer (whose kernel cache decides) holds many at once.

Inode numbers are the host's ``st_ino`` for inodes on the root's device;
inodes of another device (a mount inside the volume) get synthetic numbers
from 2**63 up so they never collide. ``generation`` is left 0: while a number
is referenced its inode is pinned, so it cannot be reused under a reference.

Devices, FIFOs and sockets are created where the host permits (``mknod``) but
never opened for I/O: ``open`` checks the pinned inode's type first (ENXIO),
and reopens through ``/proc/self/fd`` with ``O_NONBLOCK``, so nothing can
block on a FIFO.

``readdir`` offsets are cookies from a per-directory table (name -> cookie,
assigned in increasing order when a name is first seen, dropped when the name
disappears); a pass yields entries in cookie order, so an offset stays valid
however the directory changes. A fresh pass (offset 0) rescans; a continued
pass rescans only if the directory's mtime or ctime moved.

Every host ``OSError`` is converted to a :class:`volfs.errors.VolfsError` at
the method boundary (``_host_errors``); the path layer fills in the path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, ParamSpec, TypeVar

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

__all__ = ["DirectoryBackend"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_O_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_SYNTHETIC_BASE: Final = 1 << 63
_SYMLINK_MAX: Final = 4095

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
except OSError:  # pragma: no cover - every glibc/musl system has a libc
    _libc = None


def _host_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn host OSErrors into VolfsErrors (without a host path in them)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except VolfsError:
            raise
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errno.EIO
            raise error(code, os.strerror(code)) from None

    return wrapper


def _proc(fd: int) -> str:
    """The magic link that reaches exactly the inode held by ``fd``."""
    return f"/proc/self/fd/{fd}"


@dataclass(slots=True)
class _Node:
    """One referenced host inode."""

    fd: int
    dev: int
    host_ino: int
    nlookup: int
    busy: int = 0


@dataclass(slots=True)
class _Handle:
    fd: int
    ino: Ino
    flags: OpenFlags


@dataclass(slots=True)
class _Cookies:
    """readdir cookies of one directory (see the module header)."""

    by_name: dict[bytes, int] = field(default_factory=dict)
    next_cookie: int = 1
    stamp: tuple[int, int] = (-1, -1)
    # (cookie, name, ino, type) sorted by cookie: the last scan.
    snapshot: list[tuple[int, bytes, int, int]] = field(default_factory=list)


def _dtype(entry: os.DirEntry[str]) -> int:
    # d_type from the host's getdents; no extra syscall unless the host
    # filesystem does not fill it in.
    try:
        if entry.is_symlink():
            return stat.S_IFLNK
        if entry.is_dir(follow_symlinks=False):
            return stat.S_IFDIR
        if entry.is_file(follow_symlinks=False):
            return stat.S_IFREG
    except OSError:
        return 0
    return 0


class DirectoryBackend:
    """A :class:`volfs.backend.Backend` over the host directory ``root``.

    ``root`` itself is trusted (the host names it); everything under it is
    not. With ``readonly=True`` every mutation raises EROFS.
    """

    def __init__(self, root: str | os.PathLike[str], *, readonly: bool = False) -> None:
        try:
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errno.EIO
            raise error(code, f"cannot open volume root: {os.strerror(code)}", os.fspath(root)) from None
        if not os.path.isdir(_proc(fd)):
            os.close(fd)
            raise error(errno.ENOSYS, "the directory backend needs /proc mounted", os.fspath(root))
        st = os.fstat(fd)
        self._readonly = readonly
        self._dev = st.st_dev
        self._root = Ino(st.st_ino)
        self._lock = threading.Lock()
        # The root never leaves the table (huge lookup count).
        self._nodes: dict[Ino, _Node] = {self._root: _Node(fd, st.st_dev, st.st_ino, 1 << 62)}
        self._synthetic: dict[tuple[int, int], Ino] = {}
        self._handles: dict[FileHandle, _Handle] = {}
        self._next_fh = itertools.count(1)
        self._cookies: dict[Ino, _Cookies] = {}
        self._closed = False

    # -- table plumbing -------------------------------------------------------------

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def root(self) -> Ino:
        return self._root

    def _ino_of(self, st: os.stat_result) -> Ino:
        if st.st_dev == self._dev:
            return Ino(st.st_ino)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            ino = self._synthetic.get(key)
            if ino is None:
                ino = Ino(_SYNTHETIC_BASE + len(self._synthetic))
                self._synthetic[key] = ino
            return ino

    def _attr(self, st: os.stat_result, ino: Ino) -> Attr:
        return Attr(
            ino=ino,
            mode=st.st_mode,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=st.st_rdev,
            size=st.st_size,
            blocks=st.st_blocks,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            crtime_ns=None,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise error(errno.EBADF, "backend is closed")

    def _writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise error(errno.EROFS)

    @contextmanager
    def _use(self, ino: Ino) -> Iterator[int]:
        """Borrow the descriptor of ``ino``; a concurrent forget cannot close it meanwhile.

        Without this, a descriptor number closed by ``forget`` in another
        thread could be reused by an unrelated open and we would act on it.
        """
        with self._lock:
            if self._closed:
                raise error(errno.EBADF, "backend is closed")
            node = self._nodes.get(ino)
            if node is None:
                raise error(errno.ESTALE, f"unknown inode {ino}")
            node.busy += 1
        try:
            yield node.fd
        finally:
            with self._lock:
                node.busy -= 1
                self._maybe_drop(ino, node)

    def _maybe_drop(self, ino: Ino, node: _Node) -> None:
        # Called with the lock held.
        if node.nlookup <= 0 and node.busy <= 0 and self._nodes.get(ino) is node:
            del self._nodes[ino]
            self._cookies.pop(ino, None)
            os.close(node.fd)

    def _register(self, fd: int) -> Attr:
        """Take ownership of O_PATH ``fd`` as one more reference to its inode."""
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        ino = self._ino_of(st)
        with self._lock:
            node = self._nodes.get(ino)
            if node is not None and node.dev == st.st_dev and node.host_ino == st.st_ino:
                node.nlookup += 1
                os.close(fd)
            else:
                self._nodes[ino] = _Node(fd, st.st_dev, st.st_ino, 1)
        return self._attr(st, ino)

    def _open_entry(self, parent_fd: int, name: bytes) -> Attr:
        return self._register(os.open(name, _O_PATH, dir_fd=parent_fd))

    def _fix_new(self, fd: int, mode: int, uid: int, gid: int, *, symlink: bool = False) -> None:
        """Give a just-created inode the exact mode and owner asked for.

        The host applied our umask and its own ids; the protocol wants neither.
        """
        st = os.fstat(fd)
        if not symlink and stat.S_IMODE(st.st_mode) != mode & 0o7777:
            os.chmod(_proc(fd), mode & 0o7777)
        if st.st_uid != uid or st.st_gid != gid:
            os.chown(_proc(fd), uid, gid)
            if not symlink and mode & (stat.S_ISUID | stat.S_ISGID):
                # chown clears set-id bits; put back what was asked for.
                os.chmod(_proc(fd), mode & 0o7777)

    # -- names and attributes ------------------------------------------------------------

    @_host_errors
    def lookup(self, parent: Ino, name: bytes) -> Attr:
        """See :meth:`volfs.backend.Backend.lookup`."""
        check_name(name)
        with self._use(parent) as pfd:
            return self._open_entry(pfd, name)

    def forget(self, ino: Ino, nlookup: int = 1) -> None:
        """See :meth:`volfs.backend.Backend.forget`."""
        if ino == self._root:
            return
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                return
            node.nlookup -= nlookup
            try:
                self._maybe_drop(ino, node)
            except OSError:  # close() failing must not escape forget
                pass

    @_host_errors
    def getattr(self, ino: Ino) -> Attr:
        """See :meth:`volfs.backend.Backend.getattr`."""
        with self._use(ino) as fd:
            return self._attr(os.fstat(fd), ino)

    @_host_errors
    def setattr(self, ino: Ino, changes: SetAttr, fh: FileHandle | None = None) -> Attr:
        """See :meth:`volfs.backend.Backend.setattr`."""
        self._writable()
        with self._use(ino) as fd:
            st = os.fstat(fd)
            if changes.size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise error(errno.EISDIR)
                if not stat.S_ISREG(st.st_mode):
                    raise error(errno.EINVAL, "not a regular file")
                if changes.size < 0:
                    raise error(errno.EINVAL, "negative size")
                handle = self._handles.get(fh) if fh is not None else None
                if handle is not None and handle.flags & OpenFlags.WRITE:
                    os.ftruncate(handle.fd, changes.size)
                else:
                    os.truncate(_proc(fd), changes.size)
            if changes.uid is not None or changes.gid is not None:
                uid = -1 if changes.uid is None else changes.uid
                gid = -1 if changes.gid is None else changes.gid
                os.chown(_proc(fd), uid, gid)
            if changes.mode is not None:
                if stat.S_ISLNK(st.st_mode):
                    raise error(errno.EOPNOTSUPP, "symlinks have no mode of their own")
                os.chmod(_proc(fd), changes.mode & 0o7777)
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                now = time.time_ns()
                atime = changes.atime_ns
                mtime = changes.mtime_ns
                a = st.st_atime_ns if atime is None else now if atime is NOW else atime
                m = st.st_mtime_ns if mtime is None else now if mtime is NOW else mtime
                assert isinstance(a, int) and isinstance(m, int)
                os.utime(_proc(fd), ns=(a, m))
            return self._attr(os.fstat(fd), ino)

    @_host_errors
    def readlink(self, ino: Ino) -> bytes:
        """See :meth:`volfs.backend.Backend.readlink`."""
        with self._use(ino) as fd:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                raise error(errno.EINVAL, "not a symlink")
            # readlinkat(fd, "") reads the link the O_PATH descriptor holds.
            return os.readlink(b"", dir_fd=fd)

    def readdirplus(self, ino: Ino, offset: int = 0) -> Iterator[tuple[DirEntry, Attr]]:
        """See :meth:`volfs.backend.Backend.readdirplus`."""
        for entry in self.readdir(ino, offset):
            try:
                attr = self.lookup(ino, entry.name)
            except VolfsError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # removed since it was listed
                raise
            yield entry, attr

    @_host_errors
    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        """See :meth:`volfs.backend.Backend.readdir`."""
        if offset < 0:
            raise error(errno.EINVAL, "negative readdir offset")
        with self._use(ino) as fd:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise error(errno.ENOTDIR)
            stamp = (st.st_mtime_ns, st.st_ctime_ns)
            with self._lock:
                table = self._cookies.setdefault(ino, _Cookies())
                fresh = offset != 0 and table.stamp == stamp and bool(table.snapshot)
                snapshot = table.snapshot
            if not fresh:
                scanned = self._scan(fd)
                with self._lock:
                    snapshot = self._renumber(table, scanned, stamp)
        out = [
            DirEntry(name, Ino(eino), etype, cookie)
            for cookie, name, eino, etype in snapshot
            if cookie > offset
        ]
        return iter(out)

    def _scan(self, fd: int) -> list[tuple[bytes, int, int]]:
        # openat(O_PATH dir, ".") gives a readable descriptor of that very
        # directory, whatever its path is now.
        dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            with os.scandir(dfd) as it:
                return [(os.fsencode(e.name), e.inode(), _dtype(e)) for e in it]
        finally:
            os.close(dfd)

    @staticmethod
    def _renumber(
        table: _Cookies, scanned: list[tuple[bytes, int, int]], stamp: tuple[int, int]
    ) -> list[tuple[int, bytes, int, int]]:
        seen: dict[bytes, int] = {}
        snapshot: list[tuple[int, bytes, int, int]] = []
        for name, eino, etype in scanned:
            cookie = table.by_name.get(name)
            if cookie is None:
                cookie = table.next_cookie
                table.next_cookie += 1
            seen[name] = cookie
            snapshot.append((cookie, name, eino, etype))
        snapshot.sort()
        table.by_name = seen
        table.snapshot = snapshot
        table.stamp = stamp
        return snapshot

    # -- creating and removing names --------------------------------------------------------

    @_host_errors
    def mkdir(self, parent: Ino, name: bytes, mode: int, uid: int, gid: int) -> Attr:
        """See :meth:`volfs.backend.Backend.mkdir`."""
        self._writable()
        check_name(name)
        with self._use(parent) as pfd:
            os.mkdir(name, mode & 0o7777, dir_fd=pfd)
            attr = self._open_entry(pfd, name)
        return self._finish_new(attr, mode, uid, gid)

    def _finish_new(self, attr: Attr, mode: int, uid: int, gid: int) -> Attr:
        with self._use(attr.ino) as fd:
            self._fix_new(fd, mode, uid, gid, symlink=attr.is_symlink)
            return self._attr(os.fstat(fd), attr.ino)

    @_host_errors
    def mknod(self, parent: Ino, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        """See :meth:`volfs.backend.Backend.mknod`."""
        self._writable()
        check_name(name)
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise error(errno.EINVAL, "mknod makes regular and special files only")
        with self._use(parent) as pfd:
            if kind == stat.S_IFREG:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd))
            else:
                os.mknod(name, kind | 0o600, rdev, dir_fd=pfd)
            attr = self._open_entry(pfd, name)
        return self._finish_new(attr, mode, uid, gid)

    @_host_errors
    def symlink(self, parent: Ino, name: bytes, target: bytes, uid: int, gid: int) -> Attr:
        """See :meth:`volfs.backend.Backend.symlink`."""
        self._writable()
        check_name(name)
        if not target:
            raise error(errno.EINVAL, "empty symlink target")
        if len(target) > _SYMLINK_MAX:
            raise error(errno.ENAMETOOLONG, "symlink target too long")
        if b"\0" in target:
            raise error(errno.EINVAL, "NUL in symlink target")
        with self._use(parent) as pfd:
            os.symlink(target, name, dir_fd=pfd)
            attr = self._open_entry(pfd, name)
        return self._finish_new(attr, 0o777, uid, gid)

    @_host_errors
    def link(self, ino: Ino, new_parent: Ino, new_name: bytes) -> Attr:
        """See :meth:`volfs.backend.Backend.link`."""
        self._writable()
        check_name(new_name)
        with self._use(ino) as fd, self._use(new_parent) as pfd:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise error(errno.EPERM, "hard links to directories are not allowed")
            # linkat(AT_FDCWD, "/proc/self/fd/N", ..., AT_SYMLINK_FOLLOW) links
            # the held inode itself (even a symlink) without CAP_DAC_READ_SEARCH.
            os.link(_proc(fd), new_name, dst_dir_fd=pfd, follow_symlinks=True)
            return self._open_entry(pfd, new_name)

    @_host_errors
    def unlink(self, parent: Ino, name: bytes) -> None:
        """See :meth:`volfs.backend.Backend.unlink`."""
        self._writable()
        check_name(name)
        with self._use(parent) as pfd:
            os.unlink(name, dir_fd=pfd)

    @_host_errors
    def rmdir(self, parent: Ino, name: bytes) -> None:
        """See :meth:`volfs.backend.Backend.rmdir`."""
        self._writable()
        check_name(name)
        with self._use(parent) as pfd:
            os.rmdir(name, dir_fd=pfd)

    @_host_errors
    def rename(
        self,
        old_parent: Ino,
        old_name: bytes,
        new_parent: Ino,
        new_name: bytes,
        flags: RenameFlags = RenameFlags(0),
    ) -> None:
        """See :meth:`volfs.backend.Backend.rename`."""
        self._writable()
        check_name(old_name)
        check_name(new_name)
        if flags & ~(RenameFlags.NOREPLACE | RenameFlags.EXCHANGE) or flags == (
            RenameFlags.NOREPLACE | RenameFlags.EXCHANGE
        ):
            raise error(errno.EINVAL, "invalid rename flags")
        with self._use(old_parent) as ofd, self._use(new_parent) as nfd:
            if not flags:
                os.rename(old_name, new_name, src_dir_fd=ofd, dst_dir_fd=nfd)
                return
            if _libc is None or not hasattr(_libc, "renameat2"):
                raise error(errno.EINVAL, "renameat2 is not available on this host")
            rc = _libc.renameat2(ofd, old_name, nfd, new_name, ctypes.c_uint(int(flags)))
            if rc != 0:
                code = ctypes.get_errno()
                raise error(code, os.strerror(code))

    # -- file handles ------------------------------------------------------------------------

    def _new_handle(self, fd: int, ino: Ino, flags: OpenFlags) -> FileHandle:
        with self._lock:
            fh = FileHandle(next(self._next_fh))
            self._handles[fh] = _Handle(fd, ino, flags)
        return fh

    @staticmethod
    def _os_flags(flags: OpenFlags) -> int:
        if flags & OpenFlags.WRITE or flags & OpenFlags.APPEND:
            acc = os.O_RDWR if flags & OpenFlags.READ else os.O_WRONLY
        else:
            acc = os.O_RDONLY
        out = acc | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        if flags & OpenFlags.APPEND:
            out |= os.O_APPEND
        if flags & OpenFlags.TRUNC:
            out |= os.O_TRUNC
        return out

    def _open_node(self, fd: int, flags: OpenFlags) -> int:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(errno.EISDIR)
        if stat.S_ISLNK(mode):
            raise error(errno.ELOOP, "is a symlink")
        if not stat.S_ISREG(mode):
            raise error(errno.ENXIO, "not a regular file: devices, FIFOs and sockets are never opened")
        # The pinned inode is a regular file, and the magic link reaches that
        # very inode, so this open cannot land on a FIFO or device.
        real = os.open(_proc(fd), self._os_flags(flags))
        return real

    @_host_errors
    def open(self, ino: Ino, flags: OpenFlags) -> FileHandle:
        """See :meth:`volfs.backend.Backend.open`."""
        if flags.writes:
            self._writable()
        else:
            self._check_open()
        with self._use(ino) as fd:
            real = self._open_node(fd, flags)
        return self._new_handle(real, ino, flags)

    @_host_errors
    def create(
        self, parent: Ino, name: bytes, mode: int, flags: OpenFlags, uid: int, gid: int
    ) -> tuple[FileHandle, Attr]:
        """See :meth:`volfs.backend.Backend.create`."""
        self._writable()
        check_name(name)
        with self._use(parent) as pfd:
            try:
                real = os.open(
                    name,
                    self._os_flags(flags) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    0o600,
                    dir_fd=pfd,
                )
            except FileExistsError:
                if flags & OpenFlags.EXCL:
                    raise
                attr = self._open_entry(pfd, name)
                try:
                    with self._use(attr.ino) as fd:
                        if stat.S_ISLNK(attr.mode):
                            raise error(errno.EEXIST, "a symlink has that name") from None
                        real = self._open_node(fd, flags)
                        attr = self._attr(os.fstat(fd), attr.ino)
                except BaseException:
                    self.forget(attr.ino)
                    raise
                return self._new_handle(real, attr.ino, flags), attr
            try:
                self._fix_new(real, mode, uid, gid)
                attr = self._register(os.open(_proc(real), os.O_PATH | os.O_CLOEXEC))
            except BaseException:
                os.close(real)
                raise
        return self._new_handle(real, attr.ino, flags), attr

    def _handle(self, fh: FileHandle) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise error(errno.EBADF, f"unknown file handle {fh}")
        return handle

    @_host_errors
    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        """See :meth:`volfs.backend.Backend.read`."""
        if offset < 0 or size < 0:
            raise error(errno.EINVAL, "negative offset or size")
        fd = self._handle(fh).fd
        data = os.pread(fd, size, offset)
        if len(data) == size or not data:
            return data
        # Short read: only at EOF or beyond the kernel's per-call cap (~2 GiB).
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    @_host_errors
    def write(self, fh: FileHandle, offset: int, data: bytes | bytearray | memoryview,
              then: SetAttr | None = None) -> int:
        """See :meth:`volfs.backend.Backend.write`."""
        if offset < 0:
            raise error(errno.EINVAL, "negative offset")
        check_write_changes(then)
        handle = self._handle(fh)
        if not handle.flags.writes:
            raise error(errno.EBADF, "handle not open for writing")
        view = memoryview(data).cast("B")
        total = len(view)
        done = 0
        while done < total:
            n = os.pwrite(handle.fd, view[done:], offset + done)
            if n <= 0:
                raise error(errno.EIO, "host write made no progress")
            done += n
        if then is not None:
            # The host has no write-and-chmod: the write stands if the changes fail.
            self.setattr(handle.ino, then, fh)
        return total

    @_host_errors
    def fsync(self, fh: FileHandle, datasync: bool = False) -> None:
        """See :meth:`volfs.backend.Backend.fsync`."""
        fd = self._handle(fh).fd
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    @_host_errors
    def release(self, fh: FileHandle) -> None:
        """See :meth:`volfs.backend.Backend.release`."""
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            raise error(errno.EBADF, f"unknown file handle {fh}")
        os.close(handle.fd)

    # -- extended attributes --------------------------------------------------------------------

    @_host_errors
    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        """See :meth:`volfs.backend.Backend.getxattr`."""
        with self._use(ino) as fd:
            return os.getxattr(_proc(fd), name)

    @_host_errors
    def setxattr(self, ino: Ino, name: bytes, value: bytes, flags: XattrFlags = XattrFlags(0)) -> None:
        """See :meth:`volfs.backend.Backend.setxattr`."""
        self._writable()
        with self._use(ino) as fd:
            os.setxattr(_proc(fd), name, value, int(flags))

    @_host_errors
    def listxattr(self, ino: Ino) -> list[bytes]:
        """See :meth:`volfs.backend.Backend.listxattr`."""
        with self._use(ino) as fd:
            return [os.fsencode(n) for n in os.listxattr(_proc(fd))]

    @_host_errors
    def removexattr(self, ino: Ino, name: bytes) -> None:
        """See :meth:`volfs.backend.Backend.removexattr`."""
        self._writable()
        with self._use(ino) as fd:
            os.removexattr(_proc(fd), name)

    # -- whole filesystem ---------------------------------------------------------------------------

    @_host_errors
    def statfs(self) -> StatFs:
        """See :meth:`volfs.backend.Backend.statfs`."""
        with self._use(self._root) as fd:
            sv = os.statvfs(_proc(fd))
        return StatFs(
            bsize=sv.f_bsize,
            frsize=sv.f_frsize,
            blocks=sv.f_blocks,
            bfree=sv.f_bfree,
            bavail=sv.f_bavail,
            files=sv.f_files,
            ffree=sv.f_ffree,
            favail=sv.f_favail,
            namemax=min(sv.f_namemax, 255),
        )

    @_host_errors
    def sync(self) -> None:
        """See :meth:`volfs.backend.Backend.sync`: ``syncfs`` on the root's filesystem."""
        self._check_open()
        if self._readonly:
            return
        with self._use(self._root) as fd:
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            try:
                if _libc is not None and hasattr(_libc, "syncfs"):
                    _libc.syncfs(dfd)
                else:  # pragma: no cover
                    os.sync()
            finally:
                os.close(dfd)

    def close(self) -> None:
        """See :meth:`volfs.backend.Backend.close`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = list(self._handles.values())
            nodes = list(self._nodes.values())
            self._handles.clear()
            self._nodes.clear()
            self._cookies.clear()
        for h in handles:
            try:
                os.close(h.fd)
            except OSError:
                pass
        for n in nodes:
            try:
                os.close(n.fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<DirectoryBackend root ino {self._root}{' ro' if self._readonly else ''}>"
