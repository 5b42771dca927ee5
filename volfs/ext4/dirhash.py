"""Directory-index name hashes (legacy, half-MD4, TEA; signed and unsigned).

The signed and unsigned variants differ only in how name bytes above 0x7F
are widened (as C ``signed char`` or ``unsigned char``).  A zero
``s_hash_seed`` means the default MD4 constants.  The result's low bit is
cleared (it marks hash-collision continuation in the index), and the value
``0xFFFFFFFE`` (the 32-bit EOF marker) is moved one step down, as the kernel
does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["dirhash", "HASH_LEGACY", "HASH_HALF_MD4", "HASH_TEA", "HASH_LEGACY_UNSIGNED",
           "HASH_HALF_MD4_UNSIGNED", "HASH_TEA_UNSIGNED", "HASH_SIPHASH", "HASH_NAMES"]

HASH_LEGACY: Final = 0
HASH_HALF_MD4: Final = 1
HASH_TEA: Final = 2
HASH_LEGACY_UNSIGNED: Final = 3
HASH_HALF_MD4_UNSIGNED: Final = 4
HASH_TEA_UNSIGNED: Final = 5
HASH_SIPHASH: Final = 6
HASH_NAMES: Final = {0: "legacy", 1: "half_md4", 2: "tea", 3: "legacy_unsigned", 4: "half_md4_unsigned",
                     5: "tea_unsigned", 6: "siphash"}

_M: Final = 0xFFFFFFFF
_DEFAULT_SEED: Final = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)


def _chars(name: bytes, signed: bool) -> list[int]:
    if signed:
        return [c - 256 if c >= 128 else c for c in name]
    return list(name)


def _legacy(chars: Sequence[int]) -> int:
    h0, h1 = 0x12A3FE2D, 0x37ABE8F9
    for c in chars:
        h = (h1 + (h0 ^ ((c * 7152373) & _M))) & _M
        if h & 0x80000000:
            h = (h - 0x7FFFFFFF) & _M
        h1, h0 = h0, h
    return (h0 << 1) & _M


def _str2hashbuf(chars: Sequence[int], length: int, num: int) -> list[int]:
    pad = (length | (length << 8)) & _M
    pad = (pad | (pad << 16)) & _M
    val = pad
    out: list[int] = []
    n = min(len(chars), num * 4)
    for i in range(n):
        val = (chars[i] + ((val << 8) & _M)) & _M
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    while len(out) < num:
        out.append(pad)
    return out


def _rotl(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & _M


def _half_md4(buf: list[int], inp: Sequence[int]) -> None:
    v = list(buf)

    def f(x: int, y: int, z: int) -> int:
        return z ^ (x & (y ^ z))

    def g(x: int, y: int, z: int) -> int:
        return ((x & y) + ((x ^ y) & z)) & _M

    def h(x: int, y: int, z: int) -> int:
        return x ^ y ^ z

    rounds = (
        (f, 0, ((0, 3), (1, 7), (2, 11), (3, 19), (4, 3), (5, 7), (6, 11), (7, 19))),
        (g, 0o13240474631, ((1, 3), (3, 5), (5, 9), (7, 13), (0, 3), (2, 5), (4, 9), (6, 13))),
        (h, 0o15666365641, ((3, 3), (7, 9), (2, 11), (6, 15), (1, 3), (5, 9), (0, 11), (4, 15))),
    )
    for fn, k, steps in rounds:
        for n, (i, s) in enumerate(steps):
            # The updated word cycles a, d, c, b; the other three feed the round function in order.
            t = (0, 3, 2, 1)[n % 4]
            x = (v[t] + fn(v[(t + 1) % 4], v[(t + 2) % 4], v[(t + 3) % 4]) + inp[i] + k) & _M
            v[t] = _rotl(x, s)
    for i in range(4):
        buf[i] = (buf[i] + v[i]) & _M


def _tea(buf: list[int], inp: Sequence[int]) -> None:
    s = 0
    b0, b1 = buf[0], buf[1]
    a, b, c, d = inp[0], inp[1], inp[2], inp[3]
    for _ in range(16):
        s = (s + 0x9E3779B9) & _M
        b0 = (b0 + ((((b1 << 4) + a) & _M) ^ ((b1 + s) & _M) ^ (((b1 >> 5) + b) & _M))) & _M
        b1 = (b1 + ((((b0 << 4) + c) & _M) ^ ((b0 + s) & _M) ^ (((b0 >> 5) + d) & _M))) & _M
    buf[0] = (buf[0] + b0) & _M
    buf[1] = (buf[1] + b1) & _M


def dirhash(name: bytes, version: int, seed: Sequence[int] = (0, 0, 0, 0)) -> tuple[int, int]:
    """(major, minor) hash of ``name``; raises ValueError for an unknown version."""
    buf = list(seed) if any(seed) else list(_DEFAULT_SEED)
    signed = version in (HASH_LEGACY, HASH_HALF_MD4, HASH_TEA)
    chars = _chars(name, signed)
    minor = 0
    if version in (HASH_LEGACY, HASH_LEGACY_UNSIGNED):
        major = _legacy(chars)
    elif version in (HASH_HALF_MD4, HASH_HALF_MD4_UNSIGNED):
        pos = 0
        remaining = len(chars)
        while remaining > 0:
            _half_md4(buf, _str2hashbuf(chars[pos:], remaining, 8))
            remaining -= 32
            pos += 32
        major, minor = buf[1], buf[2]
    elif version in (HASH_TEA, HASH_TEA_UNSIGNED):
        pos = 0
        remaining = len(chars)
        while remaining > 0:
            _tea(buf, _str2hashbuf(chars[pos:], remaining, 4))
            remaining -= 16
            pos += 16
        major, minor = buf[0], buf[1]
    else:
        raise ValueError(f"unsupported hash version {version}")
    major &= ~1 & _M
    if major == (0x7FFFFFFF << 1):
        major = (0x7FFFFFFF - 1) << 1
    return major, minor
