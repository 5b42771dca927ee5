"""Checksum helpers: raw crc32c (no final inversion) and the gdt crc16.

ext4 and jbd2 chain *raw* crc32c values: ``raw(seed, data)``, with no
pre- or post-inversion of its own.  The usual library function computes
``crc32c(data) == raw(~0, data) ^ ~0``; continuing from a previous standard
value ``v`` is ``raw(v ^ ~0, data) ^ ~0``.  So ``raw(seed, data)`` is the
library's value continued from ``seed ^ ~0``, inverted once more.
The crc32c wheel uses the CPU's crc instruction; a table-driven fallback
keeps the engine importable without it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["crc32c_raw", "crc16", "fs_seed", "inode_seed"]

_MASK = 0xFFFFFFFF


def _make_table(poly: int, bits: int) -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c & ((1 << bits) - 1))
    return table


_crc32c_lib: Callable[[bytes, int], int] | None
try:
    import crc32c as _crc32c_mod

    _crc32c_lib = _crc32c_mod.crc32c
except ImportError:  # pragma: no cover - exercised only without the wheel
    _crc32c_lib = None

_CRC32C_TABLE = _make_table(0x82F63B78, 32)


def _crc32c_raw_py(seed: int, data: bytes | bytearray | memoryview) -> int:
    crc = seed & _MASK
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """crc32c of ``data`` chained from ``seed``, without final inversion."""
    if _crc32c_lib is None:
        return _crc32c_raw_py(seed, data)
    return _crc32c_lib(bytes(data) if not isinstance(data, bytes) else data, (seed ^ _MASK) & _MASK) ^ _MASK


_CRC16_TABLE = _make_table(0xA001, 16)


def crc16(seed: int, data: bytes | bytearray | memoryview) -> int:
    """The reflected crc16 (poly 0x8005) of e2fsprogs' ext2fs_crc16."""
    crc = seed & 0xFFFF
    table = _CRC16_TABLE
    for byte in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def fs_seed(uuid: bytes, csum_seed_flag: bool, s_checksum_seed: int) -> int:
    """The filesystem checksum seed (s_checksum_seed or crc of s_uuid)."""
    if csum_seed_flag:
        return s_checksum_seed
    return crc32c_raw(_MASK, uuid)


# Per-inode seeds by (fs seed, inode, generation).  A pure function of its key, so the memo can
# never be stale; it is wanted because every inode, extent-block and directory-block checksum of
# one inode starts from the same seed.  Bounded: it starts over when full.
_INODE_SEEDS: dict[tuple[int, int, int], int] = {}
_INODE_SEEDS_MAX = 4096
_LE32X2 = struct.Struct("<II")


def inode_seed(fs: int, ino: int, generation: int) -> int:
    """The per-inode seed: crc(fs seed, le32 ino, le32 i_generation)."""
    key = (fs, ino, generation)
    seed = _INODE_SEEDS.get(key)
    if seed is None:
        # One crc over both words: crc chaining makes it crc(crc(fs, ino), generation).
        seed = crc32c_raw(fs, _LE32X2.pack(ino & _MASK, generation & _MASK))
        if len(_INODE_SEEDS) >= _INODE_SEEDS_MAX:
            _INODE_SEEDS.clear()
        _INODE_SEEDS[key] = seed
    return seed
