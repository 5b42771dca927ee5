"""The filesystem: an inode-level read API over one ext4 image.

Theory of operation.  :meth:`Filesystem.open` reads and checks the primary
superblock, refuses unknown incompat features, and, when the image needs
recovery, replays the journal into the block cache's overlay (nothing is
written); the superblock is then re-read through that overlay.  Group
descriptors, inodes, runlists and parsed directory blocks are decoded on
first use and kept in bounded caches (see "Decoded caches" below).

Every checksum of metadata_csum is verified where the structure is read.
With ``salvage=True`` mismatches are ignored (structural corruption is still
an error: inspection tools can read past bad checksums, never past
nonsense).  Every on-disk count, size and offset is bounded before it is
used, so a hostile image yields a :class:`CorruptError` in bounded time and
memory.

The API is shaped for a FUSE-like backend: names are bytes, attributes carry
nanosecond timestamps, readdir offsets are positions that stay valid
(nothing moves in a read-only view), and reads move whole runs.

Decoded caches.  Parsed inodes, group descriptors, runlists, htree roots and
the name indexes of linear directories are kept between calls, and none of
them can be used stale, whatever the write side does and whether or not it
remembers to call :meth:`Filesystem.forget_inode` and friends (it still
does; they just drop entries early).  Each entry is stamped with the block
cache's epoch (:attr:`BlockCache.epoch`, which moves on every change to the
bytes the cache serves) and remembers the bytes it was decoded from:

* same epoch: nothing the cache serves has changed since the entry was last
  checked, so it is exact (the O(1) path of every read-only workload);
* older epoch, but none of its source blocks stamped as changed since
  (:meth:`BlockCache.unchanged`): exact too, without reading anything (the
  common case while writing: a create dirties a handful of blocks);
* otherwise the source bytes are read again through the cache (no device
  read when they are cached) and compared, by identity of the ``bytes``
  object first (a block the write side modified is always a new object, and
  holding the old object keeps its identity from being reused) and by value
  second (an evicted block comes back as a new but equal object).  Equal
  bytes: the entry is re-stamped and used.  Different: it is decoded again.

What an entry depends on: a parsed inode on its raw record; a group
descriptor on its raw descriptor; a runlist on the fields of the inode's
record that map it (flags, i_block, generation, and i_size for block maps)
plus every extent-tree or block-map block read to build it; an htree root on the
directory's block 0; a name index on the directory's raw inode record (its
size and block mapping) and every leaf block (see :class:`_NameIndex`).
Decoding also depends on superblock fields (features, geometry, checksum
seed): :meth:`reload_superblock` drops everything when those change.

The write side hands over what it has just decoded instead of making the
read side decode (and verify) its own output again: the allocator its new
group descriptors, :meth:`Writer.store` each inode record it writes
(:meth:`install_deferred_inode`, or :meth:`install_inode` when it was put at
once).  Such an entry is stamped with the epoch (and, put at once, the bytes
object served right after the write), so from then on it is checked like any
other: a deferred record's block does not change until the record is
patched in, after which the entry is compared with the bytes.  One memo is
stricter: the last name an htree lookup did not find is trusted only at the
very epoch of that lookup (a FUSE negative LOOKUP is followed by CREATE,
whose existence check asks the same question).
"""

from __future__ import annotations

import bisect
import errno
import operator
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from volfs.errors import CorruptError, error
from volfs.ext4._records import maker
from volfs.ext4.bitmap import verify_block_bitmap, verify_inode_bitmap
from volfs.ext4.blockmap import blockmap_runs
from volfs.ext4.cache import BlockCache
from volfs.ext4.checksum import fs_seed as compute_fs_seed
from volfs.ext4.checksum import inode_seed
from volfs.ext4.device import BlockDevice, FileDevice, WritableBlockDevice
from volfs.ext4.dirhash import HASH_TEA, dirhash
from volfs.ext4.directory import (
    DirEntry,
    DxIndex,
    DxLevel,
    dx_lookup,
    dx_node_csum_ok,
    is_dx_node_block,
    parse_dir_block,
    parse_dx_node,
    parse_dx_root,
)
from volfs.ext4.extents import extent_runs
from volfs.ext4.group import (
    BG_INODE_UNINIT,
    GroupDesc,
    descriptor_block,
    group_has_super,
    parse_group_desc,
)
from volfs.ext4.inline import inline_bytes, parse_inline_dir
from volfs.ext4.inode import (
    EXT4_CASEFOLD_FL,
    EXT4_EA_INODE_FL,
    EXT4_ENCRYPT_FL,
    EXT4_EXTENTS_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    Inode,
    parse_inode,
)
from volfs.ext4.journal import Replay, parse_journal_superblock, replay_journal
from volfs.ext4.orphan import orphan_file_entries, walk_orphan_chain
from volfs.ext4.runlist import RunList
from volfs.ext4.superblock import (
    COMPAT_DIR_INDEX,
    COMPAT_HAS_JOURNAL,
    COMPAT_ORPHAN_FILE,
    COMPAT,
    FLAGS_UNSIGNED_HASH,
    INCOMPAT,
    INCOMPAT_CSUM_SEED,
    INCOMPAT_EXTENTS,
    INCOMPAT_FILETYPE,
    INCOMPAT_LARGEDIR,
    INCOMPAT_META_BG,
    INCOMPAT_RECOVER,
    RO_COMPAT,
    RO_COMPAT_HUGE_FILE,
    RO_COMPAT_ORPHAN_PRESENT,
    SUPERBLOCK_OFFSET,
    Superblock,
    check_features,
    feature_names,
    parse_superblock,
    write_blockers,
)
from volfs.ext4.transaction import Transaction
from volfs.ext4.types import BlockNo, GroupNo, InodeNo
from volfs.ext4.xattr import ACL_INDEXES, acl_to_xattr, full_name, parse_ibody, parse_xattr_block, split_name

if TYPE_CHECKING:
    from volfs.ext4.writer import Writer

__all__ = ["Filesystem", "Attr", "StatFs", "FeatureReport", "ROOT_INO"]

ROOT_INO: Final = InodeNo(2)
# Total cost (see _NameIndex: about 128 bytes a unit, so roughly 32 MiB) of linear-directory name indexes.
DIR_INDEX_BUDGET: Final = 1 << 18
_HASH_MEMO: Final = 4096  # names whose htree hash is remembered (the memo starts over when full)
NAME_MAX: Final = 255
_PATH_MAX: Final = 4096
# xattr name indexes the kernel lists (user, ACLs, trusted, security).
_LISTED_INDEXES: Final = (1, 2, 3, 4, 6)

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    __slots__ = ("_d", "_cap")

    # A bounded map with least-recently-used eviction (decoded structures).

    def __init__(self, capacity: int) -> None:
        self._d: OrderedDict[K, V] = OrderedDict()
        self._cap = capacity

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        if len(self._d) > self._cap:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()

    def pop(self, key: K) -> None:
        self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)


class _InodeSlot:
    """A parsed inode and where its record was read (see "Decoded caches")."""

    __slots__ = ("epoch", "block", "data", "offset", "rec")

    def __init__(self, epoch: int, block: int, data: bytes | None, offset: int, rec: Inode) -> None:
        self.epoch = epoch
        self.block = block
        self.data = data
        self.offset = offset
        self.rec = rec


