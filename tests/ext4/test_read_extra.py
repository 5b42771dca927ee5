"""Read-side cases checked against the kernel, e2fsck and debugfs: orphans left by a
live kernel mount, EA inodes, deep extent trees, debugfs's own view, 64 KiB
blocks (which this kernel cannot mount), and a device that fails under us.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ext4_images as images
import pytest
from ext4_walk import diff_trees, engine_tree, kernel_tree
from testsupport import need_root, need_tool

from volfs.errors import VolfsError, error
from volfs.ext4 import Filesystem, MemoryDevice
from volfs.ext4.device import BlockDevice


def sh(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, env=images.env()).stdout


@contextmanager
def rw_mount(image: Path) -> Iterator[Path]:
    need_root("loop-mounting an image read-write")
    with images.loop_mount(image, "rw") as mnt:
        yield mnt


@pytest.mark.parametrize("variant", ["default", "orphanfile"])
def test_orphan_of_a_live_mount_is_not_a_live_file(tmp_path: Path, variant: str) -> None:
    """A file unlinked while open is an orphan on disk; we list it as one and never show it."""
    fstype, size, opts = images.VARIANTS[variant]
    image = images.mkfs(tmp_path / "o.img", None, size, *opts, fstype=fstype)
    copy = tmp_path / "copy.img"
    with rw_mount(image) as mnt:
        (mnt / "keep.txt").write_text("kept\n")
        victim = mnt / "victim.bin"
        victim.write_bytes(os.urandom(1 << 20))
        with open(victim, "rb") as held:
            os.unlink(victim)
            # Freezing writes every change in place and empties the journal: the
            # copy is consistent and records the orphan, as after a host crash.
            subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
            try:
                shutil.copyfile(image, copy)
            finally:
                subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
            held.read(1)
    fs = Filesystem.open(copy)
    try:
        orphans = fs.orphans()
        assert len(orphans) == 1, orphans
        names = {e.name for e in fs.readdir(2)}
        assert b"victim.bin" not in names and b"keep.txt" in names
        assert fs.read(fs.lookup_ino(2, b"keep.txt"), 0, 100) == b"kept\n"
        orphan_ino = orphans[0]
        assert fs.inode(orphan_ino).links_count == 0
    finally:
        fs.close()
    fixed = subprocess.run([images.tool("e2fsck"), "-fy", str(copy)], capture_output=True, text=True)
    assert fixed.returncode in (0, 1), fixed.stdout
    assert re.search(r"orphan", fixed.stdout, re.I) or re.search(r"Clearing", fixed.stdout), fixed.stdout


def test_ea_inode_values(tmp_path: Path) -> None:
    """Values too large for a block live in their own inodes (ea_inode); kernel-written."""
    image = images.mkfs(tmp_path / "ea.img", None, "64M", "-O", "ea_inode")
    big = bytes(range(256)) * 40  # 10 KiB: more than a 4 KiB block holds
    with rw_mount(image) as mnt:
        f = mnt / "f"
        f.write_text("x")
        os.setxattr(f, "user.big", big)
        os.setxattr(f, "user.small", b"s")
    fs = Filesystem.open(image)
    try:
        ino = fs.lookup_ino(2, b"f")
        assert fs.getxattr(ino, b"user.big") == big
        assert fs.getxattr(ino, b"user.small") == b"s"
        assert sorted(fs.listxattr(ino)) == [b"user.big", b"user.small"]
    finally:
        fs.close()
    with images.loop_mount(image) as mnt:
        assert diff_trees(engine_tree(Filesystem.open(image)), kernel_tree(mnt)) == []


def test_deep_extent_tree(tmp_path: Path) -> None:
    """Every other 1 KiB block written: thousands of extents, an extent tree of depth 2."""
    tree = tmp_path / "tree"
    tree.mkdir()
    images.build_frag_file(tree / "frag", 3000, 1024)
    image = images.mkfs(tmp_path / "deep.img", tree, "64M", "-b", "1024")
    levels = sh(images.tool("debugfs"), "-R", "ex /frag", str(image))
    depths = {int(m) for m in re.findall(r"^\s*(\d+)/\s*\d+", levels, re.M)}
    assert max(depths) >= 2, levels[:400]
    fs = Filesystem.open(image)
    try:
        ino = fs.lookup_ino(2, b"frag")
        data = fs.read(ino, 0, 6000 * 1024)
        assert len(data) == (2 * 2999 + 1) * 1024  # the file ends with its last data block
        for i in (0, 1, 1499, 2999):
            assert data[2 * i * 1024 : 2 * i * 1024 + 8] == b"%08d" % i
        for i in (0, 1, 1499, 2998):
            assert data[(2 * i + 1) * 1024 : (2 * i + 2) * 1024] == bytes(1024)  # the holes
    finally:
        fs.close()
    with images.loop_mount(image) as mnt:
        assert diff_trees(engine_tree(Filesystem.open(image)), kernel_tree(mnt)) == []


_STAT_RE = {
    "mode": re.compile(r"Mode:\s+(\d+)"),
    "uid": re.compile(r"User:\s+(\d+)"),
    "gid": re.compile(r"Group:\s+(\d+)"),
    "size": re.compile(r"Size:\s+(\d+)"),
    "links": re.compile(r"Links:\s+(\d+)"),
    "generation": re.compile(r"Generation:\s+(\d+)"),
}


def test_agrees_with_debugfs_stat_and_ls(image_factory: Callable[[str], Path]) -> None:
    image = image_factory("default")
    fs = Filesystem.open(image)
    try:
        listing = sh(images.tool("debugfs"), "-R", "ls -p /dir/sub/deeper", str(image))
        # ls -p: /ino/mode/uid/gid/name/size/
        theirs = {f[5] for f in (line.split("/") for line in listing.splitlines() if line.startswith("/"))}
        deeper = fs.lookup_ino(fs.lookup_ino(fs.lookup_ino(2, b"dir"), b"sub"), b"deeper")
        ours = {e.name.decode() for e in fs.readdir(deeper)}
        assert ours == theirs
        for name in ("small.txt", "mode-4755", "big.bin", "xattrs.txt", "dir", "fast-link", "chardev"):
            out = sh(images.tool("debugfs"), "-R", f"stat /{name}", str(image))
            want = {k: int(r.search(out).group(1)) for k, r in _STAT_RE.items()}  # type: ignore[union-attr]
            a = fs.getattr(fs.lookup_ino(2, name.encode()))
            got = {"mode": int(oct(stat.S_IMODE(a.mode))[2:]), "uid": a.uid, "gid": a.gid, "size": a.size,
                   "links": a.nlink, "generation": a.generation}  # fmt: skip
            assert got == want, (name, out)
    finally:
        fs.close()


def test_64k_blocks_against_debugfs_rdump(image_factory: Callable[[str], Path], tmp_path: Path) -> None:
    """The kernel here cannot mount 64 KiB blocks; debugfs's rdump is the oracle."""
    image = image_factory("b65536")
    out = tmp_path / "dump"
    out.mkdir()
    sh(images.tool("debugfs"), "-R", f"rdump / {out}", str(image))
    fs = Filesystem.open(image)
    try:
        checked = 0
        for dirpath, _dirs, files in os.walk(out):
            for name in files:
                host = Path(dirpath) / name
                rel = host.relative_to(out)
                ino = 2
                for part in rel.parts:
                    ino = fs.lookup_ino(ino, os.fsencode(part))
                a = fs.getattr(ino)
                st = os.lstat(host)
                if stat.S_ISLNK(st.st_mode):
                    assert fs.readlink(ino) == os.fsencode(os.readlink(host))
                elif stat.S_ISREG(st.st_mode) and st.st_size <= 64 << 20:
                    assert a.size == st.st_size
                    assert fs.read(ino, 0, a.size) == host.read_bytes(), rel
                    checked += 1
        assert checked > 600  # the rich tree's files, including 600 in many/
    finally:
        fs.close()


