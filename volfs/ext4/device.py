"""Block devices: the only module of the engine that does I/O.

The engine reads the image through the :class:`BlockDevice` protocol, so
tests can run it on an in-memory image (:class:`MemoryDevice`) or on a
device that injects faults.  :class:`FileDevice` reads an image file with
``os.pread``; a read past the end of the device returns fewer bytes, and
the caller decides whether that is corruption.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol, runtime_checkable

from volfs.errors import error

__all__ = ["BlockDevice", "FileDevice", "MemoryDevice"]


@runtime_checkable
class BlockDevice(Protocol):
    """Byte-addressed storage holding one filesystem image."""

    @property
    def size(self) -> int:
        """Size of the device in bytes."""
        ...

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; short only at the end of the device."""
        ...

    def close(self) -> None:
        ...


class FileDevice:
    """An image file opened read-only (writes arrive with the write side)."""

    __slots__ = ("path", "_fd", "_size")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"cannot open image: {exc.strerror}", self.path) from None
        try:
            self._size = os.fstat(self._fd).st_size
            if self._size == 0:
                # A block device: its size comes from seeking to the end.
                self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            os.close(self._fd)
            raise error(exc.errno or errno.EIO, f"cannot stat image: {exc.strerror}", self.path) from None

    @property
    def size(self) -> int:
        return self._size

    @property
    def fd(self) -> int:
        return self._fd

    def pread(self, size: int, offset: int) -> bytes:
        if size <= 0 or offset >= self._size:
            return b""
        size = min(size, self._size - offset)
        try:
            data = os.pread(self._fd, size, offset)
            if len(data) == size:
                return data
            parts = [data]
            got = len(data)
            while got < size:
                more = os.pread(self._fd, size - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"read error at byte {offset}: {exc.strerror}", self.path) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemoryDevice:
    """An image held in memory (tests, and images handed over as bytes)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self._data = bytes(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def pread(self, size: int, offset: int) -> bytes:
        if size <= 0 or offset < 0:
            return b""
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass
