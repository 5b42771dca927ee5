"""mkfs layout: geometry and block placement, as mke2fs 1.47 chooses them.

Theory of operation.  :func:`plan_geometry` turns a device size and the
options into the numbers of the superblock (blocks and inodes per group,
group count, inode table size, reserved GDT blocks, journal size, reserved
blocks), following the rules of mke2fs 1.47.0 and its Debian 12
``mke2fs.conf``: the size class (floppy/small/default/big/huge) picks the
inode ratio; inodes per group fill whole inode-table blocks and are a
multiple of 8; a last group too small for its own metadata plus 50 blocks
is dropped; the reserved GDT blocks allow growth to 1024 times the size
(capped at one indirect block of pointers); the journal size follows
``ext2fs_default_journal_size``.

:class:`UsedMap` is the block allocation state while the layout is being
made: a sorted list of disjoint used extents (a handful per flex group),
so even multi-terabyte images are placed without a per-block bitmap.
It answers the questions libext2fs's allocators ask ("first free block at
or after goal", "first run of n free blocks in [start, finish)", "longest
free run from here") with the same answers, so :func:`place_group_tables`
(the flex_bg packing of ``ext2fs_allocate_group_table``) and the later
allocations of mkfs land every structure on the block mke2fs would use.
Nothing here does I/O or builds on-disk bytes.
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass
from typing import Final

from volfs.errors import error
from volfs.ext4.types import BlockNo, GroupNo

__all__ = ["Geometry", "UsedMap", "plan_geometry", "place_group_tables", "default_journal_blocks",
           "backup_groups", "MAX_INIT_EXTENT"]

_MAX32: Final = (1 << 32) - 1
MAX_INIT_EXTENT: Final = 32768
_FIRST_INO: Final = 11
_MIN_JOURNAL_BLOCKS: Final = 1024

# Debian 12 /etc/mke2fs.conf (e2fsprogs 1.47.0): inode_ratio per size class.
_INODE_RATIO: Final = {"floppy": 8192, "small": 4096, "default": 16384, "big": 32768, "huge": 65536}


def size_class(blocks: int, block_size: int) -> str:
    """The mke2fs usage type of a filesystem of ``blocks`` blocks."""
    meg = (1024 * 1024) // block_size
    if blocks < 3 * meg:
        return "floppy"
    if blocks < 512 * meg:
        return "small"
    if blocks < 4 * 1024 * 1024 * meg:
        return "default"
    if blocks < 16 * 1024 * 1024 * meg:
        return "big"
    return "huge"


def default_journal_blocks(blocks: int) -> int:
    """``ext2fs_default_journal_size``: journal blocks for a filesystem size (0: too small)."""
    if blocks < 2048:
        return 0
    for limit, size in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192), (4096 * 1024, 16384),
                        (8192 * 1024, 32768), (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if blocks < limit:
            return size
    return 262144


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def backup_groups(group_count: int, sparse_super: bool) -> list[int]:
    """Groups other than 0 that hold a superblock and GDT backup, ascending."""
    if not sparse_super:
        return list(range(1, group_count))
    return [g for g in range(1, group_count)
            if g == 1 or (g & 1 and (_is_power(g, 3) or _is_power(g, 5) or _is_power(g, 7)))]


@dataclass(frozen=True, slots=True)
class Geometry:
    """The numbers of a filesystem to be made (superblock fields, mostly)."""

    block_size: int
    first_data_block: int
    blocks_count: int
    r_blocks_count: int
    blocks_per_group: int
    group_count: int
    inodes_per_group: int
    inodes_count: int
    inode_size: int
    inode_blocks_per_group: int
    desc_size: int
    desc_blocks: int
    reserved_gdt_blocks: int
    log_groups_per_flex: int
    journal_blocks: int
    sparse_super: bool
    backups: tuple[int, ...]

    def group_first_block(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_last_block(self, group: int) -> int:
        if group == self.group_count - 1:
            return self.blocks_count - 1
        return self.group_first_block(group) + self.blocks_per_group - 1

    def group_of_block(self, block: int) -> GroupNo:
        return GroupNo((block - self.first_data_block) // self.blocks_per_group)

    def has_super(self, group: int) -> bool:
        return group == 0 or group in self.backups

    def super_and_gdt_blocks(self, group: int) -> tuple[int, int]:
        """(first block, count) of the superblock, GDT and reserved GDT of a group holding a copy."""
        first = self.group_first_block(group)
        return first, 1 + self.desc_blocks + self.reserved_gdt_blocks


def plan_geometry(size: int, *, block_size: int, inode_size: int, inode_ratio: int | None,
                  inodes_count: int | None, reserved_ratio: float, flex_bg_size: int, is_64bit: bool,
                  resize_inode: bool, sparse_super: bool, journal: bool, journal_blocks: int | None,
                  path: str | None = None) -> Geometry:
    """The geometry mke2fs 1.47.0 would choose for ``size`` bytes (see the module docstring).

    Raises EINVAL for impossible requests (too small, too many inodes) and
    EOPNOTSUPP for sizes that would need meta_bg.
    """
    if block_size not in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
        raise error(errno.EINVAL, f"block size {block_size} is not a power of two in [1024, 65536]", path)
    if inode_size < 128 or inode_size > block_size or inode_size & (inode_size - 1):
        raise error(errno.EINVAL, f"inode size {inode_size} is invalid", path)
    if not 0.0 <= reserved_ratio <= 50.0:
        raise error(errno.EINVAL, f"reserved ratio {reserved_ratio} is outside [0, 50] percent", path)
    param_blocks = size // block_size
    if param_blocks > _MAX32 and not is_64bit:
        raise error(errno.EFBIG, f"{param_blocks} blocks need the 64bit feature", path)
    if param_blocks > _MAX32:
        resize_inode = False  # as mke2fs: no resize inode beyond 2^32 blocks
    if inode_ratio is None:
        inode_ratio = max(_INODE_RATIO[size_class(param_blocks, block_size)], block_size)
    if inode_ratio < 1024 or inode_ratio > 65536 * 1024:
        raise error(errno.EINVAL, f"inode ratio {inode_ratio} is outside [1024, 64 MiB]", path)
    if inodes_count is None:
        wanted = param_blocks * block_size // inode_ratio
        if wanted > _MAX32:
            if not is_64bit:
                raise error(errno.EINVAL, f"too many inodes ({wanted}); raise the inode ratio", path)
            wanted = _MAX32
    else:
        wanted = inodes_count
        if wanted > _MAX32:
            raise error(errno.EINVAL, f"too many inodes ({wanted}); at most 2^32 - 1", path)
    if param_blocks == 0 or wanted * inode_size >= param_blocks * block_size:
        raise error(errno.EINVAL, f"inode size {inode_size} * inode count {wanted} does not fit in "
                    f"{param_blocks} blocks", path)
    param_r_blocks = int(reserved_ratio * param_blocks / 100.0)
    first_data_block = 1 if block_size == 1024 else 0
    desc_size = 64 if is_64bit else 32
    bpg = min(block_size * 8, (1 << 16) - 8)
    max_ipg = (1 << 16) - block_size // inode_size
    blocks = param_blocks
    r_blocks = param_r_blocks
    while True:  # ext2fs_initialize's "retry"
        groups = -(-(blocks - first_data_block) // bpg)
        if groups <= 0:
            raise error(errno.EINVAL, "device too small for a filesystem", path)
        desc_blocks = -(-groups // (block_size // desc_size))
        ipg = -(-wanted // groups)
        if ipg > block_size * 8:
            if bpg >= 256:
                bpg -= 8
                blocks = param_blocks
                continue
            raise error(errno.EINVAL, "too many inodes for the block size", path)
        ipg = min(ipg, max_ipg)
        while True:  # "ipg_retry"
            itb = -(-(ipg * inode_size) // block_size)
            per_group = itb * block_size // inode_size
            per_group = max(per_group, 8) & ~7
            itb = -(-(per_group * inode_size) // block_size)
            if per_group * groups > _MAX32:
                ipg -= 1
                continue
            if per_group * groups < _FIRST_INO + 1:
                ipg += 8
                continue
            break
        rsv_gdt = 0
        if resize_inode:
            max_blocks = _MAX32
            if blocks < _MAX32 // 1024:
                max_blocks = blocks * 1024
            rsv_groups = -(-(max_blocks - first_data_block) // bpg)
            rsv_gdt = -(-rsv_groups // (block_size // desc_size)) - desc_blocks
            rsv_gdt = max(0, min(rsv_gdt, block_size // 4))
        if rsv_gdt + desc_blocks > bpg * 3 // 4:
            raise error(errno.EOPNOTSUPP, "this size needs meta_bg, which volfs mkfs does not make", path)
        if 3 + itb + rsv_gdt + desc_blocks > bpg:
            raise error(errno.EINVAL, "too many inodes per group", path)
        backups = tuple(backup_groups(groups, sparse_super))
        last_overhead = 2 + itb
        if groups - 1 == 0 or (backups and backups[-1] == groups - 1):
            last_overhead += 1 + desc_blocks + rsv_gdt
        rem = (blocks - first_data_block) % bpg
        if groups == 1 and rem and rem < last_overhead:
            raise error(errno.EINVAL, f"device too small: {blocks} blocks cannot hold one group's metadata",
                        path)
        if rem and rem < last_overhead + 50:
            blocks -= rem
            ratio = 100.0 * param_r_blocks / param_blocks
            r_blocks = int(ratio * blocks / 100.0)
            continue
        break
    if r_blocks >= blocks:
        raise error(errno.EINVAL, "reserved blocks exceed the filesystem", path)
    jblocks = 0
    if journal:
        if journal_blocks is None:
            jblocks = default_journal_blocks(blocks)
        else:
            jblocks = journal_blocks
            if jblocks < _MIN_JOURNAL_BLOCKS or jblocks > 10240000:
                raise error(errno.EINVAL, f"journal of {jblocks} blocks is outside [1024, 10240000]", path)
    log_flex = 0
    if flex_bg_size:
        if flex_bg_size & (flex_bg_size - 1) or flex_bg_size > (1 << 31):
            raise error(errno.EINVAL, f"flex_bg size {flex_bg_size} is not a power of two", path)
        log_flex = flex_bg_size.bit_length() - 1
    return Geometry(
        block_size=block_size, first_data_block=first_data_block, blocks_count=blocks, r_blocks_count=r_blocks,
        blocks_per_group=bpg, group_count=groups, inodes_per_group=per_group, inodes_count=per_group * groups,
        inode_size=inode_size, inode_blocks_per_group=itb, desc_size=desc_size, desc_blocks=desc_blocks,
        reserved_gdt_blocks=rsv_gdt, log_groups_per_flex=log_flex, journal_blocks=jblocks,
        sparse_super=sparse_super, backups=backups,
    )


class UsedMap:
    """Used blocks as sorted, disjoint, merged half-open extents ``[start, end)``."""

    __slots__ = ("_starts", "_ends", "total", "first")

    def __init__(self, total: int, first: int) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = total
        self.first = first

    def extents(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def add(self, start: int, count: int) -> None:
        """Mark ``[start, start + count)`` used (it must be free)."""
        end = start + count
        j = bisect.bisect_right(self._ends, start)  # first extent ending after start
        if j < len(self._starts) and self._starts[j] < end:
            raise ValueError(f"blocks {start}+{count} overlap a used extent")
        left = j > 0 and self._ends[j - 1] == start
        right = j < len(self._starts) and self._starts[j] == end
        if left and right:
            self._ends[j - 1] = self._ends[j]
            del self._starts[j], self._ends[j]
        elif left:
            self._ends[j - 1] = end
        elif right:
            self._starts[j] = start
        else:
            self._starts.insert(j, start)
            self._ends.insert(j, end)

    def _last_used_in(self, lo: int, hi: int) -> int | None:
        """The highest used block in ``[lo, hi)``, if any."""
        i = bisect.bisect_left(self._starts, hi) - 1
        if i < 0 or self._ends[i] <= lo:
            return None
        return min(self._ends[i], hi) - 1

    def used_in(self, lo: int, hi: int) -> int:
        """How many blocks of ``[lo, hi)`` are used."""
        i = max(bisect.bisect_right(self._ends, lo), 0)
        n = 0
        while i < len(self._starts) and self._starts[i] < hi:
            n += min(self._ends[i], hi) - max(self._starts[i], lo)
            i += 1
        return n

    def runs_in(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Used extents clipped to ``[lo, hi)``."""
        i = bisect.bisect_right(self._ends, lo)
        out = []
        while i < len(self._starts) and self._starts[i] < hi:
            out.append((max(self._starts[i], lo), min(self._ends[i], hi)))
            i += 1
        return out

    def is_used(self, block: int) -> bool:
        return self._last_used_in(block, block + 1) is not None

    def first_free(self, lo: int, hi: int) -> int | None:
        """First free block in ``[lo, hi]`` (inclusive, like find_first_zero)."""
        b = lo
        i = bisect.bisect_right(self._starts, b) - 1
        if i >= 0 and self._ends[i] > b:
            b = self._ends[i]
        return b if b <= hi else None

    def first_used(self, lo: int, hi: int) -> int | None:
        """First used block in ``[lo, hi]``."""
        i = bisect.bisect_right(self._starts, lo) - 1
        if i >= 0 and self._ends[i] > lo:
            return lo
        i += 1
        if i < len(self._starts) and self._starts[i] <= hi:
            return self._starts[i]
        return None

    def new_block(self, goal: int) -> int | None:
        """``ext2fs_new_block2``: the first free block at or after ``goal``, wrapping once."""
        if not goal or goal >= self.total:
            goal = self.first
        b = self.first_free(goal, self.total - 1)
        if b is None and goal != self.first:
            b = self.first_free(self.first, goal - 1)
        return b

    def new_range(self, goal: int, length: int) -> tuple[int, int] | None:
        """``ext2fs_new_range`` without flags: (start, count) of the free run at or after ``goal``."""
        if not goal or goal >= self.total:
            goal = self.first
        start = self.first_free(goal, self.total - 1)
        if start is None:
            start = self.first_free(self.first, self.total - 1)
            if start is None:
                return None
        b = min(start + length - 1, self.total - 1)
        end = self.first_used(start, b)
        if end is None:
            end = b + 1
        return start, end - start

    def get_free_blocks(self, start: int, finish: int, num: int) -> int | None:
        """``ext2fs_get_free_blocks2``: first b in [start, finish) (wrapping when finish <= start)
        with ``[b, b + num)`` free."""
        b = start if start else self.first
        fin = finish if finish else start
        limit = self.total - num + 1  # the first b whose run would pass the end
        spans = [(b, min(fin, limit))] if fin > start else [(b, limit), (self.first, fin)]
        for lo, hi in spans:
            b = lo
            while b < hi:
                last = self._last_used_in(b, b + num)
                if last is None:
                    return b
                b = last + 1
        return None


