"""The read side's decoded caches: linear-directory name indexes, parsed inodes and descriptors.

What is pinned here: a lookup in a big linear directory reads no device
block once the directory's index exists (the block cache's read counter
says so, with the clean cache dropped before every lookup, so a scan would
have to read the directory again), and no cache is ever stale: writes
through the backend, and writes a careless write side makes straight into
the transaction without telling the engine, are seen by the very next call.
"""

from __future__ import annotations

import errno
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport import e2fsck_clean, need_tool

import ext4_images as images
from volfs.backend import OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem
from volfs.ext4.directory import insert_in_block, is_dx_node_block, set_leaf_csum
from volfs.ext4.group import update_group_desc
from volfs.ext4.inode import Inode, InodeEditor

BIG = 5000
SMALL_DIRS = 12


def _name(i: int) -> bytes:
    return f"file_{i:05d}".encode()


@pytest.fixture(scope="module")
def linear_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("mke2fs")
    base = tmp_path_factory.mktemp("linear")
    tree = base / "tree"
    (tree / "big").mkdir(parents=True)
    for i in range(BIG):
        (tree / "big" / _name(i).decode()).write_bytes(b"")
    for d in range(SMALL_DIRS):
        sub = tree / f"d{d:02d}"
        sub.mkdir()
        for i in range(40):
            (sub / f"s{i:03d}").write_bytes(b"x" * i)
    # mkfs -d builds linear directories (no htree index): the case the name index is for.
    return images.mkfs(base / "linear.img", tree, "64M", "-b", "4096")


