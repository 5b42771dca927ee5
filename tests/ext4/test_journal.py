"""Journal recovery: the in-memory replay against the kernel and e2fsck -fy on copies.

Dirty images come from the kernel itself: loop-mount read-write, write and
fsync files and their directories, copy the image while it is still mounted.
The copy has needs_recovery, committed transactions in the journal and stale
metadata in place.  The expected view is e2fsck -fy's replay of another copy,
read back by the kernel (ro,noload).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from testsupport import need_root
from volfs.ext4 import Filesystem

import ext4_images as images
from ext4_walk import Node, diff_trees, engine_tree, kernel_tree

JBD2_MAGIC = bytes.fromhex("c03b3998")


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(p: Path, data: bytes) -> None:
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(p.parent)


def make_dirty(src: Path, dst: Path, options: str, actions: Callable[[Path], None]) -> Path:
    work = dst.with_suffix(".live")
    shutil.copyfile(src, work)
    with images.loop_mount(work, options) as mnt:
        actions(mnt)
        images.copy_while_mounted(work, dst)  # needs_recovery, journal not checkpointed
    return dst


def kernel_replayed_tree(dirty: Path) -> dict[bytes, Node]:
    """The tree after the kernel's own recovery (a read-write mount of a copy)."""
    copy = dirty.with_suffix(".kernel")
    shutil.copyfile(dirty, copy)
    with images.loop_mount(copy, "rw,noatime") as mnt:
        return kernel_tree(mnt)


def e2fsck_replayed_tree(dirty: Path) -> dict[bytes, Node]:
    """The tree after e2fsck -fy (its pass 3A may re-index directories: sizes of dirs are not compared)."""
    fixed = dirty.with_suffix(".fsck")
    shutil.copyfile(dirty, fixed)
    proc = images.run(images.tool("e2fsck"), "-fy", str(fixed), check=False)
    assert proc.returncode in (0, 1), proc.stdout.decode() + proc.stderr.decode()
    with images.loop_mount(fixed) as mnt:
        return kernel_tree(mnt)


def _no_dir_sizes(tree: dict[bytes, Node]) -> dict[bytes, Node]:
    return {p: (dataclasses.replace(n, size=0, blocks=0) if stat.S_ISDIR(n.mode) else n) for p, n in tree.items()}


def check_replay(dirty: Path, *, expect_escapes: bool = False, must_not_see: bytes | None = None) -> None:
    sha = hashlib.sha256(dirty.read_bytes()).hexdigest()
    with Filesystem.open(dirty) as fs:
        assert fs.recovered and fs.replay is not None
        assert fs.replay.transactions > 0 and fs.replay.overlay
        if expect_escapes:
            assert fs.replay.escaped > 0
        ours = engine_tree(fs)
    assert hashlib.sha256(dirty.read_bytes()).hexdigest() == sha, "read-only replay wrote the image"
    problems = diff_trees(ours, kernel_replayed_tree(dirty))
    assert not problems, "kernel replay:\n" + "\n".join(problems[:40])
    problems = diff_trees(_no_dir_sizes(ours), _no_dir_sizes(e2fsck_replayed_tree(dirty)))
    assert not problems, "e2fsck -fy replay:\n" + "\n".join(problems[:40])
    if must_not_see is not None:
        # Without replay the new file is invisible: the replay is what we verified.
        proc = images.run(images.tool("debugfs"), "-R", f"stat {must_not_see.decode()}", str(dirty), check=False)
        assert b"not found" in proc.stderr or b"File not found" in proc.stdout + proc.stderr


def _scenario_basic(mnt: Path) -> None:
    new = mnt / "new-dir"
    new.mkdir()
    _fsync_path(mnt)
    for i in range(40):
        _write(new / f"file-{i}", os.urandom(100 + 977 * i))
    with open(mnt / "small.txt", "r+b") as f:
        f.write(b"HELLO")
        os.fsync(f.fileno())
    os.unlink(mnt / "many" / "entry-00001-z")
    _fsync_path(mnt / "many")
    os.setxattr(mnt / "new-dir" / "file-3", "user.added", b"after mount")
    _fsync_path(mnt / "new-dir" / "file-3")
    os.symlink("file-1", new / "link")
    _fsync_path(new)
    _write(mnt / "big-new.bin", os.urandom(2 * 1024 * 1024 + 5))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["default", "b1024", "nocsum", "ext3", "csumseed"])
def test_replay_matches_e2fsck(variant: str, image_factory: Callable[[str], Path], tmp_path: Path) -> None:
    need_root("loop mounts")
    dirty = make_dirty(image_factory(variant), tmp_path / "dirty.img", "rw", _scenario_basic)
    check_replay(dirty, must_not_see=b"/new-dir/file-7")


def _scenario_data_journal(mnt: Path) -> None:
    d = mnt / "journaled"
    d.mkdir()
    _fsync_path(mnt)
    for i in range(30):
        # Blocks starting with the jbd2 magic must be escaped in the log.
        block = JBD2_MAGIC + os.urandom(4092)
        _write(d / f"magic-{i}", block * 3 + b"tail")
    for i in range(0, 30, 3):
        os.unlink(d / f"magic-{i}")
    _fsync_path(d)
    _write(d / "after-delete", JBD2_MAGIC * 2048)


@pytest.mark.root
@pytest.mark.slow
def test_replay_data_journal_escapes(image_factory: Callable[[str], Path], tmp_path: Path) -> None:
    need_root("loop mounts")
    dirty = make_dirty(image_factory("default"), tmp_path / "dirty.img", "rw,data=journal", _scenario_data_journal)
    check_replay(dirty, expect_escapes=True)


