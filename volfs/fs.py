"""VolumeFsHandle (alias VolumeFs): the async filesystem handle of a volume.

Theory of operation
-------------------
All semantics live in :class:`volfs.pathfs.PathFs`, the blocking twin with
the same method names and signatures. This class only moves each call to a
worker thread with :func:`anyio.to_thread.run_sync`, so it serves trio and
asyncio programs alike and never blocks the event loop. It adds nothing but
async shapes for the objects that outlive one call: streams
(:class:`AsyncReadStream`, :class:`AsyncWriteSink`), directory walks, and
file objects (``anyio.AsyncFile`` around :meth:`PathFs.open`'s file).

Cancellation: a call already running in its thread finishes there (the
backend is never left half-way); the awaiting task is cancelled as usual.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import IO, Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread

from volfs.backend import StatFs
from volfs.pathfs import FsEntry, FsMetadata, PathFs, ReadStream, WriteSink

__all__ = ["VolumeFsHandle", "VolumeFs", "AsyncReadStream", "AsyncWriteSink"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


async def _run(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class AsyncReadStream:
    """Async chunks of one file: ``async for chunk in stream``, ``recv()``, ``collect()``."""

    def __init__(self, stream: ReadStream) -> None:
        self._s = stream

    @property
    def path(self) -> str:
        return self._s.path

    async def recv(self) -> bytes | None:
        """The next chunk, or None at end of file."""
        return await _run(self._s.recv)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.recv()
        if data is None:
            raise StopAsyncIteration
        return data

    async def collect(self) -> bytes:
        """Everything not read yet, in one piece; closes the stream."""
        return await _run(self._s.collect)

    async def aclose(self) -> None:
        """Release the file. Idempotent."""
        await _run(self._s.close)

    async def __aenter__(self) -> AsyncReadStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncWriteSink:
    """Async twin of :class:`volfs.pathfs.WriteSink`: ``write``, ``close`` (publish), ``abort``."""

    def __init__(self, sink: WriteSink) -> None:
        self._s = sink

    @property
    def path(self) -> str:
        return self._s.path

    @property
    def closed(self) -> bool:
        return self._s.closed

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length."""
        return await _run(self._s.write, data)

    async def close(self) -> None:
        """Publish what was written, atomically. Idempotent."""
        await _run(self._s.close)

    async def abort(self) -> None:
        """Discard what was written. Idempotent."""
        await _run(self._s.abort)

    async def __aenter__(self) -> AsyncWriteSink:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            # Shielded: a cancelled task must still not leave a temp file behind.
            with anyio.CancelScope(shield=True):
                await self.abort()


class _Opener:
    """What ``write_stream`` returns: ``await`` it for a sink, or ``async with`` it."""

    def __init__(self, make: Callable[[], WriteSink]) -> None:
        self._make = make
        self._sink: AsyncWriteSink | None = None

    async def _open(self) -> AsyncWriteSink:
        return AsyncWriteSink(await _run(self._make))

    def __await__(self) -> Generator[Any, None, AsyncWriteSink]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncWriteSink:
        self._sink = await self._open()
        return self._sink

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._sink is not None
        await self._sink.__aexit__(exc_type, exc, tb)


# Aliases for annotations inside VolumeFsHandle, where ``list`` names a method.
_StrList = list[str]
_WalkStep = tuple[str, list[str], list[str]]


