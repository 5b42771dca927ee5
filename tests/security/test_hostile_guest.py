"""A hostile guest against the directory backend: nothing outside the root is ever touched.

The guest controls everything under the volume root (here: plain os calls
plant symlinks, swap directories, make hard links). Beside the root lives an
``outside`` tree with a secret. After every test the outside tree must be
exactly as it was, *including access times*: every outside file's atime is
set far in the past, so on a relatime mount any read of it would move the
atime (``test_atime_detects_reads`` proves the detector works here).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testsupport import is_root, need, need_root
from volfs.backends.directory import DirectoryBackend
from volfs.errors import VolfsError
from volfs.pathfs import PathFs

SECRET = b"TOP SECRET host data\n"
OLD = 946684800_000_000_000  # 2000-01-01, in ns


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything observable about ``top`` without reading through a volfs handle."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames + ["."]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = b""
            if stat.S_ISREG(st.st_mode):
                # Read with O_NOATIME so taking the snapshot does not move atimes.
                fd = os.open(p, os.O_RDONLY | os.O_NOATIME)
                try:
                    digest = hashlib.sha256(os.read(fd, 1 << 20)).digest()
                finally:
                    os.close(fd)
            xattrs: tuple[str, ...] = ()
            if not stat.S_ISLNK(st.st_mode):
                xattrs = tuple(sorted(os.listxattr(p)))
            atime = st.st_atime_ns if not stat.S_ISDIR(st.st_mode) else 0
            out[os.path.relpath(p, top)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink,
                atime, digest, xattrs,
            )
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(volume root, outside dir); on exit, demands the outside is untouched."""
    root = tmp_path / "vol"
    outside = tmp_path / "outside"
    root.mkdir()
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir" / "f").write_bytes(SECRET)
    (outside / "dir" / "keep").write_bytes(b"keep me")
    os.setxattr(outside / "secret.txt", "user.mark", b"host")
    for p in (outside / "secret.txt", outside / "dir" / "f", outside / "dir" / "keep"):
        os.utime(p, ns=(OLD, OLD + 10**9))  # atime < mtime: relatime updates it on any read
    before = snapshot(outside)
    yield root, outside
    after = snapshot(outside)
    assert after == before, "something outside the volume root changed"


@pytest.fixture
def fs(world: tuple[Path, Path]) -> Iterator[PathFs]:
    p = PathFs(DirectoryBackend(world[0]))
    yield p
    p.close()


def every_operation(fs: PathFs, path: str) -> list[tuple[str, Callable[[], object]]]:
    """Each PathFs operation aimed at ``path``, to be tried by a hostile test."""
    return [
        ("read", lambda: fs.read(path)),
        ("read_text", lambda: fs.read_text(path)),
        ("read_stream", lambda: fs.read_stream(path).collect()),
        ("open", lambda: fs.open(path, "rb").read()),
        ("list", lambda: fs.list(path)),
        ("stat", lambda: fs.stat(path)),
        ("lstat", lambda: fs.lstat(path)),
        ("exists", lambda: fs.exists(path)),
        ("glob", lambda: fs.glob(path + "/*")),
        ("du", lambda: fs.du(path)),
        ("walk", lambda: list(fs.walk(path))),
        ("getxattr", lambda: fs.getxattr(path, "user.mark")),
        ("listxattr", lambda: fs.listxattr(path)),
        ("write", lambda: fs.write(path, b"guest")),
        ("write_sub", lambda: fs.write(path + "/f", b"guest")),
        ("write_stream", lambda: fs.write_stream(path + "/keep").close()),
        ("open_w", lambda: fs.open(path + "/keep", "r+b").write(b"zz")),
        ("append", lambda: fs.open(path, "ab").write(b"zz")),
        ("mkdir", lambda: fs.mkdir(path + "/newdir")),
        ("copy", lambda: fs.copy(path, "copied")),
        ("copy_to", lambda: fs.copy("inside.txt", path + "/f")),
        ("rename_to", lambda: fs.rename("inside.txt", path + "/stolen")),
        ("chmod", lambda: fs.chmod(path, 0o777)),
        ("chmod_sub", lambda: fs.chmod(path + "/keep", 0o777)),
        ("chown", lambda: fs.chown(path, 1234, 1234)),
        ("utime", lambda: fs.utime(path + "/keep", ns=(1, 1))),
        ("truncate", lambda: fs.truncate(path + "/keep", 0)),
        ("setxattr", lambda: fs.setxattr(path, "user.evil", b"1")),
        ("removexattr", lambda: fs.removexattr(path, "user.mark")),
        ("symlink_in", lambda: fs.symlink("x", path + "/planted")),
        ("link_in", lambda: fs.link("inside.txt", path + "/linked")),
        ("remove_sub", lambda: fs.remove(path + "/f")),
        ("remove_dir_sub", lambda: fs.remove_dir(path + "/dir")),
        ("remove", lambda: fs.remove(path)),
        ("remove_dir", lambda: fs.remove_dir(path)),
    ]


