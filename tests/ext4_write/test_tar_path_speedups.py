"""The tar-extraction path's shortcuts answer exactly as the definitions they replace.

Pinned here: the inlined inode decoder against a by-name decode of
inodes.rst (every field, every i_extra_isize, corrupt records refused
alike); the allocator's derived group descriptors against a decode of the
bytes it wrote; inode_place's answer from a current slot against the
descriptor (and a descriptor changed behind the engine's back); the inlined
LRU reads against _Lru.get's refresh; one-epoch stamping of data runs
against a model of block changes; setattr's merged time encoding and the
editor's direct base-field setters against the per-field definitions.
Every image written ends e2fsck-clean.
"""

from __future__ import annotations

import dataclasses

import errno
import random
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, images
from volfs.backend import NOW, Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import CorruptError, VolfsError
from volfs.ext4 import Filesystem
from volfs.ext4.group import PendingDesc, descriptor_block, parse_group_desc, update_group_desc, updated_desc
from volfs.ext4.checksum import inode_seed
from volfs.ext4.inode import (
    EXT4_HUGE_FILE_FL,
    INODE,
    INODE_BASE_SIZE,
    Inode,
    _time_ns,
    inode_checksum,
    parse_inode,
)

ROOT = Ino(2)


def _reference_inode(ino: int, raw: bytes, *, large_dir: bool, huge_file: bool, block_size: int,
                     csum_seed: int | None) -> Inode:
    """inodes.rst read field by field, by kernel name (the definition parse_inode follows)."""
    extended = len(raw) > INODE_BASE_SIZE
    r = INODE.unpack(raw + bytes(max(INODE.size - len(raw), 0)))
    extra = r.u("i_extra_isize") if extended else 0
    if extended and (extra % 4 or INODE_BASE_SIZE + extra > len(raw)):
        raise CorruptError("inode", "bad i_extra_isize")
    if csum_seed is not None:
        want = inode_checksum(inode_seed(csum_seed, ino, r.u("i_generation")), raw, extra)
        stored = r.u("l_i_checksum_lo") + ((r.u("i_checksum_hi") << 16) if extended and extra >= 4 else 0)
        if want != stored:
            raise CorruptError("inode", "checksum")

    def has(end: int) -> bool:  # a field ending ``end`` bytes past 128 is covered by i_extra_isize
        return extra >= end

    def when(name: str, extra_name: str, end: int) -> int:
        return _time_ns(r.u(name), r.u(extra_name) if has(end) else None)

    mode = r.u("i_mode")
    size = r.u("i_size_lo")
    if large_dir or stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        size += r.u("i_size_high") << 32
    blocks = r.u("i_blocks_lo")
    if huge_file:
        blocks += r.u("l_i_blocks_high") << 32
        if r.u("i_flags") & EXT4_HUGE_FILE_FL:
            blocks *= block_size // 512
    return Inode(
        ino=ino, mode=mode, uid=r.u("i_uid") + (r.u("l_i_uid_high") << 16),
        gid=r.u("i_gid") + (r.u("l_i_gid_high") << 16), size=size, links_count=r.u("i_links_count"),
        blocks_512=blocks, flags=r.u("i_flags"), generation=r.u("i_generation"),
        file_acl=r.u("i_file_acl_lo") + (r.u("l_i_file_acl_high") << 32),
        atime_ns=when("i_atime", "i_atime_extra", 16), mtime_ns=when("i_mtime", "i_mtime_extra", 12),
        ctime_ns=when("i_ctime", "i_ctime_extra", 8),
        crtime_ns=when("i_crtime", "i_crtime_extra", 24) if has(20) else None,
        dtime=r.u("i_dtime"), i_block=r.b("i_block"), extra_isize=extra,
        projid=r.u("i_projid") if has(32) else 0,
        version=r.u("l_i_version") + ((r.u("i_version_hi") if has(28) else 0) << 32), raw=bytes(raw))


def test_time_decode_is_the_spec() -> None:
    """_time_ns (which the reference above also uses) against inodes.rst written out plainly: the
    seconds are a signed 32-bit number, the extra field's low two bits add epochs of 2^32 seconds,
    and its upper 30 bits are nanoseconds (the kernel clamps them below a second)."""

    def spec(seconds: int, extra: int | None) -> int:
        sec = seconds - (1 << 32) if seconds >= 1 << 31 else seconds
        if extra is None:
            return sec * 10**9
        return (sec + (extra & 3) * (1 << 32)) * 10**9 + min(extra >> 2, 10**9 - 1)

    rnd = random.Random(61)
    edges = [0, 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1_700_000_000]
    extras: list[int | None] = [None, 0, 1, 2, 3, (999_999_999 << 2) | 3, (10**9 << 2), (1 << 32) - 1]
    cases = [(s, e) for s in edges for e in extras]
    cases += [(rnd.getrandbits(32), rnd.choice([None, rnd.getrandbits(32)])) for _ in range(20000)]
    for s, e in cases:
        assert _time_ns(s, e) == spec(s, e), (s, e)


