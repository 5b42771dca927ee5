"""On-disk struct tables: each structure is declared once, as kernel names.

A :class:`Struct` is an ordered table of ``(kernel field name, struct code)``
pairs.  Its size, the offset of every field (for checksum ranges), unpacking
into a :class:`Record` and packing back are all derived from that one table.
Integer codes are ``B H I Q`` (and ``h`` for the few signed fields); byte
strings are ``<n>s``.  ext4 is little-endian, jbd2 big-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["Struct", "Record"]


class Record:
    """The unpacked fields of one struct instance, by kernel name."""

    __slots__ = ("struct", "_values")

    def __init__(self, st: Struct, values: dict[str, int | bytes]) -> None:
        self.struct: Final = st
        self._values = values

    def u(self, name: str) -> int:
        """The integer field ``name``."""
        v = self._values[name]
        if isinstance(v, bytes):
            raise TypeError(f"{self.struct.name}.{name} is a byte field")
        return v

    def b(self, name: str) -> bytes:
        """The byte-string field ``name``."""
        v = self._values[name]
        if not isinstance(v, bytes):
            raise TypeError(f"{self.struct.name}.{name} is an integer field")
        return v

    def values(self) -> dict[str, int | bytes]:
        return dict(self._values)

    def pack(self) -> bytes:
        return self.struct.pack(self._values)


class Struct:
    """A struct table; see the module docstring."""

    __slots__ = ("name", "fields", "offsets", "size", "_codec", "_names", "_endian", "_has_bytes", "_sizes")

    def __init__(self, name: str, fields: Sequence[tuple[str, str]], *, big_endian: bool = False,
                 size: int | None = None) -> None:
        self.name = name
        self._endian = ">" if big_endian else "<"
        self.fields: tuple[tuple[str, str], ...] = tuple(fields)
        self._names = tuple(n for n, _ in self.fields)
        self._has_bytes = any(code.endswith("s") for _, code in self.fields)
        if len(set(self._names)) != len(self._names):
            raise ValueError(f"duplicate field in {name}")
        self._codec = struct.Struct(self._endian + "".join(code for _, code in self.fields))
        offsets: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        pos = 0
        for fname, code in self.fields:
            offsets[fname] = pos
            self._sizes[fname] = struct.calcsize("<" + code)
            pos += self._sizes[fname]
        self.offsets: Mapping[str, int] = offsets
        self.size: int = self._codec.size
        if size is not None and size != self.size:
            raise ValueError(f"{name}: table is {self.size} bytes, expected {size}")

    def field_size(self, fname: str) -> int:
        return self._sizes[fname]

    def unpack(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Record:
        """Unpack one instance at ``offset``; the caller guarantees the length."""
        return Record(self, dict(zip(self._names, self._codec.unpack_from(buf, offset))))

    def unpack_tuple(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Any, ...]:
        """The raw values in table order (hot paths unpack them straight into locals)."""
        values: tuple[Any, ...] = self._codec.unpack_from(buf, offset)
        return values

    def unpack_ints(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, ...]:
        """The values of an all-integer struct in table order."""
        if self._has_bytes:
            raise TypeError(f"{self.name} has byte fields")
        values: tuple[int, ...] = self._codec.unpack_from(buf, offset)
        return values

    def pack(self, values: Mapping[str, int | bytes]) -> bytes:
        return self._codec.pack(*(values[n] for n in self._names))

    def pack_values(self, *values: int | bytes) -> bytes:
        """Pack the values given in table order (hot paths: no mapping built per call)."""
        return self._codec.pack(*values)

    def index(self, fname: str) -> int:
        return self._names.index(fname)