def attack(fs: PathFs, path: str) -> None:
    """Try everything on ``path``; whatever succeeds must have stayed inside."""
    for name, op in every_operation(fs, path):
        try:
            result = op()
        except VolfsError:
            continue
        assert SECRET not in repr(result).encode(), f"{name} on {path} read outside data"


def test_atime_detects_reads(tmp_path: Path) -> None:
    p = tmp_path / "probe"
    p.write_bytes(b"x")
    os.utime(p, ns=(OLD, OLD + 10**9))
    p.read_bytes()
    need(os.stat(p).st_atime_ns != OLD, "the test filesystem does not update atimes (noatime)")


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        "../outside/secret.txt",
        "../../outside/secret.txt",
        "../outside",
        "../outside/dir",
        "../../../../../../",
        "/",
        "..",
        "ABS_OUTSIDE",
        "ABS_OUTSIDE/dir",
        "ABS_OUTSIDE/secret.txt",
    ],
)
def test_escaping_symlinks_stay_inside(world: tuple[Path, Path], fs: PathFs, target: str) -> None:
    root, outside = world
    target = target.replace("ABS_OUTSIDE", str(outside))
    (root / "inside.txt").write_bytes(b"inside")
    os.symlink(target, root / "evil")
    os.symlink("evil", root / "evil2")  # a chain
    os.mkdir(root / "sub")
    os.symlink(target, root / "sub" / "evil")
    for path in ("evil", "evil2", "sub/evil", "evil/dir", "evil/secret.txt", "sub/evil/../secret.txt"):
        attack(fs, path)
        (root / "inside.txt").write_bytes(b"inside")  # some attacks move it away


def test_absolute_target_resolves_at_the_volume_root(world: tuple[Path, Path], fs: PathFs) -> None:
    root, outside = world
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"guest passwd")
    os.symlink("/etc/passwd", root / "pw")
    os.symlink("../../../../etc/passwd", root / "pw2")
    os.symlink(str(outside / "secret.txt"), root / "abs")
    assert fs.read("pw") == b"guest passwd"
    assert fs.read("pw2") == b"guest passwd"
    with pytest.raises(VolfsError) as info:
        fs.read("abs")
    assert info.value.errno == errno.ENOENT and info.value.path == "/abs"
    os.symlink("/", root / "rootlink")
    assert sorted(e.path for e in fs.list("rootlink")) == sorted(
        "/rootlink/" + n for n in os.listdir(root)
    )
    # Writing through an absolute link creates the file inside the volume.
    fs.write("abs", b"guest data")
    assert (root / outside.relative_to("/") / "secret.txt").read_bytes() == b"guest data"


def test_symlink_loops_fail_fast(world: tuple[Path, Path], fs: PathFs) -> None:
    root, _ = world
    os.symlink("a", root / "b")
    os.symlink("b", root / "a")
    os.symlink("self", root / "self")
    os.symlink("./deep/../deep", root / "deep")
    for p in ("a", "self", "deep", "a/x"):
        with pytest.raises(VolfsError) as info:
            fs.read(p)
        assert info.value.errno == errno.ELOOP
    # 40 hops are allowed, 41 are not.
    for i in range(41):
        os.symlink(f"c{i + 1}", root / f"c{i}")
    (root / "c41").write_bytes(b"end")
    assert fs.read("c1") == b"end"
    with pytest.raises(VolfsError) as info:
        fs.read("c0")
    assert info.value.errno == errno.ELOOP


def test_hostile_names(world: tuple[Path, Path], fs: PathFs) -> None:
    root, _ = world
    b = fs.backend
    for bad in (b"..", b".", b"../outside", b"a/b", b"x\0y", b"/etc/passwd", b""):
        with pytest.raises(VolfsError) as info:
            b.lookup(b.root, bad)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(VolfsError):
            b.mkdir(b.root, bad, 0o755, 0, 0)
        with pytest.raises(VolfsError):
            b.rename(b.root, bad, b.root, b"x")
    with pytest.raises(VolfsError) as info:
        b.lookup(b.root, b"n" * 256)
    assert info.value.errno == errno.ENAMETOOLONG
    # At the path layer '..' cannot climb out and '/' only separates.
    fs.write("../../outside/secret.txt", b"guest")
    assert (root / "outside" / "secret.txt").read_bytes() == b"guest"
    fs.write("a/../../../b", b"b")
    assert (root / "b").read_bytes() == b"b"
    for path in ("x\0y", "n" * 300, "/".join(["d"] * 3000)):
        with pytest.raises(VolfsError) as info:
            fs.write(path, b"x")
        assert info.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)
    # A host name that is not UTF-8 round-trips (surrogateescape).
    os.mkdir(os.path.join(os.fsencode(root), b"\xff\xfe"))
    (name,) = [e.path for e in fs.list("/") if e.kind == "directory" and "\udcff" in e.path]
    fs.write(name + "/f", b"ok")
    assert (Path(os.fsdecode(os.path.join(os.fsencode(root), b"\xff\xfe"))) / "f").read_bytes() == b"ok"