@pytest.fixture
def writable(linear_image: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "rw.img"
    shutil.copyfile(linear_image, copy)
    yield copy
    e2fsck_clean(copy)


def _scan(fs: Filesystem, dir_ino: int) -> dict[bytes, int]:
    """The directory as readdir shows it (the oracle the index must agree with)."""
    out: dict[bytes, int] = {}
    for e in fs.readdir(dir_ino):
        out.setdefault(e.name, e.ino)
    return out


def _index_agrees(fs: Filesystem, dir_ino: int) -> None:
    rec = fs.inode(dir_ino)
    names = fs._name_index(rec)
    assert names is not None
    assert dict(names) == _scan(fs, dir_ino)


def _enoent(fn: object) -> None:
    with pytest.raises(VolfsError) as info:
        fn()  # type: ignore[operator]
    assert info.value.errno == errno.ENOENT


def test_linear_lookups_read_no_blocks_after_the_first(linear_image: Path) -> None:
    with Filesystem.open(linear_image) as fs:
        big = fs.lookup_ino(2, b"big")
        rec = fs.inode(big)
        assert not rec.flags & 0x1000, "mkfs -d indexed the directory: the test needs a linear one"
        dir_blocks = rec.size // fs.block_size
        assert dir_blocks > 20
        expect = _scan(fs, big)
        assert len(expect) == BIG + 2
        fs.lookup_ino(big, _name(0))  # builds the index
        for i in range(0, BIG, 7):
            fs.cache.drop()  # clean copies gone: a scan would read the directory from the device again
            before = fs.cache.reads
            assert fs.lookup_ino(big, _name(i)) == expect[_name(i)]
            assert fs.cache.reads == before, f"lookup of {_name(i)!r} read {fs.cache.reads - before} blocks"
        fs.cache.drop()
        before = fs.cache.reads
        for missing in (b"nope", _name(BIG), b"file_0000"):
            _enoent(lambda: fs.lookup_ino(big, missing))
        assert fs.lookup_ino(big, b"..") == 2
        assert fs.cache.reads == before


def test_backend_writes_are_seen_by_the_next_lookup(writable: Path) -> None:
    b = Ext4Backend(writable, readonly=False)
    try:
        assert not b.readonly, b.readonly_reason
        fs = b.filesystem
        big = b.lookup(b.root, b"big").ino
        first = b.lookup(big, _name(10))
        _index_agrees(fs, big)
        # create
        fh, made = b.create(big, b"new-file", 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        assert b.lookup(big, b"new-file").ino == made.ino
        _index_agrees(fs, big)
        # unlink
        b.unlink(big, _name(20))
        _enoent(lambda: b.lookup(big, _name(20)))
        _index_agrees(fs, big)
        # rename within the directory, over an existing name, and out of it
        b.rename(big, _name(10), big, b"renamed")
        _enoent(lambda: b.lookup(big, _name(10)))
        assert b.lookup(big, b"renamed").ino == first.ino
        _index_agrees(fs, big)
        victim = b.lookup(big, _name(31)).ino
        b.rename(big, _name(30), big, _name(31))
        assert b.lookup(big, _name(31)).ino != victim
        _index_agrees(fs, big)
        d0 = b.lookup(b.root, b"d00").ino
        b.rename(big, _name(40), d0, b"moved")
        _enoent(lambda: b.lookup(big, _name(40)))
        assert b.lookup(d0, b"moved").ino
        _index_agrees(fs, big)
        _index_agrees(fs, d0)
        # The same after a commit, and through a fresh read-only view of the image.
        b.sync()
        _index_agrees(fs, big)
        with Filesystem.open(writable) as peer:
            assert _scan(peer, big) == _scan(fs, big)
    finally:
        b.close()


def test_engine_caches_survive_a_write_side_that_tells_them_nothing(writable: Path) -> None:
    """Blocks changed in the transaction without forget_inode/forget_desc: every cache notices."""
    with Filesystem.open(writable, readonly=False) as fs:
        assert not fs.readonly, fs.readonly_reason
        txn = fs.writer.txn
        big = fs.lookup_ino(2, b"big")
        target = fs.lookup_ino(big, _name(5))
        d_rec = fs.inode(big)
        old_mode = fs.getattr(target).mode
        desc = fs.group_desc(0)
        assert fs._name_index(d_rec) is not None

        txn.begin()
        try:
            _sneak_in(fs, big, target, d_rec, desc.free_inodes, old_mode)
        finally:
            txn.abort()  # (a no-op when the test already rolled back)


def _sneak_in(fs: Filesystem, big: int, target: int, d_rec: Inode, free_inodes: int, old_mode: int) -> None:
    """Change an inode, a descriptor and a directory block behind the engine's back, then roll back."""
    txn = fs.writer.txn
    # An inode record changed in place.
    _g, blk, off = fs.inode_location(target)
    data = bytearray(txn.read(blk))
    ed = InodeEditor(bytes(data[off : off + fs.sb.inode_size]))
    ed.set("i_mode", stat.S_IFREG | 0o600)
    data[off : off + fs.sb.inode_size] = ed.finish(fs.fs_seed if fs.sb.metadata_csum else None, target)
    txn.put(blk, data)
    assert fs.getattr(target).mode == stat.S_IFREG | 0o600
    # A group descriptor changed in place.
    per_block = fs.sb.block_size // fs.sb.desc_size
    gdt = fs.sb.first_data_block + 1
    raw = bytearray(txn.read(gdt))
    ds = fs.sb.desc_size
    raw[0:ds] = update_group_desc(fs.sb, fs.fs_seed, 0, bytes(raw[0:ds]), {"free_inodes": free_inodes - 1})
    txn.put(gdt, raw)
    assert per_block >= 1 and fs.group_desc(0).free_inodes == free_inodes - 1
    # A directory entry added to the last block of the linear directory.
    bs = fs.block_size
    lb = d_rec.size // bs - 1
    pb = fs.runlist(d_rec).map(lb)
    assert pb is not None
    buf = bytearray(txn.read(pb))
    assert insert_in_block(buf, b"sneaked-in", target, 1, bs, fs.sb.metadata_csum) is not None
    seed = fs._inode_seed(d_rec)
    set_leaf_csum(buf, seed)
    txn.put(pb, buf)
    assert fs.lookup_ino(big, b"sneaked-in") == target
    _index_agrees(fs, big)

    # Rolled back: the old bytes come back, and so do the old answers.
    txn.abort()
    assert fs.getattr(target).mode == old_mode
    assert fs.group_desc(0).free_inodes == free_inodes
    _enoent(lambda: fs.lookup_ino(big, b"sneaked-in"))
    _index_agrees(fs, big)


def test_attributes_change_at_once(writable: Path) -> None:
    b = Ext4Backend(writable, readonly=False)
    try:
        d = b.lookup(b.root, b"d01").ino
        a = b.lookup(d, b"s005")
        assert b.getattr(a.ino) == a
        b.setattr(a.ino, SetAttr(mode=0o600, uid=123, gid=456, mtime_ns=1_234_567_890_123_456_789))
        after = b.getattr(a.ino)
        assert stat.S_IMODE(after.mode) == 0o600 and (after.uid, after.gid) == (123, 456)
        assert after.mtime_ns == 1_234_567_890_123_456_789
        fh = b.open(a.ino, OpenFlags.WRITE)
        b.write(fh, 100, b"y" * 5000)
        assert b.getattr(a.ino).size == 5100
        b.release(fh)
        b.setattr(a.ino, SetAttr(size=7))
        assert b.getattr(a.ino).size == 7
        rfh = b.open(a.ino, OpenFlags.READ)
        assert b.read(rfh, 0, 100) == b"x" * 5 + b"\0\0"
        b.release(rfh)
        dir_before = b.getattr(d)
        b.mkdir(d, b"sub", 0o755, 0, 0)
        assert b.getattr(d).nlink == dir_before.nlink + 1
    finally:
        b.close()


def test_name_index_memory_is_bounded(linear_image: Path) -> None:
    with Filesystem.open(linear_image) as fs:
        dirs = [fs.lookup_ino(2, f"d{d:02d}".encode()) for d in range(SMALL_DIRS)]
        one = fs._name_index(fs.inode(dirs[0]))
        assert one is not None
        per_dir = fs._names[dirs[0]].cost
        fs.forget_all()
        fs.dir_index_budget = per_dir * 3 + per_dir // 2  # room for three small directories
        for rounds in range(2):
            for d in dirs:
                for i in (0, 17, 39):
                    name = f"s{i:03d}".encode()
                    assert fs.lookup_ino(d, name) == _scan(fs, d)[name]
                assert fs._names_cost <= fs.dir_index_budget
                assert len(fs._names) <= 3
                assert fs._names_cost == sum(ix.cost for ix in fs._names.values())
        # The most recently used directories are the ones kept.
        assert list(fs._names) == dirs[-3:]
        # A directory bigger than the whole budget is never indexed; lookups still answer (by a scan).
        big = fs.lookup_ino(2, b"big")
        assert fs.lookup_ino(big, _name(4321)) == _scan(fs, big)[_name(4321)]
        assert big not in fs._names
        assert fs._names_cost <= fs.dir_index_budget


def test_duplicate_names_resolve_as_a_scan_does(writable: Path) -> None:
    """A (corrupt) directory holding one name twice: the first in readdir order wins, before and after a change."""
    with Filesystem.open(writable, readonly=False) as fs:
        txn = fs.writer.txn
        d = fs.lookup_ino(2, b"d02")
        rec = fs.inode(d)
        other = fs.lookup_ino(2, b"d03")
        stranger = fs.lookup_ino(other, b"s001")
        pb = fs.runlist(rec).map(0)
        assert pb is not None
        txn.begin()
        try:
            buf = bytearray(txn.read(pb))
            # s000 a second time (wherever the slack is): the index must answer as a scan does.
            assert insert_in_block(buf, b"s000", stranger, 1, fs.block_size, fs.sb.metadata_csum) is not None
            set_leaf_csum(buf, fs._inode_seed(rec))
            txn.put(pb, buf)
            original = _scan(fs, d)[b"s000"]
            assert fs.lookup_ino(d, b"s000") == original
            idx = fs._names[d]
            assert idx.dups
            # Another change in the directory: still the scan's answer.
            buf2 = bytearray(txn.read(pb))
            assert insert_in_block(buf2, b"later", stranger, 1, fs.block_size, fs.sb.metadata_csum) is not None
            set_leaf_csum(buf2, fs._inode_seed(rec))
            txn.put(pb, buf2)
            assert fs.lookup_ino(d, b"s000") == original
            assert fs.lookup_ino(d, b"later") == stranger
            txn.abort()
            _enoent(lambda: fs.lookup_ino(d, b"later"))
        finally:
            txn.abort()  # (a no-op after the rollback above)


def test_open_handles_keep_inodes_known(writable: Path) -> None:
    b = Ext4Backend(writable, readonly=False)
    try:
        d = b.lookup(b.root, b"d04").ino
        a = b.lookup(d, b"s003")
        fh1 = b.open(a.ino, OpenFlags.READ)
        fh2 = b.open(a.ino, OpenFlags.READ)
        b.forget(a.ino, 1)
        assert b.getattr(a.ino).ino == a.ino  # known through its open handles
        b.release(fh1)
        assert b.getattr(a.ino).ino == a.ino
        b.release(fh2)
        with pytest.raises(VolfsError) as info:
            b.getattr(a.ino)
        assert info.value.errno == errno.ESTALE
    finally:
        b.close()


def test_htree_misses_are_remembered_only_while_nothing_changes(writable: Path) -> None:
    """FUSE's negative LOOKUP then CREATE's own check ask an htree directory twice for one name:
    the second answer comes from a memo, which must give way to any change, told or not."""
    b = Ext4Backend(writable, readonly=False)
    try:
        fs = b.filesystem
        h1 = b.mkdir(b.root, b"h1", 0o755, 0, 0).ino
        h2 = b.mkdir(b.root, b"h2", 0o755, 0, 0).ino
        for d in (h1, h2):
            for i in range(300):  # more than one block of entries: the directory becomes an htree
                fh, a = b.create(d, b"e%04d" % i, 0o644, OpenFlags.WRITE, 0, 0)
                b.release(fh)
                b.forget(a.ino)
            assert fs.inode(d).flags & 0x1000, "the directory did not get an htree index"
        fh, a = b.create(h2, b"ghost", 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        ghost2 = a.ino
        # A miss in one directory says nothing about the same name in another, at the same epoch.
        epoch = fs.cache.epoch
        _enoent(lambda: fs.lookup_ino(h1, b"ghost"))
        assert fs._dx_miss is not None and fs.cache.epoch == epoch
        assert fs.lookup_ino(h2, b"ghost") == ghost2
        # Nor about another name, in the same directory.
        _enoent(lambda: fs.lookup_ino(h1, b"ghost"))
        assert fs.lookup_ino(h1, b"e0007") == _scan(fs, h1)[b"e0007"]
        # Created through the engine: found at once.
        _enoent(lambda: fs.lookup_ino(h1, b"ghost"))
        fh, a = b.create(h1, b"ghost", 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        assert fs.lookup_ino(h1, b"ghost") == a.ino
        # Sneaked into its leaf through the transaction, telling the engine nothing: found at once.
        _enoent(lambda: fs.lookup_ino(h1, b"phantom"))
        rec = fs.inode(h1)
        txn = fs.writer.txn
        txn.begin()
        try:
            # Every leaf gets the name: wherever its hash leads, the lookup finds it there.
            bs = fs.block_size
            for lb in range(1, rec.size // bs):
                pb = fs.runlist(rec).map(lb)
                assert pb is not None
                buf = bytearray(txn.read(pb))
                if is_dx_node_block(bytes(buf), bs):
                    continue
                assert insert_in_block(buf, b"phantom", ghost2, 1, bs, fs.sb.metadata_csum) is not None
                set_leaf_csum(buf, fs._inode_seed(rec))
                txn.put(pb, buf)
            assert fs.lookup_ino(h1, b"phantom") == ghost2
            txn.abort()
            _enoent(lambda: fs.lookup_ino(h1, b"phantom"))
            _enoent(lambda: fs.lookup_ino(h1, b"phantom"))  # (the memo again, after the rollback)
        finally:
            txn.abort()  # (a no-op after the rollback above)
    finally:
        b.close()


def test_records_the_write_side_installs_give_way_to_a_rollback(writable: Path) -> None:
    """Writer.store hands the read side the record it wrote; a rollback the read side is not told
    of (no forget_all) still brings the old record back."""
    with Filesystem.open(writable, readonly=False) as fs:
        w = fs.writer
        d = fs.lookup_ino(2, b"d05")
        target = fs.lookup_ino(d, b"s007")
        before = fs.inode(target)
        txn = w.txn
        txn.begin()
        try:
            ed = w.editor(target)
            ed.set("i_mode", stat.S_IFREG | 0o604)
            ed.set("i_links_count", 7)
            w.store(target, ed)
            installed = fs.inode(target)
            assert (installed.mode, installed.links_count) == (stat.S_IFREG | 0o604, 7)
            assert fs.getattr(target).nlink == 7
            txn.abort()
            assert fs.inode(target) == before
            assert fs.getattr(target).mode == before.mode and fs.getattr(target).nlink == before.links_count
        finally:
            txn.abort()  # (a no-op after the rollback above)
