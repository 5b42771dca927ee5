"""Conformance of the path layer (PathFs) over every backend factory."""

from __future__ import annotations

import errno
import io
import stat

import pytest

from conformance.support import BIG, mutate, raises_errno
from volfs.errors import VolfsError
from volfs.pathfs import PathFs

# -- reading -------------------------------------------------------------------------------


def test_read(fs: PathFs) -> None:
    assert fs.read("hello.txt") == b"hello world\n"
    assert fs.read("/hello.txt") == fs.read("./dir/../hello.txt")
    assert fs.read("big.bin") == BIG
    assert fs.read("empty") == b""
    assert fs.read_text("dir/a.txt") == "a"
    assert fs.read_to_string("dir/nested/deep.txt") == "deep"


def test_read_errors_carry_the_volume_path(fs: PathFs) -> None:
    err = raises_errno(errno.ENOENT, fs.read, "dir/missing")
    assert err.path == "/dir/missing"
    assert raises_errno(errno.EISDIR, fs.read, "dir").path == "/dir"
    assert raises_errno(errno.ENOTDIR, fs.read, "hello.txt/x").path == "/hello.txt/x"
    raises_errno(errno.ENOENT, fs.read, "dangling")
    raises_errno(errno.ELOOP, fs.read, "loop1")
    raises_errno(errno.ENXIO, fs.read, "fifo")
    raises_errno(errno.EINVAL, fs.read, "a\0b")
    raises_errno(errno.ENAMETOOLONG, fs.read, "x" * 256)
    raises_errno(errno.ENAMETOOLONG, fs.read, "a/" * 2100)
    raises_errno(errno.ENOTDIR, fs.read, "hello.txt/")
    with pytest.raises(FileNotFoundError):
        fs.read("nope")


def test_read_text_rejects_bad_utf8(fs: PathFs) -> None:
    raises_errno(errno.EILSEQ, fs.read_text, "big.bin")


def test_symlinks_resolve_inside_the_volume(fs: PathFs) -> None:
    assert fs.read("link-rel") == b"hello world\n"
    assert fs.read("link-abs") == b"a"  # absolute targets start at the volume root
    assert fs.read("link-up") == b"hello world\n"  # '..' stops at the root
    assert fs.read("link-dir/nested/deep.txt") == b"deep"
    assert fs.read("link-dir/../hello.txt") == b"hello world\n"  # physical '..'
    assert fs.read("../../hello.txt") == b"hello world\n"


def test_read_stream(fs: PathFs) -> None:
    with fs.read_stream("big.bin", 100_000) as s:
        chunks = list(s)
    assert b"".join(chunks) == BIG and max(map(len, chunks)) == 100_000
    s = fs.read_stream("big.bin")
    assert s.recv() == BIG[: 64 << 10]
    assert s.collect() == BIG[64 << 10 :]
    assert s.recv() is None
    assert fs.read_stream("empty").collect() == b""
    raises_errno(errno.ENOENT, fs.read_stream, "missing")
    raises_errno(errno.EISDIR, fs.read_stream, "dir")
    raises_errno(errno.EINVAL, fs.read_stream, "hello.txt", 0)


# -- metadata --------------------------------------------------------------------------------


def test_stat_and_lstat(fs: PathFs) -> None:
    st = fs.stat("hello.txt")
    assert st.kind == "file" and st.size == 12 and stat.S_ISREG(st.mode)
    assert st.modified is not None and st.accessed is not None
    assert st.readonly == fs.readonly
    assert fs.stat("exec.sh").mode & 0o777 == 0o755
    assert fs.stat("link-rel").kind == "file"  # stat follows
    assert fs.lstat("link-rel").kind == "symlink"
    assert fs.lstat("dangling").kind == "symlink"
    assert fs.stat("dir").kind == "directory" and fs.stat("/").kind == "directory"
    assert fs.stat("fifo").kind == "other"
    assert fs.stat("dir/hard").nlink == 2 and fs.stat("dir/hard").ino == fs.stat("dir/a.txt").ino
    raises_errno(errno.ENOENT, fs.stat, "dangling")
    raises_errno(errno.ELOOP, fs.stat, "loop1")
    assert fs.lstat("loop1").kind == "symlink"
    raises_errno(errno.ENOENT, fs.lstat, "missing")