def _scenario_many_commits(mnt: Path) -> None:
    d = mnt / "wrap"
    d.mkdir()
    _fsync_path(mnt)
    for i in range(400):
        _write(d / f"f{i:04d}", b"%d" % i * 50)


@pytest.mark.root
@pytest.mark.slow
def test_replay_wrapped_log(tmp_path: Path, rich_tree: Path) -> None:
    need_root("loop mounts")
    base = images.mkfs(tmp_path / "small-journal.img", None, "32M", "-b", "1024", "-J", "size=1")
    dirty = make_dirty(base, tmp_path / "dirty.img", "rw", _scenario_many_commits)
    with Filesystem.open(dirty) as fs:
        assert fs.replay is not None
        wrapped = fs.replay.wrapped
    check_replay(dirty)
    assert wrapped, "the scenario did not produce a wrapped log"


def test_clean_journal_needs_no_replay(image_factory: Callable[[str], Path]) -> None:
    with Filesystem.open(image_factory("default")) as fs:
        assert not fs.recovered and fs.replay is None


@pytest.mark.parametrize("variant", ["default", "nocsum", "ext3"])
def test_debugfs_transactions_escape_and_revoke(variant: str, image_copy: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    """Transactions written by debugfs jo/jw/jc: an escaped block, then a revoke of another."""
    image = image_copy(variant)
    with Filesystem.open(image) as fs:
        bs = fs.block_size
        target = fs.sb.blocks_count - 10
    payload = tmp_path / "payload"
    payload.write_bytes((JBD2_MAGIC + b"Z" * (bs - 4)) + (b"Q" * bs))
    cmds = tmp_path / "cmds"
    cmds.write_text(f"jo\njw -b {target},{target + 1} {payload}\njc\njo\njw -r {target + 1}\njc\n")
    images.run(images.tool("debugfs"), "-w", "-f", str(cmds), str(image))
    original = image.read_bytes()
    with Filesystem.open(image) as fs:
        assert fs.replay is not None and fs.replay.escaped == 1 and fs.replay.revoked == 1
        ours = (fs.cache.read(target), fs.cache.read(target + 1))
    fixed = tmp_path / "fixed.img"
    fixed.write_bytes(original)
    proc = images.run(images.tool("e2fsck"), "-fy", str(fixed), check=False)
    assert proc.returncode in (0, 1), proc.stdout.decode()
    data = fixed.read_bytes()
    assert ours == (data[target * bs : (target + 1) * bs], data[(target + 1) * bs : (target + 2) * bs])
    assert ours[0].startswith(JBD2_MAGIC) and ours[1] == original[(target + 1) * bs : (target + 2) * bs]


def _make_journal_csum_v2(image: Path) -> None:
    """Give an idle journal the CSUM_V2 (+64BIT) features, as older kernels wrote them.

    e2fsprogs and today's kernels only make v3 journals; debugfs's journal
    writer then writes v2 descriptor tags and checksums into it.
    """
    import struct

    import crc32c

    block = int(images.run(images.tool("debugfs"), "-R", "bmap <8> 0", str(image)).stdout.split()[0])
    with Filesystem.open(image) as fs:
        offset = block * fs.block_size
    with open(image, "r+b") as f:
        f.seek(offset)
        jsb = bytearray(f.read(1024))
        struct.pack_into(">I", jsb, 0x28, struct.unpack_from(">I", jsb, 0x28)[0] | 0x8 | 0x2)  # CSUM_V2, 64BIT
        jsb[0x50] = 4  # s_checksum_type: crc32c
        struct.pack_into(">I", jsb, 0xFC, 0)
        struct.pack_into(">I", jsb, 0xFC, (~crc32c.crc32c(bytes(jsb))) & 0xFFFFFFFF)  # raw crc32c, as jbd2
        f.seek(offset)
        f.write(jsb)


def test_journal_checksum_v2_replay(tmp_path: Path) -> None:
    image = images.mkfs(tmp_path / "v2.img", None, "64M", "-b", "4096")
    _make_journal_csum_v2(image)
    header = images.run(images.tool("dumpe2fs"), "-h", str(image)).stdout.decode()
    assert "journal_checksum_v2" in header
    with Filesystem.open(image) as fs:
        target = fs.sb.blocks_count - 10
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(4096 * 2))
    cmds = tmp_path / "cmds"
    cmds.write_text(f"jo\njw -b {target},{target + 1} {payload}\njc\njo\njw -r {target + 1}\njc\n")
    images.run(images.tool("debugfs"), "-w", "-f", str(cmds), str(image))
    original = image.read_bytes()
    with Filesystem.open(image) as fs:
        assert fs.replay is not None and fs.replay.revoked == 1
        ours = (fs.cache.read(target), fs.cache.read(target + 1))
    fixed = tmp_path / "fixed.img"
    fixed.write_bytes(original)
    proc = images.run(images.tool("e2fsck"), "-fy", str(fixed), check=False)
    assert proc.returncode in (0, 1), proc.stdout.decode()
    data = fixed.read_bytes()
    assert ours == (data[target * 4096 : (target + 1) * 4096], data[(target + 1) * 4096 : (target + 2) * 4096])
    assert ours[0] == payload.read_bytes()[:4096]  # the replayed block, and the revoked one left as it was
    assert ours[1] == original[(target + 1) * 4096 : (target + 2) * 4096]
