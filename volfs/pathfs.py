"""PathFs: every path semantic of a volume, once, over any backend.

Theory of operation
-------------------
A backend speaks inodes and single ``bytes`` names (:mod:`volfs.backend`).
This module turns volume-relative ``str`` paths into backend calls, and is
the only place that does: symlink resolution, parent creation, recursive
removal, copying, atomic replacement, the file objects of :meth:`PathFs.open`,
and errors carrying the volume-relative path. The async handle
(:mod:`volfs.fs`) is a thin wrapper that runs these methods in a worker
thread; this class is its blocking twin (same names, same signatures).

Paths are resolved the way the guest sees them, as if chrooted at the volume
root (:meth:`PathFs._walk`): the walk keeps the chain of directory inodes
from the root, ``..`` pops it (and stops at the root), a symlink's target is
spliced into the remaining components (an absolute target restarts at the
root), and more than :data:`~volfs.backend.MAX_SYMLINK_HOPS` symlinks give
ELOOP. The walk never builds a host path, so nothing can resolve outside the
volume whatever the guest planted. ``lstat``, ``readlink``, ``remove``,
``rename``, ``link`` and ``symlink`` do not follow the last component;
everything else does.

Every inode the walk looks up is forgotten when the operation ends, so the
backend's lookup counts stay balanced (open files and streams hold one
reference until closed).

Names become bytes with UTF-8 and ``surrogateescape`` in :func:`_encode`
and come back in :func:`_decode`, and nowhere else, so any host name
round-trips.

Writes through :meth:`PathFs.write`, :meth:`PathFs.write_stream` and
:meth:`PathFs.copy` go to a temporary name in the target's directory and are
renamed over the target at the end, so a reader sees the old file or the new
one, never a torn one. An existing target's permission bits and owner are
kept; a new file gets ``mode`` and the handle's owner.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import io
import os
import re
import secrets
import stat as _stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Concatenate, Final, Literal, ParamSpec, TypeVar, cast

from volfs.backend import (
    MAX_SYMLINK_HOPS,
    Attr,
    Backend,
    FileHandle,
    Ino,
    OpenFlags,
    RenameFlags,
    SetAttr,
    StatFs,
    XattrFlags,
)
from volfs.errors import VolfsError, error

__all__ = ["PathFs", "FsEntry", "FsMetadata", "FsKind", "ReadStream", "WriteSink"]

FsKind = Literal["file", "directory", "symlink", "other"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

PATH_MAX: Final = 4096
_CHUNK: Final = 16 << 20  # copy granularity: big enough that Python loops are negligible
_STREAM_CHUNK: Final = 64 << 10  # microsandbox's read_stream chunk size
_FILE_BUFFER: Final = 128 << 10
_ENOENT_LIKE: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


# -- names: the one place where str meets bytes ---------------------------------------


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _components(path: str) -> tuple[list[bytes], bool]:
    """Split a volume path into byte components (``.`` and empties dropped).

    Returns the components and whether the path ends with a slash (which
    demands a directory). Raises EINVAL for NUL, ENAMETOOLONG for long paths.
    """
    if not isinstance(path, str):
        path = os.fspath(path)
    if "\0" in path:
        raise error(errno.EINVAL, "path contains a NUL character", _display(path))
    raw = _encode(path)
    if len(raw) >= PATH_MAX:
        raise error(errno.ENAMETOOLONG, "path too long", _display(path))
    comps = [c for c in raw.split(b"/") if c and c != b"."]
    for c in comps:
        if len(c) > 255:
            raise error(errno.ENAMETOOLONG, "file name too long", _display(path))
    return comps, raw.endswith(b"/") and bool(comps)


def _split_target(target: bytes) -> list[bytes]:
    return [c for c in target.split(b"/") if c and c != b"."]


def _display(path: str) -> str:
    """The volume-relative form used in errors and listings: ``/a/b``."""
    parts = [p for p in str(path).split("/") if p and p != "."]
    return "/" + "/".join(parts)


def _time(ns: int | None) -> datetime | None:
    if ns is None:
        return None
    try:
        secs, rest = divmod(ns, 1_000_000_000)
        return datetime.fromtimestamp(secs, UTC).replace(microsecond=rest // 1000)
    except (OverflowError, ValueError, OSError):
        # A hostile or corrupt timestamp must not crash a listing.
        return None


def _kind(mode: int) -> FsKind:
    if _stat.S_ISREG(mode):
        return "file"
    if _stat.S_ISDIR(mode):
        return "directory"
    if _stat.S_ISLNK(mode):
        return "symlink"
    return "other"


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FsEntry:
    """One child in :meth:`PathFs.list` (microsandbox's ``FsEntry``)."""

    path: str
    kind: FsKind
    size: int
    mode: int
    uid: int
    gid: int
    accessed: datetime | None
    modified: datetime | None


@dataclass(frozen=True, slots=True)
class FsMetadata:
    """What :meth:`PathFs.stat` reports (microsandbox's ``FsMetadata`` plus ino/nlink).

    ``mode`` is the full ``st_mode``; ``readonly`` is true when the handle is
    read-only or nobody has a write bit. ``created`` is None when the storage
    keeps no birth time.
    """

    kind: FsKind
    size: int
    mode: int
    uid: int
    gid: int
    readonly: bool
    accessed: datetime | None
    modified: datetime | None
    created: datetime | None
    ino: int
    nlink: int


@dataclass(slots=True)
class _Res:
    """Where a path landed: the entry ``name`` in directory ``parent``.

    ``name`` is None when the path names a directory with no entry name of
    its own (the root, or a path ending in ``..``); then ``attr`` is that
    directory. ``attr`` is None when the entry does not exist.
    """

    parent: Ino
    name: bytes | None
    attr: Attr | None
    chain: list[Ino]
    refs: list[Ino]

    def steal(self, ino: Ino) -> Ino | None:
        """Take over one lookup reference on ``ino`` (None for the unreferenced root)."""
        if ino in self.refs:
            self.refs.remove(ino)
            return ino
        return None


def _paths(fn: Callable[Concatenate[PathFs, _P], _R]) -> Callable[Concatenate[PathFs, _P], _R]:
    """Give every error escaping ``fn`` the volume-relative path (its first argument)."""

    @functools.wraps(fn)
    def wrapper(self: PathFs, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(self, *args, **kwargs)
        except VolfsError as exc:
            if exc.path is None:
                raise _with_path(exc, _first_path(args, kwargs)) from None
            raise
        except OSError as exc:  # a backend broke its contract: still only VolfsError escapes
            code = exc.errno if exc.errno is not None else errno.EIO
            raise error(code, os.strerror(code), _display(_first_path(args, kwargs))) from None

    return wrapper


def _first_path(args: tuple[object, ...], kwargs: dict[str, object]) -> str:
    first = args[0] if args else next(iter(kwargs.values()), "/")
    return first if isinstance(first, str) else "/"


def _with_path(exc: VolfsError, path: str) -> VolfsError:
    if exc.path is not None:
        return exc
    return error(exc.errno or errno.EIO, exc.strerror, _display(path))


# Aliases for annotations inside PathFs, where ``list`` names the method.
_StrList = list[str]
_BytesList = list[bytes]
_InoStack = list[tuple[Ino, bool]]
_RmStack = list[tuple[Ino, bytes, Ino, bool]]


class PathFs:
    """The synchronous filesystem handle of one volume (the blocking twin of ``VolumeFsHandle``).

    ``owner`` is the (uid, gid) given to new files and directories (default:
    this process's effective ids; the Volume layer passes 0:0 for disk
    volumes). ``readonly`` makes every mutation raise EROFS even when the
    backend could write. ``on_close`` runs once when the handle closes (the
    Volume layer releases its lock there). :meth:`close` closes the backend.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        owner: tuple[int, int] | None = None,
        readonly: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._b = backend
        self._owner = owner if owner is not None else (os.geteuid(), os.getegid())
        self._readonly = readonly or backend.readonly
        self._on_close = on_close
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend under this handle (for the FUSE layer and tests)."""
        return self._b

    @property
    def readonly(self) -> bool:
        """True if every mutation raises EROFS."""
        return self._readonly

    @property
    def owner(self) -> tuple[int, int]:
        """(uid, gid) given to new files and directories."""
        return self._owner

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the backend and run ``on_close``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._b.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> PathFs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mutating(self, path: str) -> None:
        if self._closed:
            raise error(errno.EBADF, "filesystem handle is closed", _display(path))
        if self._readonly:
            raise error(errno.EROFS, "volume is open read-only", _display(path))

    # -- resolution ---------------------------------------------------------------------------

    @contextmanager
    def _resolve(
        self,
        path: str,
        *,
        follow: bool,
        make_parents: bool = False,
        forbid: Ino | None = None,
    ) -> Iterator[_Res]:
        """Resolve ``path`` (see the module header); forget every lookup on exit."""
        if self._closed:
            raise error(errno.EBADF, "filesystem handle is closed", _display(path))
        comps, trailing = _components(path)
        refs: list[Ino] = []
        try:
            res = self._walk(comps, follow or trailing, refs, make_parents, forbid)
            if trailing and res.attr is not None and not res.attr.is_dir:
                raise error(errno.ENOTDIR, None, _display(path))
            yield res
        finally:
            for ino in refs:
                self._b.forget(ino)

    def _walk(
        self,
        comps: list[bytes],
        follow_last: bool,
        refs: list[Ino],
        make_parents: bool,
        forbid: Ino | None,
    ) -> _Res:
        b = self._b
        root = b.root
        chain: list[Ino] = [root]
        pending = list(reversed(comps))  # next component at the end
        hops = 0
        while pending:
            name = pending.pop()
            if name == b"..":
                if len(chain) > 1:  # the guest's root is its own parent
                    chain.pop()
                continue
            last = not pending
            try:
                attr = b.lookup(chain[-1], name)
            except VolfsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                if last:
                    return _Res(chain[-1], name, None, chain, refs)
                if not make_parents:
                    raise
                if forbid is not None and forbid in chain:
                    raise error(errno.EINVAL, "cannot move a directory into itself") from None
                attr = self._mkdir_entry(chain[-1], name, 0o755)
            refs.append(attr.ino)
            if attr.is_symlink and (follow_last or not last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise error(errno.ELOOP, "too many levels of symbolic links")
                target = b.readlink(attr.ino)
                if target.startswith(b"/"):
                    chain = [root]
                pending.extend(reversed(_split_target(target)))
                continue
            if last:
                return _Res(chain[-1], name, attr, chain, refs)
            if not attr.is_dir:
                raise error(errno.ENOTDIR)
            chain = chain + [attr.ino]
        # The path named a directory by root, '.' or '..': no entry name.
        parent = chain[-2] if len(chain) > 1 else root
        return _Res(parent, None, b.getattr(chain[-1]), chain, refs)

    def _mkdir_entry(self, parent: Ino, name: bytes, mode: int) -> Attr:
        """mkdir that tolerates losing a race to another creator of the same directory."""
        uid, gid = self._owner
        try:
            return self._b.mkdir(parent, name, mode, uid, gid)
        except VolfsError as exc:
            if exc.errno != errno.EEXIST:
                raise
            attr = self._b.lookup(parent, name)
            if not attr.is_dir:
                self._b.forget(attr.ino)
                raise
            return attr

    @staticmethod
    def _need(res: _Res, path: str) -> Attr:
        if res.attr is None:
            raise error(errno.ENOENT, None, _display(path))
        return res.attr

    # -- reading ----------------------------------------------------------------------------------

    def _read_all(self, fh: FileHandle, start: int, size_hint: int) -> bytes:
        # One big read for the size we know, then confirm EOF (the file may
        # have grown meanwhile).
        parts: list[bytes] = []
        pos = start
        want = max(size_hint - start, 0) or _STREAM_CHUNK
        while True:
            data = self._b.read(fh, pos, want)
            if not data:
                break
            parts.append(data)
            pos += len(data)
            if len(data) < want:
                break
            want = _CHUNK
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @_paths
    def read(self, path: str) -> bytes:
        """Return the whole content of file ``path`` (follows symlinks).

        Errors: ENOENT, EISDIR, ENOTDIR, ELOOP, ENXIO (device, FIFO, socket).
        """
        with self._resolve(path, follow=True) as res:
            attr = self._need(res, path)
            if attr.is_dir:
                raise error(errno.EISDIR, None, _display(path))
            fh = self._b.open(attr.ino, OpenFlags.READ)
            try:
                return self._read_all(fh, 0, attr.size)
            finally:
                self._b.release(fh)

    @_paths
    def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        """Return file ``path`` decoded (UTF-8 by default); EILSEQ if it does not decode."""
        data = self.read(path)
        try:
            return data.decode(encoding, errors)
        except UnicodeDecodeError as exc:
            raise error(errno.EILSEQ, f"not valid {encoding}: {exc.reason}", _display(path)) from None
        except LookupError:
            raise error(errno.EINVAL, f"unknown encoding {encoding!r}", _display(path)) from None

    read_to_string = read_text

    @_paths
    def read_stream(self, path: str, chunk_size: int = _STREAM_CHUNK) -> ReadStream:
        """Open file ``path`` for reading in chunks of ``chunk_size`` bytes.

        The file is opened now (errors as :meth:`read`); iterate the stream
        or call :meth:`ReadStream.collect`. Close it (or exhaust it) to release it.
        """
        if chunk_size <= 0:
            raise error(errno.EINVAL, "chunk_size must be positive", _display(path))
        with self._resolve(path, follow=True) as res:
            attr = self._need(res, path)
            if attr.is_dir:
                raise error(errno.EISDIR, None, _display(path))
            fh = self._b.open(attr.ino, OpenFlags.READ)
            # The stream keeps the walk's reference on the file until it closes.
            ref = res.steal(attr.ino)
        return ReadStream(self._b, fh, ref, chunk_size, _display(path))

    # -- listing and metadata -------------------------------------------------------------------

    def _metadata(self, attr: Attr) -> FsMetadata:
        return FsMetadata(
            kind=_kind(attr.mode),
            size=attr.size,
            mode=attr.mode,
            uid=attr.uid,
            gid=attr.gid,
            readonly=self._readonly or not (attr.mode & 0o222),
            accessed=_time(attr.atime_ns),
            modified=_time(attr.mtime_ns),
            created=_time(attr.crtime_ns),
            ino=attr.ino,
            nlink=attr.nlink,
        )

    @_paths
    def stat(self, path: str) -> FsMetadata:
        """Metadata of ``path``, following symlinks. Errors: ENOENT, ENOTDIR, ELOOP."""
        with self._resolve(path, follow=True) as res:
            return self._metadata(self._need(res, path))

    @_paths
    def lstat(self, path: str) -> FsMetadata:
        """Metadata of ``path`` itself (a symlink is reported as a symlink)."""
        with self._resolve(path, follow=False) as res:
            return self._metadata(self._need(res, path))

    @_paths
    def exists(self, path: str) -> bool:
        """True if ``path`` exists (following symlinks).

        ENOENT, ENOTDIR and ELOOP mean False; other errors are raised.
        """
        try:
            with self._resolve(path, follow=True) as res:
                return res.attr is not None
        except VolfsError as exc:
            if exc.errno in _ENOENT_LIKE:
                return False
            raise

    def _children(self, dir_ino: Ino) -> Iterator[tuple[bytes, Attr | None]]:
        """(name, attr) of every child; attr None if it vanished or failed meanwhile."""
        for entry in self._b.readdir(dir_ino, 0):
            try:
                attr = self._b.lookup(dir_ino, entry.name)
            except VolfsError:
                yield entry.name, None
                continue
            self._b.forget(attr.ino)
            yield entry.name, attr

    @_paths
    def list(self, path: str = "/") -> list[FsEntry]:
        """The immediate children of directory ``path`` sorted by name.

        Symlinks are reported as symlinks; an entry whose metadata cannot be
        read is reported with kind ``"other"`` and zero fields.
        Errors: ENOENT, ENOTDIR, ELOOP.
        """
        base = _display(path).rstrip("/")
        with self._resolve(path, follow=True) as res:
            attr = self._need(res, path)
            if not attr.is_dir:
                raise error(errno.ENOTDIR, None, _display(path))
            out: list[FsEntry] = []
            for name, child in self._children(attr.ino):
                p = f"{base}/{_decode(name)}"
                if child is None:
                    out.append(FsEntry(p, "other", 0, 0, 0, 0, None, None))
                else:
                    out.append(
                        FsEntry(
                            p,
                            _kind(child.mode),
                            child.size,
                            child.mode,
                            child.uid,
                            child.gid,
                            _time(child.atime_ns),
                            _time(child.mtime_ns),
                        )
                    )
        out.sort(key=lambda e: _encode(e.path))
        return out

    @_paths
    def readlink(self, path: str) -> str:
        """The target of symlink ``path``, verbatim. Errors: EINVAL (not a symlink), ENOENT."""
        with self._resolve(path, follow=False) as res:
            attr = self._need(res, path)
            if not attr.is_symlink:
                raise error(errno.EINVAL, "not a symlink", _display(path))
            return _decode(self._b.readlink(attr.ino))

    def walk(self, top: str = "/") -> Iterator[tuple[str, _StrList, _StrList]]:
        """Like ``os.walk`` (top-down): yields ``(dirpath, dirnames, filenames)``.

        Symlinks are never followed (they appear in ``filenames``); removing
        names from ``dirnames`` prunes the walk. Directories that vanish
        meanwhile are skipped. Errors on ``top`` itself are raised.
        """
        first = True
        todo = [_display(top)]
        while todo:
            current = todo.pop()
            try:
                entries = self.list(current)
            except VolfsError:
                if first:
                    raise
                continue
            first = False
            dirs = [e.path.rsplit("/", 1)[1] for e in entries if e.kind == "directory"]
            files = [e.path.rsplit("/", 1)[1] for e in entries if e.kind != "directory"]
            yield current, dirs, files
            base = current.rstrip("/")
            todo.extend(f"{base}/{d}" for d in reversed(dirs))

    @_paths
    def glob(self, pattern: str) -> _StrList:
        """Paths matching ``pattern`` (``*``, ``?``, ``[...]``, and ``**`` for any depth).

        Relative patterns are taken from the root. As in :mod:`glob`, wildcards
        do not match names starting with ``.`` unless the pattern does, and
        ``**`` does not descend through symlinks. Returns sorted volume paths.
        """
        comps = [c for c in pattern.split("/") if c and c != "."]
        found: set[str] = set()
        self._glob("/", comps, found)
        return sorted(found)

    def _glob(self, base: str, comps: _StrList, found: set[str]) -> None:
        if not comps:
            found.add(base)
            return
        head, rest = comps[0], comps[1:]
        prefix = base.rstrip("/")
        if head == "**":
            self._glob(base, rest, found)
            for path, dirs, _files in self.walk(base):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for d in dirs:
                    self._glob(f"{path.rstrip('/')}/{d}", rest, found)
            return
        if not any(ch in head for ch in "*?["):
            child = f"{prefix}/{head}"
            try:
                meta = self.lstat(child) if not rest else self.stat(child)
            except VolfsError:
                return
            if rest and meta.kind != "directory":
                return
            self._glob(child, rest, found)
            return
        try:
            entries = self.list(base)
        except VolfsError:
            return
        rx = re.compile(fnmatch.translate(head))
        for e in entries:
            name = e.path.rsplit("/", 1)[1]
            if name.startswith(".") and not head.startswith("."):
                continue
            if not rx.match(name):
                continue
            if rest:
                if e.kind == "directory" or (e.kind == "symlink" and self._is_dir(e.path)):
                    self._glob(e.path, rest, found)
            else:
                found.add(e.path)

    def _is_dir(self, path: str) -> bool:
        try:
            return self.stat(path).kind == "directory"
        except VolfsError:
            return False

    @_paths
    def du(self, path: str = "/", *, apparent: bool = False) -> int:
        """Bytes used by ``path`` and everything under it (no symlinks followed).

        Counts allocated blocks (``st_blocks * 512``), or file sizes with
        ``apparent=True``; an inode with several hard links counts once.
        """
        seen: set[int] = set()
        total = 0

        def add(attr: Attr) -> None:
            nonlocal total
            if attr.ino in seen:
                return
            seen.add(attr.ino)
            total += attr.size if apparent else attr.blocks * 512

        with self._resolve(path, follow=False) as res:
            top = self._need(res, path)
            add(top)
            if not top.is_dir:
                return total
            stack: _InoStack = [(top.ino, False)]
            # Hold a reference on every directory we still have to read.
            try:
                while stack:
                    ino, owned = stack.pop()
                    try:
                        for entry in self._b.readdir(ino, 0):
                            try:
                                attr = self._b.lookup(ino, entry.name)
                            except VolfsError:
                                continue
                            add(attr)
                            if attr.is_dir:
                                stack.append((attr.ino, True))
                            else:
                                self._b.forget(attr.ino)
                    finally:
                        if owned:
                            self._b.forget(ino)
            finally:
                for ino, owned in stack:
                    if owned:
                        self._b.forget(ino)
        return total

    @_paths
    def statfs(self, path: str = "/") -> StatFs:
        """Filesystem-wide counters of the volume."""
        if self._closed:
            raise error(errno.EBADF, "filesystem handle is closed", _display(path))
        return self._b.statfs()

    # -- writing whole files ----------------------------------------------------------------------

    def _target(self, res: _Res, path: str) -> tuple[Ino, bytes, Attr | None]:
        """Check that ``res`` may be replaced by a regular file."""
        if res.name is None:
            raise error(errno.EISDIR, None, _display(path))
        if res.attr is not None and res.attr.is_dir:
            raise error(errno.EISDIR, None, _display(path))
        return res.parent, res.name, res.attr

    def _new_temp(self, parent: Ino, mode: int, owner: tuple[int, int]) -> tuple[bytes, FileHandle, Attr]:
        for _ in range(8):
            tmp = b".volfs-" + secrets.token_hex(8).encode() + b".tmp"
            try:
                fh, attr = self._b.create(
                    parent, tmp, mode, OpenFlags.WRITE | OpenFlags.EXCL, owner[0], owner[1]
                )
            except VolfsError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            return tmp, fh, attr
        raise error(errno.EEXIST, "cannot pick a temporary name")

    def _replace_from(
        self,
        path: str,
        mode: int | None,
        fill: Callable[[FileHandle], None],
    ) -> None:
        """Create a temp file, ``fill`` it, rename it over ``path`` (parents created)."""
        with self._resolve(path, follow=True, make_parents=True) as res:
            parent, name, old = self._target(res, path)
            if old is not None and old.is_file:
                perm, owner = old.mode & 0o7777, (old.uid, old.gid)
            else:
                perm, owner = (0o644 if mode is None else mode), self._owner
            if mode is not None:
                perm = mode
            tmp, fh, attr = self._new_temp(parent, perm, owner)
            try:
                try:
                    fill(fh)
                finally:
                    self._b.release(fh)
                self._b.rename(parent, tmp, parent, name)
            except BaseException:
                try:
                    self._b.unlink(parent, tmp)
                except VolfsError:
                    pass
                raise
            finally:
                self._b.forget(attr.ino)

    @_paths
    def write(self, path: str, data: bytes | bytearray | memoryview | str, *, mode: int | None = None) -> None:
        """Replace (or create) file ``path`` with ``data`` atomically; parents are created.

        A ``str`` is written as UTF-8. Follows a symlink at ``path`` and replaces
        its target. An existing file keeps its permission bits and owner unless
        ``mode`` is given; a new one gets ``mode`` (default 0o644) and the
        handle's owner. Errors: EISDIR, ENOTDIR, EEXIST (a parent is a file),
        ELOOP, EROFS.
        """
        self._mutating(path)
        # A str is content here, not a name: plain UTF-8.
        payload = data.encode("utf-8") if isinstance(data, str) else data

        def fill(fh: FileHandle) -> None:
            if len(payload):
                self._b.write(fh, 0, payload)

        self._replace_from(path, mode, fill)

    @_paths
    def write_stream(self, path: str, *, mode: int | None = None) -> WriteSink:
        """A sink whose :meth:`WriteSink.write` appends to a new version of ``path``.

        Nothing is visible at ``path`` until :meth:`WriteSink.close`, which
        replaces the file atomically; :meth:`WriteSink.abort` (or leaving a
        ``with`` block by an exception) discards it. Errors as :meth:`write`.
        """
        self._mutating(path)
        refs: list[Ino] = []
        comps, trailing = _components(path)
        try:
            res = self._walk(comps, True, refs, True, None)
            if trailing and res.attr is not None and not res.attr.is_dir:
                raise error(errno.ENOTDIR, None, _display(path))
            parent, name, old = self._target(res, path)
            if old is not None and old.is_file:
                perm, owner = old.mode & 0o7777, (old.uid, old.gid)
            else:
                perm, owner = (0o644 if mode is None else mode), self._owner
            if mode is not None:
                perm = mode
            # The sink keeps the walk's reference on the parent until it finishes.
            keep = res.steal(parent)
            try:
                tmp, fh, attr = self._new_temp(parent, perm, owner)
            except BaseException:
                if keep is not None:
                    self._b.forget(keep)
                raise
        finally:
            for ino in refs:
                self._b.forget(ino)
        return WriteSink(self._b, parent, keep, name, tmp, fh, attr.ino, _display(path))

    @_paths
    def copy(self, from_: str, to: str) -> None:
        """Copy file ``from_`` to ``to`` (atomically replacing it; parents created).

        The copy gets the source's permission bits and the handle's owner.
        Errors: ENOENT, EISDIR (either side a directory), ENXIO (special file),
        ENOTDIR, ELOOP, EROFS.
        """
        self._mutating(from_)
        with self._resolve(from_, follow=True) as src:
            sattr = self._need(src, from_)
            if sattr.is_dir:
                raise error(errno.EISDIR, None, _display(from_))
            sfh = self._b.open(sattr.ino, OpenFlags.READ)
            try:

                def fill(fh: FileHandle) -> None:
                    pos = 0
                    while True:
                        data = self._b.read(sfh, pos, _CHUNK)
                        if not data:
                            return
                        self._b.write(fh, pos, data)
                        pos += len(data)
                        if len(data) < _CHUNK:
                            return

                try:
                    self._replace_from(to, sattr.mode & 0o7777, fill)
                except VolfsError as exc:
                    raise _with_path(exc, to) from None
            finally:
                self._b.release(sfh)

    # -- names -------------------------------------------------------------------------------------

    @_paths
    def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = True, exist_ok: bool = True) -> None:
        """Create directory ``path`` (microsandbox: with parents, idempotent).

        Errors: EEXIST (a non-directory is there, or ``exist_ok=False``),
        ENOENT (missing parent with ``parents=False``), ENOTDIR, EROFS.
        """
        self._mutating(path)
        with self._resolve(path, follow=True, make_parents=parents) as res:
            if res.attr is not None:
                if res.attr.is_dir and exist_ok:
                    return
                raise error(errno.EEXIST, None, _display(path))
            assert res.name is not None  # a missing entry always has a name
            if parents and exist_ok:
                attr = self._mkdir_entry(res.parent, res.name, mode)
            else:
                uid, gid = self._owner
                attr = self._b.mkdir(res.parent, res.name, mode, uid, gid)
            self._b.forget(attr.ino)

    @_paths
    def remove(self, path: str) -> None:
        """Remove file or symlink ``path`` (never follows it; never a directory).

        Errors: ENOENT, EISDIR, ENOTDIR, EROFS.
        """
        self._mutating(path)
        with self._resolve(path, follow=False) as res:
            attr = self._need(res, path)
            if res.name is None or attr.is_dir:
                raise error(errno.EISDIR, None, _display(path))
            self._b.unlink(res.parent, res.name)

    remove_file = remove

    @_paths
    def remove_dir(self, path: str) -> None:
        """Remove directory ``path`` and everything in it.

        A symlink at ``path`` is removed itself, never followed. Errors:
        EBUSY (the volume root), ENOENT, ENOTDIR (a file), EINVAL (a path
        ending in ``..``), EROFS.
        """
        self._mutating(path)
        with self._resolve(path, follow=False) as res:
            attr = self._need(res, path)
            if res.name is None:
                if attr.ino == self._b.root:
                    raise error(errno.EBUSY, "remove_dir cannot target the volume root", _display(path))
                raise error(errno.EINVAL, "cannot remove a path ending in '..'", _display(path))
            if attr.is_symlink:
                self._b.unlink(res.parent, res.name)
                return
            if not attr.is_dir:
                raise error(errno.ENOTDIR, None, _display(path))
            self._rmtree(res.parent, res.name, attr.ino)

    def _rmtree(self, parent: Ino, name: bytes, ino: Ino) -> None:
        """Post-order removal with an explicit stack (no recursion limit on deep trees)."""
        # Frames: (parent, name, dir ino, whether we hold a lookup ref on it).
        stack: _RmStack = [(parent, name, ino, False)]
        try:
            while stack:
                p, n, d, owned = stack[-1]
                descended = False
                for entry in list(self._b.readdir(d, 0)):
                    try:
                        child = self._b.lookup(d, entry.name)
                    except VolfsError as exc:
                        if exc.errno == errno.ENOENT:
                            continue
                        raise
                    if child.is_dir:
                        stack.append((d, entry.name, child.ino, True))
                        descended = True
                        break
                    self._b.forget(child.ino)
                    try:
                        self._b.unlink(d, entry.name)
                    except VolfsError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                if descended:
                    continue
                stack.pop()
                try:
                    self._b.rmdir(p, n)
                except VolfsError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                finally:
                    if owned:
                        self._b.forget(d)
        finally:
            for _p, _n, d, owned in stack:
                if owned:
                    self._b.forget(d)

    @_paths
    def rename(self, from_: str, to: str, *, replace: bool = True) -> None:
        """Move ``from_`` (file, symlink or directory) to ``to``; parents of ``to`` are created.

        Neither side's last component is followed. An existing ``to`` is
        replaced atomically as ``rename(2)`` does, unless ``replace=False``
        (then EEXIST). Errors: ENOENT, EINVAL (a directory into itself),
        EISDIR, ENOTDIR, ENOTEMPTY, EBUSY (the root), EXDEV, EROFS.
        """
        self._mutating(from_)
        with self._resolve(from_, follow=False) as src:
            sattr = self._need(src, from_)
            if src.name is None:
                raise error(errno.EBUSY, "cannot rename the volume root or '..'", _display(from_))
            forbid = sattr.ino if sattr.is_dir else None
            try:
                with self._resolve(to, follow=False, make_parents=True, forbid=forbid) as dst:
                    if dst.name is None:
                        raise error(errno.EBUSY, "cannot replace the volume root or '..'", _display(to))
                    if forbid is not None and forbid in dst.chain:
                        raise error(errno.EINVAL, "cannot move a directory into itself", _display(to))
                    flags = RenameFlags(0) if replace else RenameFlags.NOREPLACE
                    self._b.rename(src.parent, src.name, dst.parent, dst.name, flags)
            except VolfsError as exc:
                raise _with_path(exc, to) from None

    @_paths
    def symlink(self, target: str, path: str) -> None:
        """Create symlink ``path`` pointing to ``target`` (stored verbatim, like ``os.symlink``).

        Errors: EEXIST, ENOENT (missing parent), ENOTDIR, EROFS.
        """
        try:
            self._mutating(path)
            raw = _encode(target)
            if "\0" in target:
                raise error(errno.EINVAL, "symlink target contains NUL")
            with self._resolve(path, follow=False) as res:
                if res.attr is not None or res.name is None:
                    raise error(errno.EEXIST)
                uid, gid = self._owner
                attr = self._b.symlink(res.parent, res.name, raw, uid, gid)
                self._b.forget(attr.ino)
        except VolfsError as exc:
            raise _with_path(exc, path) from None

    @_paths
    def link(self, path: str, to: str) -> None:
        """Create hard link ``to`` to the inode at ``path`` (``path`` is not followed).

        Errors: ENOENT, EEXIST, EPERM (a directory), ENOTDIR, EXDEV, EROFS.
        """
        self._mutating(path)
        with self._resolve(path, follow=False) as src:
            sattr = self._need(src, path)
            try:
                with self._resolve(to, follow=False) as dst:
                    if dst.attr is not None or dst.name is None:
                        raise error(errno.EEXIST)
                    attr = self._b.link(sattr.ino, dst.parent, dst.name)
                    self._b.forget(attr.ino)
            except VolfsError as exc:
                raise _with_path(exc, to) from None

    # -- attributes ----------------------------------------------------------------------------------

    def _setattr(self, path: str, changes: SetAttr, follow: bool) -> None:
        self._mutating(path)
        with self._resolve(path, follow=follow) as res:
            attr = self._need(res, path)
            self._b.setattr(attr.ino, changes)

    @_paths
    def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        """Set the permission bits (``0o7777``). EOPNOTSUPP on a symlink itself."""
        self._setattr(path, SetAttr(mode=mode & 0o7777), follow_symlinks)

    @_paths
    def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """Set the owner; -1 leaves that id unchanged. EPERM where the storage forbids it."""
        self._setattr(
            path,
            SetAttr(uid=None if uid == -1 else uid, gid=None if gid == -1 else gid),
            follow_symlinks,
        )

    @_paths
    def utime(
        self,
        path: str,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """Set access and modification times, as ``os.utime`` (no times: now)."""
        if times is not None and ns is not None:
            raise error(errno.EINVAL, "give times or ns, not both", _display(path))
        if ns is not None:
            changes = SetAttr(atime_ns=ns[0], mtime_ns=ns[1])
        elif times is not None:
            changes = SetAttr(atime_ns=int(times[0] * 1e9), mtime_ns=int(times[1] * 1e9))
        else:
            from volfs.backend import NOW

            changes = SetAttr(atime_ns=NOW, mtime_ns=NOW)
        self._setattr(path, changes, follow_symlinks)

    @_paths
    def truncate(self, path: str, size: int) -> None:
        """Set the size of file ``path`` (extending with a hole). EISDIR, EINVAL."""
        if size < 0:
            raise error(errno.EINVAL, "negative size", _display(path))
        self._setattr(path, SetAttr(size=size), True)

    # -- xattrs -----------------------------------------------------------------------------------------

    @_paths
    def getxattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        """The value of extended attribute ``name`` (e.g. ``"user.comment"``). ENODATA if absent."""
        with self._resolve(path, follow=follow_symlinks) as res:
            return self._b.getxattr(self._need(res, path).ino, _encode(name))

    @_paths
    def setxattr(
        self,
        path: str,
        name: str,
        value: bytes,
        *,
        create: bool = False,
        replace: bool = False,
        follow_symlinks: bool = True,
    ) -> None:
        """Set extended attribute ``name``; ``create``/``replace`` as XATTR_CREATE/REPLACE."""
        self._mutating(path)
        flags = XattrFlags(0)
        if create:
            flags |= XattrFlags.CREATE
        if replace:
            flags |= XattrFlags.REPLACE
        with self._resolve(path, follow=follow_symlinks) as res:
            self._b.setxattr(self._need(res, path).ino, _encode(name), bytes(value), flags)

    @_paths
    def listxattr(self, path: str, *, follow_symlinks: bool = True) -> _StrList:
        """Names of the extended attributes of ``path``, sorted."""
        with self._resolve(path, follow=follow_symlinks) as res:
            return sorted(_decode(n) for n in self._b.listxattr(self._need(res, path).ino))

    @_paths
    def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        """Remove extended attribute ``name``. ENODATA if absent."""
        self._mutating(path)
        with self._resolve(path, follow=follow_symlinks) as res:
            self._b.removexattr(self._need(res, path).ino, _encode(name))

    # -- file objects ------------------------------------------------------------------------------------

    @_paths
    def open(
        self,
        path: str,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Open file ``path`` like the builtin ``open``, returning a real file object.

        Modes ``r``, ``w``, ``x``, ``a`` with ``+``, ``b`` or ``t``; text is UTF-8
        unless ``encoding`` says otherwise. ``buffering=0`` (binary only) gives
        the raw object. The object supports ``seek``/``tell``/``truncate`` and
        ``with``; it holds the file open until closed. Parents are not created
        (as with ``open``). Errors: ENOENT, EEXIST (``x``), EISDIR, ENXIO
        (device, FIFO, socket), ELOOP, ENOTDIR, EROFS, EINVAL (bad mode).
        """
        chars = set(mode)
        if (
            len(chars) != len(mode)
            or not chars <= set("rwxab+t")
            or len(chars & set("rwxa")) != 1
            or {"b", "t"} <= chars
        ):
            raise error(errno.EINVAL, f"invalid mode {mode!r}", _display(path))
        binary = "b" in chars
        if binary and (encoding is not None or errors is not None or newline is not None):
            raise error(errno.EINVAL, "binary mode takes no encoding, errors or newline", _display(path))
        if buffering == 0 and not binary:
            raise error(errno.EINVAL, "unbuffered mode needs binary", _display(path))
        plus = "+" in chars
        if "r" in chars:
            flags = OpenFlags.READ | (OpenFlags.WRITE if plus else OpenFlags(0))
        else:
            flags = OpenFlags.WRITE | (OpenFlags.READ if plus else OpenFlags(0))
            if "w" in chars:
                flags |= OpenFlags.TRUNC
            elif "a" in chars:
                flags |= OpenFlags.APPEND
            elif "x" in chars:
                flags |= OpenFlags.EXCL
        if flags.writes:
            self._mutating(path)
        with self._resolve(path, follow=True) as res:
            attr = res.attr
            if attr is None:
                if "r" in chars:
                    raise error(errno.ENOENT, None, _display(path))
                assert res.name is not None
                uid, gid = self._owner
                fh, attr = self._b.create(res.parent, res.name, 0o644, flags, uid, gid)
                ref: Ino | None = attr.ino
            else:
                if "x" in chars:
                    raise error(errno.EEXIST, None, _display(path))
                if attr.is_dir:
                    raise error(errno.EISDIR, None, _display(path))
                fh = self._b.open(attr.ino, flags)
                ref = res.steal(attr.ino)
        raw = _RawFile(self._b, fh, attr.ino, ref, flags, _display(path), mode)
        try:
            if buffering == 0:
                return cast(IO[Any], raw)
            size = buffering if buffering > 1 else _FILE_BUFFER
            buffered: io.BufferedIOBase
            if plus:
                buffered = io.BufferedRandom(raw, size)
            elif "r" in chars:
                buffered = io.BufferedReader(raw, size)
            else:
                buffered = io.BufferedWriter(raw, size)
            if binary:
                return buffered
            text = io.TextIOWrapper(
                buffered,
                encoding or "utf-8",
                errors,
                newline,
                line_buffering=buffering == 1,
            )
            text.mode = mode  # type: ignore[misc]  # as the builtin open does
            return text
        except BaseException:
            raw.close()
            raise

    def sync(self) -> None:
        """Make everything written so far durable."""
        self._b.sync()

    def __repr__(self) -> str:
        return f"<PathFs {self._b!r}{' ro' if self._readonly else ''} owner={self._owner}>"


class ReadStream:
    """Chunks of one file (from :meth:`PathFs.read_stream`); iterate or :meth:`collect`."""

    def __init__(self, backend: Backend, fh: FileHandle, ref: Ino | None, chunk: int, path: str) -> None:
        self._b = backend
        self._fh: FileHandle | None = fh
        self._ref = ref
        self._chunk = chunk
        self._pos = 0
        self.path = path

    def recv(self) -> bytes | None:
        """The next chunk, or None at end of file (then the stream is closed)."""
        if self._fh is None:
            return None
        try:
            data = self._b.read(self._fh, self._pos, self._chunk)
        except VolfsError as exc:
            self.close()
            raise _with_path(exc, self.path) from None
        if not data:
            self.close()
            return None
        self._pos += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.recv()
        if data is None:
            raise StopIteration
        return data

    def collect(self) -> bytes:
        """Everything not read yet, in one piece; closes the stream."""
        if self._fh is None:
            return b""
        try:
            parts = []
            while True:
                data = self._b.read(self._fh, self._pos, _CHUNK)
                if not data:
                    break
                parts.append(data)
                self._pos += len(data)
            return b"".join(parts)
        except VolfsError as exc:
            raise _with_path(exc, self.path) from None
        finally:
            self.close()

    def close(self) -> None:
        """Release the file. Idempotent."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                self._b.release(fh)
            finally:
                if self._ref is not None:
                    self._b.forget(self._ref)

    def __enter__(self) -> ReadStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WriteSink:
    """A new version of one file (from :meth:`PathFs.write_stream`).

    :meth:`write` appends; :meth:`close` publishes atomically; :meth:`abort`
    discards. As a context manager it closes on success and aborts on error.
    """

    def __init__(
        self,
        backend: Backend,
        parent: Ino,
        parent_ref: Ino | None,
        name: bytes,
        tmp: bytes,
        fh: FileHandle,
        ino: Ino,
        path: str,
    ) -> None:
        self._b = backend
        self._parent = parent
        self._parent_ref = parent_ref
        self._name = name
        self._tmp = tmp
        self._fh: FileHandle | None = fh
        self._ino = ino
        self._pos = 0
        self.path = path

    @property
    def closed(self) -> bool:
        return self._fh is None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length."""
        if self._fh is None:
            raise error(errno.EBADF, "write sink is closed", self.path)
        try:
            n = self._b.write(self._fh, self._pos, data)
        except VolfsError as exc:
            self.abort()
            raise _with_path(exc, self.path) from None
        self._pos += n
        return n

    def _finish(self, publish: bool) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            try:
                self._b.release(fh)
            finally:
                if publish:
                    try:
                        self._b.rename(self._parent, self._tmp, self._parent, self._name)
                    except BaseException:
                        publish = False
                        raise
                    finally:
                        if not publish:
                            self._discard()
                else:
                    self._discard()
        except VolfsError as exc:
            raise _with_path(exc, self.path) from None
        finally:
            self._b.forget(self._ino)
            if self._parent_ref is not None:
                self._b.forget(self._parent_ref)

    def _discard(self) -> None:
        try:
            self._b.unlink(self._parent, self._tmp)
        except VolfsError:
            pass

    def close(self) -> None:
        """Publish what was written at the path, atomically. Idempotent."""
        self._finish(True)

    def abort(self) -> None:
        """Discard what was written; the path is left as it was. Idempotent."""
        self._finish(False)

    def __enter__(self) -> WriteSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(exc_type is None)


class _RawFile(io.RawIOBase):
    """A raw file over one backend file handle (what :meth:`PathFs.open` buffers).

    Reads and writes go straight to the backend at the current position, in
    one call each whatever their size.
    """

    def __init__(
        self,
        backend: Backend,
        fh: FileHandle,
        ino: Ino,
        ref: Ino | None,
        flags: OpenFlags,
        path: str,
        mode: str,
    ) -> None:
        super().__init__()
        self._b = backend
        self._fh = fh
        self._ino = ino
        self._ref = ref
        self._flags = flags
        self._pos = backend.getattr(ino).size if flags & OpenFlags.APPEND else 0
        self.name = path
        self.mode = mode

    def _err(self, exc: VolfsError) -> VolfsError:
        return _with_path(exc, self.name)

    def readable(self) -> bool:
        return bool(self._flags & OpenFlags.READ)

    def writable(self) -> bool:
        return self._flags.writes

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        if not self.readable():
            raise io.UnsupportedOperation("file not open for reading")
        view = memoryview(buffer).cast("B")
        try:
            data = self._b.read(self._fh, self._pos, len(view))
        except VolfsError as exc:
            raise self._err(exc) from None
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        self._checkClosed()
        if not self.readable():
            raise io.UnsupportedOperation("file not open for reading")
        try:
            size = self._b.getattr(self._ino).size
            parts: list[bytes] = []
            want = max(size - self._pos, 0) or _STREAM_CHUNK
            while True:
                data = self._b.read(self._fh, self._pos, want)
                if not data:
                    break
                parts.append(data)
                self._pos += len(data)
                want = _CHUNK
        except VolfsError as exc:
            raise self._err(exc) from None
        return b"".join(parts)

    def write(self, data: Any) -> int:
        self._checkClosed()
        if not self.writable():
            raise io.UnsupportedOperation("file not open for writing")
        try:
            n = self._b.write(self._fh, self._pos, data)
            if self._flags & OpenFlags.APPEND:
                self._pos = self._b.getattr(self._ino).size
            else:
                self._pos += n
        except VolfsError as exc:
            raise self._err(exc) from None
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            try:
                pos = self._b.getattr(self._ino).size + offset
            except VolfsError as exc:
                raise self._err(exc) from None
        else:
            raise error(errno.EINVAL, f"invalid whence {whence}", self.name)
        if pos < 0:
            raise error(errno.EINVAL, "negative seek position", self.name)
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()
        if not self.writable():
            raise io.UnsupportedOperation("file not open for writing")
        new = self._pos if size is None else size
        if new < 0:
            raise error(errno.EINVAL, "negative size", self.name)
        try:
            self._b.setattr(self._ino, SetAttr(size=new), self._fh)
        except VolfsError as exc:
            raise self._err(exc) from None
        return new

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            try:
                self._b.release(self._fh)
            finally:
                if self._ref is not None:
                    self._b.forget(self._ref)