def test_exists(fs: PathFs) -> None:
    assert fs.exists("hello.txt") and fs.exists("/") and fs.exists("dir/") and fs.exists("link-dir")
    assert not fs.exists("missing") and not fs.exists("dangling") and not fs.exists("loop1")
    assert not fs.exists("hello.txt/x")
    raises_errno(errno.EINVAL, fs.exists, "a\0")


def test_list(fs: PathFs) -> None:
    entries = fs.list("/")
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    assert "/hello.txt" in paths and "/dir" in paths
    kinds = {e.path: e.kind for e in entries}
    assert kinds["/dir"] == "directory" and kinds["/link-dir"] == "symlink"
    assert kinds["/fifo"] == "other" and kinds["/hello.txt"] == "file"
    sizes = {e.path: e.size for e in entries}
    assert sizes["/big.bin"] == len(BIG)
    assert [e.path for e in fs.list("dir")] == ["/dir/a.txt", "/dir/hard", "/dir/nested"]
    assert [e.path for e in fs.list("link-dir/")] == ["/link-dir/a.txt", "/link-dir/hard", "/link-dir/nested"]
    assert fs.list("emptydir") == []
    raises_errno(errno.ENOTDIR, fs.list, "hello.txt")
    raises_errno(errno.ENOENT, fs.list, "missing")


def test_readlink(fs: PathFs) -> None:
    assert fs.readlink("link-abs") == "/dir/a.txt"
    assert fs.readlink("dangling") == "nowhere"
    raises_errno(errno.EINVAL, fs.readlink, "hello.txt")
    raises_errno(errno.ENOENT, fs.readlink, "missing")


def test_walk_glob_du(fs: PathFs) -> None:
    walked = {d: (sorted(ds), sorted(fl)) for d, ds, fl in fs.walk("/")}
    assert walked["/dir"] == (["nested"], ["a.txt", "hard"])
    assert walked["/dir/nested"] == ([], ["deep.txt"])
    assert "/link-dir" not in walked  # symlinks are not followed
    assert fs.glob("*.txt") == ["/hello.txt", "/xattr.txt"]
    assert fs.glob("**/*.txt") == ["/dir/a.txt", "/dir/nested/deep.txt", "/hello.txt", "/xattr.txt"]
    assert fs.glob("dir/*/deep.txt") == ["/dir/nested/deep.txt"]
    assert fs.glob("link-dir/a.txt") == ["/link-dir/a.txt"]
    assert fs.glob("nothing*") == []
    assert fs.du("dir", apparent=True) == fs.stat("dir").size + fs.stat("dir/nested").size + 1 + 4
    assert fs.du("/") >= len(BIG)
    raises_errno(errno.ENOENT, fs.du, "missing")
    raises_errno(errno.ENOENT, lambda: list(fs.walk("missing")))


def test_xattrs(fs: PathFs) -> None:
    assert fs.getxattr("xattr.txt", "user.color") == b"blue"
    assert "user.color" in fs.listxattr("xattr.txt")
    raises_errno(errno.ENODATA, fs.getxattr, "xattr.txt", "user.missing")
    raises_errno(errno.ENOENT, fs.getxattr, "missing", "user.x")
    if not mutate(fs, fs.setxattr, "xattr.txt", "user.k", b"v"):
        raises_errno(errno.EROFS, fs.removexattr, "xattr.txt", "user.color")
        return
    assert fs.getxattr("xattr.txt", "user.k") == b"v"
    raises_errno(errno.EEXIST, fs.setxattr, "xattr.txt", "user.k", b"v", create=True)
    raises_errno(errno.ENODATA, fs.setxattr, "xattr.txt", "user.q", b"v", replace=True)
    fs.removexattr("xattr.txt", "user.k")
    raises_errno(errno.ENODATA, fs.removexattr, "xattr.txt", "user.k")


