"""Write-only opens bypass the page cache (FOPEN_DIRECT_IO); programs cannot tell, the kernel's ext4 is the reference.

The direct path saves the kernel's GETXATTR of security.capability before
every write(2), but moves two duties to the daemon: dropping privileges on
write (capabilities always, set-id bits for writers without CAP_FSETID), and
nothing else; cache coherence with other opens stays the kernel's. The same
script runs on a kernel loop mount and on volfs mounts of both volume kinds,
partly as an unprivileged user, and every observation must agree; after
unmount the disk volume is e2fsck clean and the kernel reads the same files.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean, loop_mount, need, need_root, need_tool

from volfs.ext4.mkfs import mkfs
from volfs.mounts import MountOptions
from volfs.sync import Volume

USER = 65534  # nobody: an unprivileged writer
CAP = "security.capability"
CAP_VALUE = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, as setcap writes it


def as_user(shell: str, *args: str) -> None:
    """Run ``sh -c shell`` (``args`` as "$@") as the unprivileged user; fail with its stderr."""
    setpriv = need_tool("setpriv")
    proc = subprocess.run([setpriv, f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "sh", "-c", shell, "sh",
                           *args], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def cached_mode(path: Path) -> str:
    """The mode as ``stat -c %a`` sees it: statx asks for STATX_MODE only, which the kernel may answer
    from its attribute cache (os.stat asks for all basic fields, and a write has invalidated the times)."""
    out = subprocess.run([need_tool("stat"), "-c", "%a", str(path)], capture_output=True, text=True, check=True)
    return oct(int(out.stdout, 8))


def _write(path: Path, data: bytes, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def script(r: Path) -> Iterator[tuple[str, object]]:
    """Labelled observations of ``r`` (a world-writable directory on the filesystem under test)."""
    p = r / "shared.bin"
    p.write_bytes(b"A" * 8192)
    reader = os.open(p, os.O_RDONLY)
    view = mmap.mmap(reader, 8192, mmap.MAP_SHARED, mmap.PROT_READ)
    yield "cached before", (os.pread(reader, 4, 0), view[:4])
    writer = os.open(p, os.O_WRONLY)
    os.pwrite(writer, b"BBBB", 0)
    yield "reader and mapping see a write-only writer", (os.pread(reader, 4, 0), view[:4])
    os.close(writer)
    _write(p, b"CCCC", os.O_WRONLY | os.O_APPEND)
    yield "append lands at the end", (os.fstat(reader).st_size, os.pread(reader, 4, 8192))
    _write(p, b"DD", os.O_WRONLY | os.O_TRUNC)
    yield "O_TRUNC then write", (os.fstat(reader).st_size, os.pread(reader, 16, 0))
    view.close()
    os.close(reader)

    # A dirty shared mapping, then a direct write over the same page: the later write wins.
    q = r / "dirty.bin"
    q.write_bytes(b"A" * 8192)
    rw = os.open(q, os.O_RDWR)
    view = mmap.mmap(rw, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    view[0:4] = b"XXXX"
    view[4096:4100] = b"YYYY"
    _write(q, b"BBBB", os.O_WRONLY)
    yield "mapping after the write", (view[:4], view[4096:4100])
    view.flush()
    view.close()
    os.close(rw)
    yield "file after msync", (q.read_bytes()[:4], q.read_bytes()[4096:4100])

    # Privileges dropped by writes: capabilities by anyone's, set-id bits by an unprivileged writer's.
    for name, flags in (("caps-wronly", os.O_WRONLY | os.O_APPEND), ("caps-rdwr", os.O_RDWR | os.O_APPEND)):
        f = r / name
        f.write_bytes(b"x")
        os.setxattr(f, CAP, CAP_VALUE)
        _write(f, b"y", flags)
        yield f"{name}: root's write drops capabilities", CAP in os.listxattr(f)
    # Made new (O_EXCL): the daemon knows there is no capability to drop, until one is set.
    f = r / "caps-excl"
    with open(f, "xb") as out:
        out.write(b"x")
    os.setxattr(f, CAP, CAP_VALUE)
    _write(f, b"y", os.O_WRONLY | os.O_APPEND)
    yield "caps-excl: set after the create, dropped by the next write", CAP in os.listxattr(f)
    modes = {"suid": 0o4777, "sgid-gx": 0o2777, "sgid-no-gx": 0o2767, "both": 0o6777}
    for name, mode in modes.items():
        for how in ("wronly", "rdwr"):
            f = r / f"{name}-{how}"
            f.write_bytes(b"x")
            os.chmod(f, mode)
    # ">>" opens write-only (O_APPEND), "1<>" read-write.
    code = 'for p in "$@"; do case "$p" in *wronly) printf u >>"$p";; *) printf u 1<>"$p";; esac; done'
    as_user(code, *(str(r / f"{n}-{h}") for n in modes for h in ("wronly", "rdwr")))
    for name in modes:
        for how in ("wronly", "rdwr"):
            f = r / f"{name}-{how}"
            yield f"{name}-{how}: unprivileged write", (cached_mode(f), f.read_bytes())
    f = r / "root-suid"
    f.write_bytes(b"x")
    os.chmod(f, 0o6777)
    _write(f, b"r", os.O_WRONLY | os.O_APPEND)
    yield "root's write keeps set-id bits", cached_mode(f)


def files(r: Path) -> dict[str, tuple[int, bytes, bool]]:
    return {p.name: (os.stat(p).st_mode & 0o7777, p.read_bytes(), CAP in os.listxattr(p))
            for p in sorted(r.iterdir()) if p.is_file()}  # fmt: skip


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory the unprivileged user can pass through (pytest's tmp dirs are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="volfs-wronly-"))
    os.chmod(top, 0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _run(root: Path) -> tuple[list[tuple[str, object]], dict[str, tuple[int, bytes, bool]]]:
    work = root / "w"
    work.mkdir()
    os.chmod(work, 0o777)
    return list(script(work)), files(work)


# Where the FUSE kernel module itself differs from ext4, on the cached (read-write) path that volfs
# cannot influence: fuse_setattr still kills set-group-ID only when the group may execute, while ext4
# (setattr_should_drop_sgid) also kills it for a writer outside the file's group.
FUSE_MODULE_RULE = {"sgid-no-gx-rdwr: unprivileged write": ("0o2767", b"u")}


def test_write_only_opens_behave_like_kernel_ext4(home: Path, mounter: Mounter, reachable: Path) -> None:
    need_root("a kernel loop mount is the reference, and an unprivileged user writes")
    ref_image = reachable / "ref.img"
    mkfs(ref_image, 32 << 20)
    with loop_mount(ref_image, "rw") as ref:
        os.chmod(ref, 0o755)
        expected, expected_files = _run(ref)
    assert {label for label, _ in expected} >= set(FUSE_MODULE_RULE)
    expected = [(label, FUSE_MODULE_RULE.get(label, seen)) for label, seen in expected]
    expected_files["sgid-no-gx-rdwr"] = (0o2767, *expected_files["sgid-no-gx-rdwr"][1:])

    disk = Volume.create("wdisk", home=home, kind="disk", size_mib=32)
    Volume.create("wdir", home=home)
    for name in ("wdisk", "wdir"):
        mp = reachable / f"mnt-{name}"
        mp.mkdir()
        rec = mounter(name, MountOptions(allow_other=True), mp)
        os.chmod(rec.mountpoint, 0o755)
        got, got_files = _run(Path(rec.mountpoint))
        mismatches = [(e[0], e[1], g[1]) for e, g in zip(expected, got, strict=True) if e != g]
        assert not mismatches, name + ":\n" + "\n".join(f"{lbl}: kernel {k!r} volfs {v!r}" for lbl, k, v in mismatches)
        assert got_files == expected_files, name

    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "wdisk")
    e2fsck_clean(disk.disk_path)
    with loop_mount(disk.disk_path) as seen:
        assert files(seen / "w") == expected_files


def _ops_and_backend(tmp_path: Path) -> tuple[object, object, Callable[[], None]]:
    try:
        import trio  # noqa: F401

        from volfs_fuse.idmap import IdMap
        from volfs_fuse.operations import VolfsOperations
    except ImportError:
        need(False, "pyfuse3 is not installed")
    from volfs.backends.ext4 import Ext4Backend

    image = tmp_path / "img.raw"
    mkfs(image, 16 << 20)
    backend = Ext4Backend(image, readonly=False)
    return VolfsOperations(backend, IdMap((0, 0)), exclusive=True), backend, backend.close


def test_only_write_only_handles_are_direct(tmp_path: Path) -> None:
    """The kernel is told to bypass the cache exactly for write-only opens (readers keep the page cache)."""
    import trio

    ops, backend, close = _ops_and_backend(tmp_path)
    ctx = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)  # what handlers read from a RequestContext
    try:
        seen = {}
        for i, flags in enumerate((os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND)):
            info, attr = trio.run(ops.create, 1, f"f{i}".encode(), 0o644, flags | os.O_CREAT, ctx)  # type: ignore[attr-defined]
            seen[f"create {flags:o}"] = info.direct_io
            trio.run(ops.release, info.fh)  # type: ignore[attr-defined]
            for oflags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
                info = trio.run(ops.open, attr.st_ino, oflags, ctx)  # type: ignore[attr-defined]
                seen[f"open {i} {oflags:o}"] = info.direct_io
                trio.run(ops.release, info.fh)  # type: ignore[attr-defined]
        assert {k for k, v in seen.items() if v} == {
            f"create {os.O_WRONLY:o}", f"create {os.O_WRONLY | os.O_APPEND:o}",
            *(f"open {i} {os.O_WRONLY:o}" for i in range(3)),
        }  # fmt: skip
        assert not ops._direct  # type: ignore[attr-defined]  # released handles are forgotten
    finally:
        close()


def test_unknown_xattr_errors_still_fail_the_write(tmp_path: Path) -> None:
    """Only "no capability xattr" lets a direct write go on; any other answer is the write's error."""
    import pyfuse3
    import trio

    ops, backend, close = _ops_and_backend(tmp_path)
    ctx = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)
    try:
        info, _ = trio.run(ops.create, 1, b"f", 0o644, os.O_WRONLY | os.O_CREAT, ctx)  # type: ignore[attr-defined]

        def broken(*_: object) -> bytes:
            raise OSError(errno.EUCLEAN, "corrupt xattr block")

        backend.getxattr = broken  # type: ignore[attr-defined]
        with pytest.raises(pyfuse3.FUSEError) as err:
            trio.run(ops.write, info.fh, 0, b"data")  # type: ignore[attr-defined]
        assert err.value.errno == errno.EUCLEAN
    finally:
        close()


