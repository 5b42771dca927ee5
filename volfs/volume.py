"""The volume lifecycle (blocking core): create, get, list, remove, ensure-exists.

Theory of operation
-------------------
A volume is a registry row (:mod:`volfs.registry`) plus a directory
``<home>/volumes/<name>/`` (holding ``disk.raw`` for a disk volume). The two
can disagree after a crash or after someone deletes things by hand, so every
step is ordered to leave only states that are *visible and recoverable*:

create
    validate -> take the name lock -> refuse if a row or directory exists ->
    build the volume in a temporary sibling ``.<name>.tmp-XXXXXXXX/`` (format
    ``disk.raw`` there) -> rename it into place -> insert the row (on failure
    the directory is removed again). A crash before the rename leaves only a
    dot directory, which is never a volume and is swept by the next create or
    remove of that name; a crash after it leaves a directory without a row,
    which ``list`` reports as ``unregistered`` and ``remove`` clears.
remove
    take the name lock -> refuse if a sandbox uses the volume or anyone holds
    its access lock -> rename the directory away to ``.<name>.del-XXXXXXXX/`` ->
    delete the row -> delete the data. A crash after the rename leaves a row
    without a directory (``missing``, cleared by the next remove); a crash
    after the row delete leaves only a dot directory, swept later.

This module is synchronous; :mod:`volfs.aio` wraps it for trio and asyncio
(``volfs.Volume``), and :mod:`volfs.sync` re-exports it as the blocking twin.
"""

from __future__ import annotations

import builtins
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Self

from volfs import _faults
from volfs.diskimage import format_disk_image
from volfs.errors import InvalidArgument, VolfsError, VolumeBusy, VolumeExists, VolumeNotFound, error
from volfs.home import DISK_IMAGE_NAME, Home, resolve_home
from volfs.locks import AccessLock, is_locked, name_lock
from volfs.mounts import MountOptions, MountRecord
from volfs.mounts import mount as start_mount
from volfs.mounts import read_record as read_mount_record
from volfs.mounts import unmount as stop_mount
from volfs.names import host_component, parse_size_mib, validate_labels, validate_name
from volfs.registry import Registry, VolumeRecord

if TYPE_CHECKING:
    from volfs.pathfs import PathFs

__all__ = [
    "VolumeKind",
    "NamedVolumeMode",
    "VolumeStatus",
    "VolumeConfig",
    "VolumeSpecBuilder",
    "VolumeBuilder",
    "VolumeHandle",
    "Volume",
]

HomeArg = str | os.PathLike[str] | Home | None
_MIB = 1 << 20


class VolumeKind(StrEnum):
    """A volume's storage: a host directory, or a raw ext4 image."""

    DIRECTORY = "dir"
    DISK = "disk"


class NamedVolumeMode(Enum):
    """What to do about existence when opening a volume by config (microsandbox's modes)."""

    EXISTING = "existing"  #: the volume must exist
    CREATE = "create"  #: create it; fail if it exists
    ENSURE_EXISTS = "ensure_exists"  #: create if missing, else validate (never mutate)


class VolumeStatus(StrEnum):
    """Whether a volume's registry row and its data agree."""

    OK = "ok"
    MISSING = "missing"  #: a row without its directory (or without disk.raw)
    UNREGISTERED = "unregistered"  #: a directory without a row


def _as_home(home: HomeArg) -> Home:
    return home if isinstance(home, Home) else resolve_home(home)


def _kind(value: object) -> VolumeKind:
    raw = value.value if isinstance(value, Enum) else value
    try:
        return VolumeKind(str(raw))
    except ValueError:
        raise InvalidArgument(f"invalid volume kind {value!r}: expected 'dir' or 'disk'") from None


