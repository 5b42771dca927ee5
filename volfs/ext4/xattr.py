"""Extended attributes (attributes.rst): in-inode, xattr block, EA inodes, ACLs.

In-inode xattrs follow ``i_extra_isize``: a 4-byte magic 0xEA020000, then
entries whose ``e_value_offs`` count from the first entry.  An xattr block
has a 32-byte header (magic, refcount, blocks, hash, checksum) and entries
whose value offsets count from the block start; its checksum is
``crc(fs seed, le64 block number, block with h_checksum zeroed)``.  A value
with ``e_value_inum`` lives in an EA inode (ea_inode feature).  Entries end
at four zero bytes.

POSIX ACLs are stored in a compact ext4 format (version 1, short entries for
the owner/group/mask/other tags); they are shown as the kernel's
``system.posix_acl_*`` xattr format (version 2, 8-byte entries).  Writes
convert back (``xattr_to_acl``): an access ACL equivalent to the mode bits
is not stored at all, only the mode changes (the kernel's
``posix_acl_update_mode``); otherwise the mode's group bits follow the mask.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from volfs.errors import CorruptError
from volfs.ext4._struct import Struct
from volfs.ext4.checksum import crc32c_raw

__all__ = ["XATTR_HEADER", "XATTR_IBODY_HEADER", "XATTR_ENTRY", "XattrEntry", "parse_xattr_entries",
           "parse_ibody", "parse_xattr_block", "full_name", "split_name", "acl_to_xattr", "xattr_to_acl",
           "XATTR_MAGIC",
           "xattr_entry_hash", "pack_xattr_block", "xattr_block_checksum", "acl_chmod", "acl_inherit"]

XATTR_HEADER = Struct("ext4_xattr_header", [
    ("h_magic", "I"), ("h_refcount", "I"), ("h_blocks", "I"), ("h_hash", "I"), ("h_checksum", "I"),
    ("h_reserved", "12s"),
], size=32)
XATTR_IBODY_HEADER = Struct("ext4_xattr_ibody_header", [("h_magic", "I")], size=4)
XATTR_ENTRY = Struct("ext4_xattr_entry", [
    ("e_name_len", "B"), ("e_name_index", "B"), ("e_value_offs", "H"), ("e_value_inum", "I"),
    ("e_value_size", "I"), ("e_hash", "I"),
], size=16)
XATTR_MAGIC: Final = 0xEA020000

_PREFIX: Final = {1: b"user.", 2: b"system.posix_acl_access", 3: b"system.posix_acl_default",
                  4: b"trusted.", 6: b"security.", 7: b"system.", 8: b"system.richacl"}
_BY_PREFIX: Final = sorted(((v, k) for k, v in _PREFIX.items()), key=lambda kv: -len(kv[0]))
ACL_INDEXES: Final = (2, 3)


@dataclass(frozen=True, slots=True)
class XattrEntry:
    name_index: int
    name: bytes  # without the prefix
    value: bytes | None  # None when the value lives in an EA inode
    value_inum: int
    value_size: int

    @property
    def full_name(self) -> bytes:
        return full_name(self.name_index, self.name)


def full_name(index: int, name: bytes) -> bytes:
    prefix = _PREFIX.get(index)
    if prefix is None:
        return b"unknown" + str(index).encode() + b"." + name
    return prefix + name


def split_name(name: bytes) -> tuple[int, bytes] | None:
    """(e_name_index, suffix) for a full xattr name; None if no prefix matches."""
    for prefix, index in _BY_PREFIX:
        if index in ACL_INDEXES:
            if name == prefix:
                return index, b""
            continue
        if name.startswith(prefix):
            return index, name[len(prefix):]
    return None


def parse_xattr_entries(data: bytes, start: int, value_base: int, value_end: int, *, ino: int,
                        block: int | None, where: str) -> list[XattrEntry]:
    """Entries from ``data[start:]`` until the 4-zero-byte terminator."""
    out: list[XattrEntry] = []
    pos = start
    limit = len(data)

    def bad(msg: str) -> CorruptError:
        return CorruptError(where, msg, inode=ino, block=block)

    while True:
        if pos + 4 > limit:
            raise bad("entry list is not terminated")
        if data[pos : pos + 4] == b"\0\0\0\0":
            return out
        if pos + XATTR_ENTRY.size > limit:
            raise bad(f"entry at offset {pos} is truncated")
        name_len, index, voffs, vinum, vsize, _hash = XATTR_ENTRY.unpack_ints(data, pos)
        name_end = pos + XATTR_ENTRY.size + name_len
        if name_end > limit:
            raise bad(f"entry name at offset {pos} runs past the end")
        name = bytes(data[pos + XATTR_ENTRY.size : name_end])
        value: bytes | None = None
        if vinum == 0:
            vstart = value_base + voffs
            if vsize and (vstart < name_end or vstart + vsize > value_end):
                raise bad(f"value of {name!r} (offset {voffs}, size {vsize}) lies outside the area")
            value = bytes(data[vstart : vstart + vsize])
        elif vsize > (1 << 26):
            raise bad(f"EA inode value size {vsize} is absurd")
        out.append(XattrEntry(index, name, value, vinum, vsize))
        pos = (name_end + 3) & ~3


def parse_ibody(area: bytes, *, ino: int) -> list[XattrEntry]:
    """In-inode xattrs from the area after ``i_extra_isize`` (empty without the magic)."""
    if len(area) < 4 or int.from_bytes(area[:4], "little") != XATTR_MAGIC:
        return []
    return parse_xattr_entries(area, 4, 4, len(area), ino=ino, block=None, where="in-inode xattrs")


def xattr_block_checksum(fs_seed: int, block: int, data: bytes) -> int:
    off = XATTR_HEADER.offsets["h_checksum"]
    body = data[:off] + b"\0\0\0\0" + data[off + 4 :]
    return crc32c_raw(crc32c_raw(fs_seed, struct.pack("<Q", block)), body)


def parse_xattr_block(data: bytes, *, ino: int, block: int, csum_seed: int | None,
                      salvage: bool = False) -> list[XattrEntry]:
    hdr = XATTR_HEADER.unpack(data)
    if hdr.u("h_magic") != XATTR_MAGIC:
        raise CorruptError("xattr block", f"bad magic 0x{hdr.u('h_magic'):08x}", inode=ino, block=block)
    if hdr.u("h_blocks") != 1:
        raise CorruptError("xattr block", f"h_blocks {hdr.u('h_blocks')} != 1", inode=ino, block=block)
    if csum_seed is not None and not salvage:
        want = xattr_block_checksum(csum_seed, block, data)
        if want != hdr.u("h_checksum"):
            raise CorruptError("xattr block", f"checksum 0x{hdr.u('h_checksum'):08x} != computed 0x{want:08x}",
                               inode=ino, block=block)
    return parse_xattr_entries(data, XATTR_HEADER.size, 0, len(data), ino=ino, block=block, where="xattr block")


# POSIX ACLs ------------------------------------------------------------------

_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20


def acl_to_xattr(value: bytes, *, ino: int) -> bytes:
    """ext4's on-disk ACL (version 1) as the ``system.posix_acl_*`` format (version 2)."""
    if len(value) < 4 or int.from_bytes(value[:4], "little") != 1:
        raise CorruptError("ACL", "bad ACL version", inode=ino)
    out = [struct.pack("<I", 2)]
    pos = 4
    while pos < len(value):
        if pos + 4 > len(value):
            raise CorruptError("ACL", "truncated ACL entry", inode=ino)
        tag, perm = struct.unpack_from("<HH", value, pos)
        if tag in (_ACL_USER, _ACL_GROUP):
            if pos + 8 > len(value):
                raise CorruptError("ACL", "truncated ACL entry", inode=ino)
            (ident,) = struct.unpack_from("<I", value, pos + 4)
            pos += 8
        elif tag in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER):
            ident = 0xFFFFFFFF
            pos += 4
        else:
            raise CorruptError("ACL", f"unknown ACL tag 0x{tag:x}", inode=ino)
        out.append(struct.pack("<HHI", tag, perm, ident))
    return b"".join(out)


