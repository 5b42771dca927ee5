"""Number types of the engine: inode, block and group numbers are distinct."""

from __future__ import annotations

from typing import NewType

__all__ = ["InodeNo", "BlockNo", "GroupNo"]

InodeNo = NewType("InodeNo", int)
BlockNo = NewType("BlockNo", int)
GroupNo = NewType("GroupNo", int)
