"""The tar-extraction path's shortcuts answer exactly as the definitions they replace.

Pinned here: the inlined inode decoder against a by-name decode of
inodes.rst (every field, every i_extra_isize, corrupt records refused
alike).
"""

from __future__ import annotations

import random
import stat

import pytest

from volfs.errors import CorruptError
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
