"""The write path's caches change nothing that is written or read.

Each shortcut is compared with the slow path it replaces: the last-record hint
of a leaf insert with the walk over the block, the read side's leaf parse
patched across inserts, removals and retargets with a fresh parse, the group descriptors the allocator hands the read
side with a decode of the bytes on disk, the memoized and unrolled name hash
with its definition.  Every image ends e2fsck-clean.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4.directory import (
    empty_leaf,
    insert_in_block,
    last_record,
    leaf_end,
    remove_from_block,
    set_leaf_csum,
)
from volfs.ext4.dirhash import _dirhash, dirhash
from volfs.ext4.checksum import crc32c_raw, inode_seed
from volfs.ext4.group import descriptor_block, parse_group_desc
from volfs.ext4.inode import InodeEditor, encode_time, parse_inode
from volfs.ext4.superblock import INCOMPAT_LARGEDIR, RO_COMPAT_HUGE_FILE

ROOT = Ino(2)


@pytest.mark.parametrize("csum", [True, False])
def test_insert_hint_writes_the_same_bytes(csum: bool) -> None:
    rnd = random.Random(11)
    bs = 4096
    for _round in range(30):
        buf = empty_leaf(bs, 0x1234 if csum else None, csum)
        placed: list[int] = []
        for k in range(400):
            if placed and rnd.random() < 0.25:
                remove_from_block(buf, placed.pop(rnd.randrange(len(placed))), bs, csum)
                continue
            name = bytes(rnd.choice(b"abcdefgh") for _ in range(rnd.randint(1, 60)))
            slow = bytearray(buf)
            fast = bytearray(buf)
            want = insert_in_block(slow, name, 100 + k, 1, bs, csum)
            got = insert_in_block(fast, name, 100 + k, 1, bs, csum, last_record(buf, bs, csum))
            assert got == want and fast == slow
            if want is None:
                break
            buf = slow
            placed.append(want)
        set_leaf_csum(buf, 0x1234 if csum else None)
        assert len(buf) == bs and last_record(buf, bs, csum) < leaf_end(bs, csum)


def test_memoized_hash_matches_definition() -> None:
    rnd = random.Random(3)
    for _ in range(300):
        name = bytes(rnd.randrange(1, 256) for _ in range(rnd.randint(1, 255)))
        seed = tuple(rnd.randrange(1 << 32) for _ in range(4)) if rnd.random() < 0.5 else (0, 0, 0, 0)
        for version in range(6):
            assert dirhash(name, version, seed) == _dirhash(name, version, seed)
            assert dirhash(name, version, seed) == _dirhash(name, version, seed)  # from the memo


def test_memoized_inode_seed_matches_definition() -> None:
    rnd = random.Random(17)
    keys = [(rnd.randrange(1 << 32), rnd.randrange(1, 1 << 32), rnd.randrange(1 << 32)) for _ in range(6000)]
    for _ in range(2):  # the second pass partly from the memo (which starts over when full)
        for fs_seed, ino, gen in keys:
            want = crc32c_raw(crc32c_raw(fs_seed, ino.to_bytes(4, "little")), gen.to_bytes(4, "little"))
            assert inode_seed(fs_seed, ino, gen) == want


def _set_time_by_fields(ed: InodeEditor, which: str, ns: int) -> None:
    """The definition set_times replaces: each field through has/set, the time encoded per field."""
    base, extra = {"a": ("i_atime", "i_atime_extra"), "m": ("i_mtime", "i_mtime_extra"),
                   "c": ("i_ctime", "i_ctime_extra"), "cr": ("i_crtime", "i_crtime_extra")}[which]
    if not ed.has(base):
        return
    sec, ext = encode_time(ns, ed.has(extra))
    ed.set(base, sec)
    ed.set(extra, ext)


def test_set_times_matches_field_by_field() -> None:
    rnd = random.Random(23)
    groups = [("a", "m", "c", "cr"), ("m", "c"), ("c",), ("cr",), ("a",)]
    times = [0, 1, -1, 1_700_000_000_123_456_789, -(1 << 31) * 10**9 - 5, ((1 << 31) - 1 + (3 << 32)) * 10**9 + 7,
             (1 << 34) * 10**9, -(1 << 40) * 10**9] + [rnd.randrange(-(1 << 62), 1 << 62) for _ in range(200)]
    # Record sizes and i_extra_isize values: none, ctime/mtime/atime extras only, crtime without its extra, all.
    shapes = [(128, 0), (256, 0), (256, 4), (256, 8), (256, 12), (256, 16), (256, 20), (256, 24), (256, 32),
              (160, 28)]
    for size, extra in shapes:
        for ns in times:
            for which in groups:
                raw = bytes(rnd.randrange(256) for _ in range(size))
                if size > 128:
                    raw = raw[:128] + extra.to_bytes(2, "little") + raw[130:]
                fast, slow = InodeEditor(raw), InodeEditor(raw)
                fast.set_times(which, ns)
                for w in which:
                    _set_time_by_fields(slow, w, ns)
                assert fast.buf == slow.buf, (size, extra, ns, which)


@pytest.mark.parametrize("variant", ["default", "b1024", "nocsum", "i128"])
def test_read_caches_follow_writes(variant: str, make_image: Callable[..., Path]) -> None:
    image = make_image(variant)
    backend = Ext4Backend(image, readonly=False)
    fs = backend.filesystem
    rnd = random.Random(5)
    d = backend.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    names: list[bytes] = []
    for i in range(1200):
        roll = rnd.random()
        if names and roll < 0.2:
            backend.unlink(d, names.pop(rnd.randrange(len(names))))
        elif len(names) > 1 and roll < 0.3:  # rename over another name: one entry removed, one retargeted
            src = names.pop(rnd.randrange(len(names)))
            backend.rename(d, src, d, names[rnd.randrange(len(names))])
        elif names and roll < 0.35:  # rename to a new name: a remove and an insert
            src = names.pop(rnd.randrange(len(names)))
            names.append(src + b"-r%d" % i)
            backend.rename(d, src, d, names[-1])
        else:
            name = bytes(rnd.choice(b"abcdefghij") for _ in range(rnd.randint(1, 40))) + b"%d" % i
            fh, attr = backend.create(d, name, 0o644, OpenFlags.WRITE, 0, 0)
            backend.write(fh, 0, b"z" * rnd.randint(1, 9000))
            backend.release(fh)
            backend.forget(attr.ino, 1)
            names.append(name)
        if i % 97 == 0:
            _check_caches(fs)
            got = sorted(e.name for e in backend.readdir(d) if e.name not in (b".", b".."))
            assert got == sorted(names)
    _check_caches(fs)
    for name in names[:50]:
        assert backend.lookup(d, name).ino
    backend.close()
    check(image)


def _check_caches(fs: object) -> None:
    """Every cached leaf parse, group descriptor, inode and runlist equals a fresh decode of the current bytes."""
    from volfs.ext4.filesystem import Filesystem

    assert isinstance(fs, Filesystem)
    sb = fs.sb
    for ino in list(fs._inodes._d):
        # The cached record (often one the write side installed unverified) against a verified parse.
        _g, blk, off = fs.inode_location(ino)
        raw = fs.cache.read(blk)[off : off + sb.inode_size]
        assert fs.inode(ino) == parse_inode(ino, raw, large_dir=sb.has_incompat(INCOMPAT_LARGEDIR),
                                            huge_file=sb.has_ro_compat(RO_COMPAT_HUGE_FILE),
                                            block_size=sb.block_size,
                                            csum_seed=fs.fs_seed if sb.metadata_csum else None, block=blk)
    for ino, slot in list(fs._runlists._d.items()):
        rec = fs.inode(ino)
        if rec.mode == 0 or not (rec.is_reg or rec.is_dir or rec.is_symlink):
            continue
        cached = fs.runlist(rec)
        fs._runlists.pop(ino)
        try:
            assert fs.runlist(rec).runs == cached.runs, f"stale runlist of inode {ino}"
        finally:
            fs._runlists.put(ino, slot)
    for (kind, ino, lb), slot in list(fs._parsed._d.items()):
        if kind != "leaf":
            continue
        rec = fs.inode(ino)
        pb, data = fs._dir_block(rec, lb)
        if fs._parsed_block("leaf", rec, lb, pb, data) is slot:
            assert slot.value == fs._leaf_entries(rec, lb, pb, data)
    per_block = sb.block_size // sb.desc_size
    for g in range(sb.group_count):
        raw = fs.cache.read(descriptor_block(sb, g // per_block))
        off = (g % per_block) * sb.desc_size
        assert fs.group_desc(g) == parse_group_desc(sb, fs.fs_seed, g, raw[off : off + sb.desc_size], verify=True)