class _CountingXattrs:
    """The backend, with its getxattr calls counted."""

    def __init__(self, backend: object) -> None:
        self._b = backend
        self.getxattrs = 0

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getxattrs += 1
        return self._b.getxattr(ino, name)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._b, name)


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_file_made_new_is_written_without_asking_for_capabilities(tmp_path: Path, exclusive: bool) -> None:
    """A write-only handle of a file this mount made with O_EXCL skips the capability lookup before its first
    write, on a mount that is the storage's only writer; any capability set later is still dropped, and a
    CREATE without O_EXCL (which may open an existing file) and a shared storage skip nothing."""
    import pyfuse3
    import trio

    from volfs_fuse.idmap import IdMap
    from volfs_fuse.operations import VolfsOperations

    _ops, engine, close = _ops_and_backend(tmp_path)
    counting = _CountingXattrs(engine)
    ops = VolfsOperations(counting, IdMap((0, 0)), exclusive=exclusive)  # type: ignore[arg-type]
    ctx = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)
    cap = CAP.encode()
    try:
        def create_and_write(name: bytes, flags: int) -> tuple[int, int]:
            """getxattr calls made by a CREATE with ``flags`` and a write through its handle; the inode."""
            before = counting.getxattrs
            info, attr = trio.run(ops.create, 1, name, 0o644, os.O_WRONLY | os.O_CREAT | flags, ctx)  # type: ignore[attr-defined]
            trio.run(ops.write, info.fh, 0, b"data")  # type: ignore[attr-defined]
            trio.run(ops.release, info.fh)  # type: ignore[attr-defined]
            return counting.getxattrs - before, attr.st_ino

        asked, new = create_and_write(b"new", os.O_EXCL)
        assert asked == (0 if exclusive else 1)
        # The kernel's own question before a chown is answered the same way.
        before = counting.getxattrs
        with pytest.raises(pyfuse3.FUSEError) as err:
            trio.run(ops.getxattr, new, cap, ctx)  # type: ignore[attr-defined]
        assert err.value.errno == errno.ENODATA
        assert counting.getxattrs - before == (0 if exclusive else 1)
        assert create_and_write(b"maybe-old", 0)[0] == 1

        # A capability set through the mount is dropped by the next write, as the kernel's ext4 does.
        trio.run(ops.setxattr, new, cap, CAP_VALUE, ctx)  # type: ignore[attr-defined]
        assert trio.run(ops.getxattr, new, cap, ctx) == CAP_VALUE  # type: ignore[attr-defined]
        info = trio.run(ops.open, new, os.O_WRONLY, ctx)  # type: ignore[attr-defined]
        trio.run(ops.write, info.fh, 4, b"more")  # type: ignore[attr-defined]
        trio.run(ops.release, info.fh)  # type: ignore[attr-defined]
        assert cap not in engine.listxattr(new)  # type: ignore[attr-defined]

        # A file that had a capability before this mount, opened by a CREATE without O_EXCL, loses it.
        info, attr = trio.run(_ops.create, 1, b"old", 0o644, os.O_WRONLY | os.O_CREAT, ctx)  # type: ignore[attr-defined]
        trio.run(_ops.release, info.fh)  # type: ignore[attr-defined]
        engine.setxattr(attr.st_ino, cap, CAP_VALUE)  # type: ignore[attr-defined]
        assert create_and_write(b"old", 0) == (1, attr.st_ino)
        assert cap not in engine.listxattr(attr.st_ino)  # type: ignore[attr-defined]
    finally:
        close()
