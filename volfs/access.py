"""Opening a volume's storage: the backend for its kind, its lock, its owner.

This is where a volume (a registry row and a host path) becomes a backend.
Whoever opens one (the path layer, the FUSE daemon) holds the volume's access
lock until it closes: shared on a directory volume (several handles may work
on one directory; remove still sees it in use), and on a disk volume's image
exclusive for writing or shared for reading, as microsandbox attaches images.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from volfs.home import DISK_IMAGE_NAME
from volfs.locks import AccessLock

if TYPE_CHECKING:
    from volfs.backend import Backend
    from volfs.pathfs import PathFs
    from volfs.volume import VolumeHandle

__all__ = ["open_backend", "open_volume_fs", "default_owner"]


def default_owner(handle: VolumeHandle) -> tuple[int, int]:
    """Owner of new files: the guest's root (0:0) on a disk volume, else this process."""
    from volfs.volume import VolumeKind

    return (0, 0) if handle.kind is VolumeKind.DISK else (os.geteuid(), os.getegid())


def open_backend(handle: VolumeHandle, *, readonly: bool) -> tuple[Backend, AccessLock]:
    """The backend of ``handle``'s volume and the access lock it holds (release it after close).

    A disk volume goes through the ext4 engine: read-write access takes the
    image's exclusive lock (no sandbox may attach it meanwhile), read-only
    access the shared one (which coexists with a sandbox's read-only attach).
    If the engine cannot write the image (a feature it does not implement),
    the backend is read-only and the lock is downgraded to shared.
    """
    from volfs.volume import VolumeKind

    disk = handle.kind is VolumeKind.DISK
    target = handle.path / DISK_IMAGE_NAME if disk else handle.path
    # Directory volumes share their lock: several handles may work on one directory.
    lock = AccessLock(target, handle.name, exclusive=disk and not readonly)
    backend: Backend
    try:
        if disk:
            from volfs.backends.ext4 import Ext4Backend

            backend = Ext4Backend(target, readonly=readonly)
        else:
            from volfs.backends.directory import DirectoryBackend

            backend = DirectoryBackend(target, readonly=readonly)
    except BaseException:
        lock.release()
        raise
    if backend.readonly:
        lock.downgrade()  # no-op for a shared lock
    return backend, lock


def open_volume_fs(handle: VolumeHandle, *, readonly: bool, owner: tuple[int, int] | None) -> PathFs:
    """A PathFs over ``handle``'s volume, holding its access lock until closed.

    ``owner`` is the (uid, gid) for new files (default: :func:`default_owner`),
    so files written from the host look right inside the sandbox.
    """
    from volfs.pathfs import PathFs

    backend, lock = open_backend(handle, readonly=readonly)
    ids = owner if owner is not None else default_owner(handle)
    return PathFs(backend, owner=ids, readonly=readonly, on_close=lock.release)