def xattr_to_acl(value: bytes, *, is_default: bool) -> tuple[bytes, int, bool]:
    """A ``system.posix_acl_*`` value (version 2) as ext4 stores it (version 1, ``ext4_acl_entry``).

    Returns (on-disk value, the mode's permission bits it implies, whether it
    is equivalent to those bits alone).  Checks as the kernel's
    ``posix_acl_from_xattr`` and ``posix_acl_valid``: version 2 (else
    EOPNOTSUPP); whole 8-byte entries, known tags, sorted by tag and id,
    exactly one owner, owning group and other entry, a mask when named
    users or groups appear (EINVAL).
    """
    import errno

    from volfs.errors import error

    if len(value) < 4 or int.from_bytes(value[:4], "little") != 2:
        raise error(errno.EOPNOTSUPP, "ACL xattr version is not 2")
    if (len(value) - 4) % 8:
        raise error(errno.EINVAL, "ACL xattr size is not a whole number of entries")
    out = [struct.pack("<I", 1)]  # ext4_acl_header.a_version = EXT4_ACL_VERSION
    seen: dict[int, int] = {}
    named = 0
    prev: tuple[int, int] = (0, -1)
    perms: dict[int, int] = {}
    for pos in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, pos)
        if perm & ~7:
            raise error(errno.EINVAL, f"ACL permission bits 0x{perm:x} invalid")
        if tag in (_ACL_USER, _ACL_GROUP):
            key = (tag, ident)
            named += 1
            out.append(struct.pack("<HHI", tag, perm, ident))  # e_tag, e_perm, e_id
        elif tag in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER):
            key = (tag, -1)
            perms[tag] = perm
            out.append(struct.pack("<HH", tag, perm))  # ext4_acl_entry_short
        else:
            raise error(errno.EINVAL, f"unknown ACL tag 0x{tag:x}")
        if key <= prev:
            raise error(errno.EINVAL, "ACL entries out of order or repeated")
        prev = key
        seen[tag] = seen.get(tag, 0) + 1
    if len(value) == 4:
        # An empty ACL: the kernel treats it as removal.
        return b"", 0, True
    if not all(seen.get(t) == 1 for t in (_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_OTHER)):
        raise error(errno.EINVAL, "ACL needs exactly one owner, owning group and other entry")
    if named and _ACL_MASK not in seen:
        raise error(errno.EINVAL, "ACL with named entries needs a mask")
    group = perms.get(_ACL_MASK, perms[_ACL_GROUP_OBJ])
    mode = (perms[_ACL_USER_OBJ] << 6) | (group << 3) | perms[_ACL_OTHER]
    equivalent = not named and _ACL_MASK not in seen and not is_default
    return b"".join(out), mode, equivalent


