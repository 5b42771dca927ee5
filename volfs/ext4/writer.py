"""The write side: every mutation of the engine, as atomic operations.

Theory of operation.  A :class:`Writer` belongs to one writable
:class:`~volfs.ext4.filesystem.Filesystem`.  Each public method is one
*operation*: it opens an undo scope in the running transaction, reads what
it needs through the block cache (so it sees the operation's own changes),
allocates through :class:`~volfs.ext4.alloc.Allocator`, and puts whole new
blocks into the transaction.  If anything raises (ENOSPC, a corrupt
structure) the scope is rolled back and every decoded cache dropped, so a
failed operation leaves nothing half done.  Durability is the
transaction's business: :meth:`commit` runs when the caller syncs, when
enough blocks are dirty, and on close.

*Opening for writing* first writes a replayed journal (the overlay the read
side built) in place, resets the journal superblock and clears
needs_recovery; then processes the orphan chain left by a crash (frees
unlinked inodes, truncates the rest to i_size), and marks the superblock
not clean (s_state without VALID; s_mnt_count, s_mtime).  Closing commits
with VALID set, s_wtime and s_kbytes_written.  The error fields of the
superblock are never touched (old microsandbox images keep a stray value at
the s_error_count offset).

*File mapping.*  A write or truncate edits the file's extent tree in place
through :class:`~volfs.ext4.extent_tree.ExtentTree` (the touched leaf and
its path; extent_tree.py has the theory of operation): the mapped parts of
the written range are looked up, holes are allocated first, near the
previous extent, so ENOSPC strikes before any byte moves; unwritten extents
in the range become written; partial edge blocks are filled from the old
data or zeros.  Data moves in one ``pwrite`` per contiguous run.
``i_blocks`` changes by the data and tree blocks allocated or freed.  Trees
an edit may have left looser than e2fsck likes are compacted before the
next commit.  New inodes get their whole (small) mapping built at once.

*Directories.*  New entries go into linear blocks: the first block with
room (gaps included), else a new block at the end.  A per-directory name
table (bounded LRU) is built on first change, making inserts and lookups
O(1) in large linear directories.  A one-block directory that fills up
becomes an htree, and inserts into htree directories keep the index
(hash-ordered leaf choice, leaf and index splits, one interior level at
most; htree_write.py has the theory of operation).  Only an indexed
directory on an image without dir_index is still turned linear (index flag
cleared, index blocks rewritten as empty leaves, which e2fsck accepts).
Removing an entry from an htree leaf keeps the index (as the kernel does).

*Inline data.*  Inodes with ``EXT4_INLINE_DATA_FL`` (files and directories
kept in ``i_block`` and the in-inode ``system.data`` xattr) take an early
branch into inline_write.py in write_data, truncate and the directory entry
primitives; it converts them to extents (files) or a one-block directory
when they outgrow the inode, after which the code below takes over.

*Orphans.*  An inode whose last link goes while a handle holds it (a pin)
is recorded in the orphan file when the image has one (orphan.py), else on
the ``s_last_orphan`` chain (``i_dtime`` links, as the kernel does), so a crash before its release is recovered by the next writer,
e2fsck or the kernel; the last release frees it and unchains it.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from volfs.errors import CorruptError, VolfsError, error
from volfs.ext4.alloc import Allocator
from volfs.ext4.directory import (
    DxLevel,
    dx_find,
    DirEntry,
    entries_after_insert,
    entries_after_remove,
    entries_after_retarget,
    empty_leaf,
    first_dir_block,
    insert_in_block,
    is_dx_node_block,
    last_record,
    leaf_end,
    leaf_slack,
    mode_to_ft,
    parse_dir_block,
    parse_dx_root,
    rec_len_for,
    record_end,
    remove_from_block,
    set_entry_inode,
    set_leaf_csum,
)
from volfs.ext4.extents import (
    EXT4_EXT_MAGIC,
    EXTENT_HEADER,
    Extent,
    build_extent_tree,
    make_extent,
    read_extents,
    split_long,
    tree_nodes_needed,
)
from volfs.ext4.dirhash import HASH_TEA, dirhash
from volfs.ext4 import inline_write
from volfs.ext4.extent_tree import ExtentTree, Memo
from volfs.ext4.htree_write import (
    NODE_COUNT_OFFSET,
    ROOT_COUNT_OFFSET,
    LeafEntry,
    dx_limit,
    dx_write,
    insert_dx_entry,
    new_dx_node,
    new_dx_root,
    pack_leaf,
    set_dx_csum,
    split_point,
)
from volfs.ext4.inode import (
    EXT4_CASEFOLD_FL,
    EXT4_ENCRYPT_FL,
    EXT4_EXTENTS_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    EXT4_VERITY_FL,
    Inode,
    InodeEditor,
    encode_rdev,
    with_attrs,
)
from volfs.ext4.checksum import inode_seed
from volfs.ext4.journal import JOURNAL_SUPERBLOCK
from volfs.ext4.superblock import (
    COMPAT_ORPHAN_FILE,
    EXT4_VALID_FS,
    FLAGS_UNSIGNED_HASH,
    INCOMPAT_FILETYPE,
    INCOMPAT_RECOVER,
    RO_COMPAT_METADATA_CSUM,
    RO_COMPAT_ORPHAN_PRESENT,
    SUPERBLOCK_OFFSET,
    update_superblock,
)
from volfs.ext4.transaction import Transaction
from volfs.ext4.types import InodeNo
from volfs.ext4.xattr import (
    ACL_INDEXES,
    XATTR_ENTRY,
    XATTR_MAGIC,
    XattrEntry,
    acl_chmod,
    acl_inherit,
    pack_xattr_block,
    parse_ibody,
    parse_xattr_block,
    split_name,
    xattr_block_checksum,
    xattr_to_acl,
)

if TYPE_CHECKING:
    from volfs.ext4.device import WritableBlockDevice
    from volfs.ext4.filesystem import Filesystem

__all__ = ["Writer", "AttrChange", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "LINK_MAX"]

_ACL_ACCESS: Final = b"system.posix_acl_access"
_ACL_DEFAULT: Final = b"system.posix_acl_default"

RENAME_NOREPLACE: Final = 1
RENAME_EXCHANGE: Final = 2
LINK_MAX: Final = 65000  # EXT4_LINK_MAX
# i_generation only has to differ between the lives of one inode number (NFS handles, checksum seeds):
# a PRNG seeded from the OS, as the kernel's get_random_u32, without a getrandom call per inode.
_GENERATIONS: Final = random.Random()
os.register_at_fork(after_in_child=_GENERATIONS.seed)  # a forked writer must not repeat its parent's
_COMMIT_AT: Final = 2048  # dirty metadata blocks that trigger a commit between operations
_MAX_FILE_BLOCKS: Final = (1 << 32) - 1  # logical blocks an extent tree can address
_RO_COMPAT_DIR_NLINK: Final = 0x20
_COMPAT_DIR_INDEX: Final = 0x20
_LEAF_HINTS: Final = 4096  # last-record hints kept (one per recently written leaf block)
_SEEDS: Final = 1024  # per-inode checksum seeds kept (a pure function of fs seed, number, generation)


def _now_ns() -> int:
    return time.time_ns()


class AttrChange(NamedTuple):
    """Attribute changes as :meth:`Writer.setattr` makes them (``None`` leaves a field alone).

    Given to :meth:`Writer.write_data` (``then``: made with its write; ctime
    becomes ``ctime_ns`` or now; no size, a write that truncates is two
    operations) and to :meth:`Writer.store` (the changes a record was edited
    with, all resolved: ``mode`` the whole ``i_mode``, ``ctime_ns`` set).
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


@dataclass(slots=True)
class _DirState:
    """The name table of one linear directory being changed."""

    names: dict[bytes, tuple[int, int, int, int]]  # name -> (logical block, offset, inode, file type)
    slack: list[int]  # per logical block: the largest record a new entry could take


