"""Block devices: the only module of the engine that does I/O.

The engine reads the image through the :class:`BlockDevice` protocol, so
tests can run it on an in-memory image (:class:`MemoryDevice`) or on a
device that injects faults.  :class:`FileDevice` reads an image file with
``os.pread``; a read past the end of the device returns fewer bytes, and
the caller decides whether that is corruption.

The write side uses :class:`WritableBlockDevice`: ``pwrite`` of whole
buffers and ``sync`` (fsync).  Only the transaction (``transaction.py``)
calls them; a device opened read-only raises EROFS.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from volfs.errors import error

__all__ = ["BlockDevice", "WritableBlockDevice", "FileDevice", "MemoryDevice"]


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


@runtime_checkable
class WritableBlockDevice(BlockDevice, Protocol):
    """A block device that can also be written (the write side's device)."""

    @property
    def writable(self) -> bool:
        ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (EROFS on a read-only device)."""
        ...

    def pwritev(self, parts: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
        """Write all of ``parts``, one after the other, from ``offset`` (without joining them first)."""
        ...

    def sync(self) -> None:
        """Make every write so far durable (fsync)."""
        ...


def _bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A view of ``data`` whose len() counts bytes (a memoryview of wider items counts items)."""
    return memoryview(data).cast("B")


class FileDevice:
    """An image file, read-only unless opened with ``writable=True``."""

    __slots__ = ("path", "_fd", "_size", "writable", "bytes_written")

    def __init__(self, path: str | os.PathLike[str], writable: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        self.bytes_written = 0
        try:
            self._fd = os.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
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

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self.pwritev((data,), offset)

    def pwritev(self, parts: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
        if not self.writable:
            raise error(errno.EROFS, "image opened read-only", self.path)
        views = [v for v in map(_bytes_view, parts) if len(v)]
        total = sum(map(len, views))
        if offset < 0 or offset + total > self._size:
            raise error(errno.EIO, f"write of {total} bytes at {offset} beyond the image", self.path)
        try:
            while views:
                n = os.pwritev(self._fd, views, offset)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                offset += n
                self.bytes_written += n
                # Drop what was written: whole parts, then the head of the next one.
                while views and n >= len(views[0]):
                    n -= len(views.pop(0))
                if n:
                    views[0] = views[0][n:]
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"write error at byte {offset}: {exc.strerror}", self.path) from None

    def sync(self) -> None:
        if not self.writable:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise error(exc.errno or errno.EIO, f"fsync failed: {exc.strerror}", self.path) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemoryDevice:
    """An image held in memory (tests, and images handed over as bytes)."""

    __slots__ = ("_data", "writable", "bytes_written")

    def __init__(self, data: bytes | bytearray, writable: bool = False) -> None:
        self._data = bytearray(data)
        self.writable = writable
        self.bytes_written = 0

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if not self.writable:
            raise error(errno.EROFS, "memory image is read-only")
        n = len(data)
        if offset < 0 or offset + n > len(self._data):
            raise error(errno.EIO, f"write of {n} bytes at {offset} beyond the image")
        self._data[offset : offset + n] = data
        self.bytes_written += n

    def pwritev(self, parts: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
        self.pwrite(b"".join(parts), offset)

    def sync(self) -> None:
        pass

    @property
    def size(self) -> int:
        return len(self._data)

    def pread(self, size: int, offset: int) -> bytes:
        if size <= 0 or offset < 0:
            return b""
        return bytes(self._data[offset : offset + size])

    def close(self) -> None:
        pass