def _acl_entries(value: bytes) -> list[list[int]]:
    """A valid ``system.posix_acl_*`` value (version 2) as [tag, perm, id] lists."""
    return [list(struct.unpack_from("<HHI", value, pos)) for pos in range(4, len(value), 8)]


def _acl_value(entries: list[list[int]]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_chmod(value: bytes, mode: int) -> bytes:
    """An access ACL after chmod to ``mode`` (the kernel's ``__posix_acl_chmod``).

    The owner and other entries take the mode's owner and other bits; the
    group bits go to the mask when there is one (the owning group entry then
    keeps its permissions), else to the owning group entry.
    """
    entries = _acl_entries(value)
    has_mask = any(e[0] == _ACL_MASK for e in entries)
    for e in entries:
        if e[0] == _ACL_USER_OBJ:
            e[1] = (mode >> 6) & 7
        elif e[0] == _ACL_OTHER:
            e[1] = mode & 7
        elif e[0] == (_ACL_MASK if has_mask else _ACL_GROUP_OBJ):
            e[1] = (mode >> 3) & 7
    return _acl_value(entries)


def acl_inherit(default: bytes, mode: int) -> tuple[int, bytes | None]:
    """What a new inode gets from its directory's default ACL (``posix_acl_create``).

    Returns the new permission bits (``mode`` masked by the ACL, and the ACL by
    ``mode``, as ``posix_acl_create_masq``) and the access ACL to store, or
    None when it says no more than those bits (no named entries, no mask).
    The caller also copies ``default`` as the default ACL of a new directory.
    """
    entries = _acl_entries(default)
    perm = mode & 0o777
    not_equiv = False
    group: list[int] | None = None
    mask: list[int] | None = None
    for e in entries:
        if e[0] == _ACL_USER_OBJ:
            e[1] &= (perm >> 6) & 7
            perm &= (e[1] << 6) | 0o077
        elif e[0] in (_ACL_USER, _ACL_GROUP):
            not_equiv = True
        elif e[0] == _ACL_GROUP_OBJ:
            group = e
        elif e[0] == _ACL_OTHER:
            e[1] &= perm & 7
            perm &= e[1] | 0o770
        elif e[0] == _ACL_MASK:
            mask = e
            not_equiv = True
    target = mask if mask is not None else group
    if target is not None:
        target[1] &= (perm >> 3) & 7
        perm &= (target[1] << 3) | 0o707
    return (mode & ~0o777) | perm, _acl_value(entries) if not_equiv else None


# --- the write side -------------------------------------------------------------


def xattr_entry_hash(name: bytes, value: bytes) -> int:
    """e_hash of a block entry (e2fsprogs ext2fs_ext_attr_hash_entry, unsigned name bytes)."""
    h = 0
    for c in name:
        h = ((h << 5) ^ (h >> 27) ^ c) & 0xFFFFFFFF
    if value:
        padded = value + bytes(-len(value) % 4)
        for (word,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) ^ (h >> 16) ^ word) & 0xFFFFFFFF
    return h