# -- writing ---------------------------------------------------------------------------------


def test_write(fs: PathFs) -> None:
    if not mutate(fs, fs.write, "new/deep/file.txt", b"data"):
        assert not fs.exists("new")
        return
    assert fs.read("new/deep/file.txt") == b"data"
    st = fs.stat("new/deep/file.txt")
    assert st.mode & 0o777 == 0o644 and (st.uid, st.gid) == fs.owner
    fs.write("hello.txt", "unicode ✓")
    assert fs.read_text("hello.txt") == "unicode ✓"
    fs.write("exec.sh", b"#!/bin/true\n")
    assert fs.stat("exec.sh").mode & 0o777 == 0o755  # the existing mode is kept
    fs.write("link-rel", b"through the link")  # replaces the target, keeps the link
    assert fs.lstat("link-rel").kind == "symlink" and fs.read("hello.txt") == b"through the link"
    fs.write("dangling", b"created at the target")
    assert fs.read("nowhere") == b"created at the target"
    fs.write("big2", BIG)
    assert fs.read("big2") == BIG
    fs.write("m", b"", mode=0o600)
    assert fs.stat("m").mode & 0o777 == 0o600 and fs.read("m") == b""
    raises_errno(errno.EISDIR, fs.write, "dir", b"x")
    raises_errno(errno.EISDIR, fs.write, "/", b"x")
    raises_errno(errno.ENOTDIR, fs.write, "hello.txt/x", b"x")
    raises_errno(errno.ELOOP, fs.write, "loop1", b"x")
    raises_errno(errno.ENAMETOOLONG, fs.write, "n" * 256, b"x")
    assert not [e for e in fs.list("/") if ".volfs-" in e.path]


def test_write_stream(fs: PathFs) -> None:
    if fs.readonly:
        raises_errno(errno.EROFS, fs.write_stream, "s")
        return
    with fs.write_stream("out/s.bin") as sink:
        sink.write(b"abc")
        assert not fs.exists("out/s.bin")  # nothing visible before close
        sink.write(memoryview(b"def"))
    assert fs.read("out/s.bin") == b"abcdef"
    with pytest.raises(RuntimeError):
        with fs.write_stream("out/s.bin") as sink:
            sink.write(b"partial")
            raise RuntimeError("boom")
    assert fs.read("out/s.bin") == b"abcdef"  # discarded on error
    sink = fs.write_stream("hello.txt")
    sink.write(b"x")
    sink.abort()
    sink.close()
    assert fs.read("hello.txt") == b"hello world\n"
    raises_errno(errno.EBADF, sink.write, b"y")
    assert not [e for e in fs.list("out") if ".volfs-" in e.path]
    raises_errno(errno.EISDIR, fs.write_stream, "dir")


def test_mkdir(fs: PathFs) -> None:
    if not mutate(fs, fs.mkdir, "a/b/c"):
        return
    assert fs.stat("a/b/c").kind == "directory"
    fs.mkdir("a/b/c")  # idempotent
    fs.mkdir("link-dir")  # a symlink to a directory is a directory
    raises_errno(errno.EEXIST, fs.mkdir, "a/b/c", exist_ok=False)
    raises_errno(errno.ENOENT, fs.mkdir, "x/y", parents=False)
    raises_errno(errno.EEXIST, fs.mkdir, "hello.txt")
    raises_errno(errno.ENOTDIR, fs.mkdir, "hello.txt/sub")
    fs.mkdir("m", mode=0o700, parents=False)
    assert fs.stat("m").mode & 0o777 == 0o700


def test_remove(fs: PathFs) -> None:
    if not mutate(fs, fs.remove, "hello.txt"):
        return
    assert not fs.exists("hello.txt")
    fs.remove_file("link-dir")  # the symlink, not the directory
    assert fs.exists("dir") and not fs.exists("link-dir")
    fs.remove("dangling")
    fs.remove("fifo")
    raises_errno(errno.EISDIR, fs.remove, "dir")
    raises_errno(errno.EISDIR, fs.remove, "emptydir")
    raises_errno(errno.EISDIR, fs.remove, "/")
    raises_errno(errno.ENOENT, fs.remove, "hello.txt")
    raises_errno(errno.ENOTDIR, fs.remove, "exec.sh/x")