class _DescSlot:
    """A parsed group descriptor, its raw bytes and where they were read (``data`` and ``raw`` None:
    installed by the write side, its record not yet patched into ``block``)."""

    __slots__ = ("epoch", "block", "data", "raw", "desc")

    def __init__(self, epoch: int, block: int, data: bytes | None, raw: bytes | None, desc: GroupDesc) -> None:
        self.epoch = epoch
        self.block = block
        self.data = data
        self.raw = raw
        self.desc = desc


class _RunSlot:
    """A runlist, what of the inode record it was built from and the tree blocks it read.

    ``key`` (:func:`_mapping_key`) holds every field of the record the
    runlist depends on, so a change to any other field (times, link count,
    mode) keeps it.
    """

    __slots__ = ("epoch", "rec", "key", "deps", "runlist")

    def __init__(self, epoch: int, rec: Inode, deps: list[tuple[int, bytes]], runlist: RunList) -> None:
        self.epoch = epoch
        self.rec = rec
        self.key = _mapping_key(rec)
        self.deps = deps
        self.runlist = runlist


def _mapping_key(rec: Inode) -> tuple[int, int, bytes, int]:
    """What :meth:`Filesystem.runlist` reads of an inode record besides its number.

    The mapping flags (inline, extents), i_block, i_generation (the extent
    checksum seed) and, for block maps only, i_size (which bounds the walk).
    """
    flags = rec.flags & (EXT4_INLINE_DATA_FL | EXT4_EXTENTS_FL)
    return flags, rec.generation, rec.i_block, rec.size if not flags else -1


class _DxSlot:
    """A parsed htree root and the directory block 0 it came from."""

    __slots__ = ("epoch", "block", "generation", "data", "root")

    def __init__(self, epoch: int, block: int, generation: int, data: bytes, root: DxIndex) -> None:
        self.epoch = epoch
        self.block = block
        self.generation = generation
        self.data = data
        self.root = root


class _ParsedSlot:
    """A parsed directory block (leaf entries or an htree node) and the bytes it came from.

    ``names`` (leaves only, made on the first name lookup in the leaf) maps
    each name of ``value`` to its entry, so an htree lookup does not scan the
    leaf.  It is None, or exactly ``{e.name: e for e in value}`` with no name
    twice in ``value`` (a leaf holding a name twice is scanned, so the first
    in block order wins); whoever changes ``value`` must keep it so or drop it
    (:meth:`Filesystem.patch_leaf`).
    """

    __slots__ = ("physical", "generation", "data", "value", "names")

    def __init__(self, physical: int, generation: int, data: bytes, value: list[DirEntry] | DxLevel) -> None:
        self.physical = physical
        self.generation = generation
        self.data = data
        self.value = value
        self.names: dict[bytes, DirEntry] | None = None


_BY_OFFSET: Final = operator.attrgetter("offset")  # (a C callable: bisect calls it per probe)


def _around(entries: list[DirEntry], offset: int) -> list[DirEntry]:
    """The entry at ``offset`` (if any) and the one before it: all that a one-entry edit there changes."""
    i = bisect.bisect_left(entries, offset, key=_BY_OFFSET)
    return entries[max(i - 1, 0) : i + 1 if i < len(entries) and entries[i].offset == offset else i]


def _patched_names(names: dict[bytes, DirEntry], old: list[DirEntry], new: list[DirEntry],
                   offset: int) -> dict[bytes, DirEntry] | None:
    """``names`` (the map of ``old``) made the map of ``new``, which differs from ``old`` only in the
    entries :func:`_around` ``offset``; None when ``new`` holds a name twice."""
    for e in _around(old, offset):
        if names.get(e.name) is e:
            del names[e.name]
    for e in _around(new, offset):
        if e.name in names:
            return None
        names[e.name] = e
    return names


class _IndexedBlock:
    """One leaf block of a name index: where it is, the bytes parsed, the names they hold."""

    __slots__ = ("logical", "physical", "data", "names")

    def __init__(self, logical: int, physical: int, data: bytes) -> None:
        self.logical = logical
        self.physical = physical
        self.data = data
        self.names: tuple[bytes, ...] = ()


class _NameIndex:
    """name -> inode of one linear (non-htree) directory, built from one pass over its blocks.

    ``blocks`` holds an :class:`_IndexedBlock` for every mapped block, in
    logical order: the exact ``bytes`` object its names were parsed from and
    those names.  After the cache's epoch moves, the
    directory is walked again through the block cache and each block compared
    with the one held (same physical block, same object or equal bytes):
    unchanged blocks keep their names, changed ones are re-parsed and only
    their names replaced, so a directory being modified costs one cheap
    comparison per block and one parse per changed block.  Names are unique
    in a sound directory; an image with duplicate names (``dups``) is rebuilt
    from scratch on any change, first entry in readdir order winning, as a
    scan would find it.

    ``cost`` bounds memory: one unit (about 128 bytes) per name, a block's
    size in units per held block, plus a constant.
    """

    __slots__ = ("epoch", "rec", "blocks", "names", "cost", "dups")

    def __init__(self, rec: Inode) -> None:
        self.epoch = -1
        self.rec = rec
        self.blocks: list[_IndexedBlock] = []
        self.names: dict[bytes, InodeNo] = {}
        self.cost = 0
        self.dups = False


@dataclass(frozen=True, slots=True)
class Attr:
    """Attributes of one inode, as getattr reports them (times in ns since the epoch)."""

    ino: InodeNo
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int  # 512-byte units
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    flags: int
    generation: int
    blksize: int


# Attr(...) positionally, without the frozen __init__'s cost (_records.py): getattr makes one per inode version.
_make_attr: Final = maker(Attr)


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    fragment_size: int
    blocks: int
    blocks_free: int
    blocks_available: int
    files: int
    files_free: int
    name_max: int


@dataclass(frozen=True, slots=True)
class FeatureReport:
    compat: tuple[str, ...]
    incompat: tuple[str, ...]
    ro_compat: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.compat + self.incompat + self.ro_compat

    def __contains__(self, name: object) -> bool:
        return name in self.names


