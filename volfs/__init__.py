"""volfs: read/write access to sandbox volumes without a running sandbox.

The public surface is re-exported here; everything else is private. Importing
volfs never imports pyfuse3 (the FUSE layer lives in ``volfs_fuse``).
"""

from volfs.errors import (
    CorruptError,
    InvalidArgument,
    RegistryError,
    VolfsError,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)

__all__ = [
    "CorruptError",
    "InvalidArgument",
    "RegistryError",
    "VolfsError",
    "VolumeBusy",
    "VolumeExists",
    "VolumeNotFound",
]
