"""The blocking twin of the volfs API: same names and signatures, no ``await``.

``volfs.Volume`` is async (trio or asyncio); ``volfs.sync.Volume`` is the same
API for scripts. ``volfs.sync.VolumeFs`` (the path layer, ``PathFs``) is the
blocking twin of ``volfs.VolumeFs``.
"""

from __future__ import annotations

from typing import Any

from volfs.volume import (
    NamedVolumeMode,
    Volume,
    VolumeBuilder,
    VolumeConfig,
    VolumeHandle,
    VolumeKind,
    VolumeStatus,
)

__all__ = [
    "NamedVolumeMode",
    "Volume",
    "VolumeBuilder",
    "VolumeConfig",
    "VolumeFs",
    "VolumeHandle",
    "VolumeKind",
    "VolumeStatus",
]


def __getattr__(attr: str) -> Any:
    # The path layer loads on first use, keeping `import volfs` light.
    if attr in ("VolumeFs", "PathFs"):
        from volfs.pathfs import PathFs

        return PathFs
    raise AttributeError(f"module 'volfs.sync' has no attribute {attr!r}")