@dataclass(frozen=True, slots=True)
class VolumeConfig:
    """A validated request for a volume (microsandbox's ``VolumeSpec``)."""

    name: str
    kind: VolumeKind = VolumeKind.DIRECTORY
    quota_mib: int | None = None
    capacity_mib: int | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(
        cls,
        name: str,
        *,
        kind: VolumeKind | str = VolumeKind.DIRECTORY,
        size_mib: int | str | None = None,
        quota_mib: int | str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> VolumeConfig:
        """Validate everything (raises InvalidArgument) before anything touches disk.

        A directory volume takes no size; a disk volume requires one and takes
        no quota (microsandbox's ``validate_volume_config``).
        """
        validate_name(name)
        k = _kind(kind)
        capacity = parse_size_mib(size_mib, "size") if size_mib is not None else None
        quota = parse_size_mib(quota_mib, "quota") if quota_mib is not None else None
        if k is VolumeKind.DIRECTORY and capacity is not None:
            raise InvalidArgument("directory volumes do not take a size (use a quota, or kind=disk)", name)
        if k is VolumeKind.DISK and capacity is None:
            raise InvalidArgument("disk volumes require a size", name)
        if k is VolumeKind.DISK and quota is not None:
            raise InvalidArgument("disk volumes do not take a quota (their size is their limit)", name)
        pairs = validate_labels(dict(labels) if isinstance(labels, Mapping) else labels)
        return cls(name=name, kind=k, quota_mib=quota, capacity_mib=capacity, labels=tuple(pairs))

    @property
    def capacity_bytes(self) -> int | None:
        return self.capacity_mib * _MIB if self.capacity_mib is not None else None


class VolumeSpecBuilder:
    """The fluent part of a builder: collects a request, validated by :meth:`build`."""

    def __init__(self, name: str, home: HomeArg = None) -> None:
        self._name = name
        self._home = home
        self._kind: VolumeKind = VolumeKind.DIRECTORY
        self._size: int | str | None = None
        self._quota: int | str | None = None
        self._labels: list[tuple[str, str]] = []

    def directory(self) -> Self:
        """A directory-backed volume (the default)."""
        self._kind = VolumeKind.DIRECTORY
        return self

    def disk(self) -> Self:
        """A raw ext4 disk-backed volume; requires :meth:`size`."""
        self._kind = VolumeKind.DISK
        return self

    def size(self, size: int | str) -> Self:
        """Disk capacity: MiB as an int, or a size string (``"1G"``, ``"512MiB"``)."""
        self._size = size
        return self

    def quota(self, size: int | str) -> Self:
        """Recorded quota of a directory volume (MiB or a size string)."""
        self._quota = size
        return self

    def label(self, key: str, value: str) -> Self:
        """Add a label (repeatable; a repeated key keeps the last value)."""
        self._labels.append((key, value))
        return self

    def build(self) -> VolumeConfig:
        """The validated config (raises InvalidArgument)."""
        return VolumeConfig.make(
            self._name, kind=self._kind, size_mib=self._size, quota_mib=self._quota, labels=self._labels
        )


class VolumeBuilder(VolumeSpecBuilder):
    """Fluent builder: ``Volume.builder("x").disk().size("1G").label("k", "v").create()``."""

    def create(self) -> Volume:
        """Create the volume; VolumeExists if it exists."""
        return Volume.create_from(self.build(), home=self._home)

    def ensure_exists(self) -> VolumeHandle:
        """Create the volume if missing, else check that it matches (never mutates it)."""
        return Volume.open(self.build(), NamedVolumeMode.ENSURE_EXISTS, home=self._home)


def _disk_usage(image: Path) -> int:
    """Bytes in use inside a disk volume's filesystem, from its superblock.

    The superblock's free count is what the filesystem last recorded (a
    running sandbox's kernel updates it lazily); an image that is not ext4
    yet (or is damaged) falls back to the host space the image takes.
    """
    from volfs.ext4.superblock import parse_superblock

    try:
        with open(image, "rb") as f:
            raw = os.pread(f.fileno(), 1024, 1024)
        sb = parse_superblock(raw)
        return (sb.blocks_count - sb.free_blocks_count) * sb.block_size
    except (OSError, ValueError):
        return os.lstat(image).st_blocks * 512


def _dir_usage(root: Path) -> int:
    """Bytes allocated under ``root`` (like ``du``): no symlinks followed, hard links once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue  # vanished or unreadable while we walked: count what we can
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
    return total


@dataclass(frozen=True)
class VolumeHandle:
    """A snapshot of one volume: its registry row and what was measured on disk.

    ``used_bytes`` is measured when the handle is made: the space allocated
    under a directory volume, or the space in use inside a disk volume's
    filesystem (as its superblock records it). ``in_use`` lists why the volume is busy (active sandboxes, a host
    mount, or a held access lock), empty when it is free; ``mountpoint`` is
    where ``volfs mount`` serves it, if it does.
    """

    name: str
    kind: VolumeKind
    path: Path
    home: Home
    quota_mib: int | None
    capacity_bytes: int | None
    disk_format: str | None
    disk_fstype: str | None
    labels: dict[str, str]
    created_at: datetime | None
    used_bytes: int
    status: VolumeStatus
    in_use: tuple[str, ...]
    mountpoint: Path | None = None
    _fs: list[PathFs] = field(default_factory=list, repr=False, compare=False)

    @property
    def disk_path(self) -> Path | None:
        """The ext4 image of a disk volume (``<path>/disk.raw``); None for directories."""
        return self.path / DISK_IMAGE_NAME if self.kind is VolumeKind.DISK else None

    @property
    def fs(self) -> PathFs:
        """The (blocking) filesystem handle of this volume, opened read-write on first use."""
        if not self._fs:
            self._fs.append(self.open_fs())
        return self._fs[0]

    def open_fs(self, *, readonly: bool = False, owner: tuple[int, int] | None = None) -> PathFs:
        """Open a new filesystem handle; it holds the volume's access lock until closed."""
        if self.status is not VolumeStatus.OK:
            raise VolumeNotFound(self.name, f"volume is {self.status.value}; `volfs rm` clears it")
        from volfs.access import open_volume_fs  # the path layer loads on first use only

        return open_volume_fs(self, readonly=readonly, owner=owner)

    def remove(self) -> None:
        """Delete this volume (see :meth:`Volume.remove`)."""
        Volume.remove(self.name, home=self.home)

    @contextmanager
    def mount(self, mountpoint: str | os.PathLike[str], *, readonly: bool = False,
              options: MountOptions | None = None) -> Iterator[MountRecord]:  # fmt: skip
        """Mount this volume through FUSE for the duration of a ``with`` block.

        The daemon runs in its own process (see :mod:`volfs.mounts`); leaving
        the block unmounts and waits until everything is written back.
        ``options`` gives every ``volfs mount`` flag; ``readonly`` overrides it.
        """
        opts = replace(options or MountOptions(), readonly=readonly or (options is not None and options.readonly))
        record = start_mount(self.home, self.name, mountpoint, opts)
        try:
            yield record
        finally:
            stop_mount(self.home, record.mountpoint)


class Volume:
    """A created volume, and the lifecycle API as static methods.

    ``Volume.create(...)`` returns an instance (``name``, ``path``, ``kind``,
    ``capacity_bytes``, ``disk_path``, ``fs``); ``Volume.get(name)`` returns a
    :class:`VolumeHandle` with everything the registry knows.
    """

    def __init__(self, handle: VolumeHandle) -> None:
        self.handle = handle

    name = property(lambda self: self.handle.name)
    path = property(lambda self: self.handle.path)
    kind = property(lambda self: self.handle.kind)
    capacity_bytes = property(lambda self: self.handle.capacity_bytes)
    disk_format = property(lambda self: self.handle.disk_format)
    disk_fstype = property(lambda self: self.handle.disk_fstype)
    disk_path = property(lambda self: self.handle.disk_path)
    fs = property(lambda self: self.handle.fs)

    def __repr__(self) -> str:
        return f"Volume(name={self.name!r}, kind={self.kind.value!r}, path={str(self.path)!r})"

    # -- lifecycle ---------------------------------------------------------

    @staticmethod
    def builder(name: str, *, home: HomeArg = None) -> VolumeBuilder:
        """A :class:`VolumeBuilder` for a new volume named ``name``."""
        return VolumeBuilder(name, home)

    @staticmethod
    def create(
        name: str,
        *,
        kind: VolumeKind | str = VolumeKind.DIRECTORY,
        size_mib: int | str | None = None,
        quota_mib: int | str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        home: HomeArg = None,
    ) -> Volume:
        """Create a volume (microsandbox's Python signature); VolumeExists if taken."""
        config = VolumeConfig.make(name, kind=kind, size_mib=size_mib, quota_mib=quota_mib, labels=labels)
        return Volume.create_from(config, home=home)

    @staticmethod
    def create_from(config: VolumeConfig, *, home: HomeArg = None) -> Volume:
        """Create a volume from a validated :class:`VolumeConfig`."""
        h = _as_home(home)
        h.ensure_dirs()
        registry = Registry(h)
        with name_lock(h.lock_file(config.name), config.name):
            _create_locked(h, registry, config)
            return Volume(_handle(h, registry, config.name))

    @staticmethod
    def get(name: str, *, home: HomeArg = None) -> VolumeHandle:
        """The handle of an existing volume; VolumeNotFound if there is none."""
        validate_name(name)
        h = _as_home(home)
        handle = _handle(h, Registry(h), name)
        if handle.status is VolumeStatus.UNREGISTERED:
            raise VolumeNotFound(name, "a directory of that name exists but is not registered; `volfs rm` clears it")
        return handle

    @staticmethod
    def list(*, home: HomeArg = None) -> builtins.list[VolumeHandle]:
        """Every volume, newest first; then directories without a row (``unregistered``)."""
        h = _as_home(home)
        registry = Registry(h)
        records = registry.records()
        handles = [_handle_from(h, registry, r.name, r) for r in records]
        known = {r.name for r in records}
        for name in _volume_dir_names(h):
            if name not in known:
                handles.append(_handle_from(h, registry, name, None))
        return handles

    @staticmethod
    def remove(name: str, *, home: HomeArg = None) -> None:
        """Delete a volume and its data; VolumeBusy if a sandbox or handle uses it.

        Also clears what a crash or a hand edit left: a row without its data,
        or a directory without a row.
        """
        validate_name(name)
        h = _as_home(home)
        if not h.volumes.is_dir():
            raise VolumeNotFound(name)
        registry = Registry(h)
        with name_lock(h.lock_file(name), name):
            _remove_locked(h, registry, name)

    @staticmethod
    def open(config: VolumeConfig, mode: NamedVolumeMode = NamedVolumeMode.EXISTING, *, home: HomeArg = None) -> VolumeHandle:
        """Resolve a volume by config and mode (microsandbox's sandbox-time rules)."""
        if mode is NamedVolumeMode.CREATE:
            return Volume.create_from(config, home=home).handle
        if mode is NamedVolumeMode.EXISTING:
            return Volume.get(config.name, home=home)
        try:
            return Volume.create_from(config, home=home).handle
        except VolumeExists:
            handle = Volume.get(config.name, home=home)
        _check_matches(handle, config)
        return handle

    @staticmethod
    def ensure_exists(
        name: str,
        *,
        kind: VolumeKind | str = VolumeKind.DIRECTORY,
        size_mib: int | str | None = None,
        quota_mib: int | str | None = None,
        labels: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        home: HomeArg = None,
    ) -> VolumeHandle:
        """Create the volume if missing, else validate it against the request."""
        config = VolumeConfig.make(name, kind=kind, size_mib=size_mib, quota_mib=quota_mib, labels=labels)
        return Volume.open(config, NamedVolumeMode.ENSURE_EXISTS, home=home)


# -- steps -----------------------------------------------------------------


def _check_matches(handle: VolumeHandle, config: VolumeConfig) -> None:
    """ENSURE_EXISTS validation: kind always; quota, capacity, labels when requested."""
    problems: list[str] = []
    if handle.kind is not config.kind:
        problems.append(f"kind is {handle.kind.value}, requested {config.kind.value}")
    if config.quota_mib is not None and handle.quota_mib != config.quota_mib:
        have = f"{handle.quota_mib} MiB" if handle.quota_mib is not None else "not set"
        problems.append(f"quota is {have}, requested {config.quota_mib} MiB")
    if config.capacity_bytes is not None and handle.capacity_bytes != config.capacity_bytes:
        have = f"{handle.capacity_bytes} bytes" if handle.capacity_bytes is not None else "not set"
        problems.append(f"capacity is {have}, requested {config.capacity_bytes} bytes")
    for key, value in config.labels:
        stored = handle.labels.get(key)
        if stored is None:
            problems.append(f"label {key!r} is missing")
        elif stored != value:
            problems.append(f"label {key!r} is {stored!r}, requested {value!r}")
    if problems:
        raise InvalidArgument("existing volume does not match the request: " + "; ".join(problems), config.name)


# Our temporaries are ".<name>.tmp-XXXXXXXX" (create) and ".<name>.del-XXXXXXXX"
# (remove): both suffixes have one length, so a long name is shortened the same
# way in both and one pattern finds them. It matches exactly this name's
# temporaries ("a" must not match those of "a.b").
_TEMP_SUFFIX_LEN = len("tmp-00000000")


def _temp_pattern(name: str) -> re.Pattern[str]:
    stem = host_component(".", name, ".tmp-00000000")[:-_TEMP_SUFFIX_LEN]
    return re.compile(rf"{re.escape(stem)}(?:tmp|del)-[0-9a-f]{{8}}")


def _temp_dir(h: Home, name: str, what: str) -> Path:
    return h.volumes / host_component(".", name, f".{what}-{secrets.token_hex(4)}")


def _sweep_temporaries(h: Home, name: str) -> None:
    """Delete leftovers of interrupted creates/removes of ``name`` (caller holds the name lock)."""
    pattern = _temp_pattern(name)
    try:
        entries = list(os.scandir(h.volumes))
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_locked(h: Home, registry: Registry, config: VolumeConfig) -> None:
    name = config.name
    target = h.volume_dir(name)
    if registry.get(name) is not None:
        raise VolumeExists(name)
    if os.path.lexists(target):
        raise VolumeExists(name, "a directory of that name exists but is not registered; `volfs rm` clears it")
    _sweep_temporaries(h, name)
    temp = _temp_dir(h, name, "tmp")
    try:
        temp.mkdir(mode=0o755)
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot create volume directory: {exc.strerror}", str(temp)) from None
    try:
        _faults.reached("create:tempdir")
        if config.kind is VolumeKind.DISK:
            assert config.capacity_bytes is not None  # guaranteed by VolumeConfig.make
            format_disk_image(temp / DISK_IMAGE_NAME, config.capacity_bytes)
        _faults.reached("create:materialized")
        os.rename(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _faults.reached("create:renamed")
    record = VolumeRecord(
        name=name,
        kind=config.kind.value,
        quota_mib=config.quota_mib,
        capacity_bytes=config.capacity_bytes,
        disk_format="raw" if config.kind is VolumeKind.DISK else None,
        disk_fstype="ext4" if config.kind is VolumeKind.DISK else None,
        labels=config.labels,
    )
    try:
        registry.insert(record)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _faults.reached("create:registered")
    try:
        _fsync_dir(h.volumes)
    except OSError:
        pass  # durability of the rename is best effort; the volume exists either way


def _remove_locked(h: Home, registry: Registry, name: str) -> None:
    record = registry.get(name)
    target = h.volume_dir(name)
    present = os.path.lexists(target)
    if record is None and not present:
        _sweep_temporaries(h, name)
        raise VolumeNotFound(name)
    mount = read_mount_record(h, name)
    if mount is not None and mount.alive:
        raise VolumeBusy(name, f"volume is mounted at {mount.mountpoint}; `volfs unmount {name}` first")
    users = registry.sandboxes_using(name)
    if users:
        raise VolumeBusy(name, f"volume is attached to active sandbox {', '.join(map(repr, users))}")
    lock: AccessLock | None = None
    try:
        if present:
            if os.path.islink(target) or not target.is_dir():
                raise error(errno.ENOTDIR, "volume path is not a directory; refusing to remove it", str(target))
            image = h.disk_image(name)
            lock_on = image if (record is not None and record.kind == "disk" and image.is_file()) else target
            lock = AccessLock(lock_on, name, exclusive=True)
            graveyard = _temp_dir(h, name, "del")
            os.rename(target, graveyard)
            _faults.reached("remove:renamed")
        if record is not None:
            registry.delete(name)
        _faults.reached("remove:unregistered")
    finally:
        if lock is not None:
            lock.release()
    _sweep_temporaries(h, name)


def _volume_dir_names(h: Home) -> Sequence[str]:
    """Names of volume directories (dot entries are locks and temporaries, never volumes)."""
    try:
        entries = sorted(os.scandir(h.volumes), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot list volumes: {exc.strerror}", str(h.volumes)) from None
    names = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            names.append(validate_name(entry.name))
        except VolfsError:
            continue  # not a name volfs or microsandbox could have made
    return names


def _handle(h: Home, registry: Registry, name: str) -> VolumeHandle:
    record = registry.get(name)
    if record is None and not os.path.isdir(h.volume_dir(name)):
        raise VolumeNotFound(name)
    return _handle_from(h, registry, name, record)


def _handle_from(h: Home, registry: Registry, name: str, record: VolumeRecord | None) -> VolumeHandle:
    path = h.volume_dir(name)
    kind = VolumeKind.DISK if record is not None and record.kind == "disk" else VolumeKind.DIRECTORY
    if record is None and os.path.isfile(path / DISK_IMAGE_NAME):
        kind = VolumeKind.DISK  # an unregistered directory: guess its kind from its content
    primary = path / DISK_IMAGE_NAME if kind is VolumeKind.DISK else path
    present = path.is_dir() and not path.is_symlink() and (kind is VolumeKind.DIRECTORY or primary.is_file())
    if record is None:
        status = VolumeStatus.UNREGISTERED
    else:
        status = VolumeStatus.OK if present else VolumeStatus.MISSING
    used = 0
    if present:
        used = _disk_usage(primary) if kind is VolumeKind.DISK else _dir_usage(path)
    in_use = [f"sandbox {s}" for s in registry.sandboxes_using(name)] if record is not None else []
    mount = read_mount_record(h, name)
    mountpoint = Path(mount.mountpoint) if mount is not None and mount.alive else None
    if mountpoint is not None:
        in_use.append(f"mounted at {mountpoint}")
    elif present and is_locked(primary):
        in_use.append("locked by a volfs process or a sandbox")
    return VolumeHandle(
        name=name,
        kind=kind,
        path=path,
        home=h,
        quota_mib=record.quota_mib if record else None,
        capacity_bytes=record.capacity_bytes if record else None,
        disk_format=record.disk_format if record else None,
        disk_fstype=record.disk_fstype if record else None,
        labels=dict(record.labels) if record else {},
        created_at=record.created_at if record else None,
        used_bytes=used,
        status=status,
        in_use=tuple(in_use),
        mountpoint=mountpoint,
    )
