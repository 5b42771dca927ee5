"""The async lifecycle API (``volfs.Volume``), for trio and asyncio alike.

Each call runs the blocking core of :mod:`volfs.volume` in a worker thread
through anyio, so it works under whichever event loop anyio detects and never
blocks the loop on disk or database I/O. The classes here only wrap: every
rule lives once, in the blocking core (which :mod:`volfs.sync` exports as
the blocking twin, with the same names and signatures).
"""

from __future__ import annotations

import builtins
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from volfs import volume as _core
from volfs.mounts import MountOptions, MountRecord
from volfs.volume import HomeArg, NamedVolumeMode, VolumeConfig, VolumeKind, VolumeSpecBuilder

if TYPE_CHECKING:
    from volfs.fs import VolumeFsHandle

__all__ = ["Volume", "VolumeHandle", "VolumeBuilder"]

T = TypeVar("T")


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class VolumeHandle:
    """Async view of :class:`volfs.sync.VolumeHandle`: same fields, async methods.

    Snapshot fields (``name``, ``kind``, ``path``, ``quota_mib``,
    ``used_bytes``, ``capacity_bytes``, ``disk_format``, ``disk_fstype``,
    ``labels``, ``created_at``, ``status``, ``in_use``, ``disk_path``) are
    read from the blocking handle, available as ``.sync``.
    """

    def __init__(self, sync: _core.VolumeHandle) -> None:
        self.sync = sync
        self._fs: VolumeFsHandle | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr in {"fs", "remove", "open_fs", "mount"}:
            raise AttributeError(attr)
        return getattr(self.sync, attr)

    def __repr__(self) -> str:
        return f"<async {self.sync!r}>"

    @property
    def fs(self) -> VolumeFsHandle:
        """The async filesystem handle (``VolumeFs``), opened read-write on first use."""
        if self._fs is None:
            from volfs.fs import VolumeFsHandle

            self._fs = VolumeFsHandle(self.sync.fs)
        return self._fs

    async def open_fs(self, *, readonly: bool = False, owner: tuple[int, int] | None = None) -> VolumeFsHandle:
        """Open a new async filesystem handle (holds the access lock until closed)."""
        from volfs.fs import VolumeFsHandle

        return VolumeFsHandle(await _run(self.sync.open_fs, readonly=readonly, owner=owner))

    async def remove(self) -> None:
        """Delete this volume."""
        await _run(self.sync.remove)

    @asynccontextmanager
    async def mount(self, mountpoint: str | os.PathLike[str], *, readonly: bool = False,
                    options: MountOptions | None = None) -> AsyncIterator[MountRecord]:  # fmt: skip
        """``async with handle.mount(path):`` the FUSE mount of this volume (see the blocking twin)."""
        cm = self.sync.mount(mountpoint, readonly=readonly, options=options)
        record = await _run(cm.__enter__)
        try:
            yield record
        finally:
            await _run(cm.__exit__, None, None, None)


class Volume:
    """Async lifecycle API; instances (from ``create``) carry ``name``, ``path``, ``fs``..."""

    def __init__(self, sync: _core.Volume) -> None:
        self.sync = sync
        self.handle = VolumeHandle(sync.handle)

    name = property(lambda self: self.sync.name)
    path = property(lambda self: self.sync.path)
    kind = property(lambda self: self.sync.kind)
    capacity_bytes = property(lambda self: self.sync.capacity_bytes)
    disk_format = property(lambda self: self.sync.disk_format)
    disk_fstype = property(lambda self: self.sync.disk_fstype)
    disk_path = property(lambda self: self.sync.disk_path)
    fs = property(lambda self: self.handle.fs)

    def __repr__(self) -> str:
        return f"<async {self.sync!r}>"

    @staticmethod
    def builder(name: str, *, home: HomeArg = None) -> VolumeBuilder:
        """An async :class:`VolumeBuilder` for a new volume named ``name``."""
        return VolumeBuilder(name, home)

    @staticmethod
    async def create(
        name: str,
        *,
        kind: VolumeKind | str = VolumeKind.DIRECTORY,
        size_mib: int | str | None = None,
        quota_mib: int | str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        home: HomeArg = None,
    ) -> Volume:
        """Create a volume; VolumeExists if taken."""
        return Volume(
            await _run(
                _core.Volume.create, name, kind=kind, size_mib=size_mib, quota_mib=quota_mib, labels=labels, home=home
            )
        )

    @staticmethod
    async def create_from(config: VolumeConfig, *, home: HomeArg = None) -> Volume:
        """Create a volume from a validated config."""
        return Volume(await _run(_core.Volume.create_from, config, home=home))

    @staticmethod
    async def get(name: str, *, home: HomeArg = None) -> VolumeHandle:
        """The handle of an existing volume; VolumeNotFound if there is none."""
        return VolumeHandle(await _run(_core.Volume.get, name, home=home))

    @staticmethod
    async def list(*, home: HomeArg = None) -> builtins.list[VolumeHandle]:
        """Every volume, newest first."""
        return [VolumeHandle(h) for h in await _run(_core.Volume.list, home=home)]

    @staticmethod
    async def remove(name: str, *, home: HomeArg = None) -> None:
        """Delete a volume and its data; VolumeBusy if it is in use."""
        await _run(_core.Volume.remove, name, home=home)

    @staticmethod
    async def open(
        config: VolumeConfig, mode: NamedVolumeMode = NamedVolumeMode.EXISTING, *, home: HomeArg = None
    ) -> VolumeHandle:
        """Resolve a volume by config and mode."""
        return VolumeHandle(await _run(_core.Volume.open, config, mode, home=home))

    @staticmethod
    async def ensure_exists(
        name: str,
        *,
        kind: VolumeKind | str = VolumeKind.DIRECTORY,
        size_mib: int | str | None = None,
        quota_mib: int | str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        home: HomeArg = None,
    ) -> VolumeHandle:
        """Create the volume if missing, else validate it against the request."""
        return VolumeHandle(
            await _run(
                _core.Volume.ensure_exists,
                name,
                kind=kind,
                size_mib=size_mib,
                quota_mib=quota_mib,
                labels=labels,
                home=home,
            )
        )


class VolumeBuilder(VolumeSpecBuilder):
    """Async builder: ``await Volume.builder("x").disk().size("1G").create()``."""

    async def create(self) -> Volume:
        """Create the volume; VolumeExists if it exists."""
        return await Volume.create_from(self.build(), home=self._home)

    async def ensure_exists(self) -> VolumeHandle:
        """Create the volume if missing, else check that it matches."""
        return await Volume.open(self.build(), NamedVolumeMode.ENSURE_EXISTS, home=self._home)
