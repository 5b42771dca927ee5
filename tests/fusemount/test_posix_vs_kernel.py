"""POSIX behaviour of a volfs mount, with the kernel's own ext4 as the reference.

The same script of system calls runs on a kernel loop mount of a fresh image
and on a volfs FUSE mount of a fresh disk volume; every call's outcome (its
result or its errno) and the resulting attributes must agree. Inode numbers
and timestamps are left out (they legitimately differ); everything else a
program can observe is compared.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean, need_root

from volfs.ext4.mkfs import mkfs
from volfs.sync import Volume

Outcome = tuple[str, object]


def attempt(fn: Callable[[], object]) -> Outcome:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("errno", errno.errorcode.get(exc.errno or 0, exc.errno))


def facts(p: Path) -> object:
    st = os.lstat(p)
    kind = stat.S_IFMT(st.st_mode)
    size = st.st_size if not stat.S_ISDIR(st.st_mode) else None  # directory sizes depend on block layout
    return (kind, stat.S_IMODE(st.st_mode), st.st_nlink, st.st_uid, st.st_gid, size)


def script(root: Path) -> Iterator[tuple[str, Outcome]]:
    """The calls, each labelled; paths are relative to ``root``."""
    r = root

    def step(label: str, fn: Callable[[], object]) -> tuple[str, Outcome]:
        return label, attempt(fn)

    def write(name: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
        fd = os.open(r / name, flags, 0o644)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    yield step("mkdir d", lambda: os.mkdir(r / "d", 0o755))
    yield step("mkdir d again", lambda: os.mkdir(r / "d"))
    yield step("mkdir nested missing parent", lambda: os.mkdir(r / "nope" / "x"))
    yield step("mkdir sub", lambda: [os.mkdir(r / "d" / f"s{i}") for i in range(3)])
    yield step("nlink of d", lambda: os.stat(r / "d").st_nlink)
    yield step("write f", lambda: write("d/f", b"hello"))
    yield step("open O_EXCL existing", lambda: write("d/f", b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    yield step("O_DIRECTORY on file", lambda: os.close(os.open(r / "d" / "f", os.O_RDONLY | os.O_DIRECTORY)))
    yield step("path through a file", lambda: os.stat(r / "d" / "f" / "x"))
    yield step("unlink a directory", lambda: os.unlink(r / "d" / "s0"))
    yield step("rmdir a file", lambda: os.rmdir(r / "d" / "f"))
    yield step("rmdir non-empty", lambda: os.rmdir(r / "d"))
    yield step("rename dir into itself", lambda: os.rename(r / "d", r / "d" / "s1" / "inside"))
    yield step("rename dir onto a file inside itself", lambda: os.rename(r / "d", r / "d" / "f"))
    yield step("rename dir onto its own ancestor", lambda: os.rename(r / "d" / "s1", r / "d"))
    yield step("rename file over dir", lambda: os.rename(r / "d" / "f", r / "d" / "s1"))
    yield step("rename dir over file", lambda: os.rename(r / "d" / "s1", r / "d" / "f"))
    yield step("rename dir over non-empty dir", lambda: (os.mkdir(r / "d" / "s2" / "c"), os.rename(r / "d" / "s1", r / "d" / "s2")))
    yield step("rename dir over empty dir", lambda: os.rename(r / "d" / "s2", r / "d" / "s0"))
    yield step("nlink after renames", lambda: (os.stat(r / "d").st_nlink, os.stat(r / "d" / "s0").st_nlink))
    yield step("hard link a directory", lambda: os.link(r / "d" / "s0", r / "d" / "dl"))
    yield step("hard link a file", lambda: (os.link(r / "d" / "f", r / "d" / "g"), os.stat(r / "d" / "f").st_nlink))
    yield step("link onto existing", lambda: os.link(r / "d" / "f", r / "d" / "g"))
    yield step("symlink loop", lambda: (os.symlink("loop2", r / "loop1"), os.symlink("loop1", r / "loop2")))
    yield step("open through loop", lambda: os.open(r / "loop1", os.O_RDONLY))
    yield step("readlink a file", lambda: os.readlink(r / "d" / "f"))
    yield step("symlink over existing", lambda: os.symlink("x", r / "d" / "f"))
    yield step("name of 255 bytes", lambda: write("n" * 255, b"ok"))
    yield step("name of 256 bytes", lambda: write("n" * 256, b"no"))
    yield step("truncate a directory", lambda: os.truncate(r / "d", 0))
    yield step("truncate grow", lambda: (os.truncate(r / "d" / "f", 10000), os.stat(r / "d" / "f").st_size))
    yield step("read the hole", lambda: (r / "d" / "f").read_bytes()[5:10000] == bytes(9995))
    yield step("truncate shrink", lambda: (os.truncate(r / "d" / "f", 2), (r / "d" / "f").read_bytes()))
    yield step("append", lambda: (write("d/f", b"++", os.O_WRONLY | os.O_APPEND), (r / "d" / "f").read_bytes()))
    yield step("pwrite past end", lambda: (write("d/p", b""), _pwrite(r / "d" / "p", b"z", 70000), os.stat(r / "d" / "p").st_size))
    yield step("chmod", lambda: (os.chmod(r / "d" / "f", 0o4711), stat.S_IMODE(os.stat(r / "d" / "f").st_mode)))
    yield step("chown", lambda: (os.chown(r / "d" / "f", 123, 456), os.stat(r / "d" / "f").st_uid))
    yield step("mknod fifo", lambda: os.mkfifo(r / "d" / "fifo", 0o600))
    yield step("mknod char device", lambda: os.mknod(r / "d" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    yield step("device number", lambda: os.stat(r / "d" / "null").st_rdev == os.makedev(1, 3))
    yield step("getxattr missing", lambda: os.getxattr(r / "d" / "f", "user.nope"))
    yield step("setxattr", lambda: os.setxattr(r / "d" / "f", "user.a", b"1"))
    yield step("setxattr CREATE existing", lambda: os.setxattr(r / "d" / "f", "user.a", b"2", os.XATTR_CREATE))
    yield step("setxattr REPLACE missing", lambda: os.setxattr(r / "d" / "f", "user.b", b"2", os.XATTR_REPLACE))
    yield step("listxattr", lambda: sorted(os.listxattr(r / "d" / "f")))
    yield step("removexattr missing", lambda: os.removexattr(r / "d" / "f", "user.zzz"))
    yield step("rmdir the mount root", lambda: os.rmdir(r))
    yield step("the whole tree", lambda: final_tree(r))
    yield step("rmdir s0, not empty", lambda: os.rmdir(r / "d" / "s0"))
    # Names in sorted order: readdir order legitimately differs between filesystems.
    yield step("unlink then rmdir", lambda: ([os.unlink(r / "d" / n) for n in ("f", "g", "p", "fifo", "null")],
                                             os.rmdir(r / "d" / "s0" / "c"),
                                             [os.rmdir(r / "d" / n) for n in sorted(os.listdir(r / "d"))],
                                             os.rmdir(r / "d")))  # fmt: skip


def _pwrite(p: Path, data: bytes, offset: int) -> int:
    fd = os.open(p, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def final_tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if n == "lost+found":
                continue
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = facts(p)
    return out


def test_volfs_mount_behaves_like_kernel_ext4(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    need_root("a kernel loop mount is the reference")
    ref_image = tmp_path / "ref.img"
    mkfs(ref_image, 64 << 20)
    ref = tmp_path / "ref"
    ref.mkdir()
    subprocess.run(["mount", "-o", "loop", str(ref_image), str(ref)], check=True)
    try:
        expected = list(script(ref))
        expected_tree = final_tree(ref)
    finally:
        subprocess.run(["umount", str(ref)], check=True)
    vol = Volume.create("posix", home=home, kind="disk", size_mib=64)
    mp = Path(mounter("posix").mountpoint)
    got = list(script(mp))
    got_tree = final_tree(mp)
    mismatches = [(e[0], e[1], g[1]) for e, g in zip(expected, got) if e != g]
    assert not mismatches, "\n".join(f"{label}: kernel {k} volfs {v}" for label, k, v in mismatches)
    assert got_tree == expected_tree
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "posix")
    e2fsck_clean(vol.disk_path)
