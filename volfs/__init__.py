"""volfs: read/write access to sandbox volumes without a running sandbox.

``volfs.Volume`` is the async lifecycle API (trio and asyncio) and
``Volume.get(name).fs`` the async filesystem handle (``VolumeFsHandle``, alias
``VolumeFs``); ``volfs.sync`` has the blocking twin of all of it. Everything
not re-exported here is private. Importing volfs never imports pyfuse3 (the
FUSE layer lives in ``volfs_fuse``).
"""

from __future__ import annotations

from typing import Any

from volfs.aio import Volume, VolumeBuilder, VolumeHandle
from volfs.errors import (
    CorruptError,
    InvalidArgument,
    RegistryError,
    VolfsError,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)
from volfs.volume import NamedVolumeMode, VolumeConfig, VolumeKind, VolumeStatus

__all__ = [
    "CorruptError",
    "InvalidArgument",
    "NamedVolumeMode",
    "RegistryError",
    "VolfsError",
    "Volume",
    "VolumeBuilder",
    "VolumeBusy",
    "VolumeConfig",
    "VolumeExists",
    "VolumeFs",
    "VolumeFsHandle",
    "VolumeHandle",
    "VolumeKind",
    "VolumeNotFound",
    "VolumeStatus",
]


def __getattr__(attr: str) -> Any:
    # The async file handle (and the path layer under it) load on first use.
    if attr in ("VolumeFs", "VolumeFsHandle"):
        from volfs.fs import VolumeFsHandle

        return VolumeFsHandle
    raise AttributeError(f"module 'volfs' has no attribute {attr!r}")
