"""The write side of inline data: the writer's early branches for inline inodes.

Theory of operation (the layout is inline.py's).  Every function here runs
inside a writer operation (``Writer.op``), so a failure (ENOSPC while
converting, a corrupt region) rolls everything back.

*Files.*  A write or truncate whose result fits the inode's capacity is
done in place: the new bytes are laid out over ``i_block`` and the
``system.data`` value, and the in-inode xattr area is repacked with the
writer's packer.  A result that does not fit converts the file first (as
the kernel's ``ext4_convert_inline_data``): the flag goes, ``system.data``
is removed, ``i_block`` becomes an empty extent root, and the old bytes are
written through the extent path; the caller then continues on the extent
path.  An empty extent-mapped regular file (no extents, size 0) whose first
write fits the capacity becomes inline, as the kernel's
``EXT4_STATE_MAY_INLINE_DATA`` files do.

*Directories.*  New directories are created inline when the inode body has
room for ``system.data`` (the kernel's ``ext4_try_create_inline_dir``).
Entries are added, removed and retargeted in the two regions; a directory
that outgrows its capacity becomes a one-block directory (``.``, ``..``,
the entries, the checksum tail) and the block code adds the new entry.
"""

from __future__ import annotations

import errno
import stat
from typing import TYPE_CHECKING

from volfs.errors import error
from volfs.ext4.extents import Extent
from volfs.ext4.inline import (
    DATA_INDEX,
    DATA_NAME,
    HEAD_SIZE,
    MIN_INLINE_DATA_SIZE,
    InlineDir,
    capacity,
    file_content,
    file_layout,
    value_capacity,
)
from volfs.ext4.inode import EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, INODE_BASE_SIZE, Inode, InodeEditor
from volfs.ext4.superblock import INCOMPAT_INLINE_DATA
from volfs.ext4.xattr import parse_ibody

if TYPE_CHECKING:
    from volfs.ext4.writer import Writer

__all__ = ["write", "truncate", "may_inline", "convert_file", "find", "add_entry", "remove_entry",
           "retarget_entry", "set_dotdot", "init_dir"]


def _set_body(ino: int, ed: InodeEditor, i_block: bytes, value: bytes | None) -> None:
    """Put ``i_block`` and the ``system.data`` value (None: remove it) into the inode editor."""
    from volfs.ext4.writer import _pack_ibody

    start = INODE_BASE_SIZE + ed.extra_isize
    area_size = max(len(ed.buf) - start, 0)
    entries: list[tuple[int, bytes, bytes]] = []
    placed = False
    for e in parse_ibody(bytes(ed.buf[start:]), ino=ino):
        if e.value is None:
            raise error(errno.EOPNOTSUPP, "xattrs stored in EA inodes are not changed")
        if e.name_index == DATA_INDEX and e.name == DATA_NAME:
            if value is not None:
                entries.append((DATA_INDEX, DATA_NAME, value))  # keep its place among the entries
                placed = True
            continue
        entries.append((e.name_index, e.name, e.value))
    if value is not None and not placed:
        entries.insert(0, (DATA_INDEX, DATA_NAME, value))
    area = _pack_ibody(entries, area_size)
    if area is None:
        # Callers check the capacity first; only a disagreement with the packer gets here.
        raise error(errno.ENOSPC, f"inode {ino}: inline data does not fit the inode body")
    ed.set_ibody(area)
    ed.set_i_block(i_block)


def may_inline(w: Writer, rec: Inode, end: int) -> bool:
    """Whether an empty extent-mapped regular file whose first write ends at ``end`` goes inline."""
    if not rec.is_reg or rec.flags & EXT4_INLINE_DATA_FL or not rec.flags & EXT4_EXTENTS_FL or rec.size:
        return False
    if rec.i_block[2:4] != b"\0\0":  # eh_entries: the extent root is not empty
        return False
    return w.fs.sb.has_incompat(INCOMPAT_INLINE_DATA) and end <= capacity(rec)  # capacity 0: no body


def _store_file(w: Writer, rec: Inode, data: bytes, now: int) -> None:
    ed = InodeEditor(rec.raw)
    i_block, value = file_layout(data)
    _set_body(rec.ino, ed, i_block, value)
    ed.set("i_flags", (ed.get("i_flags") & ~EXT4_EXTENTS_FL) | EXT4_INLINE_DATA_FL)
    ed.set_size(len(data))
    w._touch(ed, now)
    w.store(rec.ino, ed)


def write(w: Writer, rec: Inode, offset: int, data: bytes | bytearray | memoryview, now: int) -> bool:
    """Write into inline (or may-inline) file ``rec``: True if done inline, False if it was converted."""
    end = offset + len(data)
    if rec.flags & EXT4_INLINE_DATA_FL:
        cur = file_content(rec)
        if max(end, rec.size) > capacity(rec):
            convert_file(w, rec)
            return False
    else:
        cur = b""
    new = bytearray(cur)
    if offset > len(new):
        new += bytes(offset - len(new))
    new[offset:end] = data
    _store_file(w, rec, bytes(new), now)
    return True


def truncate(w: Writer, rec: Inode, size: int, now: int) -> bool:
    """Truncate inline file ``rec``: True if it stays inline, False if it was converted."""
    cur = file_content(rec)
    if size > capacity(rec):
        convert_file(w, rec)
        return False
    _store_file(w, rec, cur[:size] + bytes(max(size - len(cur), 0)), now)
    return True


