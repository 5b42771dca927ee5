"""Deferred records (inodes, group descriptors): the transaction patches them into their blocks later,
and nobody can tell.

Writer.store hands each inode record to the transaction's deferred map
instead of copying its inode-table block; the block is patched at the
commit, or by the first read of it through the cache. Pinned here: what
reaches the image (debugfs and e2fsck, not our reader), what a read of the
block sees before the commit, rollback of an operation that deferred or
materialised records, a whole-block put over deferred records, and the
hostile case of two inodes whose tables overlap.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs
from volfs.backend import Attr, Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError, error
from volfs.ext4.cache import BlockCache
from volfs.ext4.device import MemoryDevice
from volfs.ext4.group import PendingDesc, descriptor_block
from volfs.ext4.transaction import Transaction

ROOT = Ino(2)


def _debugfs_stat(image: Path, path: str) -> dict[str, str]:
    out = debugfs(image, f"stat {path}")
    fields = {}
    for key in ("Mode", "User", "Group", "Size", "Links"):
        m = re.search(rf"\b{key}:\s+(\S+)", out)
        assert m, out
        fields[key] = m.group(1)
    return fields


@pytest.mark.parametrize("variant", ["default", "b1024", "nocsum", "i128"])
def test_deferred_records_reach_the_image_at_the_commit(variant: str, make_image: Callable[..., Path]) -> None:
    """Files created, written and changed (three attribute changes each, as tar makes them) are
    deferred, not put, until the commit; then debugfs reads every change and e2fsck is clean."""
    image = make_image(variant)
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    made = []
    for i in range(40):
        fh, attr = b.create(ROOT, b"f%02d" % i, 0o600, OpenFlags.WRITE, 0, 0)
        b.write(fh, 0, b"z" * (100 * i))
        b.setattr(attr.ino, SetAttr(mtime_ns=1_000_000_000 * (i + 1)))
        b.setattr(attr.ino, SetAttr(uid=1000 + i, gid=2000 + i))
        b.setattr(attr.ino, SetAttr(mode=0o640))
        b.release(fh)
        made.append(attr.ino)
    place = fs.inode_place(made[-1])
    assert place is not None
    blk, off = place
    assert blk in fs.txn_required().deferred  # waiting, not put
    assert blk not in fs.cache.dirty
    b.sync()
    assert not fs.txn_required().deferred
    b.close()
    check(image)
    for i in range(40):
        st = _debugfs_stat(image, f"/f{i:02d}")
        assert st == {"Mode": "0640", "User": str(1000 + i), "Group": str(2000 + i), "Size": str(100 * i),
                      "Links": "1"}, i


def test_a_read_of_the_block_patches_its_records_in_first(make_image: Callable[..., Path]) -> None:
    """Before the commit, the inode-table block read through the cache holds every record stored
    in it (the bytes the read side decodes afresh equal what it was handed)."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    inos = []
    for i in range(5):
        a = b.mkdir(ROOT, b"d%d" % i, 0o755, 0, 0)
        b.setattr(a.ino, SetAttr(uid=7, mode=0o700))
        inos.append(a.ino)
    txn = fs.txn_required()
    for ino in inos:
        blk, off = fs.inode_place(ino) or (0, 0)
        assert blk in txn.deferred or blk in fs.cache.dirty
        data = fs.cache.read(blk)
        assert blk not in txn.deferred  # the read patched them in
        assert data[off : off + fs.sb.inode_size] == fs.inode(ino).raw
    fs.forget_all()  # decode everything again from the bytes
    for ino in inos:
        rec = fs.inode(ino)
        assert (rec.uid, rec.mode & 0o7777) == (7, 0o700)
    b.close()
    check(image)