def pack_xattr_block(entries: list[tuple[int, bytes, bytes]], block_size: int, refcount: int, block: int,
                     fs_seed: int | None) -> bytes | None:
    """An xattr block holding ``entries`` (sorted as the kernel keeps them); None if they do not fit."""
    specs = sorted(entries, key=lambda e: (e[0], len(e[1]), e[1]))
    heads = sum(XATTR_ENTRY.size + ((len(n) + 3) & ~3) for _, n, _ in specs) + 4
    values = sum((len(v) + 3) & ~3 for _, _, v in specs)
    if XATTR_HEADER.size + heads + values > block_size:
        return None
    buf = bytearray(block_size)
    pos = XATTR_HEADER.size
    vend = block_size
    block_hash = 0
    for index, name, value in specs:
        offs = 0
        if value:
            vend -= (len(value) + 3) & ~3
            offs = vend
            buf[vend : vend + len(value)] = value
        h = xattr_entry_hash(name, value)
        buf[pos : pos + XATTR_ENTRY.size] = XATTR_ENTRY.pack({
            "e_name_len": len(name), "e_name_index": index, "e_value_offs": offs, "e_value_inum": 0,
            "e_value_size": len(value), "e_hash": h})
        buf[pos + XATTR_ENTRY.size : pos + XATTR_ENTRY.size + len(name)] = name
        pos += XATTR_ENTRY.size + ((len(name) + 3) & ~3)
        block_hash = ((block_hash << 16) ^ (block_hash >> 16) ^ h) & 0xFFFFFFFF if h else 0
    buf[: XATTR_HEADER.size] = XATTR_HEADER.pack({"h_magic": XATTR_MAGIC, "h_refcount": refcount, "h_blocks": 1,
                                                  "h_hash": block_hash, "h_checksum": 0,
                                                  "h_reserved": bytes(12)})
    if fs_seed is not None:
        struct.pack_into("<I", buf, XATTR_HEADER.offsets["h_checksum"],
                         xattr_block_checksum(fs_seed, block, bytes(buf)))
    return bytes(buf)