def convert_file(w: Writer, rec: Inode) -> None:
    """Move inline file ``rec`` to extents (its bytes rewritten through the extent path)."""
    from volfs.ext4.writer import _empty_extent_root

    cur = file_content(rec)
    ed = InodeEditor(rec.raw)
    _set_body(rec.ino, ed, _empty_extent_root(), None)
    ed.set("i_flags", (ed.get("i_flags") & ~EXT4_INLINE_DATA_FL) | EXT4_EXTENTS_FL)
    # i_size stays: the extent path then sees a non-empty file and never makes it inline again.
    w.store(rec.ino, ed)
    if cur:
        w.write_data(rec.ino, 0, cur)


# -- directories ---------------------------------------------------------------------------------


def _load(w: Writer, rec: Inode) -> InlineDir:
    return InlineDir.load(rec, inodes_count=w.fs.sb.inodes_count)


def _store_dir(w: Writer, rec: Inode, d: InlineDir) -> None:
    ed = InodeEditor(rec.raw)
    _set_body(rec.ino, ed, d.i_block(), bytes(d.tail))
    ed.set_size(MIN_INLINE_DATA_SIZE + len(d.tail))
    w.store(rec.ino, ed)


def find(w: Writer, rec: Inode, name: bytes) -> tuple[int, int, int, int] | None:
    """(region, offset, inode, file type) of ``name`` in inline directory ``rec``."""
    return _load(w, rec).find(name)


def add_entry(w: Writer, rec: Inode, name: bytes, ino: int, ft: int) -> bool:
    """Add the entry inline: True if done, False if the directory became a block directory instead."""
    d = _load(w, rec)
    if d.find(name) is not None:
        raise error(errno.EEXIST, f"{name!r} exists")
    if not d.insert(name, ino, ft):
        cap = capacity(rec) - MIN_INLINE_DATA_SIZE
        d.grow(cap)
        if not d.insert(name, ino, ft):
            _convert_dir(w, rec, d)
            return False
    _store_dir(w, rec, d)
    return True


def _convert_dir(w: Writer, rec: Inode, d: InlineDir) -> None:
    """Turn inline directory ``rec`` into a one-block directory (the kernel's ext4_convert_inline_dir)."""
    fs = w.fs
    bs = fs.sb.block_size
    seed = w._iseed(rec.ino, rec.generation)
    block = d.to_block(bs, seed, fs.sb.metadata_csum)
    if block is None:
        raise error(errno.ENOSPC, f"directory {rec.ino}: inline entries do not fit one block")
    (pb, _), = w.alloc.alloc_blocks(w._goal(rec.ino), 1)
    w.txn.put(pb, block)
    ed = InodeEditor(rec.raw)
    from volfs.ext4.writer import _empty_extent_root

    _set_body(rec.ino, ed, _empty_extent_root(), None)
    ed.set("i_flags", ed.get("i_flags") & ~EXT4_INLINE_DATA_FL)
    w._set_extents(rec.ino, ed, [Extent(0, 1, pb)], [])
    ed.set_size(bs)
    w.store(rec.ino, ed)
    w._dirs.pop(rec.ino, None)


def remove_entry(w: Writer, rec: Inode, name: bytes) -> tuple[int, int]:
    """Remove ``name`` from inline directory ``rec``; its (inode, file type)."""
    d = _load(w, rec)
    hit = d.find(name)
    if hit is None:
        raise error(errno.ENOENT, f"no entry {name!r}")
    region, off, ino, ft = hit
    d.remove(region, off)
    _store_dir(w, rec, d)
    return ino, ft


def retarget_entry(w: Writer, rec: Inode, name: bytes, ino: int, ft: int) -> None:
    d = _load(w, rec)
    hit = d.find(name)
    if hit is None:
        raise error(errno.ENOENT, f"no entry {name!r}")
    d.retarget(hit[0], hit[1], ino, ft)
    _store_dir(w, rec, d)


def set_dotdot(w: Writer, rec: Inode, parent: int) -> None:
    d = _load(w, rec)
    d.parent = parent
    _store_dir(w, rec, d)


def init_dir(w: Writer, ino: int, ed: InodeEditor, parent: int) -> bool:
    """Make new directory ``ino`` (in ``ed``, not yet stored) inline if the image and inode allow it."""
    if not w.fs.sb.has_incompat(INCOMPAT_INLINE_DATA) or not stat.S_ISDIR(ed.get("i_mode")):
        return False
    if value_capacity([], len(ed.buf) - INODE_BASE_SIZE - ed.extra_isize) < 0:
        return False  # no inode body for system.data (128-byte inodes)
    head = bytearray(HEAD_SIZE)
    head[4:6] = HEAD_SIZE.to_bytes(2, "little")  # one empty record spanning the region
    d = InlineDir(ino, parent, head, bytearray(), [])
    _set_body(ino, ed, d.i_block(), b"")
    ed.set("i_flags", (ed.get("i_flags") & ~EXT4_EXTENTS_FL) | EXT4_INLINE_DATA_FL)
    ed.set_size(MIN_INLINE_DATA_SIZE)
    return True