def _one_file(make_image: Callable[..., Path]) -> tuple[Path, Ext4Backend, Attr]:
    """A fresh default image open for writing, with one empty file "f" in its root."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fh, a = b.create(ROOT, b"f", 0o644, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    return image, b, a


def test_a_failed_operation_takes_back_what_it_deferred(make_image: Callable[..., Path]) -> None:
    """An operation that stores a record, materialises a block and then fails leaves the deferred
    map, the read side and (after the commit) the image as they were before it."""
    image, b, a = _one_file(make_image)
    fs = b.filesystem
    w = fs.writer
    b.setattr(a.ino, SetAttr(uid=5))  # deferred, committed later with the rest
    txn = fs.txn_required()
    blk, off = fs.inode_place(a.ino) or (0, 0)
    before = {k: dict(v) for k, v in txn.deferred.items()}
    with pytest.raises(VolfsError) as info, w.op():
        ed = w.editor(a.ino)
        ed.set_uid(6)
        w.store(a.ino, ed)
        assert fs.inode(a.ino).uid == 6
        fs.cache.read(blk)  # materialised inside the operation
        assert blk not in txn.deferred
        raise error(errno.ENOSPC, "injected")
    assert info.value.errno == errno.ENOSPC
    assert txn.deferred == before
    assert fs.inode(a.ino).uid == 5
    b.close()
    check(image)
    assert _debugfs_stat(image, "/f")["User"] == "5"


def test_transaction_defer_materialise_put_and_abort() -> None:
    """The map itself, on a memory device: patched in on read and at commit, superseded by a whole
    put, restored by abort, refused for a second owner at one place."""
    base = bytes(range(256)) * 16 * 4  # 4 blocks of 4 KiB
    dev = MemoryDevice(base, writable=True)
    cache = BlockCache(dev, 4096, 4)
    txn = Transaction(cache, dev)
    txn.begin()
    assert txn.defer(1, 256, b"A" * 256, owner=17)
    assert txn.defer(1, 256, b"B" * 256, owner=17)  # the same record again
    assert not txn.defer(1, 256, b"C" * 256, owner=18)  # another inode at the same place
    assert txn.defer(2, 0, b"D" * 256, owner=19)
    assert txn.pending == 2
    txn.end()
    assert dev.data == base  # nothing written, nothing put
    assert not cache.dirty
    got = cache.read(1)
    assert got == base[4096 : 4096 + 256] + b"B" * 256 + base[4096 + 512 : 8192]
    assert 1 not in txn.deferred and cache.dirty[1] is got
    txn.begin()
    txn.put(2, b"E" * 4096)  # the whole block, written later, wins
    assert 2 not in txn.deferred
    txn.abort()  # ... but not once taken back
    assert txn.deferred == {2: {0: (19, b"D" * 256)}}
    assert 2 not in cache.dirty
    txn.commit()
    assert not txn.deferred
    assert dev.data[8192 : 8192 + 4096] == b"D" * 256 + base[8192 + 256 : 12288]
    assert dev.data[4096:8192] == got


def _dumpe2fs_groups(image: Path) -> dict[int, tuple[int, int, int]]:
    """Per group, (free blocks, free inodes, directories) as dumpe2fs reads the descriptors."""
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True, check=True).stdout
    groups = {}
    for m in re.finditer(r"^Group (\d+):.*?\n\s+(\d+) free blocks?, (\d+) free inodes?, (\d+) director",
                         out, re.MULTILINE | re.DOTALL):
        groups[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    assert groups, out
    return groups


@pytest.mark.parametrize(("variant", "opts"), [("default", ()), ("b1024", ()), ("nocsum", ()),
                                               ("default", ("-O", "^64bit")), ("nocsum", ("-O", "^64bit"))])
def test_group_descriptors_are_encoded_at_the_commit(variant: str, opts: tuple[str, ...],
                                                     make_image: Callable[..., Path]) -> None:
    """Allocations change their group's descriptor in the read side at once and defer its record
    (a PendingDesc, encoded with its checksum only when patched in): after the commit dumpe2fs reads
    the counters the read side served, for 64- and 32-byte descriptors, and e2fsck is clean."""
    image = make_image(variant, opts=opts)
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    sb = fs.sb
    before = {g: fs.group_desc(g) for g in range(sb.group_count)}
    for i in range(30):
        a = b.mkdir(ROOT, b"d%02d" % i, 0o755, 0, 0) if i % 5 == 0 else None
        fh, f = b.create(ROOT if a is None else a.ino, b"f%02d" % i, 0o644, OpenFlags.WRITE, 0, 0)
        b.write(fh, 0, b"q" * (3000 * i))
        b.release(fh)
    txn = fs.txn_required()
    per_block = sb.block_size // sb.desc_size
    served = {g: fs.group_desc(g) for g in range(sb.group_count)}
    changed = [g for g in served if served[g] != before[g]]
    assert changed
    for g in changed:
        blk = descriptor_block(sb, g // per_block)
        off = (g % per_block) * sb.desc_size
        owner, record = txn.deferred[blk][off]
        assert owner == -1 - g and isinstance(record, PendingDesc) and record.desc == served[g]
        assert blk not in fs.cache.dirty
    b.sync()
    assert not txn.deferred
    b.close()
    check(image)
    groups = _dumpe2fs_groups(image)
    for g, d in served.items():
        assert groups[g] == (d.free_blocks, d.free_inodes, d.used_dirs), g


def test_a_failed_allocation_takes_back_its_descriptor(make_image: Callable[..., Path]) -> None:
    """An operation that allocated an inode and blocks (changing the descriptor, deferred) and then
    failed leaves the deferred record and the served descriptor as they were before it."""
    image, b, a = _one_file(make_image)
    fs = b.filesystem
    w = fs.writer
    txn = fs.txn_required()
    group = (a.ino - 1) // fs.sb.inodes_per_group
    desc = fs.group_desc(group)
    pend = {k: dict(v) for k, v in txn.deferred.items()}
    with pytest.raises(VolfsError), w.op():
        w.alloc.alloc_inode(ROOT, False)
        w.alloc.alloc_blocks(0, 10)
        assert fs.group_desc(group).free_inodes == desc.free_inodes - 1
        raise error(errno.ENOSPC, "injected")
    assert txn.deferred == pend
    # (The abort restamps the block, so this decodes it: bg_checksum now the one computed for it.)
    assert dataclasses.replace(fs.group_desc(group), checksum=desc.checksum) == desc
    b.close()
    check(image)
    assert _dumpe2fs_groups(image)[group][:2] == (desc.free_blocks, desc.free_inodes)


class _Upper:
    """A LazyRecord for the memory-device test: the bytes it replaces, upper-cased."""

    size = 8

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def encode(self, old: bytes) -> bytes:
        self.calls.append(old)
        return old.upper()


def test_a_lazy_record_is_encoded_from_the_bytes_it_replaces() -> None:
    """A LazyRecord is encoded once, when its block is patched in, from the bytes then at its place."""
    base = b"abcdefgh" * 512 * 2  # 2 blocks of 4 KiB
    dev = MemoryDevice(base, writable=True)
    cache = BlockCache(dev, 4096, 4)
    txn = Transaction(cache, dev)
    rec = _Upper()
    txn.begin()
    assert txn.defer(1, 16, rec, owner=-1)
    txn.end()
    assert rec.calls == []
    txn.commit()
    assert rec.calls == [b"abcdefgh"]
    assert dev.data[4096 + 16 : 4096 + 24] == b"ABCDEFGH"
    assert dev.data[4096 : 4096 + 16] + dev.data[4096 + 24 : 8192] == base[4096 : 4096 + 16] + base[4096 + 24 : 8192]
