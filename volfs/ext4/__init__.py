"""volfs.ext4: a pure-Python ext2/3/4 engine (read side).

Open an image with :meth:`Filesystem.open` and use its inode-level API
(``lookup``, ``getattr``, ``readdir``, ``read``, ``readlink``, xattrs,
``statfs``).  The engine imports only the standard library, crc32c and
:mod:`volfs.errors`; only :mod:`volfs.ext4.device` does I/O.
"""

from volfs.ext4.device import BlockDevice, FileDevice, MemoryDevice
from volfs.ext4.directory import DirEntry
from volfs.ext4.filesystem import ROOT_INO, Attr, FeatureReport, Filesystem, StatFs
from volfs.ext4.inode import Inode
from volfs.ext4.types import BlockNo, GroupNo, InodeNo

__all__ = [
    "Attr",
    "BlockDevice",
    "BlockNo",
    "DirEntry",
    "FeatureReport",
    "FileDevice",
    "Filesystem",
    "GroupNo",
    "Inode",
    "InodeNo",
    "MemoryDevice",
    "ROOT_INO",
    "StatFs",
]
