"""Formatting a disk volume's image with volfs's own mkfs (no e2fsprogs at run time).

A disk volume's ``disk.raw`` is a sparse file of the requested capacity
holding an empty ext4 filesystem: 4 KiB blocks and mkfs.ext4's default
features and layout (:func:`volfs.ext4.mkfs.mkfs` matches mkfs.ext4 1.47
block for block), with two choices of microsandbox's for data volumes: no
blocks reserved for root, and the guest's root owning the root directory.
Only metadata is written, so a large capacity costs little host space and
formats in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from volfs.ext4.mkfs import mkfs

__all__ = ["format_disk_image"]

_BLOCK_SIZE = 4096


def format_disk_image(path: Path, capacity_bytes: int) -> None:
    """Create ``path`` (which must not exist) as a sparse ext4 image of ``capacity_bytes``."""
    mkfs(path, capacity_bytes, block_size=_BLOCK_SIZE, reserved_ratio=0.0, root_owner=(0, 0))