def test_remove_dir(fs: PathFs) -> None:
    if not mutate(fs, fs.remove_dir, "dir"):
        return
    assert not fs.exists("dir") and fs.exists("hello.txt")
    raises_errno(errno.EBUSY, fs.remove_dir, "/")
    raises_errno(errno.EBUSY, fs.remove_dir, "")
    raises_errno(errno.EBUSY, fs.remove_dir, "emptydir/..")
    raises_errno(errno.ENOTDIR, fs.remove_dir, "hello.txt")
    raises_errno(errno.ENOENT, fs.remove_dir, "dir")
    fs.mkdir("x")
    fs.symlink("/x", "lx")
    fs.remove_dir("lx")  # removes the link only
    assert fs.exists("x")
    deep = "/".join(["d"] * 60)
    fs.mkdir(deep)
    fs.write(deep + "/f", b"x")
    fs.remove_dir("d")
    assert not fs.exists("d")


def test_copy(fs: PathFs) -> None:
    if not mutate(fs, fs.copy, "big.bin", "copies/big"):
        return
    assert fs.read("copies/big") == BIG
    fs.copy("exec.sh", "copies/exec")
    assert fs.stat("copies/exec").mode & 0o777 == 0o755
    fs.copy("link-rel", "copies/h")
    assert fs.lstat("copies/h").kind == "file" and fs.read("copies/h") == b"hello world\n"
    fs.copy("hello.txt", "empty")  # replaces
    assert fs.read("empty") == b"hello world\n"
    raises_errno(errno.EISDIR, fs.copy, "dir", "x")
    raises_errno(errno.EISDIR, fs.copy, "hello.txt", "dir")
    assert raises_errno(errno.ENOENT, fs.copy, "missing", "x").path == "/missing"
    raises_errno(errno.ENXIO, fs.copy, "fifo", "x")


def test_rename(fs: PathFs) -> None:
    if not mutate(fs, fs.rename, "hello.txt", "moved/here.txt"):
        return
    assert fs.read("moved/here.txt") == b"hello world\n" and not fs.exists("hello.txt")
    fs.rename("dir", "moved/dir")
    assert fs.read("moved/dir/nested/deep.txt") == b"deep"
    fs.rename("link-rel", "lr")  # the link moves (now dangling), not its target
    assert fs.lstat("lr").kind == "symlink"
    fs.rename("exec.sh", "empty")
    assert fs.read("empty") == b"#!/bin/sh\n"
    err = raises_errno(errno.EINVAL, fs.rename, "moved", "moved/dir/sub/x")
    assert err.path == "/moved/dir/sub/x"
    assert not fs.exists("moved/dir/sub")  # nothing created on the way
    raises_errno(errno.EEXIST, fs.rename, "empty", "xattr.txt", replace=False)
    raises_errno(errno.ENOENT, fs.rename, "missing", "x")
    raises_errno(errno.EBUSY, fs.rename, "/", "x")
    raises_errno(errno.EISDIR, fs.rename, "empty", "emptydir")
    raises_errno(errno.ENOTDIR, fs.rename, "emptydir", "empty")
    fs.mkdir("full/sub")
    raises_errno(errno.ENOTEMPTY, fs.rename, "emptydir", "full")


def test_symlink_link(fs: PathFs) -> None:
    if not mutate(fs, fs.symlink, "../../../etc/passwd", "evil"):
        raises_errno(errno.EROFS, fs.link, "hello.txt", "h2")
        return
    assert fs.readlink("evil") == "../../../etc/passwd"
    raises_errno(errno.ENOENT, fs.read, "evil")  # resolves to /etc/passwd inside the volume
    raises_errno(errno.EEXIST, fs.symlink, "x", "hello.txt")
    raises_errno(errno.ENOENT, fs.symlink, "x", "nodir/l")
    fs.link("hello.txt", "h2")
    assert fs.stat("h2").ino == fs.stat("hello.txt").ino and fs.stat("h2").nlink == 2
    raises_errno(errno.EEXIST, fs.link, "hello.txt", "h2")
    raises_errno(errno.EPERM, fs.link, "dir", "d2")
    raises_errno(errno.ENOENT, fs.link, "missing", "m2")
    fs.link("link-rel", "lr2")  # not followed
    assert fs.lstat("lr2").kind == "symlink"


