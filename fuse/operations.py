"""pyfuse3 ``Operations`` mapped 1:1 onto the volfs backend protocol.

Theory of operation
-------------------
The kernel talks in FUSE inode numbers, the backend in its own; they are the
same numbers except that FUSE's root is always 1, so the backend's root and
inode 1 swap places (:meth:`VolfsOperations._b` and ``_f``).

Lookup counts: the backend counts references exactly as the kernel does
(``lookup``, ``mkdir``, ``mknod``, ``symlink``, ``link``, ``create`` add one;
``forget`` drops them), so this layer passes them through. The one place it
takes references itself is ``readdir`` (pyfuse3 answers READDIRPLUS, which
gives the kernel an entry per name): the backend's ``readdirplus`` adds one
per entry, and an entry the kernel's buffer had no room for
(``readdir_reply`` returned False) is forgotten again at once.

Errors are converted in exactly one place, :func:`_op`: an ``OSError`` (every
``VolfsError`` is one) becomes ``FUSEError(errno)``; anything else is logged
with its traceback and becomes EIO, because any other exception would end the
pyfuse3 main loop and leave a dead mount.

Backend calls are made directly from the trio thread: they are short local
I/O, and the daemon serves one volume.

Caching: reads and read-write opens use the kernel's page cache; write-only
opens bypass it (``_file_info``), which makes dropping privileges on a write
the daemon's job (``_kill_privs``); on a disk volume their appends are
collected by the write-behind (writebehind.py), which every other request
drains first (``_op``); a SETATTR of the file being written goes to the
backend together with its pending bytes (``setattr``). There, too, an
owner-only SETATTR is answered at once and made with the next SETATTR of
the same file (tar's chown, then chmod), or before any other request.

Handlers are plain functions: none of them waits for anything, and ``_op``
wraps each in the coroutine function pyfuse3 calls.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple, TypeVar

import pyfuse3

from volfs.backend import NAME_MAX, Attr, Backend, FileHandle, Ino, OpenFlags, RenameFlags, SetAttr
from volfs_fuse.idmap import IdMap
from volfs_fuse.writebehind import WriteBehind, owner_only

__all__ = ["VolfsOperations"]

log = logging.getLogger("volfs.fuse")

_DOT_ENTRIES = 2  # "." and ".." take FUSE readdir offsets 1 and 2
_CAPS = b"security.capability"
_CAPLESS_MAX = 1 << 16


class _Writer(NamedTuple):
    """Who opened a write-only (direct) handle, for dropping privileges on its writes."""

    ino: Ino
    privileged: bool  # opened by root: taken as holding CAP_FSETID
    gid: int
    pid: int


T = TypeVar("T")


def _op(fn: Callable[..., T]) -> Callable[..., Coroutine[Any, Any, T]]:
    """The pyfuse3 handler (a coroutine function) that runs ``fn``, a plain function, and turns
    every exception of it into a FUSEError (see the module header).

    The handlers themselves are plain functions, since none of them waits for
    anything: a coroutine of their own for each request would only cost time.

    Every request but a WRITE first drains a pending write-behind run, so it
    sees the run written, and is charged against the write-behind's bound on
    free space (see writebehind.py); ``write`` and ``setattr`` do both
    themselves.
    """
    drains = fn.__name__ not in ("write", "setattr")

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> Any:
        behind = args[0]._behind
        if drains and behind is not None:
            if behind.run is not None or behind.owner is not None:
                behind.drain()
            behind.charge()
        try:
            return fn(*args)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s%r", fn.__name__, args[1:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class VolfsOperations(pyfuse3.Operations):
    """The FUSE filesystem of one backend.

    ``exclusive`` says whether this mount is the only writer of the storage
    (a disk image held with an exclusive lock): then the kernel may cache
    attributes, entries and file pages for long; otherwise (a directory
    volume other processes may change) only briefly.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, backend: Backend, ids: IdMap, *, exclusive: bool) -> None:
        super().__init__()
        self._backend = backend
        self._root = backend.root  # (fixed for the backend's life; read on every request)
        self._ids = ids
        self._identity = ids.identity
        self._exclusive = exclusive
        self._timeout = 60.0 if exclusive else 1.0
        self._dirs: dict[int, Ino] = {}
        self._next_dir_handle = 1
        self._direct: dict[int, _Writer] = {}  # write-only (direct) handles
        # Files this mount created that cannot have security.capability (see _drop_caps).
        self._capless: set[Ino] = set()
        # Write-behind only where nothing but this daemon can look at the storage.
        self._behind = WriteBehind(backend, self._forget_attrs) if exclusive and not backend.readonly else None
        self._session = True  # False once the FUSE session is closed: nothing left to notify

    # -- inode numbers and attributes ---------------------------------------

    def _b(self, ino: int) -> Ino:
        """FUSE inode -> backend inode."""
        root = self._root
        if ino == pyfuse3.ROOT_INODE:
            return root
        return Ino(pyfuse3.ROOT_INODE) if ino == root else Ino(ino)

    def _f(self, ino: Ino) -> int:
        """Backend inode -> FUSE inode."""
        root = self._root
        if ino == root:
            return pyfuse3.ROOT_INODE
        return int(root) if ino == pyfuse3.ROOT_INODE else int(ino)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        # Every reply with attributes is built here (a few per request): the common cases (an inode
        # that is neither root nor 1, ids shown as stored) skip the helper calls.
        e = pyfuse3.EntryAttributes()
        ino = attr.ino
        e.st_ino = ino if ino != self._root and ino != pyfuse3.ROOT_INODE else self._f(ino)
        e.generation = attr.generation
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        if self._identity:
            e.st_uid = attr.uid
            e.st_gid = attr.gid
        else:
            e.st_uid = self._ids.host_uid(attr.uid)
            e.st_gid = self._ids.host_gid(attr.gid)
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = 4096
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        e.st_birthtime_ns = attr.crtime_ns if attr.crtime_ns is not None else 0
        e.entry_timeout = self._timeout
        e.attr_timeout = self._timeout
        return e

    def _owner(self, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        return self._ids.guest_uid(ctx.uid), self._ids.guest_gid(ctx.gid)

    @staticmethod
    def _check_name(name: bytes) -> None:
        # The FUSE kernel module does not enforce NAME_MAX (pitfalls doc).
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    # -- names and attributes -----------------------------------------------

    @_op
    def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        return self._entry(self._backend.lookup(self._b(parent_inode), name))

    @_op
    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self._backend.forget(self._b(ino), count)

    @_op
    def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._backend.getattr(self._b(inode)))

    @_op
    def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        # pyfuse3 has already turned UTIME_NOW into the current time.
        changes = SetAttr(
            mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
            uid=self._ids.guest_uid(attr.st_uid) if fields.update_uid else None,
            gid=self._ids.guest_gid(attr.st_gid) if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        ino = self._b(inode)
        handle = FileHandle(fh) if fh is not None else None
        behind = self._behind
        if behind is not None:
            owner = behind.owner
            if owner is not None and owner.ino == ino and changes.size is None:
                # tar's chmod right after its chown: one backend call for both (writebehind.py).
                behind.charge()
                return self._entry(behind.setattr_with_owner(ino, changes, handle))
            run = behind.run
            # The changes to a file whose appended bytes are pending (tar's utimensat after its
            # writes) go to the backend with them, in one write (see WriteBehind.drain).
            made = behind.drain(then=changes if run is not None and run.ino == ino else None)
            behind.charge()
            if made:
                return self._entry(self._backend.getattr(ino))
            if owner_only(changes):
                before, ctime_ns = behind.defer_owner(ino, changes)
                e = self._entry(before)
                if changes.uid is not None:
                    e.st_uid = self._ids.host_uid(changes.uid)
                if changes.gid is not None:
                    e.st_gid = self._ids.host_gid(changes.gid)
                e.st_ctime_ns = ctime_ns
                return e
        if changes.is_empty():
            return self._entry(self._backend.getattr(ino))
        return self._entry(self._backend.setattr(ino, changes, handle))

    @_op
    def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self._backend.readlink(self._b(inode))

    @_op
    def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only reached without default_permissions: the usual owner/group/other rule.
        a = self._entry(self._backend.getattr(self._b(inode)))
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(a.st_mode & 0o111) or stat.S_ISDIR(a.st_mode)
        if ctx.uid == a.st_uid:
            bits = (a.st_mode >> 6) & 7
        elif ctx.gid == a.st_gid or a.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (a.st_mode >> 3) & 7
        else:
            bits = a.st_mode & 7
        return (mode & bits) == mode

    # -- directories --------------------------------------------------------

    @_op
    def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        ino = self._b(inode)
        if not self._backend.getattr(ino).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = ino
        return handle

    @_op
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino = self._dirs.get(fh)
        if ino is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        # "." and ".." come first, at FUSE offsets 1 and 2 (as the kernel's ext4
        # lists them); backend cookies are shifted past them. The protocol has
        # no parent lookup, so ".." carries the directory's own attributes
        # (the kernel creates no dentry from either, so only `ls -ai` shows it).
        if start_id < _DOT_ENTRIES:
            here = self._entry(self._backend.getattr(ino))
            for offset, name in ((1, b"."), (2, b"..")):
                if start_id < offset and not pyfuse3.readdir_reply(token, name, here, offset):
                    return
        for entry, attr in self._backend.readdirplus(ino, max(start_id - _DOT_ENTRIES, 0)):
            # Each pair holds a reference, kept only if the kernel takes the entry.
            if not pyfuse3.readdir_reply(token, entry.name, self._entry(attr), entry.offset + _DOT_ENTRIES):
                self._backend.forget(attr.ino, 1)
                return

    @_op
    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_op
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._backend.sync()

    @_op
    def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        uid, gid = self._owner(ctx)
        perm = stat.S_IMODE(mode) & ~ctx.umask
        return self._entry(self._backend.mkdir(self._b(parent_inode), name, perm, uid, gid))

    @_op
    def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(name)
        self._backend.rmdir(self._b(parent_inode), name)

    # -- other names --------------------------------------------------------

    @_op
    def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        uid, gid = self._owner(ctx)
        full = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        return self._entry(self._backend.mknod(self._b(parent_inode), name, full, rdev, uid, gid))

    @_op
    def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_name(name)
        uid, gid = self._owner(ctx)
        return self._entry(self._backend.symlink(self._b(parent_inode), name, target, uid, gid))

    @_op
    def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check_name(new_name)
        return self._entry(self._backend.link(self._b(inode), self._b(new_parent_inode), new_name))

    @_op
    def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(name)
        self._backend.unlink(self._b(parent_inode), name)

    @_op
    def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_name(name_old)
        self._check_name(name_new)
        known = RenameFlags.NOREPLACE | RenameFlags.EXCHANGE
        if flags & ~int(known):
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._backend.rename(
            self._b(parent_inode_old), name_old, self._b(parent_inode_new), name_new, RenameFlags(flags)
        )

    # -- files --------------------------------------------------------------

    def _file_info(self, fh: FileHandle, ino: Ino, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        # Write-only opens bypass the page cache (FOPEN_DIRECT_IO): such an fd
        # can never be read or mmapped, and a cached write(2) costs a GETXATTR
        # of security.capability on every call (the kernel's file_remove_privs)
        # where the direct path sends only the WRITE. The kernel keeps other
        # opens' cached pages coherent (it writes dirty pages back before a
        # direct write and drops the range after it). The direct path leaves
        # dropping privileges to the server: see _kill_privs.
        write_only = (flags & os.O_ACCMODE) == os.O_WRONLY
        if write_only:
            self._direct[fh] = _Writer(ino, ctx.uid == 0, ctx.gid, ctx.pid)
        # The page cache may keep a file's pages across opens only when no
        # one else can change the storage behind this mount.
        return pyfuse3.FileInfo(fh=fh, keep_cache=self._exclusive, direct_io=write_only)

    def _kill_privs(self, fh: int) -> None:
        """What the kernel's file_remove_privs does before a write, for a write-only (direct) handle.

        Any write drops the file's capabilities (security.capability); one by a
        writer without CAP_FSETID also clears set-user-ID, and set-group-ID
        when the group may execute or the writer is outside the file's group
        (setattr_should_drop_sgid; ext4 does so, the FUSE module's own cached
        path still uses only the older group-executable rule). On the cached
        path the kernel does this itself; on the direct path it only flags the
        WRITE, and pyfuse3 does not pass the flag on, so "lacks CAP_FSETID" is
        taken to mean "the opener was not root".
        """
        w = self._direct[fh]
        try:
            self._drop_caps(w.ino)
            if not w.privileged:
                self._drop_set_id(w, fh)
        except PermissionError:
            # Only a directory volume served by an unprivileged daemon can
            # refuse; there the host kernel drops them itself when the daemon
            # writes the host file.
            pass

    def _drop_caps(self, ino: Ino) -> None:
        # A file created through this mount gets security.capability only through a SETXATTR of
        # this mount, when nothing else can change the storage: until then there is none to drop
        # (tar's every file: one engine lookup less before its first write, and one at its chown,
        # see getxattr).
        if ino in self._capless:
            return
        try:
            self._backend.getxattr(ino, _CAPS)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
        else:
            self._backend.removexattr(ino, _CAPS)

    def _drop_set_id(self, w: _Writer, fh: int) -> None:
        ino = w.ino
        attr = self._backend.getattr(ino)
        mode = attr.mode
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not self._in_group(w, self._ids.host_gid(attr.gid))):
            kill |= stat.S_ISGID
        if kill:
            self._backend.setattr(ino, SetAttr(mode=stat.S_IMODE(mode) & ~kill), FileHandle(fh))
            # The kernel still caches the old mode (a WRITE reply invalidates
            # only size and times). Attributes only: no page is dropped, so
            # this cannot wait on writeback (which is off anyway).
            pyfuse3.invalidate_inode(self._f(ino), attr_only=True)

    @staticmethod
    def _in_group(w: _Writer, gid: int) -> bool:
        if w.gid == gid:
            return True
        try:
            return gid in pyfuse3.get_sup_groups(w.pid)
        except OSError:  # the opener is gone: not known to be in the group, so drop the bit
            return False

    @_op
    def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        ino = self._b(inode)
        return self._file_info(self._backend.open(ino, OpenFlags.from_os(flags)), ino, flags, ctx)

    @_op
    def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_name(name)
        uid, gid = self._owner(ctx)
        perm = stat.S_IMODE(mode) & ~ctx.umask
        fh, attr = self._backend.create(self._b(parent_inode), name, perm, OpenFlags.from_os(flags), uid, gid)
        # Only with O_EXCL is the file surely new: without it the backend opens an existing one.
        if self._exclusive and flags & os.O_EXCL:
            if len(self._capless) >= _CAPLESS_MAX:
                self._capless.clear()  # (only a saving is lost)
            self._capless.add(attr.ino)
        return self._file_info(fh, attr.ino, flags, ctx), self._entry(attr)

    @_op
    def read(self, fh: int, off: int, size: int) -> bytes:
        return self._backend.read(FileHandle(fh), off, size)

    @_op
    def write(self, fh: int, off: int, buf: bytes) -> int:
        behind = self._behind
        if behind is not None:
            if behind.extend(fh, off, buf):  # continues this handle's pending run
                return len(buf)
            behind.drain()
            self._raise_deferred(fh)
        if fh in self._direct:
            # Runs start only here, so privileges are dropped before each run's first byte, and
            # nothing can change the file's mode or xattrs before the run drains (any request does).
            self._kill_privs(fh)
            if behind is not None and behind.start(fh, self._direct[fh].ino, off, buf):
                return len(buf)
        if behind is not None:
            behind.charge_write(len(buf))
        return self._backend.write(FileHandle(fh), off, buf)

    def _raise_deferred(self, fh: int) -> None:
        """Report the failure of an earlier write-behind run of ``fh`` (once)."""
        failed = self._behind.take_error(fh) if self._behind is not None else None
        if failed is not None:
            raise failed

    @_op
    def flush(self, fh: int) -> None:
        # Nothing to do at close(2): writes reach the backend as they come (and,
        # were the writeback cache on, the kernel writes dirty pages back before
        # it even looks at this answer), fsync makes them durable, and POSIX
        # locks stay in the kernel (no lock handlers). ENOSYS makes the kernel
        # stop sending FLUSH for the rest of the mount (fc->no_flush), which
        # saves one round trip per close of every file.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_op
    def fsync(self, fh: int, datasync: bool) -> None:
        self._raise_deferred(fh)
        self._backend.fsync(FileHandle(fh), datasync)

    @_op
    def release(self, fh: int) -> None:
        self._direct.pop(fh, None)
        if self._behind is not None:
            self._behind.forget(fh)
        self._backend.release(FileHandle(fh))

    def drain(self, *, closed: bool = False) -> None:
        """Write out a pending write-behind run or owner change now (the daemon calls this when idle,
        and with ``closed`` once the FUSE session is closed)."""
        if closed:
            self._session = False
        if self._behind is not None:
            self._behind.drain()

    def _forget_attrs(self, ino: Ino) -> None:
        """Make the kernel ask again for the attributes of ``ino`` (attributes only, so this cannot
        wait on writeback); nothing to do once the session is closed."""
        if self._session:
            pyfuse3.invalidate_inode(self._f(ino), attr_only=True)

    # -- extended attributes ------------------------------------------------

    @_op
    def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        ino = self._b(inode)
        # The kernel asks this before each chown of a file (to drop capabilities): tar's every file.
        if name == _CAPS and ino in self._capless:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return self._backend.getxattr(ino, name)

    @_op
    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name == _CAPS:
            self._capless.discard(self._b(inode))
        self._backend.setxattr(self._b(inode), name, value)

    @_op
    def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self._backend.listxattr(self._b(inode))

    @_op
    def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._backend.removexattr(self._b(inode), name)

    # -- whole filesystem ---------------------------------------------------

    @_op
    def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self._backend.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.bsize
        out.f_frsize = s.frsize
        out.f_blocks = s.blocks
        out.f_bfree = s.bfree
        out.f_bavail = s.bavail
        out.f_files = s.files
        out.f_ffree = s.ffree
        out.f_favail = s.favail
        out.f_namemax = min(s.namemax, NAME_MAX)
        return out