@dataclass(frozen=True, slots=True)
class GroupTables:
    block_bitmap: list[BlockNo]
    inode_bitmap: list[BlockNo]
    inode_table: list[BlockNo]


def _flexbg_offset(geo: Geometry, used: UsedMap, group: int, start_blk: int, rem_grp: int,
                   elem_size: int) -> int:
    flexbg_size = 1 << geo.log_groups_per_flex
    flexbg = group // flexbg_size
    size = rem_grp * elem_size
    if size > geo.blocks_per_group // 4:
        size = geo.blocks_per_group // 4
    if start_blk and start_blk < geo.blocks_count:
        found = used.get_free_blocks(start_blk, start_blk + size, elem_size)
        if found is not None:
            return found
    start_blk = geo.group_first_block(flexbg_size * flexbg)
    last_grp = min(group | (flexbg_size - 1), geo.group_count - 1)
    last_blk = geo.group_last_block(last_grp)
    for lo, n in ((start_blk, size), (start_blk, elem_size), (0, elem_size)):
        found = used.get_free_blocks(lo, last_blk, n)
        if found is not None:
            return found
    return 0


def place_group_tables(geo: Geometry, used: UsedMap, path: str | None = None) -> GroupTables:
    """Place every group's bitmaps and inode table as ``ext2fs_allocate_group_table`` does."""
    g_count = geo.group_count
    bb = [BlockNo(0)] * g_count
    ib = [BlockNo(0)] * g_count
    it = [BlockNo(0)] * g_count
    itb = geo.inode_blocks_per_group
    flexbg_size = (1 << geo.log_groups_per_flex) if geo.log_groups_per_flex else 0

    def fail(what: str, group: int) -> Exception:
        return error(errno.ENOSPC, f"no room for the {what} of group {group}", path)

    for g in range(g_count):
        group_blk = geo.group_first_block(g)
        last_blk = geo.group_last_block(g)
        start_blk = group_blk
        last_grp = g
        rem_grps = 0
        table_offset = 0
        if flexbg_size:
            last_grp = min(g | (flexbg_size - 1), g_count - 1)
            rem_grps = last_grp - g + 1
            table_offset = flexbg_size
            prev = 0
            if g % flexbg_size:
                prev = bb[g - 1] + 1
            elif last_grp == g_count - 1:
                # The last flex group keeps its tables contiguous.
                table_offset = last_grp & (flexbg_size - 1)
                table_offset = flexbg_size if table_offset == 0 else table_offset + 1
            start_blk = _flexbg_offset(geo, used, g, prev, rem_grps, 1)
            last_blk = geo.group_last_block(last_grp)
        blk = used.get_free_blocks(start_blk, last_blk, 1)
        if blk is None:
            blk = used.get_free_blocks(group_blk, last_blk, 1)
        if blk is None:
            raise fail("block bitmap", g)
        used.add(blk, 1)
        bb[g] = BlockNo(blk)

        if flexbg_size:
            prev = ib[g - 1] + 1 if g % flexbg_size else bb[g] + table_offset
            start_blk = _flexbg_offset(geo, used, g, prev, rem_grps, 1)
            last_blk = geo.group_last_block(last_grp)
        blk = used.get_free_blocks(start_blk, last_blk, 1)
        if blk is None:
            blk = used.get_free_blocks(group_blk, last_blk, 1)
        if blk is None:
            raise fail("inode bitmap", g)
        used.add(blk, 1)
        ib[g] = BlockNo(blk)

        if flexbg_size:
            prev = it[g - 1] + itb if g % flexbg_size else ib[g] + table_offset
            group_blk = _flexbg_offset(geo, used, g, prev, rem_grps, itb)
            last_blk = geo.group_last_block(last_grp)
        blk = used.get_free_blocks(group_blk, last_blk, itb)
        if blk is None:
            raise fail("inode table", g)
        used.add(blk, itb)
        it[g] = BlockNo(blk)
    return GroupTables(bb, ib, it)