def test_chmod_chown_utime_truncate(fs: PathFs) -> None:
    if not mutate(fs, fs.chmod, "hello.txt", 0o600):
        raises_errno(errno.EROFS, fs.chown, "hello.txt", 1, 1)
        raises_errno(errno.EROFS, fs.utime, "hello.txt")
        raises_errno(errno.EROFS, fs.truncate, "hello.txt", 0)
        return
    assert fs.stat("hello.txt").mode & 0o7777 == 0o600
    fs.chmod("link-rel", 0o640)  # follows
    assert fs.stat("hello.txt").mode & 0o7777 == 0o640
    raises_errno(errno.EOPNOTSUPP, fs.chmod, "link-rel", 0o600, follow_symlinks=False)
    fs.chown("hello.txt", 1000, 1001)
    st = fs.stat("hello.txt")
    assert (st.uid, st.gid) == (1000, 1001)
    fs.chown("hello.txt", -1, 5)
    assert (fs.stat("hello.txt").uid, fs.stat("hello.txt").gid) == (1000, 5)
    fs.chown("link-rel", 77, 77, follow_symlinks=False)
    assert fs.lstat("link-rel").uid == 77 and fs.stat("link-rel").uid == 1000
    fs.utime("hello.txt", ns=(1_500_000_000_000_000_000, 1_600_000_000_123_456_789))
    st = fs.stat("hello.txt")
    assert st.modified is not None and st.modified.year == 2020 and st.modified.microsecond == 123456
    fs.utime("hello.txt", (10.0, 20.0))
    assert fs.stat("hello.txt").modified is not None
    fs.utime("hello.txt")
    fs.truncate("hello.txt", 5)
    assert fs.read("hello.txt") == b"hello"
    raises_errno(errno.EISDIR, fs.truncate, "dir", 0)
    raises_errno(errno.ENOENT, fs.chmod, "missing", 0o600)


def test_owner_of_new_files(backend: object) -> None:
    from volfs.backend import Backend

    assert isinstance(backend, Backend)
    fs = PathFs(backend, owner=(4321, 8765))
    if not mutate(fs, fs.write, "owned/f", b"x"):
        return
    for p in ("owned", "owned/f"):
        st = fs.stat(p)
        assert (st.uid, st.gid) == (4321, 8765)
    fs.symlink("f", "owned/l")
    with fs.open("owned/o", "w") as f:
        f.write("x")
    assert fs.lstat("owned/l").uid == 4321 and fs.stat("owned/o").gid == 8765


def test_readonly_handle_rejects_every_mutation(backend: object) -> None:
    from volfs.backend import Backend

    assert isinstance(backend, Backend)
    fs = PathFs(backend, readonly=True)
    assert fs.readonly
    for fn, args in [
        (fs.write, ("n", b"x")),
        (fs.write_stream, ("n",)),
        (fs.mkdir, ("n",)),
        (fs.remove, ("hello.txt",)),
        (fs.remove_dir, ("dir",)),
        (fs.copy, ("hello.txt", "n")),
        (fs.rename, ("hello.txt", "n")),
        (fs.symlink, ("t", "n")),
        (fs.link, ("hello.txt", "n")),
        (fs.chmod, ("hello.txt", 0o600)),
        (fs.chown, ("hello.txt", 1, 1)),
        (fs.utime, ("hello.txt",)),
        (fs.truncate, ("hello.txt", 0)),
        (fs.setxattr, ("hello.txt", "user.a", b"b")),
        (fs.removexattr, ("xattr.txt", "user.color")),
        (fs.open, ("hello.txt", "w")),
        (fs.open, ("hello.txt", "r+")),
        (fs.open, ("hello.txt", "a")),
        (fs.open, ("n", "x")),
    ]:
        raises_errno(errno.EROFS, fn, *args)
    assert fs.read("hello.txt") == b"hello world\n"
    assert fs.stat("hello.txt").readonly
    assert not fs.exists("n")


