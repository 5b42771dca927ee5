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


def _str2hashbuf_words(data: bytes, length: int, num: int) -> list[int]:
    """:func:`_str2hashbuf` of ``list(data)`` (characters 0-255: unsigned, or signed without a byte
    above 0x7F), word by word.

    Feeding four such characters shifts the pad out of the 32-bit value, which is then the
    big-endian value of their bytes; a last, partial word keeps the pad above its bytes.
    """
    pad = (length | (length << 8)) & _M
    pad = (pad | (pad << 16)) & _M
    n = min(len(data), num * 4)
    whole = n & ~3
    out = [int.from_bytes(data[i : i + 4], "big") for i in range(0, whole, 4)]
    rest = n - whole
    if rest or len(out) < num:
        out.append(((pad << (8 * rest)) | int.from_bytes(data[whole:n], "big")) & _M if rest else pad)
    while len(out) < num:
        out.append(pad)
    return out


def _half_md4(buf: list[int], inp: Sequence[int]) -> None:
    """The kernel's ``half_md4_transform``, unrolled (three rounds of eight steps)."""
    m = _M
    a, b, c, d = buf
    i0, i1, i2, i3, i4, i5, i6, i7 = inp[0], inp[1], inp[2], inp[3], inp[4], inp[5], inp[6], inp[7]
    # Round 1: F(x, y, z) = z ^ (x & (y ^ z)), K1 = 0.
    x = (a + (d ^ (b & (c ^ d))) + i0) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (c ^ (a & (b ^ c))) + i1) & m
    d = ((x << 7) | (x >> 25)) & m
    x = (c + (b ^ (d & (a ^ b))) + i2) & m
    c = ((x << 11) | (x >> 21)) & m
    x = (b + (a ^ (c & (d ^ a))) + i3) & m
    b = ((x << 19) | (x >> 13)) & m
    x = (a + (d ^ (b & (c ^ d))) + i4) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (c ^ (a & (b ^ c))) + i5) & m
    d = ((x << 7) | (x >> 25)) & m
    x = (c + (b ^ (d & (a ^ b))) + i6) & m
    c = ((x << 11) | (x >> 21)) & m
    x = (b + (a ^ (c & (d ^ a))) + i7) & m
    b = ((x << 19) | (x >> 13)) & m
    # Round 2: G(x, y, z) = (x & y) + ((x ^ y) & z), K2 = 013240474631.
    k = 0o13240474631
    x = (a + (b & c) + ((b ^ c) & d) + i1 + k) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (a & b) + ((a ^ b) & c) + i3 + k) & m
    d = ((x << 5) | (x >> 27)) & m
    x = (c + (d & a) + ((d ^ a) & b) + i5 + k) & m
    c = ((x << 9) | (x >> 23)) & m
    x = (b + (c & d) + ((c ^ d) & a) + i7 + k) & m
    b = ((x << 13) | (x >> 19)) & m
    x = (a + (b & c) + ((b ^ c) & d) + i0 + k) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (a & b) + ((a ^ b) & c) + i2 + k) & m
    d = ((x << 5) | (x >> 27)) & m
    x = (c + (d & a) + ((d ^ a) & b) + i4 + k) & m
    c = ((x << 9) | (x >> 23)) & m
    x = (b + (c & d) + ((c ^ d) & a) + i6 + k) & m
    b = ((x << 13) | (x >> 19)) & m
    # Round 3: H(x, y, z) = x ^ y ^ z, K3 = 015666365641.
    k = 0o15666365641
    x = (a + (b ^ c ^ d) + i3 + k) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (a ^ b ^ c) + i7 + k) & m
    d = ((x << 9) | (x >> 23)) & m
    x = (c + (d ^ a ^ b) + i2 + k) & m
    c = ((x << 11) | (x >> 21)) & m
    x = (b + (c ^ d ^ a) + i6 + k) & m
    b = ((x << 15) | (x >> 17)) & m
    x = (a + (b ^ c ^ d) + i1 + k) & m
    a = ((x << 3) | (x >> 29)) & m
    x = (d + (a ^ b ^ c) + i5 + k) & m
    d = ((x << 9) | (x >> 23)) & m
    x = (c + (d ^ a ^ b) + i0 + k) & m
    c = ((x << 11) | (x >> 21)) & m
    x = (b + (c ^ d ^ a) + i4 + k) & m
    b = ((x << 15) | (x >> 17)) & m
    buf[0] = (buf[0] + a) & m
    buf[1] = (buf[1] + b) & m
    buf[2] = (buf[2] + c) & m
    buf[3] = (buf[3] + d) & m


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


# Hashes already computed, by (name, version, seed): a create hashes its name for the lookup,
# for the insert, and again when the leaf splits.  A pure function, so the memo is never stale.
_MEMO: dict[tuple[bytes, int, tuple[int, ...]], tuple[int, int]] = {}
_MEMO_MAX: Final = 8192


def dirhash(name: bytes, version: int, seed: Sequence[int] = (0, 0, 0, 0)) -> tuple[int, int]:
    """(major, minor) hash of ``name``; raises ValueError for an unknown version."""
    key = (bytes(name), version, tuple(seed))
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    out = _dirhash(name, version, seed)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[key] = out
    return out


def _dirhash(name: bytes, version: int, seed: Sequence[int]) -> tuple[int, int]:
    buf = list(seed) if any(seed) else list(_DEFAULT_SEED)
    signed = version in (HASH_LEGACY, HASH_HALF_MD4, HASH_TEA)
    chars = _chars(name, signed)
    minor = 0
    if version in (HASH_LEGACY, HASH_LEGACY_UNSIGNED):
        major = _legacy(chars)
    elif version in (HASH_HALF_MD4, HASH_HALF_MD4_UNSIGNED):
        pos = 0
        remaining = len(chars)
        # Characters 0-255 (no negative signed char): whole words at once (_str2hashbuf_words).
        data = bytes(name) if not signed or bytes(name).isascii() else None
        while remaining > 0:
            words = _str2hashbuf_words(data[pos:], remaining, 8) if data is not None else \
                _str2hashbuf(chars[pos:], remaining, 8)
            _half_md4(buf, words)
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
