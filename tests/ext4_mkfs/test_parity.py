"""volfs mkfs against mkfs.ext4 1.47 (the oracle): same UUID, hash seed and time, same bytes.

Both tools format a sparse file of the same size; then every block that
holds data in either image is compared.  The only blocks allowed to differ
are the superblock copies, and in them only ``s_kbytes_written`` (volfs
counts its own writes; libext2fs counts its I/O channel's) and the
superblock checksum that covers it.  ``dumpe2fs -h`` must agree on every
line but "Lifetime writes" and "Checksum", and ``e2fsck -fn`` must find
our image clean.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkfs_support import FAKE_TIME, GiB, MiB, SEED, UUID, differing_blocks, dumpe2fs_fields, mke2fs, superblock_fields
from testsupport import e2fsck_clean
from volfs.ext4._mkfs_layout import backup_groups
from volfs.ext4.mkfs import DEFAULT_FEATURES, MkfsResult, mkfs

D = DEFAULT_FEATURES

# name: (size, block size, mkfs.ext4 options, volfs mkfs options)
CASES: dict[str, tuple[int, int, tuple[str, ...], dict[str, object]]] = {
    "8M-b1024": (8 * MiB, 1024, (), {}),  # one group, fragmented journal
    "64M-b1024": (64 * MiB, 1024, (), {}),
    "64M-b4096": (64 * MiB, 4096, (), {}),
    "300M-b1024-short-last": (300 * MiB, 1024, (), {}),  # last group half size
    "512M-b2048": (512 * MiB, 2048, (), {}),
    "1G": (GiB, 4096, (), {}),
    "1G-short-last": (GiB + 12345 * 4096, 4096, (), {}),
    "1G-trimmed-last": (GiB + 100 * 4096, 4096, (), {}),  # remainder too small: dropped
    "20G-sparse": (20 * GiB, 4096, (), {}),
    "200G-journal-leaf": (200 * GiB, 4096, (), {}),  # 1 GiB journal in 8 extents: a leaf block
    "64M-no-journal": (64 * MiB, 1024, ("-O", "^has_journal"), {"journal": False}),
    "1G-no-journal": (GiB, 4096, ("-O", "^has_journal"), {"journal": False}),
    "1G-label-seed-owner": (GiB, 4096, ("-L", "scratch", "-O", "metadata_csum_seed", "-E+", "root_owner=1000:1001"),
                            {"label": "scratch", "features": D | {"metadata_csum_seed"}, "root_owner": (1000, 1001)}),
    "64M-no-flex_bg": (64 * MiB, 1024, ("-O", "^flex_bg"), {"features": D - {"flex_bg"}}),
    "1G-no-64bit": (GiB, 4096, ("-O", "^64bit"), {"features": D - {"64bit"}}),
    "1G-no-resize_inode": (GiB, 4096, ("-O", "^resize_inode"), {"features": D - {"resize_inode"}}),
    "1G-inode128-ratio-reserve": (GiB, 4096, ("-I", "128", "-i", "65536", "-m", "1"),
                                  {"inode_size": 128, "inode_ratio": 65536, "reserved_ratio": 1.0}),
    "64M-b1024-orphan_file": (64 * MiB, 1024, ("-O", "orphan_file"), {"features": D | {"orphan_file"}}),
    "20G-orphan_file-seed": (20 * GiB, 4096, ("-O", "orphan_file,metadata_csum_seed"),
                             {"features": D | {"orphan_file", "metadata_csum_seed"}}),
    "64M-journal-2048": (64 * MiB, 4096, ("-J", "size=8"), {"journal_blocks": 2048}),
}


def _ours(path: Path, size: int, block_size: int, opts: dict[str, object]) -> MkfsResult:
    return mkfs(path, size, block_size=block_size, uuid=UUID, hash_seed=SEED, timestamp=FAKE_TIME,
                **opts)  # type: ignore[arg-type]


def _superblock_offsets(res: MkfsResult) -> dict[int, int]:
    """{block number: byte offset of the superblock in it} for the primary and every backup."""
    bs = res.block_size
    first = 1 if bs == 1024 else 0
    out = {(1024 // bs): 1024}
    for g in backup_groups(res.group_count, "sparse_super" in res.features):
        blk = first + g * res.blocks_per_group
        out[blk] = blk * bs
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_identical_to_mkfs_ext4(case: str, tmp_path: Path) -> None:
    size, bs, ext_opts, our_opts = CASES[case]
    theirs = tmp_path / "mkfs.ext4.img"
    ours = tmp_path / "volfs.img"
    extended = ext_opts[ext_opts.index("-E+") + 1] if "-E+" in ext_opts else ""
    plain = [o for k, o in enumerate(ext_opts) if o != "-E+" and (k == 0 or ext_opts[k - 1] != "-E+")]
    mke2fs(theirs, size, bs, *plain, extended=extended)
    res = _ours(ours, size, bs, our_opts)
    e2fsck_clean(ours)

    sb_at = _superblock_offsets(res)
    diffs = differing_blocks(theirs, ours, bs)
    unexpected = [b for b in diffs if b not in sb_at]
    assert not unexpected, f"blocks other than superblocks differ from mkfs.ext4: {unexpected[:20]}"
    for blk in diffs:
        off = sb_at[blk]
        a = superblock_fields(theirs, off)
        b = superblock_fields(ours, off)
        changed = {k for k in a if a[k] != b[k]}
        assert changed <= {"s_kbytes_written", "s_checksum"}, (
            f"superblock in block {blk}: " + ", ".join(f"{k} {a[k]!r} != {b[k]!r}" for k in sorted(changed)))
        start = blk * bs
        with open(theirs, "rb") as fa, open(ours, "rb") as fb:
            ra, rb = os.pread(fa.fileno(), bs, start), os.pread(fb.fileno(), bs, start)
        rel = off - start
        assert ra[:rel] == rb[:rel] and ra[rel + 1024 :] == rb[rel + 1024 :], f"block {blk} differs outside its superblock"

    their_fields = dumpe2fs_fields(theirs)
    our_fields = dumpe2fs_fields(ours)
    for key in ("Inode count", "Block count", "Reserved block count", "Blocks per group", "Inodes per group",
                "Inode size", "Reserved GDT blocks", "Flex block group size", "Filesystem features",
                "Overhead clusters", "Free blocks", "Free inodes"):
        if key in their_fields or key in our_fields:
            assert our_fields.get(key) == their_fields.get(key), key
    if "has_journal" in res.features:
        assert our_fields["Total journal size"] == their_fields["Total journal size"]
        assert int(our_fields["Total journal blocks"]) == res.journal_blocks
    ignored = {"Lifetime writes", "Checksum"}
    mismatch = {k: (their_fields.get(k), our_fields.get(k)) for k in their_fields.keys() | our_fields.keys()
                if k not in ignored and their_fields.get(k) != our_fields.get(k)}
    assert not mismatch, mismatch
    assert int(our_fields["Block count"]) == res.blocks_count
    assert int(our_fields["Free blocks"]) == res.free_blocks
    assert int(our_fields["Free inodes"]) == res.free_inodes