def test_special_files_never_opened(world: tuple[Path, Path], fs: PathFs) -> None:
    root, _ = world
    os.mkfifo(root / "fifo")
    os.symlink("fifo", root / "to-fifo")
    devices = []
    if is_root():
        os.mknod(root / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
        devices.append("zero")
    for p in ["fifo", "to-fifo", *devices]:
        for op in (fs.read, lambda q: fs.open(q, "rb"), lambda q: fs.open(q, "wb"), fs.read_stream):
            with pytest.raises(VolfsError) as info:
                op(p)  # type: ignore[operator]
            assert info.value.errno == errno.ENXIO
        with pytest.raises(VolfsError):
            fs.copy(p, "copy")
    assert fs.stat("fifo").kind == "other"


def test_guest_hard_link_to_outside_file(world: tuple[Path, Path], fs: PathFs) -> None:
    need_root("hard links to files owned by others need root with protected_hardlinks")
    root, outside = world
    linked = outside.parent / "linked-by-guest.txt"  # not under the snapshot
    linked.write_bytes(b"the inode the guest linked")
    os.link(linked, root / "hl")
    # What is reachable is exactly that inode, nothing else.
    assert fs.read("hl") == b"the inode the guest linked"
    assert fs.stat("hl").ino == os.stat(linked).st_ino and fs.stat("hl").nlink == 2
    assert [e.path for e in fs.list("/")] == ["/hl"]
    # Whole-file writes replace the name in the volume; the outside file keeps its data.
    fs.write("hl", b"guest data")
    assert fs.read("hl") == b"guest data"
    assert linked.read_bytes() == b"the inode the guest linked"
    assert os.stat(linked).st_nlink == 1
    os.link(linked, root / "hl2")
    fs.copy("hl2", "c")
    fs.rename("hl2", "moved")
    fs.remove("moved")  # only the name inside goes
    assert linked.read_bytes() == b"the inode the guest linked"


def test_directory_swapped_for_symlink_race(world: tuple[Path, Path], fs: PathFs) -> None:
    """A thread flips ``d`` between a real directory and a symlink to outside."""
    root, outside = world
    (root / "real").mkdir()
    (root / "real" / "f").write_bytes(b"inside")
    (root / "real" / "keep").write_bytes(b"inside keep")
    (root / "inside.txt").write_bytes(b"inside")
    os.symlink("real", root / "d")
    os.symlink(str(outside / "dir"), root / "evil-abs")
    os.symlink("../outside/dir", root / "evil-rel")
    stop = threading.Event()
    flips = 0

    def flipper() -> None:
        nonlocal flips
        tmp = root / "d.tmp"
        targets = ["real", str(outside / "dir"), "../outside/dir"]
        while not stop.is_set():
            for t in targets:
                try:
                    os.symlink(t, tmp)
                    os.replace(tmp, root / "d")  # atomic swap of what 'd' is
                except OSError:
                    pass
                try:
                    os.rename(root / "real", root / "d2")  # a real directory in the same place
                    os.replace(root / "d2", root / "d") if not (root / "d").is_dir() else None
                except OSError:
                    pass
                try:
                    if (root / "d").is_dir() and not (root / "d").is_symlink():
                        os.rename(root / "d", root / "real")
                        os.symlink("real", tmp)
                        os.replace(tmp, root / "d")
                except OSError:
                    pass
                flips += 1

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    try:
        ops: list[Callable[[], object]] = [
            lambda: fs.read("d/f"),
            lambda: fs.read("d/keep"),
            lambda: fs.list("d"),
            lambda: fs.stat("d/f"),
            lambda: fs.write("d/f", b"guest"),
            lambda: fs.open("d/keep", "r+b").close(),
            lambda: fs.chmod("d/keep", 0o600),
            lambda: fs.utime("d/keep", ns=(5, 5)),
            lambda: fs.truncate("d/keep", 0),
            lambda: fs.remove("d/f"),
            lambda: fs.setxattr("d/keep", "user.x", b"1"),
            lambda: fs.rename("d/keep", "d/keep2"),
            lambda: fs.copy("d/keep", "copy"),
            lambda: fs.remove_dir("d/sub"),
            lambda: fs.mkdir("d/sub"),
        ]
        for i in range(1500):
            try:
                result = ops[i % len(ops)]()
            except VolfsError:
                continue
            assert SECRET not in repr(result).encode()
            # Whatever the flipper did, 'real' keeps test files to work on.
            if i % 50 == 0:
                try:
                    (root / "real" / "f").write_bytes(b"inside")
                except OSError:
                    pass
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert flips > 0