class VolumeFsHandle:
    """The async filesystem handle of one volume (microsandbox's ``VolumeFs``).

    Build it over a :class:`PathFs`; every method has the same name,
    arguments, results and errors as the PathFs method of that name (see
    there), awaited. Only :class:`volfs.errors.VolfsError` escapes.
    """

    def __init__(self, pathfs: PathFs) -> None:
        self._fs = pathfs

    @property
    def blocking(self) -> PathFs:
        """The blocking twin over the same backend."""
        return self._fs

    @property
    def readonly(self) -> bool:
        return self._fs.readonly

    @property
    def owner(self) -> tuple[int, int]:
        return self._fs.owner

    async def close(self) -> None:
        """Close the handle (and its backend)."""
        await _run(self._fs.close)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> VolumeFsHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    # -- microsandbox's operations ----------------------------------------------------------

    async def read(self, path: str) -> bytes:
        return await _run(self._fs.read, path)

    async def read_text(self, path: str, encoding: str = "utf-8", errors: str = "strict") -> str:
        return await _run(self._fs.read_text, path, encoding, errors)

    read_to_string = read_text

    async def read_stream(self, path: str, chunk_size: int = 64 << 10) -> AsyncReadStream:
        return AsyncReadStream(await _run(self._fs.read_stream, path, chunk_size))

    async def write(
        self, path: str, data: bytes | bytearray | memoryview | str, *, mode: int | None = None
    ) -> None:
        await _run(self._fs.write, path, data, mode=mode)

    def write_stream(self, path: str, *, mode: int | None = None) -> _Opener:
        """``sink = await fs.write_stream(p)`` or ``async with fs.write_stream(p) as sink``."""
        return _Opener(functools.partial(self._fs.write_stream, path, mode=mode))

    async def list(self, path: str = "/") -> list[FsEntry]:
        return await _run(self._fs.list, path)

    async def mkdir(
        self, path: str, *, mode: int = 0o755, parents: bool = True, exist_ok: bool = True
    ) -> None:
        await _run(self._fs.mkdir, path, mode=mode, parents=parents, exist_ok=exist_ok)

    async def remove(self, path: str) -> None:
        await _run(self._fs.remove, path)

    remove_file = remove

    async def remove_dir(self, path: str) -> None:
        await _run(self._fs.remove_dir, path)

    async def copy(self, from_: str, to: str) -> None:
        await _run(self._fs.copy, from_, to)

    async def rename(self, from_: str, to: str, *, replace: bool = True) -> None:
        await _run(self._fs.rename, from_, to, replace=replace)

    async def stat(self, path: str) -> FsMetadata:
        return await _run(self._fs.stat, path)

    async def exists(self, path: str) -> bool:
        return await _run(self._fs.exists, path)

    # -- beyond microsandbox -------------------------------------------------------------------

    async def open(
        self,
        path: str,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> anyio.AsyncFile[Any]:
        """An ``anyio.AsyncFile`` over :meth:`PathFs.open`'s file object (``async with`` works)."""
        f: IO[Any] = await _run(self._fs.open, path, mode, buffering, encoding, errors, newline)
        return anyio.wrap_file(f)

    async def lstat(self, path: str) -> FsMetadata:
        return await _run(self._fs.lstat, path)

    async def symlink(self, target: str, path: str) -> None:
        await _run(self._fs.symlink, target, path)

    async def readlink(self, path: str) -> str:
        return await _run(self._fs.readlink, path)

    async def link(self, path: str, to: str) -> None:
        await _run(self._fs.link, path, to)

    async def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        await _run(self._fs.chmod, path, mode, follow_symlinks=follow_symlinks)

    async def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        await _run(self._fs.chown, path, uid, gid, follow_symlinks=follow_symlinks)

    async def utime(
        self,
        path: str,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        await _run(self._fs.utime, path, times, ns=ns, follow_symlinks=follow_symlinks)

    async def truncate(self, path: str, size: int) -> None:
        await _run(self._fs.truncate, path, size)

    async def walk(self, top: str = "/") -> AsyncIterator[_WalkStep]:
        """Async ``os.walk`` over the volume; each step runs in a worker thread."""
        it: Iterator[_WalkStep] = self._fs.walk(top)
        done = object()
        while True:
            step = await _run(next, it, done)
            if step is done:
                return
            assert isinstance(step, tuple)
            yield step

    async def glob(self, pattern: str) -> _StrList:
        return await _run(self._fs.glob, pattern)

    async def du(self, path: str = "/", *, apparent: bool = False) -> int:
        return await _run(self._fs.du, path, apparent=apparent)

    async def statfs(self, path: str = "/") -> StatFs:
        return await _run(self._fs.statfs, path)

    async def getxattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        return await _run(self._fs.getxattr, path, name, follow_symlinks=follow_symlinks)

    async def setxattr(
        self,
        path: str,
        name: str,
        value: bytes,
        *,
        create: bool = False,
        replace: bool = False,
        follow_symlinks: bool = True,
    ) -> None:
        await _run(
            self._fs.setxattr,
            path,
            name,
            value,
            create=create,
            replace=replace,
            follow_symlinks=follow_symlinks,
        )

    async def listxattr(self, path: str, *, follow_symlinks: bool = True) -> _StrList:
        return await _run(self._fs.listxattr, path, follow_symlinks=follow_symlinks)

    async def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        await _run(self._fs.removexattr, path, name, follow_symlinks=follow_symlinks)

    async def sync(self) -> None:
        """Make everything written so far durable."""
        await _run(self._fs.sync)

    def __repr__(self) -> str:
        return f"<VolumeFsHandle {self._fs!r}>"


VolumeFs = VolumeFsHandle
