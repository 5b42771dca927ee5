"""Conformance of the inode-level protocol itself (volfs.backend.Backend)."""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable

import pytest

from conformance.support import BIG, raises_errno
from volfs.backend import (
    NOW,
    Attr,
    Backend,
    Ino,
    OpenFlags,
    RenameFlags,
    SetAttr,
    XattrFlags,
)


def look(b: Backend, path: str) -> Attr:
    """Walk a plain path (no symlinks) with lookups; the caller forgets nothing (test only)."""
    ino = b.root
    attr = b.getattr(ino)
    for name in path.strip("/").split("/"):
        if name:
            attr = b.lookup(ino, name.encode())
            ino = attr.ino
    return attr


def names(b: Backend, ino: Ino) -> list[bytes]:
    return sorted(e.name for e in b.readdir(ino, 0))


def rw(b: Backend, fn: Callable[..., object], *args: object) -> bool:
    if b.readonly:
        raises_errno(errno.EROFS, fn, *args)
        return False
    fn(*args)
    return True


def test_protocol_is_implemented(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.getattr(backend.root).is_dir


def test_lookup_and_getattr(backend: Backend) -> None:
    attr = backend.lookup(backend.root, b"hello.txt")
    assert attr.is_file and attr.size == 12 and attr.nlink == 1
    assert backend.getattr(attr.ino) == attr or backend.getattr(attr.ino).ino == attr.ino
    link = backend.lookup(backend.root, b"link-rel")
    assert link.is_symlink  # lookup never follows
    assert backend.readlink(link.ino) == b"hello.txt"
    assert backend.readlink(backend.lookup(backend.root, b"link-up").ino) == b"../../../../hello.txt"
    raises_errno(errno.EINVAL, backend.readlink, attr.ino)
    backend.forget(attr.ino)
    backend.forget(link.ino)


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b", b"/"])
def test_lookup_rejects_invalid_names(backend: Backend, bad: bytes) -> None:
    raises_errno(errno.EINVAL, backend.lookup, backend.root, bad)


def test_lookup_errors(backend: Backend) -> None:
    raises_errno(errno.ENOENT, backend.lookup, backend.root, b"missing")
    raises_errno(errno.ENAMETOOLONG, backend.lookup, backend.root, b"x" * 256)
    f = backend.lookup(backend.root, b"hello.txt")
    raises_errno(errno.ENOTDIR, backend.lookup, f.ino, b"x")
    raises_errno(errno.ENOTDIR, lambda: list(backend.readdir(f.ino, 0)))


def test_hard_links_share_an_inode(backend: Backend) -> None:
    a = look(backend, "dir/a.txt")
    h = look(backend, "dir/hard")
    assert a.ino == h.ino and a.nlink == 2


def test_readdir_lists_everything_once(backend: Backend) -> None:
    entries = list(backend.readdir(backend.root, 0))
    got = sorted(e.name for e in entries)
    assert b"." not in got and b".." not in got
    assert got == sorted(
        [b"hello.txt", b"empty", b"big.bin", b"dir", b"emptydir", b"exec.sh", b"link-rel", b"link-abs",
         b"link-dir", b"link-up", b"dangling", b"loop1", b"loop2", b"fifo", b"xattr.txt"]
    )
    assert len({e.offset for e in entries}) == len(entries)
    by = {e.name: e for e in entries}
    assert by[b"dir"].type in (stat.S_IFDIR, 0)
    assert by[b"link-rel"].type in (stat.S_IFLNK, 0)
    # Resuming after any entry yields exactly the rest.
    for i, e in enumerate(entries):
        assert [x.name for x in backend.readdir(backend.root, e.offset)] == [x.name for x in entries[i + 1 :]]


def test_readdir_offsets_stable_under_changes(backend: Backend) -> None:
    d = look(backend, "dir")
    if backend.readonly:
        return
    for i in range(30):
        backend.create(d.ino, f"f{i:02}".encode(), 0o644, OpenFlags.WRITE, 0, 0)
    first = list(backend.readdir(d.ino, 0))
    half = first[: len(first) // 2]
    seen = [e.name for e in half]
    # Remove some entries not yet seen and some already seen, add new ones.
    rest_names = [e.name for e in first[len(first) // 2 :]]
    backend.unlink(d.ino, half[0].name) if half[0].name.startswith(b"f") else None
    removed = rest_names[-1]
    if removed.startswith(b"f"):
        backend.unlink(d.ino, removed)
    for i in range(5):
        backend.create(d.ino, f"new{i}".encode(), 0o644, OpenFlags.WRITE, 0, 0)
    after = [e.name for e in backend.readdir(d.ino, half[-1].offset)]
    # Every entry that existed throughout appears exactly once over the pass.
    survivors = [n for n in rest_names if n != removed]
    for n in survivors:
        assert after.count(n) == 1
    assert not set(seen) & set(after)
    assert removed not in after or not removed.startswith(b"f")


def test_readdir_of_empty_dir(backend: Backend) -> None:
    assert names(backend, look(backend, "emptydir").ino) == []


def test_read_handles(backend: Backend) -> None:
    attr = look(backend, "big.bin")
    fh = backend.open(attr.ino, OpenFlags.READ)
    try:
        assert backend.read(fh, 0, attr.size + 100) == BIG
        assert backend.read(fh, 5, 10) == BIG[5:15]
        assert backend.read(fh, attr.size, 10) == b""
        assert backend.read(fh, attr.size + 50, 10) == b""
        raises_errno(errno.EINVAL, backend.read, fh, -1, 1)
    finally:
        backend.release(fh)
    raises_errno(errno.EBADF, backend.read, fh, 0, 1)


def test_open_refuses_non_regular_files(backend: Backend) -> None:
    raises_errno(errno.EISDIR, backend.open, look(backend, "dir").ino, OpenFlags.READ)
    raises_errno(errno.ELOOP, backend.open, look(backend, "link-rel").ino, OpenFlags.READ)
    # A FIFO would hang a reader: the backend must refuse, immediately.
    raises_errno(errno.ENXIO, backend.open, look(backend, "fifo").ino, OpenFlags.READ)


def test_write_handles(backend: Backend) -> None:
    attr = look(backend, "hello.txt")
    if backend.readonly:
        raises_errno(errno.EROFS, backend.open, attr.ino, OpenFlags.WRITE)
        raises_errno(errno.EROFS, backend.open, attr.ino, OpenFlags.READ | OpenFlags.TRUNC)
        return
    fh = backend.open(attr.ino, OpenFlags.READ | OpenFlags.WRITE)
    try:
        assert backend.write(fh, 6, b"WORLD") == 5
        assert backend.read(fh, 0, 100) == b"hello WORLD\n"
        backend.write(fh, 20, b"!")  # past EOF: a hole
        assert backend.read(fh, 0, 100) == b"hello WORLD\n" + b"\0" * 8 + b"!"
        backend.fsync(fh, True)
        backend.fsync(fh, False)
        assert backend.setattr(attr.ino, SetAttr(size=5), fh).size == 5
    finally:
        backend.release(fh)
    fh = backend.open(attr.ino, OpenFlags.WRITE | OpenFlags.APPEND)
    backend.write(fh, 0, b"++")
    backend.release(fh)
    fh = backend.open(attr.ino, OpenFlags.READ)
    assert backend.read(fh, 0, 100) == b"hello++"
    raises_errno(errno.EBADF, backend.write, fh, 0, b"x")
    backend.release(fh)
    fh = backend.open(attr.ino, OpenFlags.WRITE | OpenFlags.TRUNC)
    backend.release(fh)
    assert backend.getattr(attr.ino).size == 0


def test_write_with_changes(backend: Backend) -> None:
    """write's ``then``: the attribute changes of a setattr made right after the write."""
    attr = look(backend, "hello.txt")
    if backend.readonly:
        raises_errno(errno.EROFS, backend.open, attr.ino, OpenFlags.WRITE)
        return
    fh = backend.open(attr.ino, OpenFlags.READ | OpenFlags.WRITE)
    try:
        when = 1_234_567_890_123_456_000  # (whole microseconds: a directory backend's host may round)
        assert backend.write(fh, 12, b"more", then=SetAttr(mode=0o600, mtime_ns=when)) == 4
        after = backend.getattr(attr.ino)
        assert (stat.S_IMODE(after.mode), after.mtime_ns, after.size) == (0o600, when, 16)
        assert backend.read(fh, 0, 100) == b"hello world\nmore"
        # A size is setattr's, not a write's: refused before anything is written.
        raises_errno(errno.EINVAL, backend.write, fh, 16, b"!", SetAttr(size=0))
        assert backend.getattr(attr.ino).size == 16
    finally:
        backend.release(fh)


def test_create(backend: Backend) -> None:
    root = backend.root
    if backend.readonly:
        raises_errno(errno.EROFS, backend.create, root, b"new", 0o640, OpenFlags.WRITE, 0, 0)
        return
    fh, attr = backend.create(root, b"new", 0o640, OpenFlags.WRITE | OpenFlags.READ, 1234, 5678)
    assert attr.is_file and stat.S_IMODE(attr.mode) == 0o640
    assert (attr.uid, attr.gid) == (1234, 5678)
    backend.write(fh, 0, b"data")
    backend.release(fh)
    raises_errno(errno.EEXIST, backend.create, root, b"new", 0o644, OpenFlags.WRITE | OpenFlags.EXCL, 0, 0)
    fh, again = backend.create(root, b"new", 0o600, OpenFlags.READ, 0, 0)  # opens the existing one
    assert again.ino == attr.ino and stat.S_IMODE(again.mode) == 0o640
    assert backend.read(fh, 0, 10) == b"data"
    backend.release(fh)
    raises_errno(errno.EISDIR, backend.create, root, b"dir", 0o644, OpenFlags.WRITE, 0, 0)
    raises_errno(errno.EEXIST, backend.create, root, b"dangling", 0o644, OpenFlags.WRITE, 0, 0)
    raises_errno(errno.ENAMETOOLONG, backend.create, root, b"n" * 256, 0o644, OpenFlags.WRITE, 0, 0)
    backend.forget(attr.ino, 2)


def test_mkdir_rmdir(backend: Backend) -> None:
    root = backend.root
    if not rw(backend, backend.mkdir, root, b"newdir", 0o750, 0, 0):
        raises_errno(errno.EROFS, backend.rmdir, root, b"emptydir")
        return
    d = backend.lookup(root, b"newdir")
    assert d.is_dir and stat.S_IMODE(d.mode) == 0o750 and d.nlink == 2
    raises_errno(errno.EEXIST, backend.mkdir, root, b"newdir", 0o755, 0, 0)
    raises_errno(errno.EEXIST, backend.mkdir, root, b"dangling", 0o755, 0, 0)
    raises_errno(errno.ENOTEMPTY, backend.rmdir, root, b"dir")
    raises_errno(errno.ENOTDIR, backend.rmdir, root, b"hello.txt")
    raises_errno(errno.ENOENT, backend.rmdir, root, b"missing")
    raises_errno(errno.ENOTDIR, backend.mkdir, look(backend, "hello.txt").ino, b"x", 0o755, 0, 0)
    before = backend.getattr(root).nlink
    backend.rmdir(root, b"newdir")
    assert backend.getattr(root).nlink == before - 1
    raises_errno(errno.ENOENT, backend.lookup, root, b"newdir")


def test_unlink(backend: Backend) -> None:
    root = backend.root
    if not rw(backend, backend.unlink, root, b"hello.txt"):
        return
    raises_errno(errno.ENOENT, backend.lookup, root, b"hello.txt")
    raises_errno(errno.EISDIR, backend.unlink, root, b"dir")
    raises_errno(errno.ENOENT, backend.unlink, root, b"hello.txt")
    backend.unlink(root, b"link-dir")  # a symlink goes, not its target
    assert backend.lookup(root, b"dir").is_dir


def test_unlinked_open_file_lives_on(backend: Backend) -> None:
    if backend.readonly:
        return
    attr = look(backend, "hello.txt")
    fh = backend.open(attr.ino, OpenFlags.READ)
    backend.unlink(backend.root, b"hello.txt")
    assert backend.read(fh, 0, 100) == b"hello world\n"
    assert backend.getattr(attr.ino).nlink == 0
    backend.release(fh)


def test_a_removed_file_that_is_not_open_is_stale(backend: Backend, request: pytest.FixtureRequest) -> None:
    if backend.readonly:
        return
    attr = look(backend, "hello.txt")
    backend.unlink(backend.root, b"hello.txt")
    if "directory" in request.node.callspec.id:
        return  # a directory volume answers for a removed file while it knows the inode
    raises_errno(errno.ESTALE, backend.getattr, attr.ino)
    raises_errno(errno.ESTALE, backend.setattr, attr.ino, SetAttr(mode=0o600))
    raises_errno(errno.ESTALE, backend.setattr, attr.ino, SetAttr(mtime_ns=NOW))


def test_symlink_and_link(backend: Backend) -> None:
    root = backend.root
    if backend.readonly:
        raises_errno(errno.EROFS, backend.symlink, root, b"s", b"t", 0, 0)
        raises_errno(errno.EROFS, backend.link, look(backend, "hello.txt").ino, root, b"h2")
        return
    s = backend.symlink(root, b"s", b"/anything/../at all", 0, 0)
    assert s.is_symlink and backend.readlink(s.ino) == b"/anything/../at all"
    raises_errno(errno.EEXIST, backend.symlink, root, b"s", b"x", 0, 0)
    raises_errno(errno.EINVAL, backend.symlink, root, b"s2", b"", 0, 0)
    raises_errno(errno.ENAMETOOLONG, backend.symlink, root, b"s3", b"x" * 4096, 0, 0)
    f = look(backend, "hello.txt")
    linked = backend.link(f.ino, root, b"h2")
    assert linked.ino == f.ino and linked.nlink == 2
    raises_errno(errno.EEXIST, backend.link, f.ino, root, b"h2")
    raises_errno(errno.EPERM, backend.link, look(backend, "dir").ino, root, b"d2")
    sl = backend.link(s.ino, root, b"s-hard")  # a hard link to a symlink is the symlink
    assert sl.is_symlink and sl.ino == s.ino


def test_mknod(backend: Backend) -> None:
    root = backend.root
    if not rw(backend, backend.mknod, root, b"fifo2", stat.S_IFIFO | 0o640, 0, 0, 0):
        return
    a = backend.lookup(root, b"fifo2")
    assert stat.S_ISFIFO(a.mode) and stat.S_IMODE(a.mode) == 0o640
    raises_errno(errno.ENXIO, backend.open, a.ino, OpenFlags.WRITE)
    r = backend.mknod(root, b"plain", stat.S_IFREG | 0o600, 0, 0, 0)
    assert r.is_file and r.size == 0
    raises_errno(errno.EINVAL, backend.mknod, root, b"d", stat.S_IFDIR | 0o755, 0, 0, 0)
    raises_errno(errno.EEXIST, backend.mknod, root, b"plain", stat.S_IFREG | 0o600, 0, 0, 0)


def test_rename(backend: Backend) -> None:
    root = backend.root
    d = look(backend, "dir")
    if not rw(backend, backend.rename, root, b"hello.txt", d.ino, b"moved"):
        return
    assert backend.lookup(d.ino, b"moved").size == 12
    raises_errno(errno.ENOENT, backend.rename, root, b"hello.txt", root, b"x")
    # replace a file
    backend.rename(root, b"empty", d.ino, b"moved")
    assert backend.lookup(d.ino, b"moved").size == 0
    raises_errno(errno.EISDIR, backend.rename, root, b"exec.sh", root, b"emptydir")
    raises_errno(errno.ENOTDIR, backend.rename, root, b"emptydir", root, b"exec.sh")
    raises_errno(errno.ENOTEMPTY, backend.rename, root, b"emptydir", root, b"dir")
    # a directory into its own subtree
    nested = backend.lookup(d.ino, b"nested")
    raises_errno(errno.EINVAL, backend.rename, root, b"dir", nested.ino, b"inside")
    # a directory over an empty one
    backend.rename(root, b"dir", root, b"emptydir")
    assert backend.lookup(root, b"emptydir").ino == d.ino


def test_rename_flags(backend: Backend) -> None:
    root = backend.root
    if not rw(backend, backend.rename, root, b"hello.txt", root, b"exec.sh", RenameFlags.EXCHANGE):
        return
    assert backend.lookup(root, b"hello.txt").size == len(b"#!/bin/sh\n")
    assert backend.lookup(root, b"exec.sh").size == 12
    raises_errno(errno.EEXIST, backend.rename, root, b"hello.txt", root, b"exec.sh", RenameFlags.NOREPLACE)
    raises_errno(errno.ENOENT, backend.rename, root, b"hello.txt", root, b"none", RenameFlags.EXCHANGE)
    raises_errno(
        errno.EINVAL, backend.rename, root, b"hello.txt", root, b"x", RenameFlags.NOREPLACE | RenameFlags.EXCHANGE
    )
    backend.rename(root, b"hello.txt", root, b"fresh", RenameFlags.NOREPLACE)
    assert backend.lookup(root, b"fresh").is_file


def test_setattr(backend: Backend) -> None:
    f = look(backend, "hello.txt")
    if not rw(backend, backend.setattr, f.ino, SetAttr(mode=0o600)):
        return
    a = backend.setattr(f.ino, SetAttr(mode=0o4711))
    assert stat.S_IMODE(a.mode) == 0o4711 and a.is_file
    a = backend.setattr(f.ino, SetAttr(uid=42, gid=43))
    assert (a.uid, a.gid) == (42, 43)
    a = backend.setattr(f.ino, SetAttr(atime_ns=1_000_000_007, mtime_ns=2_000_000_009))
    assert (a.atime_ns, a.mtime_ns) == (1_000_000_007, 2_000_000_009)
    a = backend.setattr(f.ino, SetAttr(mtime_ns=NOW))
    assert a.mtime_ns > 2_000_000_009 and a.atime_ns == 1_000_000_007
    a = backend.setattr(f.ino, SetAttr(size=100))
    assert a.size == 100
    a = backend.setattr(f.ino, SetAttr(size=3))
    assert a.size == 3
    raises_errno(errno.EISDIR, backend.setattr, look(backend, "dir").ino, SetAttr(size=0))
    raises_errno(errno.EOPNOTSUPP, backend.setattr, look(backend, "link-rel").ino, SetAttr(mode=0o600))
    assert backend.setattr(look(backend, "link-rel").ino, SetAttr(uid=7)).uid == 7


def test_xattrs(backend: Backend) -> None:
    f = look(backend, "xattr.txt")
    assert backend.getxattr(f.ino, b"user.color") == b"blue"
    assert b"user.color" in backend.listxattr(f.ino)
    raises_errno(errno.ENODATA, backend.getxattr, f.ino, b"user.none")
    if not rw(backend, backend.setxattr, f.ino, b"user.k", b"v"):
        raises_errno(errno.EROFS, backend.removexattr, f.ino, b"user.color")
        return
    assert backend.getxattr(f.ino, b"user.k") == b"v"
    raises_errno(errno.EEXIST, backend.setxattr, f.ino, b"user.k", b"w", XattrFlags.CREATE)
    raises_errno(errno.ENODATA, backend.setxattr, f.ino, b"user.z", b"w", XattrFlags.REPLACE)
    backend.setxattr(f.ino, b"user.k", b"w", XattrFlags.REPLACE)
    assert backend.getxattr(f.ino, b"user.k") == b"w"
    backend.removexattr(f.ino, b"user.k")
    raises_errno(errno.ENODATA, backend.removexattr, f.ino, b"user.k")
    assert b"user.k" not in backend.listxattr(f.ino)


def test_statfs_sync_forget_close(backend: Backend) -> None:
    st = backend.statfs()
    assert st.bsize > 0 and st.blocks >= st.bfree >= 0 and st.namemax == 255
    backend.sync()
    a = backend.lookup(backend.root, b"hello.txt")
    backend.forget(a.ino)
    raises_errno(errno.ESTALE, backend.getattr, a.ino)
    backend.forget(a.ino)  # forgetting an unknown inode is harmless
    backend.forget(backend.root, 5)  # so is forgetting the root
    assert backend.getattr(backend.root).is_dir
    backend.close()
    backend.close()
    raises_errno(errno.EBADF, backend.getattr, backend.root)


def test_readdirplus_counts_references(backend: Backend) -> None:
    """readdirplus yields what readdir does, with attributes, and one reference per entry."""
    plain = {e.name: e for e in backend.readdir(backend.root)}
    pairs = list(backend.readdirplus(backend.root))
    assert sorted(e.name for e, _ in pairs) == sorted(plain)
    for entry, attr in pairs:
        assert attr.ino == entry.ino == plain[entry.name].ino
        assert backend.getattr(attr.ino) == attr  # referenced: known to the backend
        backend.forget(attr.ino, 1)
    resumed = list(backend.readdirplus(backend.root, pairs[2][0].offset))
    assert [e.name for e, _ in resumed] == [e.name for e, _ in pairs[3:]]
    for _, attr in resumed:
        backend.forget(attr.ino, 1)