class FailingDevice:
    """A device that fails the N-th read with EIO, or returns short reads after it."""

    def __init__(self, data: bytes, fail_at: int, short: bool) -> None:
        self._inner = MemoryDevice(data)
        self._reads = 0
        self._fail_at = fail_at
        self._short = short

    @property
    def size(self) -> int:
        return self._inner.size

    def pread(self, size: int, offset: int) -> bytes:
        self._reads += 1
        if self._reads >= self._fail_at:
            if self._short:
                return self._inner.pread(size, offset)[: size // 2]
            raise error(errno.EIO, "injected I/O error")  # what FileDevice raises on a failed pread
        return self._inner.pread(size, offset)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("short", [False, True])
def test_failing_device_gives_clean_errors(image_factory: Callable[[str], Path], short: bool) -> None:
    data = image_factory("default").read_bytes()
    outcomes = set()
    for fail_at in range(1, 60, 3):
        dev: BlockDevice = FailingDevice(data, fail_at, short)
        try:
            fs = Filesystem.open_device(dev)
            for e in fs.readdir(2):
                if e.name not in (b".", b".."):
                    a = fs.getattr(e.ino)
                    if stat.S_ISREG(a.mode):
                        fs.read(e.ino, 0, min(a.size, 1 << 20))
            outcomes.add("ok")
        except VolfsError as exc:  # nothing else may escape: no struct.error, IndexError, ...
            assert exc.errno in (errno.EIO, errno.EUCLEAN), exc
            outcomes.add("error")
    assert "error" in outcomes


def test_unwritten_extents_read_as_zeros(tmp_path: Path) -> None:
    """Preallocated (unwritten) ranges read as zeros, as the kernel shows them."""
    image = images.mkfs(tmp_path / "unwritten.img", None, "64M")
    with rw_mount(image) as mnt:
        fd = os.open(mnt / "prealloc", os.O_CREAT | os.O_RDWR, 0o644)
        os.posix_fallocate(fd, 0, 1 << 20)
        os.pwrite(fd, b"W" * 4096, 256 << 10)
        os.fsync(fd)
        os.close(fd)
    extents = sh(images.tool("debugfs"), "-R", "ex /prealloc", str(image))
    assert "Uninit" in extents, extents  # the fixture really has unwritten extents
    with Filesystem.open(image) as fs:
        data = fs.read(fs.lookup_ino(2, b"prealloc"), 0, 2 << 20)
    assert len(data) == 1 << 20
    assert data[: 256 << 10] == bytes(256 << 10) and data[(256 << 10) + 4096 :] == bytes((1 << 20) - (260 << 10))
    assert data[256 << 10 : (256 << 10) + 4096] == b"W" * 4096
    with images.loop_mount(image) as mnt:
        assert (mnt / "prealloc").read_bytes() == data


def test_crtime_matches_debugfs(image_factory: Callable[[str], Path]) -> None:
    """Birth times (i_crtime + i_crtime_extra) as debugfs decodes them."""
    image = image_factory("default")
    with Filesystem.open(image) as fs:
        for name in ("small.txt", "dir", "big.bin", "times"):
            out = sh(images.tool("debugfs"), "-R", f"stat /{name}", str(image))
            m = re.search(r"crtime: 0x([0-9a-f]+):([0-9a-f]+)", out)
            assert m is not None, out
            seconds, extra = int(m.group(1), 16), int(m.group(2), 16)
            signed = seconds - (1 << 32) if seconds & (1 << 31) else seconds
            want = (signed + ((extra & 3) << 32)) * 10**9 + (extra >> 2)
            assert fs.getattr(fs.lookup_ino(2, name.encode())).crtime_ns == want, name


def test_inline_symlink(tmp_path: Path) -> None:
    """A symlink longer than i_block's 60 bytes stored as inline data (inline_data images)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    target = "dir/sub/" + "long-name-component-" * 3 + "target"
    os.symlink(target, tree / "inline-link")
    image = images.mkfs(tmp_path / "inline.img", tree, "64M", "-O", "inline_data")
    out = sh(images.tool("debugfs"), "-R", "stat /inline-link", str(image))
    flags = int(re.search(r"Flags: 0x([0-9a-f]+)", out).group(1), 16)  # type: ignore[union-attr]
    assert flags & 0x10000000, out  # EXT4_INLINE_DATA_FL: the fixture is what we claim
    with Filesystem.open(image) as fs:
        assert fs.readlink(fs.lookup_ino(2, b"inline-link")) == target.encode()
    with images.loop_mount(image) as mnt:
        assert os.readlink(mnt / "inline-link") == target