class Writer:
    __slots__ = ("fs", "txn", "alloc", "_dirs", "_leaf_last", "_seeds", "_depth", "_start_written", "_kbytes_base",
                 "_tree_memo", "_loose")

    def __init__(self, fs: Filesystem) -> None:
        from volfs.ext4.device import WritableBlockDevice

        self.fs = fs
        dev = fs.device
        if not isinstance(dev, WritableBlockDevice):
            raise error(errno.EROFS, "device is not writable", fs.path)
        self.txn = Transaction(fs.cache, dev)
        self.alloc = Allocator(fs)
        self._dirs: OrderedDict[int, _DirState] = OrderedDict()
        # Leaf block -> (its bytes, offset of its last record): a hint valid only while the block
        # still holds exactly those bytes (compared on use), so appends need no walk of the block.
        self._leaf_last: dict[int, tuple[bytes, int]] = {}
        self._seeds: dict[tuple[int, int, int], int] = {}
        # Decoded extent-tree blocks, valid while the cache serves the very bytes they came from.
        self._tree_memo: Memo = {}
        # Inodes (-> i_generation) whose extent trees an edit may have left loose: compacted before
        # the next commit (extent_tree.py, "Keeping e2fsck quiet").
        self._loose: dict[int, int] = {}
        self._depth = 0
        self._start_written = 0
        self._kbytes_base = 0

    # -- lifecycle -------------------------------------------------------------

    @property
    def _dev(self) -> WritableBlockDevice:
        return self.txn.device

    def start(self) -> None:
        fs = self.fs
        if fs.recovered:
            self._persist_recovery()
        self._start_written = getattr(self._dev, "bytes_written", 0)
        self._kbytes_base = fs.sb.record.u("s_kbytes_written")
        now = time.time()
        self._put_sb({"s_mnt_count": (fs.sb.record.u("s_mnt_count") + 1) & 0xFFFF,
                      "s_mtime": int(now) & 0xFFFFFFFF, "s_mtime_hi": (int(now) >> 32) & 0xFF,
                      "s_state": fs.sb.state & ~EXT4_VALID_FS})
        if fs.sb.last_orphan or fs.sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT):
            with self.op():
                self._process_orphans()
        self.commit()

    def _persist_recovery(self) -> None:
        """Write the replayed journal in place, empty the journal, clear needs_recovery."""
        fs = self.fs
        cache = fs.cache
        overlay = cache.overlay
        cache.clear_overlay()
        for block, data in overlay.items():
            self.txn.put(block, data)
        jino = fs.sb.journal_inum
        jrec = fs.inode(jino)
        phys = fs.runlist(jrec).map(0)
        replay = fs.replay
        if phys is None or replay is None:
            raise CorruptError("journal", "journal superblock is not mapped", inode=jino)
        jsb = bytearray(cache.read(phys, "journal superblock", jino))
        seq_off = JOURNAL_SUPERBLOCK.offsets["s_sequence"]
        start_off = JOURNAL_SUPERBLOCK.offsets["s_start"]
        next_seq = max(replay.end_sequence, struct.unpack_from(">I", jsb, seq_off)[0])
        struct.pack_into(">I", jsb, seq_off, next_seq & 0xFFFFFFFF)
        struct.pack_into(">I", jsb, start_off, 0)
        if struct.unpack_from(">I", jsb, JOURNAL_SUPERBLOCK.offsets["s_feature_incompat"])[0] & 0x18:
            from volfs.ext4.checksum import crc32c_raw

            off = JOURNAL_SUPERBLOCK.offsets["s_checksum"]
            struct.pack_into(">I", jsb, off, crc32c_raw(0xFFFFFFFF, bytes(jsb[:off]) + b"\0\0\0\0"
                                                        + bytes(jsb[off + 4 : 1024])))
        self.txn.put(phys, jsb)
        fs.forget_all()
        fs.reload_superblock()
        self._put_sb({"s_feature_incompat": fs.sb.incompat & ~INCOMPAT_RECOVER})
        self.commit()
        fs.recovered = False

    def _put_sb(self, values: dict[str, int]) -> None:
        fs = self.fs
        bs = fs.sb.block_size
        blk = SUPERBLOCK_OFFSET // bs
        off = SUPERBLOCK_OFFSET % bs
        data = bytearray(fs.cache.read(blk, "superblock"))
        data[off : off + 1024] = update_superblock(bytes(data[off : off + 1024]), values)
        self.txn.put(blk, data)
        fs.reload_superblock()

    def _totals(self) -> dict[str, int]:
        fs = self.fs
        fb = self.alloc.free_blocks_total()
        fi = self.alloc.free_inodes_total()
        written = getattr(self._dev, "bytes_written", 0) - self._start_written
        sec = int(time.time())
        return {"s_free_blocks_count_lo": fb & 0xFFFFFFFF,
                "s_free_blocks_count_hi": (fb >> 32) if fs.sb.has_64bit else fs.sb.record.u("s_free_blocks_count_hi"),
                "s_free_inodes_count": fi, "s_wtime": sec & 0xFFFFFFFF, "s_wtime_hi": (sec >> 32) & 0xFF,
                "s_kbytes_written": self._kbytes_base + (written >> 10)}

    def commit(self, clean: bool = False) -> None:
        if self._depth:
            raise RuntimeError("commit inside an operation")
        self._compact_trees()
        values = self._totals()
        if clean:
            values["s_state"] = self.fs.sb.state | EXT4_VALID_FS
        if self.txn.pending or clean or self.txn.data_dirty:
            self._put_sb(values)
        self.txn.commit()

    def maybe_commit(self) -> None:
        if not self._depth and self.txn.pending >= _COMMIT_AT:
            self.commit()

    def finish(self) -> None:
        """Release every pinned orphan, commit, mark clean."""
        fs = self.fs
        for ino in list(fs._pins):
            fs._pins.pop(ino, None)
            self.release_orphan(InodeNo(ino))
        if fs.sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT) and self._orphan_file_empty():
            self._put_sb({"s_feature_ro_compat": fs.sb.ro_compat & ~RO_COMPAT_ORPHAN_PRESENT})
        self.commit(clean=True)

    def op(self) -> _Op:
        """One atomic operation (see the module header): ``with writer.op(): ...``."""
        return _Op(self)

    # -- inodes ------------------------------------------------------------------

    def _csum_seed(self) -> int | None:
        return self.fs.fs_seed if self.fs.sb.metadata_csum else None

    def _iseed(self, ino: int, generation: int) -> int | None:
        if not self.fs.sb.metadata_csum:
            return None
        key = (self.fs.fs_seed, ino, generation)
        seed = self._seeds.get(key)
        if seed is None:
            if len(self._seeds) >= _SEEDS:
                self._seeds.clear()
            seed = self._seeds[key] = inode_seed(self.fs.fs_seed, ino, generation)
        return seed

    def editor(self, ino: int) -> InodeEditor:
        return InodeEditor(self.fs.inode(ino).raw)

    def store(self, ino: int, ed: InodeEditor, old: Inode | None = None, change: AttrChange | None = None) -> None:
        """Put ``ed``'s record of ``ino`` into its inode-table block, and hand it to the read side.

        ``old`` and ``change``: ``ed`` is ``old``'s record with only these
        changes made (``change.mode`` the whole ``i_mode``, ``ctime_ns`` set);
        the read side then gets the new record built from ``old``
        (:func:`~volfs.ext4.inode.with_attrs`) instead of decoding it again.
        """
        fs = self.fs
        # Where inode() reads the record (None: outside the initialised table, where this side
        # still writes it, and the read side refuses it as before).
        place = fs.inode_place(ino)
        blk: int
        off: int
        if place is None:
            _g, blk, off = fs.inode_location(ino)
        else:
            blk, off = place
        raw = ed.finish(self._csum_seed(), ino)
        if len(raw) != fs.sb.inode_size:
            raise ValueError(f"inode {ino}: a record of {len(raw)} bytes is not s_inode_size")
        rec = with_attrs(old, raw, *change) if old is not None and change is not None else None
        # The read side takes the record as written instead of decoding (and verifying) it again on
        # the next inode(). The bytes wait in the transaction until the commit (or a read of the
        # block): setattr, write and create rewrite the same record a few times per file.
        if place is not None and self.txn.defer(blk, off, raw, ino):
            fs.install_deferred_inode(ino, blk, off, raw, rec)
            return
        self.txn.patch(blk, off, raw, "inode table", ino)
        # Its other decoded caches revalidate against the new bytes by themselves.
        # (The place still holds: putting an inode-table block changes no descriptor.)
        fs.install_inode(ino, blk, off, raw, place, rec)

    def _writable_inode(self, rec: Inode) -> None:
        if rec.flags & (EXT4_ENCRYPT_FL | EXT4_VERITY_FL | EXT4_CASEFOLD_FL):
            raise error(errno.EROFS, f"inode {rec.ino} uses a feature the write side does not change "
                        "(encrypted, verity or casefolded)")

    def _new_inode(self, parent: int, mode: int, uid: int, gid: int, now: int) -> tuple[InodeNo, InodeEditor]:
        fs = self.fs
        ino = self.alloc.alloc_inode(parent, stat.S_ISDIR(mode))
        ed = InodeEditor.new(fs.sb.inode_size, fs.sb.record.u("s_want_extra_isize"))
        ed.set("i_mode", mode)
        ed.set_uid(uid)
        ed.set_gid(gid)
        ed.set_times(("a", "m", "c", "cr"), now)
        ed.set("i_generation", _GENERATIONS.getrandbits(32))
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            ed.set("i_flags", EXT4_EXTENTS_FL)
            ed.set_i_block(_empty_extent_root())
        return ino, ed

    def _touch(self, ed: InodeEditor, now: int, mtime: bool = True) -> None:
        ed.set_times(("m", "c") if mtime else ("c",), now)

    # -- mapping -------------------------------------------------------------------

    def _extents(self, rec: Inode) -> tuple[list[Extent], list[int]]:
        fs = self.fs
        if not rec.flags & EXT4_EXTENTS_FL:
            if rec.blocks_512 == 0 and rec.size == 0 and not any(rec.i_block):
                return [], []
            raise error(errno.EROFS, f"inode {rec.ino} is block-mapped (ext2/ext3 style); not written")
        return read_extents(rec.ino, rec.i_block, lambda b: fs.cache.read(b, "extent tree", rec.ino),
                            fs.sb.block_size, fs.sb.blocks_count, self._iseed(rec.ino, rec.generation))

    def _set_extents(self, ino: int, ed: InodeEditor, extents: list[Extent], nodes: list[int]) -> None:
        """Build the whole tree of ``ino`` for ``extents``; reuses, allocates or frees node blocks.

        For whole mappings of new inodes (a few extents); changes to existing files go
        through the incremental editor (:meth:`_tree`).
        """
        fs = self.fs
        bs = fs.sb.block_size
        flat: list[Extent] = []
        for e in _merge(extents):
            flat.extend(split_long(e))
        need = tree_nodes_needed(len(flat), bs)
        nodes = list(nodes)
        if need > len(nodes):
            goal = nodes[-1] + 1 if nodes else (flat[0].physical if flat else 0)
            for start, n in self.alloc.alloc_blocks(goal, need - len(nodes)):
                nodes.extend(range(start, start + n))
        elif need < len(nodes):
            for b in nodes[need:]:
                self.alloc.free_blocks(b, 1)
            nodes = nodes[:need]
        root, blocks = build_extent_tree(flat, nodes, bs, self._iseed(ino, ed.get("i_generation")))
        for b, data in blocks.items():
            if fs.cache.read(b, "extent tree", ino) != data:
                self.txn.put(b, data)
        ed.set("i_flags", ed.get("i_flags") | EXT4_EXTENTS_FL)
        ed.set_i_block(root)
        data_blocks = sum(e.length for e in flat)
        acl = 1 if (ed.get("i_file_acl_lo") or ed.get("l_i_file_acl_high")) else 0
        ed.set_blocks((data_blocks + len(nodes) + acl) * (bs // 512))

    def _tree(self, rec: Inode) -> ExtentTree:
        """The extent-tree editor of ``rec`` (empty for an inode that never had blocks)."""
        fs = self.fs
        i_block = rec.i_block
        if not rec.flags & EXT4_EXTENTS_FL:
            if rec.blocks_512 == 0 and rec.size == 0 and not any(rec.i_block):
                i_block = _empty_extent_root()
            else:
                raise error(errno.EROFS, f"inode {rec.ino} is block-mapped (ext2/ext3 style); not written")
        return ExtentTree(_TreeIO(self, rec.ino), rec.ino, i_block, fs.sb.block_size, fs.sb.blocks_count,
                          self._iseed(rec.ino, rec.generation), goal=self._goal(rec.ino),
                          memo=self._tree_memo)

    def _compact_trees(self) -> None:
        """Repack the loose extent trees of this transaction, each as its own operation.

        A tree that cannot be read (corrupt) is left exactly as it is: the rest of the
        transaction still commits.
        """
        loose, self._loose = self._loose, {}
        for ino, generation in sorted(loose.items()):
            try:
                with self.op():
                    rec = self.fs.inode(ino)
                    if rec.mode == 0 or rec.generation != generation or not rec.flags & EXT4_EXTENTS_FL:
                        continue
                    tree = self._tree(rec)
                    tree.compact()
                    ed = InodeEditor(rec.raw)
                    self._store_tree(ed, tree, rec.blocks_512, 0)
                    if ed.buf != rec.raw:
                        self.store(ino, ed)
            except VolfsError:
                continue

    def _store_tree(self, ed: InodeEditor, tree: ExtentTree, blocks_512: int, data_delta: int) -> None:
        """Put ``tree``'s changes into the transaction and ``ed``: i_block, the extents flag, i_blocks.

        ``blocks_512`` is i_blocks before the change and ``data_delta`` the data blocks allocated
        (positive) or freed (negative); tree blocks are counted by the editor.
        """
        if tree.suspect:
            self._loose[tree.ino] = ed.get("i_generation")
        ed.set("i_flags", ed.get("i_flags") | EXT4_EXTENTS_FL)
        ed.set_i_block(tree.finish())
        ed.set_blocks(blocks_512 + (data_delta + tree.nodes_delta) * (self.fs.sb.block_size // 512))

    def _goal(self, ino: int) -> int:
        """Where a file with no nearby blocks starts looking: the first block of its inode's group
        (the extent-tree editor's goal is preferred whenever the file already has blocks)."""
        fs = self.fs
        g = (ino - 1) // fs.sb.inodes_per_group
        return fs.sb.first_data_block + g * fs.sb.blocks_per_group

    def _read_block_for_fill(self, rec_size: int, lblock: int, phys: int | None) -> bytes:
        bs = self.fs.sb.block_size
        if phys is None:
            return bytes(bs)
        data = self.fs.cache.read_run(phys, 1)
        valid = rec_size - lblock * bs
        if valid < bs:
            data = data[: max(valid, 0)] + bytes(bs - max(valid, 0))
        return data

    def write_data(self, ino: int, offset: int, data: bytes | bytearray | memoryview, *,
                   dir_ok: bool = False, then: AttrChange | None = None) -> int:
        """Write ``data`` at ``offset`` of regular file ``ino`` (see the module header).

        ``then``: attribute changes made in the same operation, after the
        write, as :meth:`setattr` makes them: the file's record is stored once
        for both (the FUSE layer's write-behind hands its pending bytes over
        this way with the SETATTR that follows them).
        """
        fs = self.fs
        n = len(data)
        with self.op():
            rec = fs.inode(ino)
            if not (rec.is_reg or (dir_ok and (rec.is_dir or rec.is_symlink))):
                raise error(errno.EINVAL, f"inode {ino} is not a regular file")
            self._writable_inode(rec)
            ed = InodeEditor(rec.raw)
            now = _now_ns()
            if n == 0:
                if then is not None:
                    self.setattr(ino, **then._asdict())
                return 0
            if rec.flags & EXT4_INLINE_DATA_FL or inline_write.may_inline(self, rec, offset + n):
                if inline_write.write(self, rec, offset, data, now):
                    if then is not None:
                        self.setattr(ino, **then._asdict())
                    return n
                rec = fs.inode(ino)
                ed = InodeEditor(rec.raw)
            bs = fs.sb.block_size
            end = offset + n
            first, last = offset // bs, (end - 1) // bs
            if last > _MAX_FILE_BLOCKS - 1:
                raise error(errno.EFBIG, "write beyond the largest ext4 file")
            # Segments of [first, last]: existing extents, and holes to allocate.
            segs: list[Extent] = []
            old_unwritten: dict[int, bool] = {}
            tree: ExtentTree | None = None
            if rec.blocks_512 == 0 and rec.i_block == _EMPTY_EXTENT_ROOT and rec.flags & EXT4_EXTENTS_FL:
                # A file without blocks (every file a copy or an archive extract creates): it all is
                # one hole, and its whole mapping is built at once below, without the tree editor.
                hole_total = last + 1 - first
                segs = _RunFeeder(self.alloc.alloc_blocks(self._goal(ino), hole_total)).take(first, hole_total)
            else:
                tree = self._tree(rec)
                inside = tree.mapped(first, last + 1)
                hole_total = last + 1 - first - sum(e.length for e in inside)
                new_runs: list[tuple[int, int]] = []
                if hole_total:
                    new_runs = self.alloc.alloc_blocks(tree.goal(first, self._goal(ino)), hole_total)
                run_iter = _RunFeeder(new_runs)
                pos = first
                for e in inside:
                    if e.logical > pos:
                        segs.extend(run_iter.take(pos, e.logical - pos))
                    segs.append(make_extent(e.logical, e.length, e.physical, False))
                    old_unwritten[e.logical] = e.unwritten
                    pos = e.end
                if last + 1 > pos:
                    segs.extend(run_iter.take(pos, last + 1 - pos))
            # Data: one pwrite per segment, edge blocks completed from the old contents or zeros.
            mv = memoryview(data).cast("B")
            head = offset - first * bs
            tail_end = end - last * bs  # bytes of the last block covered by the write
            for s in segs:
                fresh = old_unwritten.get(s.logical, True)
                parts: list[bytes | memoryview] = []
                if s.logical == first and head:
                    old = self._read_block_for_fill(rec.size, first, None if fresh else s.physical)
                    parts.append(old[:head])
                lo_byte = max(offset, s.logical * bs)
                hi_byte = min(end, s.end * bs)
                parts.append(mv[lo_byte - offset : hi_byte - offset])
                if s.end - 1 == last and tail_end < bs:
                    old = self._read_block_for_fill(rec.size, last, None if fresh else s.physical + last - s.logical)
                    parts.append(old[tail_end:])
                self.txn.write_data(s.physical, *parts)
            if tree is None:
                self._set_extents(ino, ed, segs, [])
            else:
                tree.replace(first, last + 1, segs)
                self._store_tree(ed, tree, rec.blocks_512, hole_total)
            if end > rec.size:
                ed.set_size(end)
            self._touch(ed, now)
            if then is not None:
                self._edit_attrs(rec, ed, *then)
            self.store(ino, ed)
            if then is not None and then.mode is not None:
                self._acl_follows_mode(ino, then.mode)
        self.maybe_commit()
        return n

    def truncate(self, ino: int, size: int) -> None:
        fs = self.fs
        with self.op():
            rec = fs.inode(ino)
            if rec.is_dir:
                raise error(errno.EISDIR, "is a directory")
            if not rec.is_reg:
                raise error(errno.EINVAL, "not a regular file")
            self._writable_inode(rec)
            bs = fs.sb.block_size
            if size < 0:
                raise error(errno.EINVAL, "negative size")
            if (size + bs - 1) // bs > _MAX_FILE_BLOCKS:
                raise error(errno.EFBIG, "size beyond the largest ext4 file")
            if rec.flags & EXT4_INLINE_DATA_FL:
                if inline_write.truncate(self, rec, size, _now_ns()):
                    return
                rec = fs.inode(ino)
            ed = InodeEditor(rec.raw)
            self._truncate_blocks(rec, ed, size)
            ed.set_size(size)
            self._touch(ed, _now_ns())
            self.store(ino, ed)
        self.maybe_commit()

    def _truncate_blocks(self, rec: Inode, ed: InodeEditor, size: int) -> None:
        bs = self.fs.sb.block_size
        if size >= rec.size or rec.flags & EXT4_INLINE_DATA_FL:  # inline: no blocks to free
            return
        keep = (size + bs - 1) // bs
        tree = self._tree(rec)
        if size % bs:
            lb = size // bs
            for e in tree.mapped(lb, lb + 1):
                if not e.unwritten:
                    old = self.fs.cache.read_run(e.physical, 1)
                    self.txn.write_data(e.physical, old[: size % bs] + bytes(bs - size % bs))
        freed = 0
        for e in tree.truncate(keep):
            self.alloc.free_blocks(e.physical, e.length)
            freed += e.length
        if rec.flags & EXT4_EXTENTS_FL:
            self._store_tree(ed, tree, rec.blocks_512, -freed)

    def _free_all(self, rec: Inode) -> None:
        """Free an inode with no links left: its blocks, its xattr block, the inode itself."""
        ed = InodeEditor(rec.raw)
        if (rec.is_reg or rec.is_dir or (rec.is_symlink and rec.flags & EXT4_EXTENTS_FL)) \
                and not rec.flags & EXT4_INLINE_DATA_FL:  # inline inodes have no blocks
            extents, nodes = self._extents(rec)
            for e in extents:
                self.alloc.free_blocks(e.physical, e.length)
            for b in nodes:
                self.alloc.free_blocks(b, 1)
            if rec.flags & EXT4_EXTENTS_FL:
                ed.set_i_block(_empty_extent_root())
        if rec.file_acl:
            self._drop_xattr_block(rec.ino, rec.file_acl)
            ed.set_file_acl(0)
        ed.set_blocks(0)
        ed.set_size(0)
        ed.set("i_links_count", 0)
        ed.set("i_dtime", int(time.time()) & 0xFFFFFFFF)
        self.store(rec.ino, ed)
        self.alloc.free_inode(rec.ino, rec.is_dir)
        self._dirs.pop(rec.ino, None)

    def _xattr_block(self, ino: int, block: int) -> tuple[int, list[XattrEntry]]:
        """(refcount, entries) of xattr block ``block``, verified: EUCLEAN if it is corrupt."""
        raw = self.txn.read(block, "xattr block", ino)
        entries = parse_xattr_block(raw, ino=ino, block=block, csum_seed=self._csum_seed())
        return struct.unpack_from("<I", raw, 4)[0], entries

    def _drop_xattr_block(self, ino: int, block: int) -> None:
        # Verified first: a corrupt block is neither freed nor rewritten (its refcount may be garbage).
        refcount, _ = self._xattr_block(ino, block)
        if refcount <= 1:
            self.alloc.free_blocks(block, 1)
            return
        data = bytearray(self.txn.read(block, "xattr block", ino))
        struct.pack_into("<I", data, 4, refcount - 1)
        if self.fs.sb.metadata_csum:
            struct.pack_into("<I", data, 16, xattr_block_checksum(self.fs.fs_seed, block, bytes(data)))
        self.txn.put(block, data)

    # -- orphans -------------------------------------------------------------------------

    def _orphan_file(self) -> Inode | None:
        """The orphan file's inode when the orphan_file feature is on (orphan.py)."""
        sb = self.fs.sb
        if not sb.has_compat(COMPAT_ORPHAN_FILE) or not sb.orphan_file_inum:
            return None
        return self.fs.inode(sb.orphan_file_inum)

    def _orphan_blocks(self, orec: Inode) -> Iterator[tuple[int, bytes]]:
        """(physical block, contents) of every orphan-file block, tail magic checked."""
        fs = self.fs
        from volfs.ext4.orphan import orphan_file_entries

        bs = fs.sb.block_size
        rl = fs.runlist(orec)
        for lb in range(orec.size // bs):
            pb = rl.map(lb)
            if pb is None:
                raise CorruptError("orphan file", f"hole at block {lb}", inode=orec.ino)
            data = fs.cache.read(pb, "orphan file", orec.ino)
            orphan_file_entries(data, ino=orec.ino, generation=orec.generation, block=pb,
                                fs_seed=self._csum_seed(), inodes_count=fs.sb.inodes_count)
            yield pb, data

    def _orphan_file_set(self, orec: Inode, old: int, new: int) -> bool:
        """Replace the first slot holding ``old`` with ``new``; whether one was found."""
        from volfs.ext4.orphan import orphan_slots, set_orphan_slot

        slots = orphan_slots(self.fs.sb.block_size)
        for pb, data in self._orphan_blocks(orec):
            for slot, (value,) in enumerate(struct.iter_unpack("<I", data[: 4 * slots])):
                if value == old:
                    self.txn.put(pb, set_orphan_slot(data, slot, new, ino=orec.ino, generation=orec.generation,
                                                     block=pb, fs_seed=self._csum_seed()))
                    return True
        return False

    def _orphan_add(self, ino: int, ed: InodeEditor) -> None:
        orec = self._orphan_file()
        if orec is not None and self._orphan_file_set(orec, 0, ino):
            if not self.fs.sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT):
                self._put_sb({"s_feature_ro_compat": self.fs.sb.ro_compat | RO_COMPAT_ORPHAN_PRESENT})
            return
        # No orphan file, or it is full: the s_last_orphan chain (as the kernel falls back).
        ed.set("i_dtime", self.fs.sb.last_orphan)
        self._put_sb({"s_last_orphan": ino})

    def _orphan_remove(self, ino: int) -> None:
        fs = self.fs
        orec = self._orphan_file()
        if orec is not None and self._orphan_file_set(orec, ino, 0):
            return
        nxt = fs.inode(ino).dtime
        if fs.sb.last_orphan == ino:
            self._put_sb({"s_last_orphan": nxt})
            return
        cur = fs.sb.last_orphan
        seen = 0
        while cur and seen <= fs.sb.inodes_count:
            rec = fs.inode(cur)
            if rec.dtime == ino:
                ed = InodeEditor(rec.raw)
                ed.set("i_dtime", nxt)
                self.store(cur, ed)
                return
            cur = rec.dtime
            seen += 1

    def _orphan_file_empty(self) -> bool:
        orec = self._orphan_file()
        if orec is None:
            return True
        from volfs.ext4.orphan import orphan_slots

        n = 4 * orphan_slots(self.fs.sb.block_size)
        return all(not any(data[:n]) for _pb, data in self._orphan_blocks(orec))

    def release_orphan(self, ino: InodeNo) -> None:
        """The last handle on ``ino`` went: free it if it has no links left."""
        fs = self.fs
        try:
            rec = fs.inode(ino)
        except CorruptError:
            return
        if rec.links_count != 0 or rec.mode == 0:
            return
        with self.op():
            self._orphan_remove(ino)
            self._free_all(fs.inode(ino))
        self.maybe_commit()

    def _process_orphans(self) -> None:
        """Free or truncate every orphan a crash left: the chain, then the orphan file's entries."""
        fs = self.fs
        from volfs.ext4.orphan import walk_orphan_chain

        chain = walk_orphan_chain(fs.sb.last_orphan, fs.sb.inodes_count, lambda i: fs.inode(i).dtime)
        if fs.sb.last_orphan:
            self._put_sb({"s_last_orphan": 0})
        for ino in chain:
            rec = fs.inode(ino)
            ed = InodeEditor(rec.raw)
            ed.set("i_dtime", 0)
            self.store(ino, ed)
        orec = self._orphan_file()
        if orec is not None and fs.sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT):
            from volfs.ext4.orphan import orphan_file_entries

            for pb, data in list(self._orphan_blocks(orec)):
                listed = orphan_file_entries(data, ino=orec.ino, generation=orec.generation, block=pb,
                                             fs_seed=self._csum_seed(), inodes_count=fs.sb.inodes_count)
                for ino in listed:
                    self._orphan_file_set(orec, ino, 0)
                chain += [i for i in listed if i not in chain]
            self._put_sb({"s_feature_ro_compat": fs.sb.ro_compat & ~RO_COMPAT_ORPHAN_PRESENT})
        for ino in chain:
            rec = fs.inode(ino)
            if rec.mode == 0:
                continue
            if rec.links_count == 0:
                self._free_all(rec)
            elif rec.is_reg:
                ed = InodeEditor(rec.raw)
                self._truncate_blocks(rec, ed, rec.size)
                self.store(ino, ed)

    # -- directories -----------------------------------------------------------------------

    def _dir_rec(self, ino: int) -> Inode:
        rec = self.fs._dir(ino)
        self._writable_inode(rec)
        return rec

    def _dir_state(self, rec: Inode) -> _DirState:
        st = self._dirs.get(rec.ino)
        if st is not None:
            self._dirs.move_to_end(rec.ino)
            return st
        if rec.flags & EXT4_INDEX_FL:
            self._unindex(rec)
            rec = self.fs.inode(rec.ino)
        fs = self.fs
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        seed = self._iseed(rec.ino, rec.generation)
        nblocks = (rec.size + bs - 1) // bs
        names: dict[bytes, tuple[int, int, int, int]] = {}
        slack = [0] * nblocks
        rl = fs.runlist(rec)
        for lb in range(nblocks):
            pb = rl.map(lb)
            if pb is None:
                continue
            data = fs.cache.read(pb, "directory block", rec.ino)
            for e in parse_dir_block(data, ino=rec.ino, block=pb, base=0, has_filetype=True,
                                     inodes_count=fs.sb.inodes_count, csum_seed=seed, block_size=bs):
                names[e.name] = (lb, e.offset, e.ino, e.file_type)
            slack[lb] = leaf_slack(data, bs, csum)
        st = _DirState(names, slack)
        self._dirs[rec.ino] = st
        if len(self._dirs) > 64:
            self._dirs.popitem(last=False)
        return st

    def cached_lookup(self, rec: Inode, name: bytes) -> InodeNo | None:
        st = self._dirs.get(rec.ino)
        if st is None:
            return None
        hit = st.names.get(name)
        if hit is None:
            raise error(errno.ENOENT, f"no entry {name!r} in directory {rec.ino}")
        return InodeNo(hit[2])

    def _unindex(self, rec: Inode) -> None:
        """Turn an htree directory into a linear one (see the module header)."""
        fs = self.fs
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        seed = self._iseed(rec.ino, rec.generation)
        rl = fs.runlist(rec)
        nblocks = (rec.size + bs - 1) // bs
        for lb in range(nblocks):
            pb = rl.map(lb)
            if pb is None:
                continue
            data = fs.cache.read(pb, "directory block", rec.ino)
            if lb == 0:
                parent = struct.unpack_from("<I", data, 12)[0]
                self.txn.put(pb, first_dir_block(rec.ino, parent, bs, seed, csum))
            elif is_dx_node_block(data, bs):
                self.txn.put(pb, empty_leaf(bs, seed, csum))
        ed = InodeEditor(rec.raw)
        ed.set("i_flags", ed.get("i_flags") & ~EXT4_INDEX_FL)
        self.store(rec.ino, ed)

    def _dir_block(self, rec: Inode, lb: int) -> tuple[int, bytearray]:
        pb = self.fs.runlist(rec).map(lb)
        if pb is None:
            raise CorruptError("directory", f"logical block {lb} is a hole", inode=rec.ino)
        return pb, bytearray(self.fs.cache.read(pb, "directory block", rec.ino))

    def _insert_leaf(self, rec: Inode, lb: int, name: bytes, ino: int, ft: int) -> tuple[int, int] | None:
        """Put ``name`` into leaf block ``lb`` of directory ``rec`` if it fits: (physical block, offset).

        The block is rewritten (checksum tail included) into the transaction.
        Two caches are carried across the edit instead of re-walking the block
        next time: the block's last-record hint (:attr:`_leaf_last`) and, when
        the read side holds a parse of the old bytes, that parse, patched with
        the new entry (the read side checks it against the bytes as always).
        """
        fs = self.fs
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        pb = fs.runlist(rec).map(lb)
        if pb is None:
            raise CorruptError("directory", f"logical block {lb} is a hole", inode=rec.ino)
        old = fs.cache.read(pb, "directory block", rec.ino)
        hint = self._leaf_last.get(pb)
        last = hint[1] if hint is not None and (hint[0] is old or hint[0] == old) else None
        buf = bytearray(old)
        pos = insert_in_block(buf, name, ino, ft, bs, csum, last)
        if pos is None:
            return None
        set_leaf_csum(buf, self._iseed(rec.ino, rec.generation))
        self.txn.put(pb, buf)
        new = fs.cache.read(pb, "directory block", rec.ino)
        if record_end(new, pos, bs) == leaf_end(bs, csum):
            last = pos
        elif last is None:
            last = last_record(new, bs, csum)
        if len(self._leaf_last) >= _LEAF_HINTS:
            self._leaf_last.clear()
        self._leaf_last[pb] = (new, last)
        self._patch_leaf_parse(rec, lb, pb, old, pos,
                               lambda entries: entries_after_insert(entries, new, pos, name, ino, ft, lb * bs, bs))
        return pb, pos

    def _patch_leaf_parse(self, rec: Inode, lb: int, pb: int, old: bytes, pos: int,
                          edit: Callable[[list[DirEntry]], list[DirEntry] | None]) -> None:
        """Carry the read side's parse of leaf ``lb`` (made from ``old``) across an edit of the entry at ``pos``.

        Re-parsing a full leaf costs about a millisecond; ``edit`` gives the parse of the new
        bytes from the old one (None: unknown, the parse is dropped and made again when needed).
        The read side still checks the slot against the block's bytes as always
        (:meth:`Filesystem.patch_leaf`).
        """
        fs = self.fs
        if fs.salvage or not fs.sb.has_incompat(INCOMPAT_FILETYPE):
            return
        fs.patch_leaf(rec, lb, pb, old, pos, edit)

    def _find_existing(self, rec: Inode, name: bytes) -> tuple[int, int, int, int]:
        """:meth:`_find`, with ENOENT when ``name`` is not there."""
        hit = self._find(rec, name)
        if hit is None:
            raise error(errno.ENOENT, f"no entry {name!r}")
        return hit

    def _find(self, rec: Inode, name: bytes) -> tuple[int, int, int, int] | None:
        """(logical block, offset in block, inode, file type) of ``name``."""
        if rec.flags & EXT4_INLINE_DATA_FL:  # (region, offset in region, ...): inline_write.py
            return inline_write.find(self, rec, name)
        st = self._dirs.get(rec.ino)
        if st is not None:
            return st.names.get(name)
        if rec.flags & EXT4_INDEX_FL:
            fs = self.fs
            found = fs._indexed_find(rec, name) if fs._is_dx(rec) else fs._linear_find(rec, name)
            if found is None:
                return None
            bs = fs.sb.block_size
            return found.offset // bs, found.offset % bs, found.ino, found.file_type
        st = self._dir_state(rec)
        return st.names.get(name)

    def _indexable(self, rec: Inode) -> bool:
        """Whether inserts into ``rec`` keep (or build) an htree index (dir_index, no largedir levels)."""
        return self.fs.sb.has_compat(_COMPAT_DIR_INDEX)

    def _add_entry(self, dir_ino: int, name: bytes, ino: int, ft: int) -> None:
        fs = self.fs
        rec = self._dir_rec(dir_ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            if inline_write.add_entry(self, rec, name, ino, ft):
                return
            rec = fs.inode(dir_ino)  # now a one-block directory
        if rec.flags & EXT4_INDEX_FL and self._indexable(rec) and dir_ino not in self._dirs:
            self._dx_add_entry(rec, name, ino, ft)
            return
        st = self._dir_state(rec)
        rec = fs.inode(dir_ino)
        if name in st.names:
            raise error(errno.EEXIST, f"{name!r} exists")
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        seed = self._iseed(rec.ino, rec.generation)
        need = rec_len_for(len(name))
        # st.slack is an upper bound per block (exact after a failed attempt): try the last block
        # first, then any block that may have room; otherwise add a block.
        n = len(st.slack)
        order = ([n - 1] if n else []) + [lb for lb in range(n - 1) if st.slack[lb] >= need]
        for lb in order:
            if st.slack[lb] < need:
                continue
            done = self._insert_leaf(rec, lb, name, ino, ft)
            if done is not None:
                st.names[name] = (lb, done[1], ino, ft)
                return
            _pb, full = self._dir_block(rec, lb)
            st.slack[lb] = leaf_slack(full, bs, csum)
        if n == 1 and rec.size == bs and self._indexable(rec):
            # A one-block directory that is full becomes indexed (the kernel's make_indexed_dir).
            self._dirs.pop(dir_ino, None)
            self._make_indexed(rec, name, ino, ft)
            return
        tree = self._tree(rec)
        target = n
        (pb, _), = self.alloc.alloc_blocks(tree.goal(target, self._goal(dir_ino)), 1)
        buf = empty_leaf(bs, seed, csum)
        pos = insert_in_block(buf, name, ino, ft, bs, csum)
        if pos is None:
            raise CorruptError("directory", "entry does not fit an empty block", inode=dir_ino)
        ed = InodeEditor(rec.raw)
        tree.replace(target, target + 1, [Extent(target, 1, pb)])
        self._store_tree(ed, tree, rec.blocks_512, 1)
        ed.set_size((target + 1) * bs)
        self.store(dir_ino, ed)
        st.slack.append(bs)
        set_leaf_csum(buf, seed)
        self.txn.put(pb, buf)
        st.names[name] = (target, pos, ino, ft)

    # -- htree inserts (theory of operation: htree_write.py) --------------------------------------

    def _dx_hash(self, version: int, name: bytes) -> tuple[int, int]:
        sb = self.fs.sb
        if version <= HASH_TEA and sb.flags & FLAGS_UNSIGNED_HASH:
            version += 3
        try:
            return dirhash(name, version, sb.hash_seed)
        except ValueError:
            raise error(errno.EROFS, f"htree hash version {version} is not written") from None

    def _grow_dir(self, rec: Inode, count: int) -> tuple[Inode, list[tuple[int, int]]]:
        """Append ``count`` blocks to directory ``rec``: the new inode record and (logical, physical) pairs."""
        bs = self.fs.sb.block_size
        tree = self._tree(rec)
        first = (rec.size + bs - 1) // bs
        out: list[tuple[int, int]] = []
        new: list[Extent] = []
        lb = first
        for start, n in self.alloc.alloc_blocks(tree.goal(first, self._goal(rec.ino)), count):
            new.append(Extent(lb, n, start))
            out.extend((lb + k, start + k) for k in range(n))
            lb += n
        tree.replace(first, lb, new)
        ed = InodeEditor(rec.raw)
        self._store_tree(ed, tree, rec.blocks_512, count)
        ed.set_size(lb * bs)
        self.store(rec.ino, ed)
        return self.fs.inode(rec.ino), out

    def _leaf_items(self, rec: Inode, buf: bytes | bytearray, pb: int, version: int) -> list[LeafEntry]:
        fs = self.fs
        out = []
        for e in parse_dir_block(bytes(buf), ino=rec.ino, block=pb, base=0, has_filetype=True,
                                 inodes_count=fs.sb.inodes_count, csum_seed=self._iseed(rec.ino, rec.generation),
                                 block_size=fs.sb.block_size):
            h, minor = self._dx_hash(version, e.name)
            out.append(LeafEntry(h, minor, e.name, e.ino, e.file_type))
        return out

    def _make_indexed(self, rec: Inode, name: bytes, ino: int, ft: int) -> None:
        """Turn full one-block directory ``rec`` into an htree with two leaves (htree_write.py)."""
        fs = self.fs
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        seed = self._iseed(rec.ino, rec.generation)
        version = fs.sb.def_hash_version
        pb0, buf0 = self._dir_block(rec, 0)
        items = self._leaf_items(rec, buf0, pb0, version)
        if len(items) < 2 or items[0].name != b"." or items[1].name != b"..":
            raise CorruptError("directory", "block 0 does not start with '.' and '..'", inode=rec.ino, block=pb0)
        parent = items[1].ino
        h, minor = self._dx_hash(version, name)
        items = sorted(items[2:] + [LeafEntry(h, minor, name, ino, ft)], key=lambda e: (e.hash, e.minor))
        cut, key = split_point(items)
        rec, new = self._grow_dir(rec, 2)
        (lb1, pb1), (lb2, pb2) = new
        self.txn.put(pb1, pack_leaf(items[:cut], bs, seed, csum))
        self.txn.put(pb2, pack_leaf(items[cut:], bs, seed, csum))
        self.txn.put(pb0, new_dx_root(rec.ino, parent, bs, version, 0, [(0, lb1), (key, lb2)], seed, csum))
        ed = InodeEditor(rec.raw)
        ed.set("i_flags", ed.get("i_flags") | EXT4_INDEX_FL)
        self.store(rec.ino, ed)

    def _dx_add_entry(self, rec: Inode, name: bytes, ino: int, ft: int) -> None:
        """Insert into an htree directory, splitting leaves and index blocks (htree_write.py)."""
        fs = self.fs
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        seed = self._iseed(rec.ino, rec.generation)
        # The index blocks as the read side parsed and verified them (the same checks this side
        # would make), reused while the blocks hold the bytes they were parsed from.
        pb0, root, info = fs.dx_root(rec)
        version = info.hash_version
        h, minor = self._dx_hash(version, name)
        # The path: (logical block, physical block, bytes, count offset, parsed level, position taken).
        path: list[tuple[int, int, bytes, int, DxLevel, int]] = []
        lb, pb, data, co, level = 0, pb0, root, ROOT_COUNT_OFFSET, info.root
        nblocks = (rec.size + bs - 1) // bs
        for depth in range(info.indirect_levels + 1):
            at = dx_find(level, h)
            path.append((lb, pb, data, co, level, at))
            child = level.entries[at][1]
            if not 0 < child < nblocks:
                raise CorruptError("htree", f"index entry points at block {child}", inode=rec.ino, block=pb)
            if depth < info.indirect_levels:
                lb = child
                pb, data, level = fs.dx_node(rec, lb)
                co = NODE_COUNT_OFFSET
        leaf_lb = path[-1][4].entries[path[-1][5]][1]
        if self._insert_leaf(rec, leaf_lb, name, ino, ft) is not None:
            return
        leaf_pb, leaf = self._dir_block(rec, leaf_lb)
        # The leaf is full: split it (and the index blocks above it as needed).
        items = self._leaf_items(rec, leaf, leaf_pb, version)
        items = sorted(items + [LeafEntry(h, minor, name, ino, ft)], key=lambda e: (e.hash, e.minor))
        cut, key = split_point(items)
        full = [len(p[4].entries) >= dx_limit(bs, p[3], csum) for p in path]
        # Blocks needed: the new leaf, plus a node for each full index block that must split or move down.
        new_nodes = 0
        if full[-1]:
            if len(path) == 1:
                new_nodes = 1  # the root's entries move into a new dx_node (indirect_levels 0 -> 1)
            elif not full[0]:
                new_nodes = 1  # the dx_node splits; the root takes its upper half's key
            else:
                raise error(errno.ENOSPC, f"directory {rec.ino}: htree index full (no largedir)")
        rec, new = self._grow_dir(rec, 1 + new_nodes)
        new_leaf_lb, new_leaf_pb = new[0]
        self.txn.put(leaf_pb, pack_leaf(items[:cut], bs, seed, csum))
        self.txn.put(new_leaf_pb, pack_leaf(items[cut:], bs, seed, csum))
        plb, ppb, pdata, pco, plevel, pat = path[-1]
        pentries = list(plevel.entries)
        insert_dx_entry(pentries, pat, key, new_leaf_lb)
        if not full[-1]:
            pbuf = bytearray(pdata)
            dx_write(pbuf, pco, pentries, seed)
            self.txn.put(ppb, pbuf)
        elif len(path) == 1:
            node_lb, node_pb = new[1]
            self.txn.put(node_pb, new_dx_node(bs, pentries, seed, csum))
            parent = struct.unpack_from("<I", pdata, 12)[0]
            self.txn.put(ppb, new_dx_root(rec.ino, parent, bs, version, 1, [(0, node_lb)], seed, csum))
        else:
            node_lb, node_pb = new[1]
            half = len(pentries) // 2
            low, high = pentries[:half], pentries[half:]
            pbuf = bytearray(pdata)
            dx_write(pbuf, pco, low, seed)
            self.txn.put(ppb, pbuf)
            self.txn.put(node_pb, new_dx_node(bs, high, seed, csum))
            rlb, rpb, rdata, rco, rlevel, rat = path[0]
            rentries = list(rlevel.entries)
            insert_dx_entry(rentries, rat, high[0][0], node_lb)
            rbuf = bytearray(rdata)
            dx_write(rbuf, rco, rentries, seed)
            self.txn.put(rpb, rbuf)
        fs.forget_inode(rec.ino)

    def _remove_entry(self, dir_ino: int, name: bytes) -> tuple[int, int]:
        """Remove ``name``; its (inode, file type)."""
        fs = self.fs
        rec = self._dir_rec(dir_ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            return inline_write.remove_entry(self, rec, name)
        hit = self._find_existing(rec, name)
        rec = fs.inode(dir_ino)
        lb, pos, ino, ft = hit
        bs = fs.sb.block_size
        csum = fs.sb.metadata_csum
        pb, buf = self._dir_block(rec, lb)
        old = bytes(buf)
        remove_from_block(buf, pos, bs, csum)
        set_leaf_csum(buf, self._iseed(rec.ino, rec.generation))
        self.txn.put(pb, buf)
        self._patch_leaf_parse(rec, lb, pb, old, pos, lambda entries: entries_after_remove(entries, lb * bs, pos))
        st = self._dirs.get(dir_ino)
        if st is not None:
            del st.names[name]
            st.slack[lb] = bs  # an upper bound; made exact when an insert there fails
        return ino, ft

    def _retarget_entry(self, dir_ino: int, name: bytes, ino: int, ft: int) -> None:
        fs = self.fs
        rec = self._dir_rec(dir_ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            inline_write.retarget_entry(self, rec, name, ino, ft)
            return
        hit = self._find_existing(rec, name)
        rec = fs.inode(dir_ino)
        lb, pos, _old, _ft = hit
        pb, buf = self._dir_block(rec, lb)
        old = bytes(buf)
        set_entry_inode(buf, pos, ino, ft)
        set_leaf_csum(buf, self._iseed(rec.ino, rec.generation))
        self.txn.put(pb, buf)
        base = lb * fs.sb.block_size
        self._patch_leaf_parse(rec, lb, pb, old, pos,
                               lambda entries: entries_after_retarget(entries, base, pos, ino, ft))
        st = self._dirs.get(dir_ino)
        if st is not None:
            st.names[name] = (lb, pos, ino, ft)

    def _set_dotdot(self, dir_ino: int, parent: int) -> None:
        rec = self.fs.inode(dir_ino)
        if rec.flags & EXT4_INLINE_DATA_FL:
            inline_write.set_dotdot(self, rec, parent)
            return
        indexed = bool(rec.flags & EXT4_INDEX_FL)
        if indexed and not self._indexable(rec):
            self._unindex(rec)
            rec = self.fs.inode(dir_ino)
            indexed = False
        pb, buf = self._dir_block(rec, 0)
        if buf[20:22] != b".." or buf[18] != 2:
            raise CorruptError("directory", "'..' is not the second entry", inode=dir_ino)
        seed = self._iseed(rec.ino, rec.generation)
        if indexed:
            # The dx_root has no dirent tail; its dx_tail checksum covers ".." (htree_write.py).
            parse_dx_root(bytes(buf), ino=rec.ino, block=pb, block_size=self.fs.sb.block_size, large_dir=False,
                          csum_seed=seed)
        set_entry_inode(buf, 12, parent, 2)
        if indexed:
            set_dx_csum(buf, ROOT_COUNT_OFFSET, seed)
            self.fs.forget_inode(dir_ino)
        else:
            set_leaf_csum(buf, seed)
        self.txn.put(pb, buf)

    def _is_empty_dir(self, rec: Inode) -> bool:
        return all(e.name in (b".", b"..") for e in self.fs.readdir(rec.ino))

    # -- link counts -------------------------------------------------------------------------

    def _inc_dir_links(self, ed: InodeEditor) -> None:
        n = ed.get("i_links_count")
        if n == 1:
            return  # already "many" (dir_nlink)
        if n + 1 > LINK_MAX:
            if not self.fs.sb.has_ro_compat(_RO_COMPAT_DIR_NLINK):
                raise error(errno.EMLINK, "too many subdirectories")
            ed.set("i_links_count", 1)
            return
        ed.set("i_links_count", n + 1)

    def _check_link_max(self, rec: Inode) -> None:
        """EMLINK when directory ``rec`` cannot take another subdirectory (the kernel's EXT4_DIR_LINK_MAX):
        only an indexed directory on a dir_nlink filesystem goes past LINK_MAX (its count then reads 1)."""
        if rec.links_count >= LINK_MAX and not (
                self.fs.sb.has_ro_compat(_RO_COMPAT_DIR_NLINK) and self.fs._is_dx(rec)):
            raise error(errno.EMLINK, f"directory inode {rec.ino} has too many subdirectories")

    @staticmethod
    def _dec_dir_links(ed: InodeEditor) -> None:
        n = ed.get("i_links_count")
        if n > 2:
            ed.set("i_links_count", n - 1)

    def _check_parent(self, parent: int, name: bytes) -> Inode:
        rec = self._dir_rec(parent)
        if self._find(rec, name) is not None:
            raise error(errno.EEXIST, f"{name!r} exists")
        return self.fs.inode(parent)

    # -- creating ------------------------------------------------------------------------------

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> InodeNo:
        """A new regular file, device, FIFO or socket ``name`` in ``parent``."""
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise error(errno.EINVAL, "bad file type for create/mknod")
        with self.op():
            self._check_parent(parent, name)
            now = _now_ns()
            ino, ed = self._new_inode(parent, fmt | (mode & 0o7777), uid, gid, now)
            if fmt in (stat.S_IFCHR, stat.S_IFBLK):
                ed.set_i_block(encode_rdev(rdev))
            ed.set("i_links_count", 1)
            self.store(ino, ed)
            self._inherit_acl(parent, ino)
            self._add_entry(parent, name, ino, mode_to_ft(fmt))
            self._touch_dir(parent, now)
        self.maybe_commit()
        return ino

    def _touch_dir(self, ino: int, now: int, links: int = 0) -> None:
        rec = self.fs.inode(ino)
        ed = InodeEditor(rec.raw)
        if links > 0:
            self._inc_dir_links(ed)
        elif links < 0:
            self._dec_dir_links(ed)
        self._touch(ed, now)
        if links:
            self.store(ino, ed)
        else:  # (every create's: only the times change)
            self.store(ino, ed, rec, AttrChange(mtime_ns=now, ctime_ns=now))

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> InodeNo:
        fs = self.fs
        with self.op():
            prec = self._check_parent(parent, name)
            self._check_link_max(prec)
            now = _now_ns()
            ino, ed = self._new_inode(parent, stat.S_IFDIR | (mode & 0o7777), uid, gid, now)
            ed.set("i_links_count", 2)
            if not inline_write.init_dir(self, ino, ed, parent):  # inline when it can be, as the kernel
                bs = fs.sb.block_size
                (pb, _), = self.alloc.alloc_blocks(self._goal(ino), 1)
                seed = self._iseed(ino, ed.get("i_generation"))
                self.txn.put(pb, first_dir_block(ino, parent, bs, seed, fs.sb.metadata_csum))
                self._set_extents(ino, ed, [Extent(0, 1, pb)], [])
                ed.set_size(bs)
            self.store(ino, ed)
            self._inherit_acl(parent, ino)
            self._add_entry(parent, name, ino, 2)
            self._touch_dir(parent, now, links=1)
        self.maybe_commit()
        return ino

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> InodeNo:
        fs = self.fs
        if not target:
            raise error(errno.EINVAL, "empty symlink target")
        if len(target) >= 4096:
            raise error(errno.ENAMETOOLONG, "symlink target too long")
        with self.op():
            self._check_parent(parent, name)
            now = _now_ns()
            ino, ed = self._new_inode(parent, stat.S_IFLNK | 0o777, uid, gid, now)
            ed.set("i_links_count", 1)
            if len(target) < 60:
                ed.set("i_flags", 0)
                ed.set_i_block(target + bytes(60 - len(target)))
                ed.set_size(len(target))
                self.store(ino, ed)
            else:
                self.store(ino, ed)
                self.write_data(ino, 0, target, dir_ok=True)
            self._add_entry(parent, name, ino, 7)
            self._touch_dir(parent, now)
        self.maybe_commit()
        return ino

    def link(self, ino: int, parent: int, name: bytes) -> None:
        fs = self.fs
        with self.op():
            rec = fs._live(ino)
            if rec.is_dir:
                raise error(errno.EPERM, "hard link to a directory")
            self._writable_inode(rec)
            if rec.links_count >= LINK_MAX:
                raise error(errno.EMLINK, "too many links")
            self._check_parent(parent, name)
            now = _now_ns()
            ed = InodeEditor(rec.raw)
            if rec.links_count == 0:
                self._orphan_remove(ino)
                ed = InodeEditor(fs.inode(ino).raw)
                ed.set("i_dtime", 0)
            ed.set("i_links_count", rec.links_count + 1)
            self._touch(ed, now, mtime=False)
            self.store(ino, ed)
            self._add_entry(parent, name, ino, mode_to_ft(rec.mode))
            self._touch_dir(parent, now)
        self.maybe_commit()

    # -- removing ----------------------------------------------------------------------------------

    def _drop_link(self, ino: int, now: int) -> None:
        """One link fewer for a non-directory; free or orphan it at zero."""
        fs = self.fs
        rec = fs.inode(ino)
        ed = InodeEditor(rec.raw)
        n = max(rec.links_count - 1, 0)
        ed.set("i_links_count", n)
        self._touch(ed, now, mtime=False)
        if n == 0 and fs.pinned(ino):
            self._orphan_add(ino, ed)
        self.store(ino, ed)
        if n == 0 and not fs.pinned(ino):
            self._free_all(fs.inode(ino))

    def _drop_dir(self, ino: int) -> None:
        fs = self.fs
        rec = fs.inode(ino)
        ed = InodeEditor(rec.raw)
        ed.set("i_links_count", 0)
        self.store(ino, ed)
        if fs.pinned(ino):
            ed = InodeEditor(fs.inode(ino).raw)
            self._orphan_add(ino, ed)
            self.store(ino, ed)
        else:
            self._free_all(fs.inode(ino))

    def unlink(self, parent: int, name: bytes) -> None:
        fs = self.fs
        with self.op():
            rec = self._dir_rec(parent)
            hit = self._find_existing(rec, name)
            target = fs.inode(hit[2])
            if target.is_dir:
                raise error(errno.EISDIR, "is a directory")
            self._writable_inode(target)
            now = _now_ns()
            self._remove_entry(parent, name)
            self._touch_dir(parent, now)
            self._drop_link(target.ino, now)
        self.maybe_commit()

    def rmdir(self, parent: int, name: bytes) -> None:
        fs = self.fs
        with self.op():
            rec = self._dir_rec(parent)
            hit = self._find_existing(rec, name)
            target = fs.inode(hit[2])
            if not target.is_dir:
                raise error(errno.ENOTDIR, "not a directory")
            self._writable_inode(target)
            if not self._is_empty_dir(target):
                raise error(errno.ENOTEMPTY, "directory not empty")
            now = _now_ns()
            self._remove_entry(parent, name)
            self._touch_dir(parent, now, links=-1)
            self._drop_dir(target.ino)
        self.maybe_commit()

    # -- rename ------------------------------------------------------------------------------------

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        """Whether directory ``anc`` is ``ino`` or one of its ancestors."""
        cur = ino
        for _ in range(self.fs.sb.inodes_count):
            if cur == anc:
                return True
            if cur == 2:
                return False
            nxt = self.fs.lookup_ino(cur, b"..")
            if nxt == cur:
                return False
            cur = nxt
        raise CorruptError("directory", "'..' chain does not reach the root")

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int = 0) -> None:
        fs = self.fs
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
                flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE):
            raise error(errno.EINVAL, "invalid rename flags")
        with self.op():
            op_rec = self._dir_rec(old_parent)
            np_rec = self._dir_rec(new_parent)
            src = self._find_existing(op_rec, old_name)
            dst = self._find(np_rec, new_name)
            s_rec = fs.inode(src[2])
            self._writable_inode(s_rec)
            now = _now_ns()
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise error(errno.ENOENT, f"no entry {new_name!r}")
                d_rec = fs.inode(dst[2])
                if s_rec.ino == d_rec.ino:
                    return
                if old_parent != new_parent:
                    if s_rec.is_dir and self._is_ancestor(s_rec.ino, new_parent):
                        raise error(errno.EINVAL, "directory into its own subtree")
                    if d_rec.is_dir and self._is_ancestor(d_rec.ino, old_parent):
                        raise error(errno.EINVAL, "directory into its own subtree")
                self._retarget_entry(old_parent, old_name, d_rec.ino, mode_to_ft(d_rec.mode))
                self._retarget_entry(new_parent, new_name, s_rec.ino, mode_to_ft(s_rec.mode))
                if old_parent != new_parent:
                    if s_rec.is_dir:
                        self._set_dotdot(s_rec.ino, new_parent)
                    if d_rec.is_dir:
                        self._set_dotdot(d_rec.ino, old_parent)
                    delta = int(s_rec.is_dir) - int(d_rec.is_dir)
                    self._touch_dir(old_parent, now, links=-delta)
                    self._touch_dir(new_parent, now, links=delta)
                else:
                    self._touch_dir(old_parent, now)
                for r in (s_rec, d_rec):
                    ed = self.editor(r.ino)
                    self._touch(ed, now, mtime=False)
                    self.store(r.ino, ed)
                return
            if dst is not None and flags & RENAME_NOREPLACE:
                raise error(errno.EEXIST, f"{new_name!r} exists")
            # The kernel (do_renameat2) checks the subtree before the target's type (vfs_rename).
            if s_rec.is_dir and old_parent != new_parent and self._is_ancestor(s_rec.ino, new_parent):
                raise error(errno.EINVAL, "directory into its own subtree")
            if dst is not None and old_parent != new_parent and self._is_ancestor(dst[2], old_parent):
                # do_renameat2's trap: the target is an ancestor of the source (ENOTEMPTY, whatever the types).
                raise error(errno.ENOTEMPTY, "target is an ancestor of the source")
            if dst is not None:
                d_rec = fs.inode(dst[2])
                if d_rec.ino == s_rec.ino:
                    return
                if s_rec.is_dir and not d_rec.is_dir:
                    raise error(errno.ENOTDIR, "directory onto a non-directory")
                if not s_rec.is_dir and d_rec.is_dir:
                    raise error(errno.EISDIR, "non-directory onto a directory")
                if d_rec.is_dir and not self._is_empty_dir(d_rec):
                    raise error(errno.ENOTEMPTY, "target directory not empty")
                self._writable_inode(d_rec)
            if s_rec.is_dir and old_parent != new_parent and dst is None:
                self._check_link_max(np_rec)
            ft = mode_to_ft(s_rec.mode)
            if dst is not None:
                self._retarget_entry(new_parent, new_name, s_rec.ino, ft)
            else:
                self._add_entry(new_parent, new_name, s_rec.ino, ft)
            self._remove_entry(old_parent, old_name)
            if s_rec.is_dir and old_parent != new_parent:
                self._set_dotdot(s_rec.ino, new_parent)
            # Parent link counts: the moved directory's ".." and a replaced directory.
            new_delta = (1 if s_rec.is_dir and old_parent != new_parent else 0)
            old_delta = (-1 if s_rec.is_dir and old_parent != new_parent else 0)
            if dst is not None and fs.inode(dst[2]).is_dir:
                new_delta -= 1
            if old_parent == new_parent:
                self._touch_dir(old_parent, now, links=new_delta + old_delta)
            else:
                self._touch_dir(old_parent, now, links=old_delta)
                self._touch_dir(new_parent, now, links=new_delta)
            ed = self.editor(s_rec.ino)
            self._touch(ed, now, mtime=False)
            self.store(s_rec.ino, ed)
            if dst is not None:
                d_rec = fs.inode(dst[2])
                if d_rec.is_dir:
                    self._drop_dir(d_rec.ino)
                else:
                    self._drop_link(d_rec.ino, now)
        self.maybe_commit()

    # -- attributes ----------------------------------------------------------------------------------

    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                ctime_ns: int | None = None) -> None:
        fs = self.fs
        with self.op():
            rec = fs._live(ino)
            if mode is not None and rec.is_symlink:
                raise error(errno.EOPNOTSUPP, "symlinks have no mode of their own")
            if size is not None:
                self.truncate(ino, size)  # EISDIR, EINVAL: only regular files have a size to set
                rec = fs.inode(ino)
            ed = InodeEditor(rec.raw)
            self.store(ino, ed, rec, self._edit_attrs(rec, ed, mode, uid, gid, atime_ns, mtime_ns, ctime_ns))
            if mode is not None:  # (never a symlink's: refused above)
                self._acl_follows_mode(ino, mode)
        self.maybe_commit()

    @staticmethod
    def _edit_attrs(rec: Inode, ed: InodeEditor, mode: int | None, uid: int | None, gid: int | None,
                    atime_ns: int | None, mtime_ns: int | None, ctime_ns: int | None) -> AttrChange:
        """:meth:`setattr`'s changes but the size, to ``ed``, the record of ``rec`` being edited.

        Returns them as made, for :meth:`store`: ``mode`` the whole ``i_mode``, ``ctime_ns`` set.
        """
        if mode is not None:
            mode = stat.S_IFMT(rec.mode) | (mode & 0o7777)
            ed.set("i_mode", mode)
        if uid is not None:
            ed.set_uid(uid)
        if gid is not None:
            ed.set_gid(gid)
        # Equal atime and mtime (utimensat with one time) are encoded once.
        if atime_ns is not None:
            ed.set_times(("a", "m") if mtime_ns == atime_ns else ("a",), atime_ns)
        if mtime_ns is not None and mtime_ns != atime_ns:
            ed.set_times(("m",), mtime_ns)
        if ctime_ns is None:
            ctime_ns = _now_ns()
        ed.set_times(("c",), ctime_ns)
        return AttrChange(mode, uid, gid, atime_ns, mtime_ns, ctime_ns)

    def _acl_follows_mode(self, ino: int, mode: int) -> None:
        """As the kernel's posix_acl_chmod: a stored access ACL follows a new mode, else its
        owner/mask/other entries would keep granting what chmod just took away."""
        acl = self._stored_acl(ino, _ACL_ACCESS)
        if acl is not None:
            self._xattr_change(ino, _ACL_ACCESS, acl_chmod(acl, mode), 0)

    def _stored_acl(self, ino: int, name: bytes) -> bytes | None:
        """The stored ACL ``name`` of ``ino`` in xattr format, or None."""
        if not self.fs.inode(ino).may_have_xattrs:
            return None  # the common case of every create, decided without parsing
        return self.fs.xattrs(ino).get(name)

    def _inherit_acl(self, parent: int, ino: int) -> None:
        """A new inode in a directory with a default ACL gets what posix_acl_create gives it."""
        default = self._stored_acl(parent, _ACL_DEFAULT)
        if default is None:
            return
        rec = self.fs.inode(ino)
        mode, access = acl_inherit(default, rec.mode)
        if mode != rec.mode:
            ed = InodeEditor(rec.raw)
            ed.set("i_mode", mode)
            self.store(ino, ed)
        if rec.is_dir:
            self._xattr_change(ino, _ACL_DEFAULT, default, 0)
        if access is not None:
            self._xattr_change(ino, _ACL_ACCESS, access, 0)

    # -- xattrs (in the inode body, then one xattr block, copied on write when shared) -----------------------------------------------------------------------

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._xattr_change(ino, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        self._xattr_change(ino, name, None, 0)

    def _xattr_change(self, ino: int, name: bytes, value: bytes | None, flags: int) -> None:
        fs = self.fs
        split = split_name(name)
        if split is None or split[0] not in (1, 2, 3, 4, 6):
            raise error(errno.EOPNOTSUPP, f"xattr namespace of {name!r} is not supported for writing")
        index, suffix = split
        if not suffix and index not in ACL_INDEXES:
            raise error(errno.EINVAL, "empty xattr name")
        if len(suffix) > 255:
            raise error(errno.ERANGE, "xattr name too long")
        with self.op():
            rec = fs._live(ino)
            self._writable_inode(rec)
            new_mode: int | None = None
            acl_cleared = False
            if index in ACL_INDEXES and value is not None:
                # Stored as the kernel's ext4_set_acl does (xattr.py xattr_to_acl).
                if index == 3 and not rec.is_dir:
                    raise error(errno.EACCES, "default ACL on a non-directory")
                if rec.is_symlink:
                    raise error(errno.EOPNOTSUPP, "ACLs on symlinks")
                disk, perm, equivalent = xattr_to_acl(value, is_default=index == 3)
                if index == 2 and disk:
                    new_mode = (rec.mode & ~0o777) | perm
                if equivalent:
                    flags &= ~2  # nothing stored: replace-only cannot fail on the missing entry
                    value = None
                    acl_cleared = True
                else:
                    value = disk
            blk_entries: list[tuple[int, bytes, bytes]] = []
            refcount = 0
            if rec.file_acl:
                refcount, parsed_blk = self._xattr_block(ino, rec.file_acl)
                if any(e.value_inum for e in parsed_blk):
                    raise error(errno.EOPNOTSUPP, "xattrs stored in EA inodes are not changed")
                blk_entries = [(e.name_index, e.name, e.value or b"") for e in parsed_blk]
            parsed = parse_ibody(rec.ibody_xattr_area, ino=ino)
            if any(e.value_inum for e in parsed):
                raise error(errno.EOPNOTSUPP, "xattrs stored in EA inodes are not changed")
            entries = [(e.name_index, e.name, e.value or b"") for e in parsed]

            def match(e: tuple[int, bytes, bytes]) -> bool:
                return e[0] == index and e[1] == suffix

            exists = any(match(e) for e in entries + blk_entries)
            if value is None and not exists:
                if new_mode is not None:
                    ed = InodeEditor(rec.raw)
                    ed.set("i_mode", new_mode)
                    ed.set_time("c", _now_ns())
                    self.store(ino, ed)
                    return
                if acl_cleared:
                    return  # an empty or mode-equivalent ACL where none is stored: nothing to do
                raise error(errno.ENODATA, f"no xattr {name!r}")
            if flags & 1 and exists and value is not None:
                raise error(errno.EEXIST, f"xattr {name!r} exists")
            if flags & 2 and not exists:
                raise error(errno.ENODATA, f"no xattr {name!r}")
            entries = [e for e in entries if not match(e)]
            blk_entries = [e for e in blk_entries if not match(e)]
            in_block_before = len(blk_entries) != 0 or rec.file_acl != 0
            ed = InodeEditor(rec.raw)
            if new_mode is not None:
                ed.set("i_mode", new_mode)
            area_size = len(ed.buf) - 128 - ed.extra_isize
            if value is not None:
                if _pack_ibody(entries + [(index, suffix, value)], area_size) is not None:
                    entries.append((index, suffix, value))
                else:
                    blk_entries.append((index, suffix, value))
            area = _pack_ibody(entries, area_size)
            if area is None:
                raise CorruptError("inode", "in-inode xattrs no longer fit", inode=ino)
            if area_size:
                ed.set_ibody(area)
            bs = fs.sb.block_size
            if blk_entries != [] or in_block_before:
                old = rec.file_acl
                if blk_entries:
                    if old and refcount <= 1:
                        target = old
                    else:
                        if old:
                            self._drop_xattr_block(ino, old)
                        goal = self._goal(ino)
                        (target, _), = self.alloc.alloc_blocks(goal, 1)
                    data = pack_xattr_block(blk_entries, bs, 1, target, self._csum_seed())
                    if data is None:
                        raise error(errno.ENOSPC, "xattrs do not fit in the inode and one xattr block")
                    self.txn.put(target, data)
                    if not old:
                        ed.set_blocks(rec.blocks_512 + bs // 512)
                    ed.set_file_acl(target)
                elif old:
                    self._drop_xattr_block(ino, old)
                    ed.set_file_acl(0)
                    ed.set_blocks(max(rec.blocks_512 - bs // 512, 0))
            ed.set_time("c", _now_ns())
            self.store(ino, ed)
        self.maybe_commit()


_EMPTY_EXTENT_ROOT: Final = EXTENT_HEADER.pack({"eh_magic": EXT4_EXT_MAGIC, "eh_entries": 0, "eh_max": 4,
                                                "eh_depth": 0, "eh_generation": 0}) + bytes(48)


def _empty_extent_root() -> bytes:
    """i_block of an extent-mapped inode with no extents (a constant: every new file starts so)."""
    return _EMPTY_EXTENT_ROOT


def _pack_ibody(entries: list[tuple[int, bytes, bytes]], size: int) -> bytes | None:
    """The in-inode xattr area for ``entries`` (empty area if none); None if they do not fit."""
    if not entries:
        return bytes(size)
    if size < 8:
        return None
    heads = bytearray()
    value_end = size - 4  # value offsets count from the first entry (after the magic)
    specs = []
    for index, name, value in entries:
        vlen = (len(value) + 3) & ~3
        specs.append((index, name, value, vlen))
    total_entries = sum(XATTR_ENTRY.size + ((len(n) + 3) & ~3) for _, n, _, _ in specs) + 4
    total_values = sum(v for *_, v in specs)
    if total_entries + total_values > size - 4:
        return None
    voff = value_end
    for index, name, value, vlen in specs:
        if value:
            voff -= vlen
            offs = voff
        else:
            offs = 0
        heads += XATTR_ENTRY.pack({"e_name_len": len(name), "e_name_index": index, "e_value_offs": offs,
                                   "e_value_inum": 0, "e_value_size": len(value), "e_hash": 0})
        heads += name + bytes(((len(name) + 3) & ~3) - len(name))
    body = bytearray(size - 4)
    body[: len(heads)] = heads
    voff = value_end
    for _index, _name, value, vlen in specs:
        if value:
            voff -= vlen
            body[voff : voff + len(value)] = value
    return struct.pack("<I", XATTR_MAGIC) + bytes(body)


def _merge(extents: list[Extent]) -> list[Extent]:
    out: list[Extent] = []
    for e in sorted(extents, key=lambda x: x.logical):
        if out:
            p = out[-1]
            if p.end == e.logical and p.unwritten == e.unwritten and p.physical + p.length == e.physical:
                out[-1] = Extent(p.logical, p.length + e.length, p.physical, p.unwritten)
                continue
        out.append(e)
    return out


class _Op:
    """The context manager of :meth:`Writer.op` (a class: the generator-based kind costs a few
    microseconds per operation, as much as a small operation's own work).

    The outermost operation opens the transaction's undo scope; leaving it
    normally closes the scope, leaving it by an exception rolls the scope
    back and drops every decoded cache (the read side's and the directory
    tables), then lets the exception go on.  Nested operations only count
    their depth: the outermost one decides.
    """

    __slots__ = ("w", "outer")

    def __init__(self, w: Writer) -> None:
        self.w = w
        self.outer = False

    def __enter__(self) -> None:
        w = self.w
        if w._depth:
            w._depth += 1
            return
        self.outer = True
        w._depth = 1
        w.txn.begin()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        w = self.w
        if not self.outer:
            w._depth -= 1
            return False
        try:
            if exc_type is None:
                w.txn.end()
            else:
                w.txn.abort()
                w._dirs.clear()
                w.fs.forget_all()
                w.fs.reload_superblock()
        finally:
            w._depth = 0
        return False


class _RunFeeder:
    """Hands out newly allocated blocks, in order, for the holes of a write."""

    __slots__ = ("runs", "i", "used")

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs
        self.i = 0
        self.used = 0

    def take(self, logical: int, count: int) -> list[Extent]:
        out = []
        while count:
            start, n = self.runs[self.i]
            k = min(n - self.used, count)
            out.append(make_extent(logical, k, start + self.used, False))
            logical += k
            count -= k
            self.used += k
            if self.used == n:
                self.i += 1
                self.used = 0
        return out


class _TreeIO:
    """The extent-tree editor's view of the writer: blocks through the transaction, the allocator."""

    __slots__ = ("w", "ino")

    def __init__(self, w: Writer, ino: int) -> None:
        self.w = w
        self.ino = ino

    def read(self, block: int) -> bytes:
        return self.w.txn.read(block, "extent tree", self.ino)

    def write(self, block: int, data: bytes) -> None:
        self.w.txn.put(block, data)

    def alloc(self, goal: int) -> int:
        (block, _n), = self.w.alloc.alloc_blocks(goal, 1)
        return block

    def free(self, block: int) -> None:
        self.w.alloc.free_blocks(block, 1)