def _random_record(rnd: random.Random, size: int) -> bytes:
    raw = bytearray(rnd.randrange(256) for _ in range(size))
    if size > INODE_BASE_SIZE:
        # Mostly valid i_extra_isize values (every coverage step), sometimes hostile ones.
        extra = rnd.choice([0, 4, 8, 12, 16, 20, 24, 28, 32, 36, size - INODE_BASE_SIZE,
                            rnd.randrange(1 << 16), 2, 30])
        raw[128:130] = (extra & 0xFFFF).to_bytes(2, "little")
    if rnd.random() < 0.5:  # file types whose size has a high word, and the others
        raw[0:2] = (rnd.choice([0o100644, 0o040755, 0o120777, 0o020644, 0]) | rnd.randrange(0o7777)).to_bytes(2, "little")
    for off in (8, 12, 16, 0x90):  # times around the sign bit
        if rnd.random() < 0.3:
            raw[off : off + 4] = rnd.choice([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0]).to_bytes(4, "little")
    return bytes(raw)


def _outcome(fn, *args: object, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except CorruptError as exc:
        return ("refused", exc.errno)


@pytest.mark.parametrize("size", [128, 256, 160, 1024])
def test_inode_decoder_matches_the_by_name_definition(size: int) -> None:
    rnd = random.Random(size)
    for i in range(3000):
        raw = _random_record(rnd, size)
        ino = rnd.randrange(1, 1 << 32)
        kw = {"large_dir": rnd.random() < 0.3, "huge_file": rnd.random() < 0.7,
              "block_size": rnd.choice([1024, 4096, 65536])}
        seed = rnd.randrange(1 << 32) if i % 3 == 0 else None
        if seed is not None and rnd.random() < 0.5 and size > 128:
            # A record whose checksum is right, so that the verified path decodes too.
            extra = int.from_bytes(raw[128:130], "little")
            crc = inode_checksum(inode_seed(seed, ino, int.from_bytes(raw[100:104], "little")), raw, extra)
            fixed = bytearray(raw)
            fixed[0x7C:0x7E] = (crc & 0xFFFF).to_bytes(2, "little")
            if extra >= 4:
                fixed[0x82:0x84] = (crc >> 16).to_bytes(2, "little")
            raw = bytes(fixed)
        want = _outcome(_reference_inode, ino, raw, csum_seed=seed, **kw)
        got = _outcome(parse_inode, ino, raw, csum_seed=seed, **kw)
        assert got == want, (raw.hex(), ino, kw, seed)
        if isinstance(got, Inode):
            assert type(got.raw) is bytes


# (name, mkfs options): 64- and 32-byte descriptors, metadata_csum and gdt_csum.
_DESC_SHAPES = {"default": ("default", ()), "nocsum": ("nocsum", ()), "b1024": ("b1024", ()),
                "no64bit": ("default", ("-O", "^64bit")), "no64bit-nocsum": ("nocsum", ("-O", "^64bit"))}


@pytest.mark.parametrize("shape", sorted(_DESC_SHAPES))
def test_updated_descriptor_is_the_decode_of_the_update(shape: str, make_image: Callable[..., Path]) -> None:
    """The allocator's deferred descriptor: PendingDesc of updated_desc (the new descriptor, derived from
    the old one) encodes to the very bytes update_group_desc writes for the same values, and updated_desc
    is parse_group_desc of those bytes but for bg_checksum (computed only when encoded), for random
    values (wider than the fields too) on every group; a value a 32-byte descriptor cannot hold is a
    ValueError from both."""
    variant, opts = _DESC_SHAPES[shape]
    image = make_image(variant, opts=opts)
    rnd = random.Random(53)
    keys = ["free_blocks", "free_inodes", "used_dirs", "flags", "itable_unused", "block_bitmap_csum",
            "inode_bitmap_csum"]
    with Filesystem.open(image) as fs:
        sb = fs.sb
        per_block = sb.block_size // sb.desc_size
        wide = sb.desc_size >= 64
        for _ in range(20):
            for g in range(sb.group_count):
                blk = descriptor_block(sb, g // per_block)
                off = (g % per_block) * sb.desc_size
                raw = fs.cache.read(blk)[off : off + sb.desc_size]
                old = parse_group_desc(sb, fs.fs_seed, g, raw, verify=False)
                values = {}
                for key in rnd.sample(keys, rnd.randint(1, len(keys))):
                    top = 1 << (32 if (wide or key.endswith("_csum")) and key != "flags" else 16)
                    values[key] = rnd.choice([0, 1, top - 1, rnd.randrange(top), rnd.randrange(1 << 16)])
                new = update_group_desc(sb, fs.fs_seed, g, raw, dict(values))
                desc = updated_desc(sb, old, values)
                assert PendingDesc(sb, fs.fs_seed, desc).encode(raw) == new
                fresh = parse_group_desc(sb, fs.fs_seed, g, new, verify=False)
                assert desc == dataclasses.replace(fresh, checksum=old.checksum)
        if not wide:
            raw = fs.cache.read(descriptor_block(sb, 0))[: sb.desc_size]
            old = parse_group_desc(sb, fs.fs_seed, 0, raw, verify=False)
            with pytest.raises(ValueError):
                update_group_desc(sb, fs.fs_seed, 0, raw, {"free_inodes": 1 << 16})
            with pytest.raises(ValueError):
                updated_desc(sb, old, {"free_inodes": 1 << 16})


@pytest.mark.parametrize("shape", ["default", "no64bit", "no64bit-nocsum", "b1024"])
def test_installed_descriptors_are_the_decode_of_their_bytes(shape: str, make_image: Callable[..., Path]) -> None:
    """After allocations and frees of blocks and inodes (files, directories, removals), every descriptor the
    read side holds (its record still deferred) is what a fresh decode of the descriptor bytes gives once
    a read patched them in, but for bg_checksum, computed only then; and they verify."""
    variant, opts = _DESC_SHAPES[shape]
    image = make_image(variant, opts=opts)
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    rnd = random.Random(59)
    live: list[bytes] = []
    for i in range(300):
        if live and rnd.random() < 0.3:
            b.unlink(ROOT, live.pop(rnd.randrange(len(live))))
        elif rnd.random() < 0.1:
            b.mkdir(ROOT, b"d%d" % i, 0o755, 0, 0)
        else:
            name = b"f%d" % i
            fh, _a = b.create(ROOT, name, 0o644, OpenFlags.WRITE, 0, 0)
            b.write(fh, 0, b"y" * rnd.choice([1, 5000, 70000]))
            b.release(fh)
            live.append(name)
        sb = fs.sb
        per_block = sb.block_size // sb.desc_size
        for g, slot in list(fs._descs.items()):
            # Served before its record is patched in (deferred), and after (the read patches it in).
            served = fs.group_desc(g)
            blk = descriptor_block(sb, g // per_block)
            off = (g % per_block) * sb.desc_size
            raw = fs.cache.read(blk)[off : off + sb.desc_size]
            fresh = parse_group_desc(sb, fs.fs_seed, g, raw, verify=True)
            assert dataclasses.replace(served, checksum=fresh.checksum) == fresh
            assert fs.group_desc(g) == fresh
        if i % 97 == 0:
            b.sync()
    b.close()
    check(image)


def test_inode_place_shortcut_agrees_with_the_descriptor(make_image: Callable[..., Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """inode_place answers from an inode slot checked at the current epoch: on every call of a write
    workload it is what the descriptor gives (_compute_place), and the shortcut is taken."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    real = Filesystem.inode_place
    taken = [0, 0]

    def checked(self: Filesystem, ino: int) -> tuple[int, int] | None:
        got = real(self, ino)
        assert got == self._compute_place(ino), ino
        slot = self._inodes._d.get(ino)
        taken[slot is not None and slot.epoch == self.cache.epoch] += 1
        return got

    monkeypatch.setattr(Filesystem, "inode_place", checked)
    rnd = random.Random(61)
    names: list[bytes] = []
    for i in range(200):
        if names and rnd.random() < 0.2:
            b.unlink(ROOT, names.pop(rnd.randrange(len(names))))
            continue
        name = b"f%d" % i
        fh, a = b.create(ROOT, name, 0o644, OpenFlags.WRITE, 0, 0)
        b.write(fh, 0, b"z" * rnd.choice([10, 5000]))
        b.setattr(a.ino, SetAttr(uid=rnd.randrange(5), gid=1))
        b.setattr(a.ino, SetAttr(mode=0o600))
        b.release(fh)
        names.append(name)
    assert taken[1] > 100 and taken[0] > 100, taken
    b.close()
    check(image)


def test_inode_place_shortcut_sees_a_descriptor_changed_behind_its_back(make_image: Callable[..., Path]) -> None:
    """A descriptor rewritten through the transaction without the engine's knowledge (its inode table's
    used part shrunk below a cached inode): inode_place and inode() follow the new descriptor."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    fh, a = b.create(ROOT, b"victim", 0o644, OpenFlags.WRITE, 0, 0)
    b.release(fh)
    ino = a.ino
    sb = fs.sb
    fs.inode(ino)
    place = fs.inode_place(ino)
    assert place is not None and place == fs._compute_place(ino)
    group, index = divmod(ino - 1, sb.inodes_per_group)
    per_block = sb.block_size // sb.desc_size
    blk = descriptor_block(sb, group // per_block)
    off = (group % per_block) * sb.desc_size
    data = fs.cache.read(blk)
    raw = update_group_desc(sb, fs.fs_seed, group, data[off : off + sb.desc_size],
                            {"itable_unused": sb.inodes_per_group - index})
    txn = fs.writer.txn
    txn.begin()
    try:
        txn.put(blk, data[:off] + raw + data[off + sb.desc_size :])
        assert fs.inode_place(ino) is None
        with pytest.raises(CorruptError):
            fs.inode(ino)
    finally:
        txn.abort()
    assert fs.inode_place(ino) == place
    b.close()
    check(image)


def test_inlined_lru_reads_refresh_as_lru_get(make_image: Callable[..., Path]) -> None:
    """inode() and getattr() read their caches with _Lru.get inlined: a hit (and a stale hit) moves the
    entry to the young end exactly as _Lru.get does, so eviction order is unchanged."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    inos = []
    for i in range(6):
        fh, a = b.create(ROOT, b"n%d" % i, 0o644, OpenFlags.WRITE, 0, 0)
        b.release(fh)
        inos.append(a.ino)
    for ino in inos:
        fs.getattr(ino)
    for cache, read in ((fs._inodes, fs.inode), (fs._attrs, fs.getattr)):
        for ino in (inos[2], inos[0], ROOT):
            read(ino)
            assert list(cache._d)[-1] == ino
        b.setattr(inos[4], SetAttr(uid=7))
        read(inos[1])  # a hit of an older epoch
        assert list(cache._d)[-1] == inos[1]
    b.close()
    check(image)


class _NoDevice:
    def pread(self, size: int, offset: int) -> bytes:  # pragma: no cover - never read here
        raise AssertionError("no reads")


@pytest.mark.parametrize("tracked", [None, 300])
def test_changed_run_stamps_as_changed_per_block(tracked: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """BlockCache.changed_run (one epoch for a run of data blocks) keeps unchanged()'s promise: True only
    for blocks not changed since that epoch, and, while the stamp table has room, True for every
    such block (as many proofs as changed() per block gives).  With a tiny table, the fold into the
    floor keeps the promise too."""
    from volfs.ext4 import cache as cache_mod
    from volfs.ext4.cache import BlockCache

    if tracked is not None:
        monkeypatch.setattr(cache_mod, "_MAX_TRACKED_BLOCKS", tracked)
    rnd = random.Random(67 + (tracked or 0))
    c = BlockCache(_NoDevice(), 4096, 1 << 20)  # type: ignore[arg-type]
    last_change: dict[int, int] = {}  # block -> step of its last change (the model)
    snaps: list[tuple[int, int]] = []  # (epoch, step) moments a decoded structure could be stamped with
    for step in range(1, 4000):
        roll = rnd.random()
        if roll < 0.4:
            b = rnd.randrange(2000)
            c.changed(b)
            last_change[b] = step
        elif roll < 0.8:
            b, n = rnd.randrange(2000), rnd.randint(1, 256)
            c.changed_run(b, n)
            for x in range(b, b + n):
                last_change[x] = step
        else:
            snaps.append((c.epoch, step))
        for _ in range(5):
            if not snaps:
                break
            epoch, at = snaps[rnd.randrange(len(snaps))]
            b = rnd.randrange(2300)
            really = last_change.get(b, 0) <= at
            got = c.unchanged(b, epoch)
            assert not got or really, (b, epoch, at)
            if tracked is None:
                assert got == really, (b, epoch, at)


@pytest.mark.parametrize("variant", ["default", "i128"])
def test_setattr_times_are_the_per_field_definition(variant: str, make_image: Callable[..., Path]) -> None:
    """Writer.setattr sets equal atime and mtime in one set_times call: the stored record is the one
    setting each time on its own gives, for equal, different and absent times, on 256- and 128-byte
    inodes (where the times lose their nanoseconds)."""
    from volfs.ext4.inode import InodeEditor

    image = make_image(variant)
    rnd = random.Random(71)
    with Filesystem.open(image, readonly=False) as fs:
        w = fs.writer
        ino = w.create(2, b"t", 0o100644, 0, 0)
        for _ in range(300):
            t = rnd.choice([0, 1, -1, 1 << 33, rnd.randrange(-(1 << 40), 1 << 63), 1_700_000_000_123_456_789])
            atime = rnd.choice([None, t, rnd.randrange(1 << 62)])
            mtime = rnd.choice([None, t, atime, rnd.randrange(1 << 62)])
            ctime = rnd.randrange(1 << 62)
            before = fs.inode(ino)
            want = InodeEditor(before.raw)
            if atime is not None:
                want.set_time("a", atime)
            if mtime is not None:
                want.set_time("m", mtime)
            want.set_time("c", ctime)
            w.setattr(ino, atime_ns=atime, mtime_ns=mtime, ctime_ns=ctime)
            assert fs.inode(ino).raw == want.finish(fs.fs_seed if fs.sb.metadata_csum else None, ino)
    check(image)


def test_direct_setters_write_what_set_writes() -> None:
    """set_size/set_blocks/set_uid/set_gid pack the base fields directly: the record is the one the
    by-name set() definition gives, for random records of every shape and values up to the limits
    (errors included)."""
    from volfs.ext4.inode import EXT4_HUGE_FILE_FL, InodeEditor

    def by_set(ed: InodeEditor, what: str, v: int) -> None:
        if what == "size":
            ed.set("i_size_lo", v & 0xFFFFFFFF)
            ed.set("i_size_high", v >> 32)
        elif what == "blocks":
            if v >= 1 << 48:
                raise ValueError("i_blocks beyond 48 bits")
            ed.set("i_blocks_lo", v & 0xFFFFFFFF)
            ed.set("l_i_blocks_high", v >> 32)
            ed.set("i_flags", ed.get("i_flags") & ~EXT4_HUGE_FILE_FL)
        else:
            lo, hi = ("i_uid", "l_i_uid_high") if what == "uid" else ("i_gid", "l_i_gid_high")
            ed.set(lo, v & 0xFFFF)
            ed.set(hi, (v >> 16) & 0xFFFF)

    rnd = random.Random(73)
    for _ in range(5000):
        size = rnd.choice([128, 256, 1024])
        raw = bytes(rnd.randrange(256) for _ in range(size))
        what = rnd.choice(["size", "blocks", "uid", "gid"])
        v = rnd.choice([0, 1, (1 << 32) - 1, 1 << 32, (1 << 48) - 1, 1 << 48, (1 << 64) - 1, 1 << 64,
                        rnd.randrange(1 << 70), rnd.randrange(1 << 20)])
        fast, slow = InodeEditor(raw), InodeEditor(raw)
        outcome = []
        for ed, fn in ((fast, lambda: getattr(fast, "set_" + what)(v)), (slow, lambda: by_set(slow, what, v))):
            try:
                fn()
                outcome.append(bytes(ed.buf))
            except (ValueError, OverflowError, struct.error) as exc:
                outcome.append(type(exc))
        assert outcome[0] == outcome[1], (what, v, size)


# --- data written in parts (Transaction.write_data without joining) ---------------------------------------------


@pytest.mark.parametrize("most", [None, 1, 5, 4096])
def test_file_device_pwritev_writes_every_part_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        most: int | None) -> None:
    import os

    from volfs.ext4.device import FileDevice

    img = tmp_path / "dev.img"
    img.write_bytes(bytes(20000))
    if most is not None:
        # A kernel may write less than asked: at most ``most`` bytes per call here.
        real = os.pwritev

        def short(fd: int, bufs: list[memoryview], offset: int) -> int:
            left, cut = most, []
            for b in bufs:
                cut.append(b[:left])
                left -= len(cut[-1])
                if not left:
                    break
            return real(fd, cut, offset)

        monkeypatch.setattr(os, "pwritev", short)
    dev = FileDevice(img, writable=True)
    parts = [b"head-", memoryview(b"0123456789" * 700)[3:], b"", bytearray(b"-tail")]
    dev.pwritev(parts, 1000)
    dev.close()
    want = b"".join(bytes(p) for p in parts)
    assert img.read_bytes() == bytes(1000) + want + bytes(20000 - 1000 - len(want))


def test_file_device_pwritev_refuses_like_pwrite(tmp_path: Path) -> None:
    from volfs.ext4.device import FileDevice, MemoryDevice

    img = tmp_path / "dev.img"
    img.write_bytes(bytes(100))
    ro = FileDevice(img)
    with pytest.raises(OSError) as e:
        ro.pwritev([b"x"], 0)
    assert e.value.errno == 30  # EROFS
    ro.close()
    rw = FileDevice(img, writable=True)
    with pytest.raises(OSError) as e:
        rw.pwritev([b"x" * 60, b"y" * 41], 0)
    assert e.value.errno == 5  # EIO: past the end, and nothing written
    rw.close()
    assert img.read_bytes() == bytes(100)
    mem = MemoryDevice(bytes(10), writable=True)
    mem.pwritev([b"ab", memoryview(b"cd")], 3)
    assert mem.data == b"\0\0\0abcd\0\0\0"


def test_partial_block_writes_keep_the_edges(make_image: Callable[..., Path]) -> None:
    # Writes that start and end inside blocks go to the device as (old head, data, old tail) in one call.
    img = make_image({})
    b = Ext4Backend(img, readonly=False)
    created = b.create(Ino(2), b"f", 0o644, OpenFlags.READ | OpenFlags.WRITE, 0, 0)
    fh = created[0]
    b.write(fh, 0, b"A" * 10000)
    b.write(fh, 5000, b"B" * 100)  # inside block 1: its head and tail stay A
    b.write(fh, 9000, b"C" * 3000)  # across blocks 2 (head stays A) and the end of the file
    b.release(fh)
    b.close()
    check(img)
    want = bytearray(b"A" * 10000)
    want[5000:5100] = b"B" * 100
    want[9000:12000] = b"C" * 3000
    import subprocess

    got = subprocess.run(["debugfs", "-R", "cat /f", str(img)], capture_output=True, check=True).stdout
    assert got == bytes(want)


# --- inode generations -----------------------------------------------------------------------------------


def test_new_inodes_get_distinct_generations(make_image: Callable[..., Path]) -> None:
    import subprocess

    img = make_image({})
    b = Ext4Backend(img, readonly=False)
    for i in range(40):
        b.release(b.create(Ino(2), b"g%d" % i, 0o644, OpenFlags.WRITE, 0, 0)[0])
    b.close()
    check(img)
    gens = set()
    for i in range(40):
        out = subprocess.run(["debugfs", "-R", f"stat /g{i}", str(img)], capture_output=True, text=True,
                             check=True).stdout
        gens.add(int(out.split("Generation:")[1].split()[0]))
    assert len(gens) == 40


def test_a_forked_writer_does_not_repeat_its_parents_generations() -> None:
    import os

    from volfs.ext4.writer import _GENERATIONS

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, _GENERATIONS.getrandbits(64).to_bytes(8, "little"))
        os._exit(0)
    os.close(w)
    child = int.from_bytes(os.read(r, 8), "little")
    os.close(r)
    os.waitpid(pid, 0)
    assert child != _GENERATIONS.getrandbits(64)


def test_transaction_patch_is_a_put_of_the_patched_block() -> None:
    from volfs.ext4.cache import BlockCache
    from volfs.ext4.device import MemoryDevice
    from volfs.ext4.transaction import Transaction

    dev = MemoryDevice(bytes(range(256)) * 16 * 4, writable=True)  # 4 blocks of 4 KiB
    cache = BlockCache(dev, 4096, 4)
    txn = Transaction(cache, dev)
    before = cache.read(2)
    txn.begin()
    new = txn.patch(2, 4090, b"ABCDEF")
    assert type(new) is bytes and len(new) == 4096
    assert new == before[:4090] + b"ABCDEF"
    assert cache.read(2) is new  # what readers are served from now on
    new = txn.patch(2, 0, b"xy")
    assert new == b"xy" + before[2:4090] + b"ABCDEF"
    txn.abort()  # undone like any put
    assert cache.read(2) == before
    assert dev.data[2 * 4096 : 3 * 4096] == before  # nothing reached the device


# --- the first write of a file without blocks (whole mapping at once) ---------------------------------------


def _leaf_extents(img: Path, path: str) -> list[tuple[int, int, int]]:
    """(logical, physical, length) of every leaf extent of ``path``, by debugfs."""
    import subprocess

    out = subprocess.run(["debugfs", "-R", f"ex {path}", str(img)], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        cols = line.replace("-", " ").replace("/", " ").split()
        # "Level Entries Logical Physical Length Flags": leaf rows are those at the deepest level
        if len(cols) >= 8 and cols[0] == cols[1]:
            rows.append((int(cols[4]), int(cols[6]), int(cols[-1]) if cols[-1].isdigit() else int(cols[-2])))
    return rows


@pytest.mark.parametrize("writes", [
    [(0, 1)], [(0, 4096)], [(0, 10240)], [(0, 1 << 20)], [(5000, 3000)], [(1 << 22, 100)],
    [(0, 10240), (10240, 10240), (20480, 7)],
], ids=str)
@pytest.mark.parametrize("fragmented", [False, True], ids=["contiguous", "fragmented"])
def test_first_write_maps_as_the_tree_editor_does(make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                                  writes: list[tuple[int, int]], fragmented: bool) -> None:
    import subprocess

    from volfs.ext4 import writer as writer_mod

    def build(generic: bool) -> Path:
        if generic:  # no file ever looks fresh: every write goes through the tree editor
            root = writer_mod._EMPTY_EXTENT_ROOT
            monkeypatch.setattr(writer_mod, "_empty_extent_root", lambda: root)
            monkeypatch.setattr(writer_mod, "_EMPTY_EXTENT_ROOT", b"never")
        else:
            monkeypatch.undo()
        img = make_image({})
        b = Ext4Backend(img, readonly=False)
        if fragmented:  # free space in 8-block holes: a large write takes many runs
            for i in range(40):
                fh = b.create(Ino(2), b"pad%d" % i, 0o644, OpenFlags.WRITE, 0, 0)[0]
                b.write(fh, 0, b"p" * 8 * 4096)
                b.release(fh)
            b.sync()
            for i in range(0, 40, 2):
                b.unlink(Ino(2), b"pad%d" % i)
            b.sync()
        fh = b.create(Ino(2), b"f", 0o644, OpenFlags.WRITE, 0, 0)[0]
        for off, n in writes:
            b.write(fh, off, bytes([65 + off % 26]) * n)
        b.release(fh)
        b.close()
        check(img)
        return img

    fast = build(False)
    fast_ext = _leaf_extents(fast, "/f")
    fast_data = subprocess.run(["debugfs", "-R", "cat /f", str(fast)], capture_output=True, check=True).stdout
    fast.rename(fast.with_name("fast.img"))
    generic = build(True)
    assert fast_ext == _leaf_extents(generic, "/f")
    assert fast_data == subprocess.run(["debugfs", "-R", "cat /f", str(generic)], capture_output=True,
                                       check=True).stdout
    if fragmented and writes == [(0, 1 << 20)]:
        assert len(fast_ext) > 4  # the case that needs a tree block


_ACCESS = b"system.posix_acl_access"
# user::rw- user:1000:r-- group::r-- mask::rw- other::--- (posix_acl_xattr format)
_FILE_ACL = [(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]


@pytest.mark.parametrize("variant", ["default", "inline", "i128"])
def test_a_write_with_its_changes_stores_what_a_write_then_a_setattr_store(
        make_image: Callable[..., Path], variant: str) -> None:
    """Backend.write's ``then`` (one engine operation, the record stored once) against the two calls
    it replaces, on twin files: every attribute but ctime equal, the same data and ACL, for an
    empty, an inline-sized and a multi-block write, times, owners, a mode (with an access ACL that
    must follow it), and the NOW marker; a size among the changes is refused before anything."""
    image = make_image(variant)
    b = Ext4Backend(image, readonly=False)
    try:
        cases = [
            (b"", SetAttr(mtime_ns=1_500_000_000_123_456_789)),
            (b"x" * 50, SetAttr(atime_ns=1_400_000_000_000_000_001, mtime_ns=1_400_000_000_000_000_001)),
            (b"y" * 50_000, SetAttr(mtime_ns=1_600_000_000_987_654_321, uid=1000, gid=70000)),
            (b"z" * 9000, SetAttr(mode=0o640)),
            (b"w" * 5000, SetAttr(mode=0o4755, uid=0, gid=0)),
        ]
        for i, (data, changes) in enumerate(cases):
            fused, fused_ino = b.create(ROOT, b"fused%d" % i, 0o600, OpenFlags.WRITE, 0, 0)
            apart, apart_ino = b.create(ROOT, b"apart%d" % i, 0o600, OpenFlags.WRITE, 0, 0)
            if changes.mode is not None:
                for ino in (fused_ino.ino, apart_ino.ino):
                    b.setxattr(ino, _ACCESS, images.acl_xattr(_FILE_ACL))
            assert b.write(fused, 0, data, then=changes) == len(data)
            assert b.write(apart, 0, data) == len(data)
            b.setattr(apart_ino.ino, changes)
            got, want = b.getattr(fused_ino.ino), b.getattr(apart_ino.ino)
            for field in ("mode", "nlink", "uid", "gid", "size", "blocks"):
                assert getattr(got, field) == getattr(want, field), (variant, i, field)
            # Times the changes do not set are the clock's (the twins are made one after the other).
            for field, value in (("atime_ns", changes.atime_ns), ("mtime_ns", changes.mtime_ns)):
                if value is not None:
                    assert getattr(got, field) == getattr(want, field), (variant, i, field)
            assert got.mtime_ns == want.mtime_ns if changes.mtime_ns is not None else got.mtime_ns >= got.atime_ns
            assert got.ctime_ns >= got.atime_ns and want.ctime_ns >= want.atime_ns
            if changes.mode is not None:
                acl = b.getxattr(fused_ino.ino, _ACCESS)
                assert acl == b.getxattr(apart_ino.ino, _ACCESS)
                assert acl != images.acl_xattr(_FILE_ACL)  # it did follow the mode
            for fh, ino in ((fused, fused_ino.ino), (apart, apart_ino.ino)):
                b.release(fh)
                rfh = b.open(ino, OpenFlags.READ)
                assert b.read(rfh, 0, 1 << 20) == data
                b.release(rfh)
        # NOW in the changes is the backend's clock, as setattr's.
        fh, attr = b.create(ROOT, b"now", 0o600, OpenFlags.WRITE, 0, 0)
        before = time.time_ns()
        b.write(fh, 0, b"n", then=SetAttr(mtime_ns=NOW))
        assert before - before % 10**9 <= b.getattr(attr.ino).mtime_ns <= time.time_ns()  # (i128: seconds only)
        # A size is not a write's change: EINVAL, and the write did not happen either.
        with pytest.raises(VolfsError) as err:
            b.write(fh, 1, b"more", then=SetAttr(size=0))
        assert err.value.errno == errno.EINVAL
        assert b.getattr(attr.ino).size == 1
        b.release(fh)
    finally:
        b.close()
    check(image)


@pytest.mark.parametrize("variant", ["default", "i128", "inline-i1024", "b1024", "csumseed"])
def test_records_built_from_their_changes_are_the_decode_of_their_bytes(
        make_image: Callable[..., Path], variant: str) -> None:
    """setattr and a directory's new times hand the read side a record built from the old one and
    the changes (with_attrs), not decoded: after random setattrs (times before 1970, past 2038,
    past what the format holds, odd nanoseconds; owners past 16 bits; modes with the special
    bits) and creates, every record the read side holds equals a verified decode of its bytes."""
    from volfs.ext4.superblock import INCOMPAT_LARGEDIR, RO_COMPAT_HUGE_FILE

    image = make_image(variant)
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    rnd = random.Random(61)
    times = [0, 1, -1, -(1 << 31) * 10**9 - 5, (1 << 31) * 10**9 + 999_999_999, (1 << 34) * 10**9,
             (1 << 40) * 10**9, 1_700_000_000_123_456_789, -123_456_789]
    files = []
    for i in range(120):
        if not files or rnd.random() < 0.3:
            parent = ROOT if not files or rnd.random() < 0.5 else b.mkdir(ROOT, b"d%d" % i, 0o755, 0, 0).ino
            fh, attr = b.create(parent, b"f%d" % i, 0o644, OpenFlags.WRITE, 0, 0)
            b.release(fh)
            files.append(attr.ino)
        ino = rnd.choice(files)
        kind = rnd.randrange(4)
        if kind == 0:
            changes = SetAttr(mode=rnd.choice([0o7777, 0o4755, 0o2640, 0, 0o600]))
        elif kind == 1:
            changes = SetAttr(uid=rnd.choice([0, 1000, 65535, 65536, 70000, (1 << 32) - 2, (1 << 32) + 5]),
                              gid=rnd.choice([0, 100, 65537, (1 << 31) + 3]))
        elif kind == 2:
            t = rnd.choice(times)
            changes = SetAttr(atime_ns=t, mtime_ns=t if rnd.random() < 0.5 else rnd.choice(times))
        else:
            changes = SetAttr(mtime_ns=rnd.choice(times), mode=0o640, uid=rnd.randrange(1 << 20))
        b.setattr(ino, changes)
        sb = fs.sb
        for n, slot in list(fs._inodes._d.items()):
            blk, off = fs.inode_place(n)
            raw = fs.cache.read(blk)[off : off + sb.inode_size]
            want = parse_inode(n, raw, large_dir=sb.has_incompat(INCOMPAT_LARGEDIR),
                               huge_file=sb.has_ro_compat(RO_COMPAT_HUGE_FILE), block_size=sb.block_size,
                               csum_seed=fs.fs_seed if sb.metadata_csum else None)
            assert fs.inode(n) == want, (variant, i, n, changes)
        if i % 50 == 0:
            b.sync()
    b.close()
    check(image)