# -- file objects ------------------------------------------------------------------------------


def test_open_read_modes(fs: PathFs) -> None:
    with fs.open("hello.txt") as f:
        assert isinstance(f, io.TextIOWrapper)
        assert f.read() == "hello world\n"
        assert f.name == "/hello.txt" or f.buffer.name == "/hello.txt"
    with fs.open("big.bin", "rb") as fb:
        assert fb.read(10) == BIG[:10]
        fb.seek(-5, io.SEEK_END)
        assert fb.read() == BIG[-5:]
        fb.seek(1000)
        assert fb.tell() == 1000 and fb.read(3) == BIG[1000:1003]
        fb.seek(0)
        assert fb.read() == BIG
    with fs.open("big.bin", "rb", buffering=0) as raw:
        assert raw.read() == BIG
    with fs.open("dir/nested/deep.txt", "rt", encoding="ascii") as f:
        assert f.readlines() == ["deep"]
    raises_errno(errno.ENOENT, fs.open, "missing")
    raises_errno(errno.EISDIR, fs.open, "dir")
    raises_errno(errno.ENXIO, fs.open, "fifo", "rb")
    for bad in ("", "rw", "rr", "q", "rbt"):
        raises_errno(errno.EINVAL, fs.open, "hello.txt", bad)
    raises_errno(errno.EINVAL, fs.open, "hello.txt", "rb", encoding="utf-8")
    raises_errno(errno.EINVAL, fs.open, "hello.txt", "r", buffering=0)
    with fs.open("hello.txt", "rb") as f2:
        with pytest.raises(io.UnsupportedOperation):
            f2.write(b"x")  # type: ignore[call-arg]
    raises_errno(errno.ENOENT, fs.open, "missing", "r")


def test_open_write_modes(fs: PathFs) -> None:
    if not mutate(fs, fs.open, "new.txt", "w"):
        return
    with fs.open("new.txt", "w") as f:
        f.write("one\n")
        f.write("two\n")
    assert fs.read("new.txt") == b"one\ntwo\n"
    with fs.open("new.txt", "a") as f:
        f.write("three\n")
    assert fs.read("new.txt") == b"one\ntwo\nthree\n"
    with fs.open("new.txt", "r+b") as fb:
        fb.seek(4)
        fb.write(b"TWO")
        fb.seek(0)
        assert fb.read(7) == b"one\nTWO"
        fb.truncate(7)
    assert fs.read("new.txt") == b"one\nTWO"
    with fs.open("new.txt", "wb") as fb:
        fb.write(BIG)
    assert fs.read("new.txt") == BIG
    with fs.open("x.bin", "xb") as fb:
        fb.write(b"x")
    raises_errno(errno.EEXIST, fs.open, "x.bin", "x")
    with fs.open("x.bin", "ab+") as fb:
        fb.write(b"y")
        fb.seek(0)
        assert fb.read() == b"xy"
    with fs.open("dangling", "w") as f:
        f.write("via link")
    assert fs.read("nowhere") == b"via link"
    raises_errno(errno.ENOENT, fs.open, "nodir/f", "w")  # open does not create parents
    raises_errno(errno.EISDIR, fs.open, "dir", "w")


def test_closed_handle(fs: PathFs) -> None:
    fs.close()
    raises_errno(errno.EBADF, fs.read, "hello.txt")
    raises_errno(errno.EBADF, fs.stat, "/")
    fs.close()


def test_errors_are_only_volfs_errors(fs: PathFs) -> None:
    for call in (
        lambda: fs.read("loop1/x"),
        lambda: fs.list("big.bin"),
        lambda: fs.readlink("/"),
        lambda: fs.stat("/" + "a" * 300),
    ):
        with pytest.raises(VolfsError) as info:
            call()
        assert info.value.path is not None and info.value.path.startswith("/")