class Filesystem:
    """A view of an ext4 (or ext2/ext3) image; writable when opened with ``readonly=False``.

    The mutations (``create``, ``mkdir``, ``write``, ``rename``...) live in
    :mod:`volfs.ext4.writer` and are reached through the methods of the same
    name here; on a read-only filesystem they raise EROFS, naming the reason
    (:attr:`readonly_reason`).
    """

    def __init__(self, device: BlockDevice, *, salvage: bool = False, path: str | None = None,
                 cache_blocks: int = 4096, writable: bool = False) -> None:
        self.device = device
        self.path = path
        self.salvage = salvage
        self.readonly = True
        self.readonly_reason = "opened read-only"
        self._writer: Writer | None = None
        self._pins: dict[int, int] = {}
        self.sb = self._read_superblock(device.pread(1024, SUPERBLOCK_OFFSET))
        check_features(self.sb, path)
        self.cache = BlockCache(device, self.sb.block_size, self.sb.blocks_count, cache_blocks)
        self._inodes: _Lru[int, _InodeSlot] = _Lru(8192)
        self._runlists: _Lru[int, _RunSlot] = _Lru(8192)
        # getattr's answer per inode, valid while inode() returns the very Inode it was made from.
        self._attrs: _Lru[int, tuple[Inode, Attr]] = _Lru(8192)
        self._descs: dict[int, _DescSlot] = {}
        self._dx_roots: _Lru[int, _DxSlot] = _Lru(256)
        # Parsed leaf blocks and htree nodes by (kind, directory, logical block), checked on every use.
        self._parsed: _Lru[tuple[str, int, int], _ParsedSlot] = _Lru(256)
        # Major hashes of recently looked-up names by (name, hash version); s_hash_seed is in the
        # decode context, so a pure function of the key (a lookup, then a create, hash the name again).
        self._hashes: dict[tuple[bytes, int], int] = {}
        # The last name an htree lookup did not find: (epoch, directory record, name).  Valid only
        # at that very epoch (nothing the cache serves has changed) for an equal directory record:
        # FUSE's negative LOOKUP is followed by CREATE, whose existence check asks again.
        self._dx_miss: tuple[int, Inode, bytes] | None = None
        # Name indexes of linear directories, least recently used first, bounded by total cost.
        self._names: OrderedDict[int, _NameIndex] = OrderedDict()
        self._names_cost = 0
        self.dir_index_budget = DIR_INDEX_BUDGET
        self.replay: Replay | None = None
        self.recovered = False
        if self.sb.has_incompat(INCOMPAT_RECOVER):
            self._recover()
        if writable:
            blockers = write_blockers(self.sb)
            if salvage:
                blockers.append("opened with salvage (checksums not trusted)")
            if not isinstance(device, WritableBlockDevice) or not device.writable:
                blockers.append("the device is not writable")
            if blockers:
                self.readonly_reason = "; ".join(blockers)
            else:
                from volfs.ext4.writer import Writer

                self.readonly = False
                self._writer = Writer(self)
                self._writer.start()

    # --- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = True, *, salvage: bool = False,
             cache_blocks: int = 4096) -> Filesystem:
        """Open the image at ``path``.

        With ``readonly=False`` the image is opened for writing when the write
        side implements all of its features; otherwise it opens read-only and
        :attr:`readonly_reason` names the features (check :attr:`readonly`).
        A journal that needs recovery is replayed onto the disk first.
        Raises EOPNOTSUPP for features the engine cannot read and
        CorruptError for a bad image.
        """
        p = os.fspath(path)
        dev = FileDevice(p, writable=not readonly)
        try:
            return cls(dev, salvage=salvage, path=p, cache_blocks=cache_blocks, writable=not readonly)
        except BaseException:
            dev.close()
            raise

    @classmethod
    def open_device(cls, device: BlockDevice, *, salvage: bool = False, path: str | None = None,
                    readonly: bool = True) -> Filesystem:
        return cls(device, salvage=salvage, path=path, writable=not readonly)

    def close(self) -> None:
        """Commit (marking the filesystem clean) and close the device.  Idempotent."""
        w = self._writer
        try:
            if w is not None:
                w.finish()
        finally:
            self._writer = None
            self.readonly = True
            self.readonly_reason = "closed"
            self.device.close()

    @property
    def writer(self) -> Writer:
        """The write side; EROFS (naming why) on a read-only filesystem."""
        if self._writer is None:
            raise error(errno.EROFS, f"ext4 image is read-only: {self.readonly_reason}", self.path)
        return self._writer

    def commit(self) -> None:
        """Make every change so far durable (no-op when read-only)."""
        if self._writer is not None:
            self._writer.commit()

    sync = commit

    def txn_required(self) -> Transaction:
        return self.writer.txn

    def forget_desc(self, group: int) -> None:
        self._descs.pop(group, None)

    def forget_inode(self, ino: int) -> None:
        self._inodes.pop(ino)
        self._attrs.pop(ino)
        self._runlists.pop(ino)
        self._dx_roots.pop(ino)
        self._dx_miss = None

    def install_inode(self, ino: InodeNo | int, block: int, offset: int, raw: bytes,
                      place: tuple[int, int] | None | bool = True, rec: Inode | None = None) -> None:
        """Cache the record the write side just put at (``block``, ``offset``) as ``ino``'s parse.

        The write side computed ``raw`` (checksum included), so it is parsed
        without verifying the checksum, and the slot is stamped with the
        current epoch and the very ``bytes`` object the cache now serves for
        ``block``: from here on it is revalidated like any other entry (see
        "Decoded caches").  Anything that would make the next :meth:`inode`
        decode differently, or refuse (the served bytes do not hold ``raw``,
        the record lies outside the initialised inode table), drops the entry
        instead, so that call reads it as before.  ``place`` is
        :meth:`inode_place` of ``ino`` when the caller has just asked it
        (nothing changed since); True: ask it here. ``rec``: the decode of
        ``raw``, when the caller built it (:func:`~volfs.ext4.inode.with_attrs`).
        """
        cache = self.cache
        sb = self.sb
        size = sb.inode_size
        data = cache.read(block, "inode table", ino)
        self._attrs.pop(ino)
        if place is not True:
            # The caller's answer holds unless the put changed the descriptor it came from (a
            # hostile image whose inode table overlaps the descriptor table): then ask again.
            desc = self._descs.get((ino - 1) // sb.inodes_per_group)
            if desc is None or desc.block == block:
                place = True
        if place is True:
            place = self.inode_place(ino)
        if len(raw) != size or data[offset : offset + size] != raw or (block, offset) != place:
            self._inodes.pop(ino)
            return
        self._inodes.put(ino, _InodeSlot(cache.epoch, block, data, offset,
                                         rec if rec is not None else self._decode_written(ino, raw, block)))

    def install_deferred_inode(self, ino: InodeNo | int, block: int, offset: int, raw: bytes,
                               rec: Inode | None = None) -> None:
        """Serve ``raw`` as ``ino``'s record, which the write side will patch in at (``block``, ``offset``)
        later (:meth:`Transaction.defer`): until the block changes, the record is served as installed;
        after, it is checked against the block's bytes like any other entry."""
        self._attrs.pop(ino)
        self._inodes.put(ino, _InodeSlot(self.cache.epoch, block, None, offset,
                                         rec if rec is not None else self._decode_written(ino, raw, block)))

    def _decode_written(self, ino: InodeNo | int, raw: bytes, block: int) -> Inode:
        """The decode of a record the write side just computed (checksum included, so not verified)."""
        sb = self.sb
        return parse_inode(ino, raw, large_dir=sb.has_incompat(INCOMPAT_LARGEDIR),
                           huge_file=sb.has_ro_compat(RO_COMPAT_HUGE_FILE), block_size=sb.block_size,
                           csum_seed=None, block=block)

    def install_deferred_desc(self, group: int, block: int, desc: GroupDesc) -> None:
        """Serve ``desc`` as ``group``'s descriptor, whose record the write side will patch into ``block``
        later (:class:`~volfs.ext4.group.PendingDesc`): until the block changes, it is served as
        installed; after, it is decoded from the block's bytes again."""
        self._descs[group] = _DescSlot(self.cache.epoch, block, None, None, desc)

    def inode_place(self, ino: InodeNo | int) -> tuple[int, int] | None:
        """(inode-table block, offset) of ``ino`` when :meth:`inode` would read it there, else None.

        None: the number is out of range or the record lies in the part of
        its group's table the descriptor marks uninitialised (which
        :meth:`inode` refuses).
        """
        slot = self._inodes._d.get(ino)
        if slot is not None and slot.epoch == self.cache.epoch:
            # A slot checked at this very epoch was read (or installed) at the place computed below
            # from the same descriptor: nothing the cache serves has changed since.
            return slot.block, slot.offset
        return self._compute_place(ino)

    def _compute_place(self, ino: InodeNo | int) -> tuple[int, int] | None:
        """:meth:`inode_place` from the group descriptor (the definition)."""
        sb = self.sb
        if not 1 <= ino <= sb.inodes_count:
            return None
        group, index = divmod(ino - 1, sb.inodes_per_group)
        desc = self.group_desc(group)
        if sb.metadata_csum or sb.gdt_csum:
            if desc.flags & BG_INODE_UNINIT or index >= sb.inodes_per_group - desc.itable_unused:
                return None
        byte = index * sb.inode_size
        return desc.inode_table + byte // sb.block_size, byte % sb.block_size

    def forget_all(self) -> None:
        """Drop every decoded structure (after a rolled-back operation)."""
        self._inodes.clear()
        self._attrs.clear()
        self._runlists.clear()
        self._descs.clear()
        self._dx_roots.clear()
        self._parsed.clear()
        self._hashes.clear()
        self._dx_miss = None
        self._names.clear()
        self._names_cost = 0

    def reload_superblock(self) -> None:
        bs = self.sb.block_size
        raw = self.cache.read(SUPERBLOCK_OFFSET // bs, "superblock")[SUPERBLOCK_OFFSET % bs :][:1024]
        before = self._decode_context()
        self.sb = self._read_superblock(raw)
        if self._decode_context() != before:
            self.forget_all()

    def _decode_context(self) -> tuple[object, ...]:
        """The superblock fields that decoding inodes, descriptors and directories depends on."""
        sb = self.sb
        return (sb.compat, sb.incompat, sb.ro_compat, self.fs_seed, sb.uuid, sb.block_size, sb.blocks_count,
                sb.inodes_count, sb.inodes_per_group, sb.inode_size, sb.desc_size, sb.first_data_block,
                sb.first_meta_bg, sb.group_count, sb.flags, sb.hash_seed)

    # Pins: inodes held open by a handle live on after their last link goes.

    def pin(self, ino: InodeNo | int) -> None:
        self._pins[ino] = self._pins.get(ino, 0) + 1

    def unpin(self, ino: InodeNo | int) -> None:
        n = self._pins.get(ino, 0) - 1
        if n > 0:
            self._pins[ino] = n
            return
        self._pins.pop(ino, None)
        if self._writer is not None:
            self._writer.release_orphan(InodeNo(ino))

    def pinned(self, ino: int) -> bool:
        return ino in self._pins

    def __enter__(self) -> Filesystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_superblock(self, raw: bytes) -> Superblock:
        sb = parse_superblock(raw, verify=not self.salvage)
        self.fs_seed = compute_fs_seed(sb.uuid, bool(sb.incompat & INCOMPAT_CSUM_SEED), sb.checksum_seed)
        return sb

    def _recover(self) -> None:
        sb = self.sb
        if not sb.has_compat(COMPAT_HAS_JOURNAL):
            raise CorruptError("superblock", "needs_recovery is set but there is no journal")
        if sb.journal_inum == 0:
            raise error(errno.EOPNOTSUPP, "the image needs recovery from an external journal", self.path)
        jino = sb.journal_inum
        jinode = self.inode(InodeNo(jino))
        runs = self.runlist(jinode)
        nblocks = jinode.size // sb.block_size
        if nblocks < 2:
            raise CorruptError("journal", "journal inode is too small", inode=jino)

        def read_jblock(n: int) -> bytes:
            if n >= nblocks:
                raise CorruptError("journal", f"journal block {n} beyond the journal", inode=jino)
            phys = runs.map(n)
            if phys is None:
                raise CorruptError("journal", f"journal block {n} is a hole", inode=jino)
            return self.cache.read(phys, "journal", jino)

        jsb = parse_journal_superblock(read_jblock(0), sb.block_size, nblocks)
        self.journal_superblock = jsb
        replay = replay_journal(jsb, read_jblock, sb.blocks_count, salvage=self.salvage)
        self.replay = replay
        if replay.overlay:
            self.cache.set_overlay(replay.overlay)
        self.recovered = True
        # The journal may hold the superblock and descriptors: read them again through the overlay.
        bs = sb.block_size
        first = SUPERBLOCK_OFFSET // bs
        raw = self.cache.read(first, "superblock")[SUPERBLOCK_OFFSET % bs :][:1024]
        self.sb = self._read_superblock(raw)
        check_features(self.sb, self.path)
        self.forget_all()

    # --- groups and inodes ------------------------------------------------

    @property
    def block_size(self) -> int:
        return self.sb.block_size

    def features(self) -> FeatureReport:
        sb = self.sb
        return FeatureReport(tuple(feature_names(sb.compat, COMPAT, "C")),
                             tuple(feature_names(sb.incompat, INCOMPAT, "I")),
                             tuple(feature_names(sb.ro_compat, RO_COMPAT, "R")))

    def group_desc(self, group: int) -> GroupDesc:
        """The decoded descriptor of ``group`` (checked; cached as "Decoded caches" says)."""
        slot = self._descs.get(group)
        epoch = self.cache.epoch
        if slot is not None and slot.epoch == epoch:
            return slot.desc
        sb = self.sb
        if not 0 <= group < sb.group_count:
            raise CorruptError("group descriptor", f"group {group} does not exist")
        if slot is not None and self.cache.unchanged(slot.block, slot.epoch):
            # (Where a descriptor lives depends only on the superblock, which reload_superblock watches.)
            slot.epoch = epoch
            return slot.desc
        per_block = sb.block_size // sb.desc_size
        blk = descriptor_block(sb, group // per_block)
        data = self.cache.read(blk, "group descriptor")
        off = (group % per_block) * sb.desc_size
        if slot is not None and slot.block == blk and slot.data is data:
            slot.epoch = epoch
            return slot.desc
        raw = data[off : off + sb.desc_size]
        if slot is not None and slot.raw == raw:
            slot.epoch, slot.block, slot.data = epoch, blk, data
            return slot.desc
        d = parse_group_desc(sb, self.fs_seed, group, raw, verify=not self.salvage, block=blk)
        self._descs[group] = _DescSlot(epoch, blk, data, raw, d)
        return d

    def verify_bitmaps(self) -> None:
        """Check every group's block and inode bitmap checksum (metadata_csum)."""
        for g in range(self.sb.group_count):
            d = self.group_desc(g)
            verify_block_bitmap(self.sb, self.fs_seed, d, self.cache.read(d.block_bitmap, "block bitmap"))
            verify_inode_bitmap(self.sb, self.fs_seed, d, self.cache.read(d.inode_bitmap, "inode bitmap"))

    def inode(self, ino: InodeNo | int) -> Inode:
        """The decoded record of inode ``ino`` (checked), whether or not it is in use."""
        # (_Lru.get inlined, here and in getattr: these run a few times per request.)
        lru = self._inodes._d
        slot = lru.get(ino)
        cache = self.cache
        epoch = cache.epoch
        if slot is not None:
            lru.move_to_end(ino)
            if slot.epoch == epoch:
                return slot.rec
        sb = self.sb
        if not 1 <= ino <= sb.inodes_count:
            raise CorruptError("inode", f"inode number {ino} out of range", inode=ino)
        group, index = divmod(ino - 1, sb.inodes_per_group)
        desc = self.group_desc(group)
        if sb.metadata_csum or sb.gdt_csum:
            if desc.flags & BG_INODE_UNINIT or index >= sb.inodes_per_group - desc.itable_unused:
                raise CorruptError("inode", "inode lies in the uninitialised part of its group's table",
                                   inode=ino)
        byte = index * sb.inode_size
        blk = desc.inode_table + byte // sb.block_size
        off = byte % sb.block_size
        if slot is not None and slot.block == blk and slot.offset == off and cache.unchanged(blk, slot.epoch):
            slot.epoch = epoch
            return slot.rec
        data = cache.read(blk, "inode table", ino)
        if slot is not None:
            # Identity needs the same place too: the write side may store one bytes object in two blocks.
            if (slot.data is data and slot.block == blk and slot.offset == off) or \
                    slot.rec.raw == data[off : off + sb.inode_size]:
                slot.epoch, slot.block, slot.data, slot.offset = epoch, blk, data, off
                return slot.rec
        rec = parse_inode(ino, data[off : off + sb.inode_size], large_dir=sb.has_incompat(INCOMPAT_LARGEDIR),
                          huge_file=sb.has_ro_compat(RO_COMPAT_HUGE_FILE), block_size=sb.block_size,
                          csum_seed=self.fs_seed if (sb.metadata_csum and not self.salvage) else None, block=blk)
        self._inodes.put(ino, _InodeSlot(epoch, blk, data, off, rec))
        return rec

    def _live(self, ino: InodeNo | int) -> Inode:
        """An inode that exists as a file: ENOENT for free or deleted (link count 0) inodes."""
        if not 1 <= ino <= self.sb.inodes_count:
            raise error(errno.ENOENT, f"no inode {ino}")
        rec = self.inode(ino)
        if (rec.links_count == 0 and ino not in self._pins) or rec.mode == 0:
            raise error(errno.ENOENT, f"inode {ino} is not in use")
        return rec

    def getattr(self, ino: InodeNo | int) -> Attr:
        r = self._live(ino)
        lru = self._attrs._d
        memo = lru.get(ino)
        if memo is not None:
            lru.move_to_end(ino)
            if memo[0] is r:
                return memo[1]
        blocks = r.blocks_512
        if r.flags & EXT4_INLINE_DATA_FL and r.is_reg:
            # As the kernel's ext4_file_getattr: count inline bytes so the file does not look sparse.
            blocks += (r.size + 511) >> 9
        attr = _make_attr(r.ino, r.mode, r.links_count, r.uid, r.gid, r.rdev, r.size, blocks, r.atime_ns,
                          r.mtime_ns, r.ctime_ns, r.crtime_ns, r.flags, r.generation, self.sb.block_size)
        self._attrs.put(ino, (r, attr))
        return attr

    def _inode_seed(self, rec: Inode) -> int | None:
        if not self.sb.metadata_csum or self.salvage:
            return None
        return inode_seed(self.fs_seed, rec.ino, rec.generation)

    def runlist(self, rec: Inode) -> RunList:
        """The runlist of an extent- or block-mapped inode (built once, then cached)."""
        slot = self._runlists.get(rec.ino)
        cache = self.cache
        epoch = cache.epoch
        if slot is not None and (slot.rec is rec or slot.key == _mapping_key(rec)):
            since = slot.epoch
            if since == epoch or all(cache.unchanged(b, since) or cache.read(b, "extent tree", rec.ino) == data
                                     for b, data in slot.deps):
                slot.epoch = epoch
                slot.rec = rec
                return slot.runlist
        sb = self.sb
        deps: list[tuple[int, bytes]] = []

        def read(block: int, structure: str) -> bytes:
            data = cache.read(block, structure, rec.ino)
            deps.append((block, data))
            return data

        if rec.flags & EXT4_INLINE_DATA_FL:
            rl = RunList([])
        elif rec.flags & EXT4_EXTENTS_FL:
            runs = extent_runs(rec.ino, rec.i_block, lambda b: read(b, "extent tree"),
                               sb.block_size, sb.blocks_count, self._inode_seed(rec))
            rl = RunList(runs)
        else:
            runs = blockmap_runs(rec.ino, rec.i_block, rec.size, lambda b: read(b, "block map"),
                                 sb.block_size, sb.blocks_count)
            rl = RunList(runs)
        self._runlists.put(rec.ino, _RunSlot(epoch, rec, deps, rl))
        return rl

    # --- file data --------------------------------------------------------

    def _refuse_encrypted(self, rec: Inode) -> None:
        if rec.flags & EXT4_ENCRYPT_FL:
            raise error(errno.ENOKEY, f"inode {rec.ino} is encrypted (fscrypt); its content cannot be read "
                        "without the key")

    def _read_data(self, rec: Inode, offset: int, size: int) -> bytes:
        end = min(offset + size, rec.size)
        if offset >= end:
            return b""
        if rec.flags & EXT4_INLINE_DATA_FL:
            data = inline_bytes(rec)
            chunk = data[offset:end]
            return chunk + bytes(end - offset - len(chunk))
        bs = self.sb.block_size
        rl = self.runlist(rec)
        first = offset // bs
        last = (end - 1) // bs
        parts: list[bytes] = []
        pos = offset
        for logical, count, phys in rl.segments(first, last - first + 1):
            seg_start = max(logical * bs, offset)
            seg_end = min((logical + count) * bs, end)
            n = seg_end - seg_start
            if phys is None:
                parts.append(bytes(n))
            else:
                parts.append(self.cache.read_run(phys, count, rec.ino, byte_offset=seg_start - logical * bs, size=n))
            pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read(self, ino: InodeNo | int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of file ``ino`` at ``offset`` (short at end of file).

        EISDIR for a directory, EINVAL for other non-regular files or a negative
        offset, ENOKEY for encrypted files.
        """
        rec = self._live(ino)
        if rec.is_dir:
            raise error(errno.EISDIR, f"inode {ino} is a directory")
        if not rec.is_reg:
            raise error(errno.EINVAL, f"inode {ino} is not a regular file")
        if offset < 0 or size < 0:
            raise error(errno.EINVAL, "negative offset or size")
        self._refuse_encrypted(rec)
        return self._read_data(rec, offset, size)

    def readlink(self, ino: InodeNo | int) -> bytes:
        """The target of symlink ``ino`` (EINVAL if it is not one)."""
        rec = self._live(ino)
        if not rec.is_symlink:
            raise error(errno.EINVAL, f"inode {ino} is not a symbolic link")
        self._refuse_encrypted(rec)
        if rec.size >= _PATH_MAX or rec.size == 0:
            raise CorruptError("symlink", f"target length {rec.size} is invalid", inode=rec.ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            return inline_bytes(rec)[: rec.size]
        ea_blocks = (self.sb.cluster_size >> 9) if rec.file_acl else 0
        fast = (rec.blocks_512 - ea_blocks == 0) if not rec.flags & EXT4_EA_INODE_FL else rec.size < 60
        if fast:
            if rec.size >= 60:
                raise CorruptError("symlink", f"fast symlink of length {rec.size}", inode=rec.ino)
            return rec.i_block[: rec.size]
        return self._read_data(rec, 0, rec.size)

    # --- directories -------------------------------------------------------

    def _dir(self, ino: InodeNo | int) -> Inode:
        rec = self._live(ino)
        if not rec.is_dir:
            raise error(errno.ENOTDIR, f"inode {ino} is not a directory")
        self._refuse_encrypted(rec)
        return rec

    def _is_dx(self, rec: Inode) -> bool:
        return bool(rec.flags & EXT4_INDEX_FL) and self.sb.has_compat(COMPAT_DIR_INDEX)

    def _dir_block(self, rec: Inode, lblock: int) -> tuple[int, bytes]:
        phys = self.runlist(rec).map(lblock)
        if phys is None or lblock * self.sb.block_size >= rec.size:
            raise CorruptError("directory", f"logical block {lblock} is a hole or beyond i_size", inode=rec.ino)
        return phys, self.cache.read(phys, "directory block", rec.ino)

    def _parsed_block(self, kind: str, rec: Inode, lblock: int, phys: int, data: bytes) -> _ParsedSlot | None:
        """The cached parse of directory block ``lblock`` of ``rec`` if it was made from these bytes.

        A parse depends on the block's bytes, its place (``phys``, and ``lblock``
        for readdir offsets) and the inode seed (number and generation): all of
        them are compared, the bytes by identity, else by value.
        """
        slot = self._parsed.get((kind, rec.ino, lblock))
        if slot is not None and slot.physical == phys and slot.generation == rec.generation and \
                (slot.data is data or slot.data == data):
            slot.data = data
            return slot
        return None

    def _leaf_slot(self, rec: Inode, lblock: int, phys: int, data: bytes) -> tuple[_ParsedSlot, list[DirEntry]]:
        """The parsed-block cache's slot for leaf ``lblock`` made from ``data`` (parsed if need be),
        and its entries."""
        slot = self._parsed_block("leaf", rec, lblock, phys, data)
        if slot is not None and isinstance(slot.value, list):
            return slot, slot.value
        entries = self._leaf_entries(rec, lblock, phys, data)
        slot = _ParsedSlot(phys, rec.generation, data, entries)
        self._parsed.put(("leaf", rec.ino, lblock), slot)
        return slot, entries

    def _leaf_entries_cached(self, rec: Inode, lblock: int, phys: int, data: bytes) -> list[DirEntry]:
        """:meth:`_leaf_entries` through the parsed-block cache (callers never mutate the list)."""
        return self._leaf_slot(rec, lblock, phys, data)[1]

    def _leaf_find(self, rec: Inode, lblock: int, phys: int, data: bytes, name: bytes) -> DirEntry | None:
        """The first entry named ``name`` in leaf ``lblock`` (as a scan finds it), through the slot's
        name map (see :class:`_ParsedSlot`)."""
        slot, entries = self._leaf_slot(rec, lblock, phys, data)
        names = slot.names
        if names is None:
            names = {e.name: e for e in entries}
            if len(names) != len(entries):
                return next((e for e in entries if e.name == name), None)  # a name twice: scan
            slot.names = names
        return names.get(name)

    def patch_leaf(self, rec: Inode, lblock: int, phys: int, old: bytes, offset: int,
                   edit: Callable[[list[DirEntry]], list[DirEntry] | None]) -> None:
        """Carry the cached parse of leaf ``lblock`` (made from ``old``) across a one-entry edit.

        The write side has just put new bytes for the leaf, changing only the
        entry at block offset ``offset`` (and the record before it); ``edit``
        turns the parse of ``old`` into the parse of the new bytes (None:
        unknown, the parse is dropped and made again when needed).  The name
        map is patched with it.  The slot is then stamped with the bytes the
        cache serves, and checked against them on every use as always.
        """
        slot = self._parsed_block("leaf", rec, lblock, phys, old)
        if slot is None or not isinstance(slot.value, list):
            return
        entries = edit(slot.value)
        if entries is None:
            self._parsed.pop(("leaf", rec.ino, lblock))
            return
        if slot.names is not None:
            slot.names = _patched_names(slot.names, slot.value, entries, lblock * self.sb.block_size + offset)
        slot.value = entries
        slot.data = self.cache.read(phys, "directory block", rec.ino)

    def _leaf_entries(self, rec: Inode, lblock: int, phys: int, data: bytes) -> list[DirEntry]:
        sb = self.sb
        return parse_dir_block(data, ino=rec.ino, block=phys, base=lblock * sb.block_size,
                               has_filetype=sb.has_incompat(INCOMPAT_FILETYPE), inodes_count=sb.inodes_count,
                               csum_seed=self._inode_seed(rec), block_size=sb.block_size, salvage=self.salvage)

    def _inline_entries(self, rec: Inode) -> list[DirEntry]:
        value = inline_bytes(rec)[60:]
        return parse_inline_dir(rec, value, inodes_count=self.sb.inodes_count,
                                has_filetype=self.sb.has_incompat(INCOMPAT_FILETYPE))

    def readdir(self, ino: InodeNo | int, offset: int = 0) -> Iterator[DirEntry]:
        """Entries of directory ``ino`` from position ``offset`` (0: the start), "." and ".." included.

        Each entry's ``next_offset`` resumes after it.  ENOTDIR, ENOKEY (encrypted).
        """
        rec = self._dir(ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            for e in self._inline_entries(rec):
                if e.offset >= offset:
                    yield e
            return
        bs = self.sb.block_size
        nblocks = (rec.size + bs - 1) // bs
        dx = self._is_dx(rec)
        seed = self._inode_seed(rec)
        first = max(offset, 0) // bs
        for logical, count, phys in self.runlist(rec).segments(first, max(nblocks - first, 0)):
            if phys is None:
                continue  # the kernel skips directory holes in readdir
            for k in range(count):
                lb, pb = logical + k, phys + k
                data = self.cache.read(pb, "directory block", rec.ino)
                if dx and lb == 0:
                    if seed is not None:
                        parse_dx_root(data, ino=rec.ino, block=pb, block_size=bs,
                                      large_dir=self.sb.has_incompat(INCOMPAT_LARGEDIR), csum_seed=seed)
                    entries = parse_dir_block(data, ino=rec.ino, block=pb, base=0, has_filetype=True,
                                              inodes_count=self.sb.inodes_count, csum_seed=None, block_size=bs,
                                              tail=False)
                elif dx and is_dx_node_block(data, bs):
                    if seed is not None and not dx_node_csum_ok(data, 8, seed):
                        raise CorruptError("htree", "index block checksum mismatch", inode=rec.ino, block=pb)
                    continue
                else:
                    entries = self._leaf_entries_cached(rec, lb, pb, data)
                for e in entries:
                    if e.offset >= offset:
                        yield e

    def _hash_version(self, root: DxIndex) -> int:
        v = root.hash_version
        if v <= HASH_TEA and self.sb.flags & FLAGS_UNSIGNED_HASH:
            v += 3
        return v

    def lookup(self, dir_ino: InodeNo | int, name: bytes) -> Attr:
        """Attributes of ``name`` in directory ``dir_ino``.

        ENOENT, ENOTDIR, ENAMETOOLONG (over 255 bytes), ENOKEY (encrypted
        directory), EOPNOTSUPP (casefolded directory).
        """
        return self.getattr(self.lookup_ino(dir_ino, name))

    def lookup_ino(self, dir_ino: InodeNo | int, name: bytes) -> InodeNo:
        if len(name) > NAME_MAX:
            raise error(errno.ENAMETOOLONG, "name longer than 255 bytes")
        if not name or b"/" in name or b"\0" in name:
            raise error(errno.ENOENT, f"invalid name {name!r}")
        rec = self._dir(dir_ino)
        if rec.flags & EXT4_CASEFOLD_FL:
            raise error(errno.EOPNOTSUPP, f"directory {dir_ino} is casefolded; case-insensitive lookup "
                        "is not supported")
        if name == b".":
            return rec.ino
        if self._writer is not None:
            hit = self._writer.cached_lookup(rec, name)
            if hit is not None:
                return hit
        found: DirEntry | None = None
        if rec.flags & EXT4_INLINE_DATA_FL:
            found = next((e for e in self._inline_entries(rec) if e.name == name), None)
        elif self._is_dx(rec):
            found = self._indexed_find(rec, name)
        else:
            # A linear directory: one pass builds its name index, then lookups are O(1).
            index = self._name_index(rec)
            if index is not None:
                hit = index.get(name)
                if hit is None:
                    raise error(errno.ENOENT, f"no entry {name!r} in directory {dir_ino}")
                return hit
            found = self._linear_find(rec, name)
        if found is None:
            raise error(errno.ENOENT, f"no entry {name!r} in directory {dir_ino}")
        return found.ino

    def _indexed_find(self, rec: Inode, name: bytes) -> DirEntry | None:
        """``name`` in htree directory ``rec``: through the index, or by a scan where the kernel scans."""
        if name == b"..":
            return self._linear_find(rec, name)  # in block 0, the scan's first stop
        try:
            return self._dx_find(rec, name)
        except CorruptError as exc:
            if exc.structure != "htree":
                raise
            # The kernel falls back to a linear scan when the index is unusable.
            return self._linear_find(rec, name)

    def _linear_find(self, rec: Inode, name: bytes) -> DirEntry | None:
        for e in self.readdir(rec.ino):
            if e.name == name:
                return e
        return None

    # Name indexes of linear directories (see _NameIndex and "Decoded caches").

    def _name_index(self, rec: Inode) -> dict[bytes, InodeNo] | None:
        """The current names of linear directory ``rec``, or None when it cannot be indexed.

        None (the caller then scans, exactly as before there were indexes) when
        the directory would not fit :attr:`dir_index_budget` or a block does not
        parse: a scan that finds its name before a corrupt block still succeeds.
        """
        indexes = self._names
        idx = indexes.get(rec.ino)
        epoch = self.cache.epoch
        if idx is not None:
            indexes.move_to_end(rec.ino)
            if idx.epoch == epoch and (idx.rec is rec or idx.rec.raw == rec.raw):
                idx.rec = rec
                return idx.names
            old_cost = idx.cost
            if idx.rec.generation != rec.generation:
                # Another directory under the same number: parses depend on the generation (seed).
                idx.blocks = []
                idx.names.clear()
                idx.dups = False
        else:
            idx = _NameIndex(rec)
            old_cost = 0
        try:
            ok = self._refresh_index(idx, rec, epoch)
        except CorruptError:
            ok = False
        if not ok:
            if indexes.pop(rec.ino, None) is not None:
                self._names_cost -= old_cost
            return None
        if rec.ino not in indexes:
            indexes[rec.ino] = idx
        self._names_cost += idx.cost - old_cost
        while self._names_cost > self.dir_index_budget and len(indexes) > 1:
            _ino, victim = indexes.popitem(last=False)
            self._names_cost -= victim.cost
        return idx.names

    def _refresh_index(self, idx: _NameIndex, rec: Inode, epoch: int) -> bool:
        """Bring ``idx`` up to date with directory ``rec`` (see _NameIndex); False: over budget."""
        bs = self.sb.block_size
        block_cost = max(bs >> 7, 1)
        budget = self.dir_index_budget
        nblocks = (rec.size + bs - 1) // bs
        if nblocks * block_cost > budget:
            return False
        held = {b.logical: b for b in idx.blocks}
        since = idx.epoch
        fresh: list[_IndexedBlock] = []
        changed: list[_IndexedBlock] = []
        stale: list[_IndexedBlock] = []
        cache = self.cache
        for logical, count, phys in self.runlist(rec).segments(0, nblocks):
            if phys is None:
                continue  # holes hold no names (readdir skips them)
            for lb in range(logical, logical + count):
                pb = phys + lb - logical
                old = held.pop(lb, None)
                if old is not None and old.physical == pb and cache.unchanged(pb, since):
                    fresh.append(old)
                    continue
                data = cache.read(pb, "directory block", rec.ino)
                if old is not None and old.physical == pb and (old.data is data or old.data == data):
                    old.data = data
                    fresh.append(old)
                    continue
                if old is not None:
                    stale.append(old)
                blk = _IndexedBlock(lb, pb, data)
                fresh.append(blk)
                changed.append(blk)
        stale += held.values()
        names = idx.names
        rebuild = idx.dups and bool(stale or changed)
        if not rebuild:
            for old in stale:
                for n in old.names:
                    del names[n]
            for blk in changed:
                added: list[bytes] = []
                for e in self._leaf_entries(rec, blk.logical, blk.physical, blk.data):
                    if e.name in names:
                        rebuild = True  # a name twice: only a pass in readdir order gets the winner right
                        break
                    names[e.name] = e.ino
                    added.append(e.name)
                if rebuild:
                    break
                blk.names = tuple(added)
        if rebuild:
            names.clear()
            idx.dups = False
            for blk in fresh:
                kept: list[bytes] = []
                for e in self._leaf_entries(rec, blk.logical, blk.physical, blk.data):
                    if e.name in names:
                        idx.dups = True  # the first one, as a scan finds it, stays
                    else:
                        names[e.name] = e.ino
                        kept.append(e.name)
                blk.names = tuple(kept)
        idx.blocks = fresh
        idx.cost = 8 + len(names) + len(fresh) * block_cost
        if idx.cost > budget:
            return False
        idx.epoch = epoch
        idx.rec = rec
        return True

    def _dx_find(self, rec: Inode, name: bytes) -> DirEntry | None:
        epoch = self.cache.epoch
        miss = self._dx_miss
        if miss is not None and miss[0] == epoch and miss[2] == name and \
                (miss[1] is rec or (miss[1].ino == rec.ino and miss[1].raw == rec.raw)):
            return None
        found = self._dx_walk(rec, name)
        self._dx_miss = (epoch, rec, name) if found is None else None
        return found

    def dx_root(self, rec: Inode) -> tuple[int, bytes, DxIndex]:
        """(physical block, bytes, parse) of htree directory ``rec``'s dx_root, checked.

        Cached (see "Decoded caches"): the parse is reused while the block
        holds the bytes it was made from.  The write side reads the index
        through here too.
        """
        epoch = self.cache.epoch
        slot = self._dx_roots.get(rec.ino)
        if slot is not None and slot.epoch == epoch:
            return slot.block, slot.data, slot.root
        pb, data = self._dir_block(rec, 0)
        if slot is not None and slot.block == pb and slot.generation == rec.generation and \
                (slot.data is data or slot.data == data):
            slot.epoch, slot.data = epoch, data
            return pb, data, slot.root
        root = parse_dx_root(data, ino=rec.ino, block=pb, block_size=self.sb.block_size,
                             large_dir=self.sb.has_incompat(INCOMPAT_LARGEDIR), csum_seed=self._inode_seed(rec),
                             salvage=self.salvage)
        self._dx_roots.put(rec.ino, _DxSlot(epoch, pb, rec.generation, data, root))
        return pb, data, root

    def dx_node(self, rec: Inode, lblock: int) -> tuple[int, bytes, DxLevel]:
        """(physical block, bytes, parse) of interior index block ``lblock`` of ``rec``, checked and cached."""
        pb, data = self._dir_block(rec, lblock)
        slot = self._parsed_block("node", rec, lblock, pb, data)
        if slot is not None and isinstance(slot.value, DxLevel):
            return pb, data, slot.value
        node = parse_dx_node(data, ino=rec.ino, block=pb, lblock=lblock, block_size=self.sb.block_size,
                             csum_seed=self._inode_seed(rec), salvage=self.salvage)
        self._parsed.put(("node", rec.ino, lblock), _ParsedSlot(pb, rec.generation, data, node))
        return pb, data, node

    def _dx_walk(self, rec: Inode, name: bytes) -> DirEntry | None:
        """:meth:`_dx_find` without the memo of its last miss."""
        bs = self.sb.block_size
        root = self.dx_root(rec)[2]
        version = self._hash_version(root)
        h = self._hashes.get((name, version))
        if h is None:
            try:
                h, _minor = dirhash(name, version, self.sb.hash_seed)
            except ValueError:
                raise CorruptError("htree", f"unsupported hash version {root.hash_version}", inode=rec.ino) from None
            if len(self._hashes) >= _HASH_MEMO:
                self._hashes.clear()
            self._hashes[(name, version)] = h
        nblocks = (rec.size + bs - 1) // bs

        def read_node(lblock: int) -> DxLevel:
            return self.dx_node(rec, lblock)[2]

        def find_in_leaf(lblock: int) -> DirEntry | None:
            pb, data = self._dir_block(rec, lblock)
            return self._leaf_find(rec, lblock, pb, data, name)

        return dx_lookup(root, name, h, read_node, find_in_leaf, nblocks)

    # --- xattrs -------------------------------------------------------------

    def _xattr_entries(self, rec: Inode) -> list[tuple[bytes, int, bytes]]:
        """(full name, name index, value) of every xattr, ibody first."""
        entries = list(parse_ibody(rec.ibody_xattr_area, ino=rec.ino))
        if rec.file_acl:
            if rec.file_acl >= self.sb.blocks_count:
                raise CorruptError("inode", f"i_file_acl {rec.file_acl} lies outside the filesystem", inode=rec.ino)
            data = self.cache.read(rec.file_acl, "xattr block", rec.ino)
            entries += parse_xattr_block(data, ino=rec.ino, block=rec.file_acl,
                                         csum_seed=self.fs_seed if self.sb.metadata_csum else None,
                                         salvage=self.salvage)
        out = []
        for e in entries:
            value = e.value
            if value is None:
                value = self._ea_inode_value(rec, e.value_inum, e.value_size)
            if e.name_index in ACL_INDEXES:
                value = acl_to_xattr(value, ino=rec.ino)
            out.append((e.full_name, e.name_index, value))
        return out

    def _ea_inode_value(self, owner: Inode, vino: int, size: int) -> bytes:
        ea = self.inode(vino)
        if not ea.flags & EXT4_EA_INODE_FL or ea.size != size or not ea.is_reg:
            raise CorruptError("xattr", f"EA inode {vino} does not hold a value of {size} bytes", inode=owner.ino)
        return self._read_data(ea, 0, size)

    def listxattr(self, ino: InodeNo | int) -> list[bytes]:
        """Names of the xattrs of ``ino`` the kernel would list."""
        rec = self._live(ino)
        return [n for n, idx, _ in self._xattr_entries(rec) if idx in _LISTED_INDEXES]

    def getxattr(self, ino: InodeNo | int, name: bytes) -> bytes:
        """Value of xattr ``name``; ENODATA when absent."""
        rec = self._live(ino)
        # (No xattrs at all, the common case: a question the kernel asks before every chown and
        # the FUSE layer before a write-only handle's first write, answered without parsing.)
        if rec.may_have_xattrs:
            split = split_name(name)
            if split is not None and split[0] in _LISTED_INDEXES:
                for n, idx, value in self._xattr_entries(rec):
                    if n == name:
                        return value
        raise error(errno.ENODATA, f"no xattr {name!r} on inode {ino}")

    def xattrs(self, ino: InodeNo | int) -> dict[bytes, bytes]:
        """Every listed xattr of ``ino`` with its value."""
        rec = self._live(ino)
        return {n: v for n, idx, v in self._xattr_entries(rec) if idx in _LISTED_INDEXES}

    # --- filesystem-wide ------------------------------------------------------

    def _overhead(self) -> int:
        sb = self.sb
        if sb.record.u("s_overhead_clusters"):
            return sb.record.u("s_overhead_clusters") * (sb.cluster_size // sb.block_size)
        bs = sb.block_size
        per_block = bs // sb.desc_size
        gdt_blocks = (sb.group_count + per_block - 1) // per_block
        itable = (sb.inodes_per_group * sb.inode_size + bs - 1) // bs
        total = sb.first_data_block
        meta_bg = sb.has_incompat(INCOMPAT_META_BG)
        for g in range(sb.group_count):
            if group_has_super(sb, g):
                total += 1
                if not meta_bg:
                    total += gdt_blocks + sb.reserved_gdt_blocks
                else:
                    total += min(gdt_blocks, sb.first_meta_bg) + sb.reserved_gdt_blocks
            if meta_bg and g // per_block >= sb.first_meta_bg and g % per_block in (0, 1, per_block - 1):
                total += 1
            total += 2 + itable
        if sb.has_compat(COMPAT_HAS_JOURNAL) and sb.journal_inum:
            try:
                total += self.inode(sb.journal_inum).size // bs
            except CorruptError:
                pass
        return total

    def statfs(self) -> StatFs:
        sb = self.sb
        free_blocks = 0
        free_inodes = 0
        for g in range(sb.group_count):
            d = self.group_desc(g)
            free_blocks += d.free_blocks
            free_inodes += d.free_inodes
        free_blocks *= sb.cluster_size // sb.block_size
        blocks = max(sb.blocks_count - self._overhead(), 0)
        # The kernel also holds back 2% (at most 4096 clusters) on extent filesystems (s_resv_clusters).
        ratio = sb.cluster_size // sb.block_size
        resv = min((sb.blocks_count // ratio) // 50, 4096) * ratio if sb.has_incompat(INCOMPAT_EXTENTS) else 0
        avail = max(free_blocks - sb.r_blocks_count - resv, 0)
        return StatFs(sb.block_size, sb.cluster_size, blocks, free_blocks, avail, sb.inodes_count, free_inodes,
                      NAME_MAX)

    def orphans(self) -> list[InodeNo]:
        """Inodes recorded as orphans (s_last_orphan chain and orphan file)."""
        sb = self.sb
        out = [InodeNo(i) for i in walk_orphan_chain(sb.last_orphan, sb.inodes_count,
                                                      lambda i: self.inode(i).dtime)]
        if sb.has_compat(COMPAT_ORPHAN_FILE) and sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT) and sb.orphan_file_inum:
            orec = self.inode(sb.orphan_file_inum)
            bs = sb.block_size
            nblocks = orec.size // bs
            rl = self.runlist(orec)
            for lb in range(min(nblocks, rl.mapped_blocks())):
                pb = rl.map(lb)
                if pb is None:
                    raise CorruptError("orphan file", f"hole at block {lb}", inode=orec.ino)
                data = self.cache.read(pb, "orphan file", orec.ino)
                out += [InodeNo(i) for i in orphan_file_entries(
                    data, ino=orec.ino, generation=orec.generation, block=pb,
                    fs_seed=self.fs_seed if sb.metadata_csum else None, inodes_count=sb.inodes_count,
                    salvage=self.salvage)]
        return out

    def inode_location(self, ino: InodeNo | int) -> tuple[GroupNo, BlockNo, int]:
        """(group, inode-table block, byte offset in it) of inode ``ino``."""
        sb = self.sb
        group, index = divmod(ino - 1, sb.inodes_per_group)
        desc = self.group_desc(group)
        byte = index * sb.inode_size
        return GroupNo(group), BlockNo(desc.inode_table + byte // sb.block_size), byte % sb.block_size
