"""The jbd2 journal (journal.rst): in-memory recovery for read-only opens.

Theory of operation.  The log is the circular area ``[s_first, j_last)`` of
the journal (``j_last`` is ``s_maxlen`` less the fast-commit area when that
feature is on).  Recovery mirrors the kernel's three passes over it,
starting at ``s_start`` with transaction ``s_sequence``:

* SCAN: follow descriptor, revoke and commit blocks while each header has
  the jbd2 magic and the expected sequence; a transaction counts only once
  its commit block is seen (and, with csum v2/v3, its checksum holds).  The
  first transaction not committed is ``end``.
* REVOKE: collect revoke records of transactions before ``end``; a block
  revoked in transaction N is not replayed from any transaction <= N.
* REPLAY: for each tag of each committed descriptor, the newest logged copy
  of the target block wins, unescaped (``JBD2_FLAG_ESCAPE`` blocks had their
  leading magic zeroed), its tag checksum verified.

The result is an overlay ``{fs block: contents}`` that the block cache puts
over the device: the image is shown as it will be after recovery and is
never written.  Fast-commit data (``JBD2_FEATURE_INCOMPAT_FAST_COMMIT``)
left unreplayed is refused with a clear error.  Everything is big-endian.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from volfs.errors import CorruptError, error
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc32c_raw

__all__ = ["JOURNAL_SUPERBLOCK", "JOURNAL_HEADER", "JOURNAL_COMMIT", "JournalSuperblock", "Replay",
           "parse_journal_superblock", "replay_journal", "JBD2_MAGIC"]

JBD2_MAGIC: Final = 0xC03B3998
_DESCRIPTOR, _COMMIT, _SB_V1, _SB_V2, _REVOKE = 1, 2, 3, 4, 5

JOURNAL_HEADER = Struct("journal_header_t", [
    ("h_magic", "I"), ("h_blocktype", "I"), ("h_sequence", "I"),
], big_endian=True, size=12)
JOURNAL_SUPERBLOCK = Struct("journal_superblock_t", [
    ("h_magic", "I"), ("h_blocktype", "I"), ("h_sequence", "I"),
    ("s_blocksize", "I"), ("s_maxlen", "I"), ("s_first", "I"), ("s_sequence", "I"), ("s_start", "I"),
    ("s_errno", "i"), ("s_feature_compat", "I"), ("s_feature_incompat", "I"), ("s_feature_ro_compat", "I"),
    ("s_uuid", "16s"), ("s_nr_users", "I"), ("s_dynsuper", "I"), ("s_max_transaction", "I"),
    ("s_max_trans_data", "I"), ("s_checksum_type", "B"), ("s_padding2", "3s"), ("s_num_fc_blks", "I"),
    ("s_head", "I"), ("s_padding", "160s"), ("s_checksum", "I"), ("s_users", "768s"),
], big_endian=True, size=1024)
JOURNAL_COMMIT = Struct("commit_header", [
    ("h_magic", "I"), ("h_blocktype", "I"), ("h_sequence", "I"), ("h_chksum_type", "B"),
    ("h_chksum_size", "B"), ("h_padding", "2s"), ("h_chksum", "32s"), ("h_commit_sec", "Q"),
    ("h_commit_nsec", "I"),
], big_endian=True, size=60)
JOURNAL_REVOKE_HEADER = Struct("jbd2_journal_revoke_header_t", [
    ("h_magic", "I"), ("h_blocktype", "I"), ("h_sequence", "I"), ("r_count", "I"),
], big_endian=True, size=16)
JOURNAL_BLOCK_TAG3 = Struct("journal_block_tag3_t", [
    ("t_blocknr", "I"), ("t_flags", "I"), ("t_blocknr_high", "I"), ("t_checksum", "I"),
], big_endian=True, size=16)
JOURNAL_BLOCK_TAG = Struct("journal_block_tag_t", [
    ("t_blocknr", "I"), ("t_checksum", "H"), ("t_flags", "H"), ("t_blocknr_high", "I"),
], big_endian=True, size=12)

COMPAT_CHECKSUM: Final = 0x1
INCOMPAT_REVOKE: Final = 0x1
INCOMPAT_64BIT: Final = 0x2
INCOMPAT_ASYNC_COMMIT: Final = 0x4
INCOMPAT_CSUM_V2: Final = 0x8
INCOMPAT_CSUM_V3: Final = 0x10
INCOMPAT_FAST_COMMIT: Final = 0x20
KNOWN_INCOMPAT: Final = 0x3F
FLAG_ESCAPE: Final = 1
FLAG_SAME_UUID: Final = 2
FLAG_DELETED: Final = 4
FLAG_LAST_TAG: Final = 8
_FC_TAG_HEAD: Final = 0x0009
_DEFAULT_FC_BLOCKS: Final = 256


@dataclass(frozen=True, slots=True)
class JournalSuperblock:
    block_size: int
    maxlen: int
    first: int
    sequence: int
    start: int
    errno: int
    compat: int
    incompat: int
    uuid: bytes
    num_fc_blocks: int
    version: int

    @property
    def csum(self) -> bool:
        return bool(self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3))

    @property
    def log_end(self) -> int:
        if self.incompat & INCOMPAT_FAST_COMMIT:
            return self.maxlen - self.num_fc_blocks
        return self.maxlen

    @property
    def tag_bytes(self) -> int:
        if self.incompat & INCOMPAT_CSUM_V3:
            return 16
        size = 12 + (2 if self.incompat & INCOMPAT_CSUM_V2 else 0)
        return size if self.incompat & INCOMPAT_64BIT else size - 4


def parse_journal_superblock(data: bytes, fs_block_size: int, journal_blocks: int) -> JournalSuperblock:
    if len(data) < JOURNAL_SUPERBLOCK.size:
        raise CorruptError("journal superblock", "journal too small")
    r = JOURNAL_SUPERBLOCK.unpack(data)
    if r.u("h_magic") != JBD2_MAGIC or r.u("h_blocktype") not in (_SB_V1, _SB_V2):
        raise CorruptError("journal superblock", "bad magic or block type")
    v2 = r.u("h_blocktype") == _SB_V2
    incompat = r.u("s_feature_incompat") if v2 else 0
    if incompat & ~KNOWN_INCOMPAT:
        raise error(errno.EOPNOTSUPP, f"journal has unknown incompat features 0x{incompat & ~KNOWN_INCOMPAT:x}")
    if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3):
        if r.u("s_checksum_type") != 4:
            raise CorruptError("journal superblock", f"unknown checksum type {r.u('s_checksum_type')}")
        off = JOURNAL_SUPERBLOCK.offsets["s_checksum"]
        want = crc32c_raw(0xFFFFFFFF, data[:off] + b"\0\0\0\0" + data[off + 4 : 1024])
        if want != r.u("s_checksum"):
            raise CorruptError("journal superblock", f"checksum 0x{r.u('s_checksum'):08x} != computed 0x{want:08x}")
    bs = r.u("s_blocksize")
    if bs != fs_block_size:
        raise CorruptError("journal superblock", f"journal block size {bs} != filesystem block size {fs_block_size}")
    maxlen, first = r.u("s_maxlen"), r.u("s_first")
    if maxlen > journal_blocks or first == 0 or first >= maxlen:
        raise CorruptError("journal superblock", f"s_first {first} / s_maxlen {maxlen} do not fit the journal "
                           f"({journal_blocks} blocks)")
    nfc = 0
    if incompat & INCOMPAT_FAST_COMMIT:
        nfc = r.u("s_num_fc_blks") or _DEFAULT_FC_BLOCKS
        if maxlen - nfc <= first:
            raise CorruptError("journal superblock", "fast-commit area leaves no log")
    start = r.u("s_start")
    jsb = JournalSuperblock(bs, maxlen, first, r.u("s_sequence"), start, r.u("s_errno"),
                            r.u("s_feature_compat") if v2 else 0, incompat, r.b("s_uuid"), nfc,
                            2 if v2 else 1)
    if start and not (first <= start < jsb.log_end):
        raise CorruptError("journal superblock", f"s_start {start} lies outside the log")
    return jsb


@dataclass(slots=True)
class Replay:
    """The outcome of recovery: the overlay and what was found."""

    overlay: dict[int, bytes] = field(default_factory=dict)
    transactions: int = 0
    first_sequence: int = 0
    end_sequence: int = 0
    revoked: int = 0
    wrapped: bool = False
    escaped: int = 0
    skipped: list[str] = field(default_factory=list)


ReadJournalBlock = Callable[[int], bytes]


def _be32(data: bytes, off: int) -> int:
    v: int = struct.unpack_from(">I", data, off)[0]
    return v


def replay_journal(jsb: JournalSuperblock, read: ReadJournalBlock, fs_blocks: int, *,
                   salvage: bool = False) -> Replay:
    """Recover the log into an overlay; ``read(n)`` returns journal block ``n``."""
    result = Replay(first_sequence=jsb.sequence, end_sequence=jsb.sequence)
    if jsb.start == 0:
        return result
    bs = jsb.block_size
    first, last = jsb.first, jsb.log_end
    seed = crc32c_raw(0xFFFFFFFF, jsb.uuid) if jsb.csum else 0
    tail = 4 if jsb.csum else 0
    tag_bytes = jsb.tag_bytes
    log_len = last - first

    def wrap(n: int) -> int:
        if n >= last:
            result.wrapped = True
            return n - log_len
        return n

    def tail_ok(data: bytes) -> bool:
        if not jsb.csum:
            return True
        stored = _be32(data, bs - 4)
        return crc32c_raw(seed, data[: bs - 4] + b"\0\0\0\0") == stored

    def tags(data: bytes) -> list[tuple[int, int, int]]:
        out = []
        pos = 12
        limit = bs - tail
        while pos + tag_bytes <= limit:
            blocknr = _be32(data, pos)
            flags = struct.unpack_from(">H", data, pos + 6)[0]
            if jsb.incompat & INCOMPAT_CSUM_V3:
                csum = _be32(data, pos + 12)
                hi = _be32(data, pos + 8)
            else:
                csum = struct.unpack_from(">H", data, pos + 4)[0]
                hi = _be32(data, pos + 8) if jsb.incompat & INCOMPAT_64BIT else 0
            if jsb.incompat & INCOMPAT_64BIT:
                blocknr |= hi << 32
            out.append((blocknr, flags, csum))
            pos += tag_bytes
            if not flags & FLAG_SAME_UUID:
                pos += 16
            if flags & FLAG_LAST_TAG:
                break
        return out

    # --- PASS_SCAN and PASS_REVOKE together: revokes of uncommitted transactions are dropped below.
    seq = jsb.sequence
    pos = jsb.start
    descriptors: list[tuple[int, int, list[tuple[int, int, int]]]] = []  # (seq, first data pos, tags)
    revokes: list[tuple[int, bytes]] = []
    steps = 0
    while True:
        steps += 1
        if steps > 4 * log_len + 4:
            raise CorruptError("journal", "log does not terminate")
        data = read(pos)
        magic, btype, bseq = JOURNAL_HEADER.unpack_ints(data)
        if magic != JBD2_MAGIC or bseq != seq:
            break
        if btype == _DESCRIPTOR:
            if not tail_ok(data):
                result.skipped.append(f"descriptor block at journal block {pos} has a bad checksum: end of log")
                break
            t = tags(data)
            descriptors.append((seq, wrap(pos + 1), t))
            pos = wrap(pos + 1 + len(t))
            continue
        if btype == _COMMIT:
            if jsb.csum:
                body = bytearray(data)
                body[16:20] = b"\0\0\0\0"
                if crc32c_raw(seed, bytes(body)) != _be32(data, 16):
                    result.skipped.append(f"commit block of transaction {seq} has a bad checksum: end of log")
                    break
            seq = (seq + 1) & 0xFFFFFFFF
            pos = wrap(pos + 1)
            continue
        if btype == _REVOKE:
            if not tail_ok(data):
                if not salvage:
                    raise CorruptError("journal revoke block", "checksum mismatch", block=pos)
                result.skipped.append(f"revoke block at journal block {pos} has a bad checksum")
            else:
                revokes.append((seq, data))
            pos = wrap(pos + 1)
            continue
        break
    end = seq
    result.end_sequence = end

    def committed(s: int) -> bool:
        return ((s - jsb.sequence) & 0xFFFFFFFF) < ((end - jsb.sequence) & 0xFFFFFFFF)

    revoked: dict[int, int] = {}
    rec = 8 if jsb.incompat & INCOMPAT_64BIT else 4
    for s, data in revokes:
        if not committed(s):
            continue
        count = _be32(data, 12)
        if count < 16 or count > bs - tail:
            raise CorruptError("journal revoke block", f"r_count {count} is invalid")
        for off in range(16, count - rec + 1, rec):
            blk = struct.unpack_from(">Q" if rec == 8 else ">I", data, off)[0]
            rel = (s - jsb.sequence) & 0xFFFFFFFF
            if rel >= revoked.get(blk, -1):
                revoked[blk] = rel
    result.revoked = len(revoked)

    # --- PASS_REPLAY
    txns: set[int] = set()
    for s, dpos, t in descriptors:
        if not committed(s):
            continue
        txns.add(s)
        rel = (s - jsb.sequence) & 0xFFFFFFFF
        p = dpos
        for blocknr, flags, csum in t:
            jdata = read(p)
            p = wrap(p + 1)
            if revoked.get(blocknr, -1) >= rel:
                continue
            if blocknr >= fs_blocks:
                raise CorruptError("journal", f"tag targets block {blocknr} outside the filesystem")
            if jsb.csum:
                c = crc32c_raw(crc32c_raw(seed, struct.pack(">I", s)), jdata)
                ok = c == csum if jsb.incompat & INCOMPAT_CSUM_V3 else (c & 0xFFFF) == csum
                if not ok:
                    if not salvage:
                        raise CorruptError("journal", f"data block for block {blocknr} in transaction {s} fails "
                                           "its tag checksum")
                    result.skipped.append(f"block {blocknr} of transaction {s}: bad tag checksum, not replayed")
                    continue
            if flags & FLAG_ESCAPE:
                result.escaped += 1
                jdata = struct.pack(">I", JBD2_MAGIC) + jdata[4:]
            result.overlay[blocknr] = jdata
    result.transactions = len(txns) if txns else ((end - jsb.sequence) & 0xFFFFFFFF)
    if jsb.incompat & INCOMPAT_FAST_COMMIT:
        for fc_block in (jsb.log_end, jsb.log_end + 1):
            if fc_block >= jsb.maxlen:
                continue
            fc = read(fc_block)
            tag, length = struct.unpack_from("<HH", fc, 0)
            tid = struct.unpack_from("<I", fc, 8)[0]
            if tag == _FC_TAG_HEAD and length >= 8 and tid == end:
                raise error(errno.EOPNOTSUPP, f"the journal holds unreplayed fast-commit data (transaction "
                            f"{tid}); replay it with the kernel or e2fsck first")
    return result
