"""The allocator: inodes and blocks, with every counter and checksum kept exact.

Theory of operation.  The allocator owns the group descriptors' counters
and the bitmaps; everything it changes goes through the running transaction
(:mod:`volfs.ext4.transaction`), so an operation that fails half way (ENOSPC)
is rolled back with the rest of the operation.  Superblock totals are not
kept here: the commit recomputes ``s_free_blocks_count`` and
``s_free_inodes_count`` from the descriptors, as the kernel does at mount.

Bitmaps are read through the cache, their checksums verified once, and
edited as the block's bytes (bit ``i`` = block or inode ``i`` of the group):
the byte helpers of bitmap.py find a free run with a C-speed scan for the
length of a run of full bytes, where converting the 4 KiB block to a Python
integer and back would cost more than the search.

*Lazy init.*  A BLOCK_UNINIT group has no block bitmap on disk; on first use
it is materialized: the superblock backup, GDT and reserved GDT blocks (if
the group has a backup) and every bitmap and inode table of *any* group
that lies inside it (flex_bg packs them elsewhere; they are found through
the descriptors, never by arithmetic), plus the padding past the end of a
short last group.  The result must agree with ``bg_free_blocks_count``, or
the group is treated as corrupt and nothing is allocated there.  An
INODE_UNINIT group gets a zero inode bitmap.  ``bg_itable_unused`` is
lowered when an inode above the high-water mark is taken, and inode records
skipped below it are zeroed when the table was not (no INODE_ZEROED).

*Policy* (the kernel's spirit, simplified).  A directory created in the
root goes to the group with the fewest directories among those with at
least average free inodes and blocks (spreading top-level trees, as
Orlov does); deeper directories and all other inodes go to the parent's
group, or the next group with a free inode (and, first, free blocks).
Blocks are goal-based: a file's data continues after its previous extent,
or starts in its inode's group; the first free run at or after the goal is
taken, then the next, wrapping around the groups, so a file on an empty
filesystem is one contiguous run.  Blocks freed by the uncommitted
transaction are skipped (see transaction.py).  Reserved GDT blocks, the
resize inode's blocks and all group metadata are marked in the bitmaps and
are therefore never handed out.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

from volfs.errors import CorruptError, error
from volfs.ext4.bitmap import (
    bit_is_set,
    block_bitmap_csum,
    count_zero_bits,
    fill_run,
    find_clear_run,
    inode_bitmap_csum,
    run_is_set,
    set_bits,
    verify_block_bitmap,
    verify_inode_bitmap,
)
from volfs.ext4.group import (
    BG_BLOCK_UNINIT,
    BG_INODE_UNINIT,
    BG_INODE_ZEROED,
    GroupDesc,
    PendingDesc,
    descriptor_block,
    group_blocks,
    group_first_block,
    group_has_super,
    updated_desc,
)
from volfs.ext4.types import InodeNo

if TYPE_CHECKING:
    from volfs.ext4.filesystem import Filesystem

__all__ = ["Allocator"]


class Allocator:
    __slots__ = ("fs", "_verified_bb", "_verified_ib")

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self._verified_bb: set[int] = set()
        self._verified_ib: set[int] = set()

    # -- descriptors ---------------------------------------------------------

    def _update_desc(self, group: int, values: dict[str, int]) -> None:
        fs = self.fs
        sb = fs.sb
        size = sb.desc_size
        per_block = sb.block_size // size
        # The checked decode of the record as it is now (every caller has read it in this operation).
        desc = updated_desc(sb, fs.group_desc(group), values)
        blk = descriptor_block(sb, group // per_block)
        off = (group % per_block) * size
        txn = fs.txn_required()
        record = PendingDesc(sb, fs.fs_seed, desc)
        # The record is encoded (checksum included) only when it is patched in, at the commit or a
        # read of its block; until then the read side serves the decoded form (install_deferred_desc).
        if txn.defer(blk, off, record, -1 - group):
            fs.install_deferred_desc(group, blk, desc)
            return
        # Something else waits at that very place (a hostile image whose tables overlap): now.
        data = txn.read(blk, "group descriptor")
        txn.patch(blk, off, record.encode(data[off : off + size]), "group descriptor")

    def free_blocks_total(self) -> int:
        return sum(self.fs.group_desc(g).free_blocks for g in range(self.fs.sb.group_count))

    def free_inodes_total(self) -> int:
        return sum(self.fs.group_desc(g).free_inodes for g in range(self.fs.sb.group_count))

    # -- block bitmaps ---------------------------------------------------------

    def _gdt_blocks(self) -> int:
        sb = self.fs.sb
        per_block = sb.block_size // sb.desc_size
        return (sb.group_count + per_block - 1) // per_block

    def _materialize_block_bits(self, group: int, desc: GroupDesc) -> int:
        fs = self.fs
        sb = fs.sb
        first = group_first_block(sb, group)
        n = group_blocks(sb, group)
        bits = 0
        if group_has_super(sb, group):
            bits = set_bits(bits, 0, min(n, 1 + self._gdt_blocks() + sb.reserved_gdt_blocks), True)
        itable = (sb.inodes_per_group * sb.inode_size + sb.block_size - 1) // sb.block_size
        for h in range(sb.group_count):
            d = fs.group_desc(h)
            for start, count in ((d.block_bitmap, 1), (d.inode_bitmap, 1), (d.inode_table, itable)):
                lo, hi = max(start, first), min(start + count, first + n)
                if lo < hi:
                    bits = set_bits(bits, lo - first, hi - lo, True)
        if count_zero_bits(bits, n) != desc.free_blocks:
            raise CorruptError("block bitmap", f"group {group}: uninitialised bitmap disagrees with "
                               f"bg_free_blocks_count {desc.free_blocks}")
        return bits

    def _block_bits(self, group: int) -> tuple[bytes, GroupDesc]:
        """The block bitmap of ``group`` as bytes (materialized when uninitialised), checked once."""
        fs = self.fs
        desc = fs.group_desc(group)
        if fs.sb.metadata_csum or fs.sb.gdt_csum:
            if desc.flags & BG_BLOCK_UNINIT:
                return self._materialize_block_bits(group, desc).to_bytes(fs.sb.block_size, "little"), desc
        data = fs.txn_required().read(desc.block_bitmap, "block bitmap")
        if group not in self._verified_bb:
            verify_block_bitmap(fs.sb, fs.fs_seed, desc, data)
            n = group_blocks(fs.sb, group)
            bits = int.from_bytes(data, "little")
            if count_zero_bits(bits, n) != desc.free_blocks:
                raise CorruptError("block bitmap", f"group {group}: {count_zero_bits(bits, n)} free blocks in the "
                                   f"bitmap but bg_free_blocks_count is {desc.free_blocks}", block=desc.block_bitmap)
            self._verified_bb.add(group)
        return data, desc

    def _store_block_bits(self, group: int, desc: GroupDesc, buf: bytearray, values: dict[str, int]) -> None:
        fs = self.fs
        sb = fs.sb
        bs = sb.block_size
        n = group_blocks(sb, group)
        fill_run(buf, n, bs * 8 - n, True)  # padding past the group's last block
        data = bytes(buf)
        fs.txn_required().put(desc.block_bitmap, data)
        self._verified_bb.add(group)
        values["flags"] = values.get("flags", desc.flags) & ~BG_BLOCK_UNINIT
        if sb.metadata_csum:
            values["block_bitmap_csum"] = block_bitmap_csum(sb, fs.fs_seed, data)
        self._update_desc(group, values)

    def _search_bits(self, group: int, buf: bytearray) -> bytearray:
        """The bits an allocation in ``group`` may not take: ``buf`` itself, or, when the running
        transaction freed blocks of the group (not reusable before it commits), a copy of ``buf``
        with those blocks marked too."""
        sb = self.fs.sb
        first = group_first_block(sb, group)
        n = group_blocks(sb, group)
        search = buf
        for start, count in self.fs.txn_required().freed:
            lo, hi = max(start, first), min(start + count, first + n)
            if lo < hi:
                if search is buf:
                    search = bytearray(buf)
                fill_run(search, lo - first, hi - lo, True)
        return search

    def alloc_blocks(self, goal: int, count: int) -> list[tuple[int, int]]:
        """``count`` blocks as (start, length) runs, contiguous when possible; ENOSPC otherwise."""
        fs = self.fs
        sb = fs.sb
        if count <= 0:
            return []
        if not sb.first_data_block <= goal < sb.blocks_count:
            goal = sb.first_data_block
        goal_group = (goal - sb.first_data_block) // sb.blocks_per_group
        out: list[tuple[int, int]] = []
        left = count
        for step in range(sb.group_count + 1):
            g = (goal_group + step) % sb.group_count
            if step == sb.group_count and g != goal_group:
                break
            desc = fs.group_desc(g)
            if desc.free_blocks == 0:
                continue
            data, desc = self._block_bits(g)
            first = group_first_block(sb, g)
            n = group_blocks(sb, g)
            buf = bytearray(data)
            search = self._search_bits(g, buf)
            pos = goal - first if (step == 0 and goal >= first) else 0
            if step == sb.group_count:
                pos, n_limit = 0, goal - first  # wrapped: the part of the goal group before the goal
            else:
                n_limit = n
            taken = 0
            while left:
                run = find_clear_run(search, n_limit, pos, left)
                if run is None:
                    break
                start, length = run
                fill_run(buf, start, length, True)
                if search is not buf:
                    fill_run(search, start, length, True)
                if out and out[-1][0] + out[-1][1] == first + start:
                    out[-1] = (out[-1][0], out[-1][1] + length)
                else:
                    out.append((first + start, length))
                left -= length
                taken += length
                pos = start + length
            if taken:
                self._store_block_bits(g, desc, buf, {"free_blocks": desc.free_blocks - taken})
            if not left:
                return out
        raise error(errno.ENOSPC, "no free blocks left")

    def free_blocks(self, start: int, count: int) -> None:
        """Return blocks ``[start, start+count)`` (possibly spanning groups) to the free pool."""
        fs = self.fs
        sb = fs.sb
        if count <= 0:
            return
        if start < sb.first_data_block or start + count > sb.blocks_count:
            raise CorruptError("block bitmap", f"freeing blocks {start}+{count} outside the filesystem")
        fs.txn_required().note_freed(start, count)
        pos = start
        end = start + count
        while pos < end:
            g = (pos - sb.first_data_block) // sb.blocks_per_group
            first = group_first_block(sb, g)
            hi = min(end, first + group_blocks(sb, g))
            data, desc = self._block_bits(g)
            k = hi - pos
            if not run_is_set(data, pos - first, k):
                raise CorruptError("block bitmap", f"freeing blocks {pos}+{k} that are not in use", block=pos)
            buf = bytearray(data)
            fill_run(buf, pos - first, k, False)
            self._store_block_bits(g, desc, buf, {"free_blocks": desc.free_blocks + k})
            pos = hi

    # -- inodes ----------------------------------------------------------------

    def _inode_bits(self, group: int) -> tuple[bytes, GroupDesc]:
        """The inode bitmap of ``group`` as bytes (zeros when uninitialised), checked once."""
        fs = self.fs
        desc = fs.group_desc(group)
        if (fs.sb.metadata_csum or fs.sb.gdt_csum) and desc.flags & BG_INODE_UNINIT:
            return bytes(fs.sb.block_size), desc
        data = fs.txn_required().read(desc.inode_bitmap, "inode bitmap")
        if group not in self._verified_ib:
            verify_inode_bitmap(fs.sb, fs.fs_seed, desc, data)
            ipg = fs.sb.inodes_per_group
            bits = int.from_bytes(data, "little")
            if count_zero_bits(bits, ipg) != desc.free_inodes:
                raise CorruptError("inode bitmap", f"group {group}: {count_zero_bits(bits, ipg)} free inodes in the "
                                   f"bitmap but bg_free_inodes_count is {desc.free_inodes}", block=desc.inode_bitmap)
            self._verified_ib.add(group)
        return data, desc

    def _store_inode_bits(self, group: int, desc: GroupDesc, buf: bytearray, values: dict[str, int]) -> None:
        fs = self.fs
        sb = fs.sb
        bs = sb.block_size
        ipg = sb.inodes_per_group
        fill_run(buf, ipg, bs * 8 - ipg, True)
        data = bytes(buf)
        fs.txn_required().put(desc.inode_bitmap, data)
        self._verified_ib.add(group)
        values["flags"] = values.get("flags", desc.flags) & ~BG_INODE_UNINIT
        if sb.metadata_csum:
            values["inode_bitmap_csum"] = inode_bitmap_csum(sb, fs.fs_seed, data)
        self._update_desc(group, values)

    def _pick_group(self, parent_group: int, is_dir: bool, top_level: bool) -> Iterator[int]:
        """Groups to try for a new inode, best first (policy in the module header).

        Lazy: the caller stops at the first group that has a free inode, so
        only the descriptors of the groups it looks at are decoded (a file
        created in its parent's group costs one, whatever the group count).
        The order is that of a full scan, since the caller changes no
        descriptor before it stops.
        """
        fs = self.fs
        n = fs.sb.group_count
        if is_dir and top_level:
            descs = [fs.group_desc(g) for g in range(n)]
            avg_i = sum(d.free_inodes for d in descs) / n
            avg_b = sum(d.free_blocks for d in descs) / n
            good = [g for g, d in enumerate(descs) if d.free_inodes and d.free_inodes >= avg_i
                    and d.free_blocks >= avg_b]
            good.sort(key=lambda g: (descs[g].used_dirs, (g - parent_group) % n))
            if good:
                yield from good
                yield from (g for g in range(n) if g not in good)
                return
        later: list[int] = []
        for k in range(n):
            g = (parent_group + k) % n
            d = fs.group_desc(g)
            if d.free_inodes and d.free_blocks:
                yield g
            else:
                later.append(g)
        yield from later

    def alloc_inode(self, parent: int, is_dir: bool) -> InodeNo:
        """A free inode number near ``parent`` (policy above); ENOSPC when none is left."""
        fs = self.fs
        sb = fs.sb
        ipg = sb.inodes_per_group
        parent_group = (parent - 1) // ipg
        csum = sb.metadata_csum or sb.gdt_csum
        for g in self._pick_group(parent_group, is_dir, parent == 2):
            desc = fs.group_desc(g)
            if desc.free_inodes == 0:
                continue
            bits, desc = self._inode_bits(g)
            start = sb.first_ino - 1 if g == 0 else 0
            run = find_clear_run(bits, ipg, start, 1)
            if run is None:
                continue
            index = run[0]
            ino = g * ipg + index + 1
            if ino > sb.inodes_count:
                continue
            if csum and desc.flags & BG_BLOCK_UNINIT:
                # The kernel initialises the block bitmap of a group it puts an inode in.
                bdata, desc = self._block_bits(g)
                self._store_block_bits(g, desc, bytearray(bdata), {})
                desc = fs.group_desc(g)
            values = {"free_inodes": desc.free_inodes - 1}
            if is_dir:
                values["used_dirs"] = desc.used_dirs + 1
            if csum:
                high_water = ipg - desc.itable_unused
                if index >= high_water:
                    if not desc.flags & BG_INODE_ZEROED:
                        self._zero_inodes(desc, high_water, index)
                    values["itable_unused"] = ipg - index - 1
            buf = bytearray(bits)
            fill_run(buf, index, 1, True)
            self._store_inode_bits(g, desc, buf, values)
            return InodeNo(ino)
        raise error(errno.ENOSPC, "no free inodes left")

    def _zero_inodes(self, desc: GroupDesc, first: int, end: int) -> None:
        fs = self.fs
        sb = fs.sb
        isz, bs = sb.inode_size, sb.block_size
        for index in range(first, end):
            byte = index * isz
            blk = desc.inode_table + byte // bs
            fs.txn_required().patch(blk, byte % bs, bytes(isz), "inode table")

    def free_inode(self, ino: int, is_dir: bool) -> None:
        fs = self.fs
        ipg = fs.sb.inodes_per_group
        g, index = divmod(ino - 1, ipg)
        bits, desc = self._inode_bits(g)
        if not bit_is_set(bits, index):
            raise CorruptError("inode bitmap", f"freeing inode {ino} that is not in use", inode=ino)
        values = {"free_inodes": desc.free_inodes + 1}
        if is_dir:
            values["used_dirs"] = max(desc.used_dirs - 1, 0)
        buf = bytearray(bits)
        fill_run(buf, index, 1, False)
        self._store_inode_bits(g, desc, buf, values)

    def forget_verified(self) -> None:
        self._verified_bb.clear()
        self._verified_ib.clear()
