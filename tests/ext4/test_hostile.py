"""Checksums, salvage, the feature gate, struct round trips, and a seeded metadata mutator."""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volfs.errors import CorruptError, VolfsError
from volfs.ext4 import Filesystem, MemoryDevice, ROOT_INO
from volfs.ext4.extents import EXTENT_HEADER
from volfs.ext4.group import GROUP_DESC32, GROUP_DESC64
from volfs.ext4.inode import INODE
from volfs.ext4.superblock import SUPERBLOCK
from volfs.ext4.xattr import XATTR_HEADER

import ext4_images as images
from testsupport import flip_bits


def _walk_all(fs: Filesystem, budget: float = 5.0) -> int:
    """Read everything reachable, in bounded chunks; returns the number of inodes visited."""
    deadline = time.monotonic() + budget
    seen: set[int] = set()
    stack = [int(ROOT_INO)]
    while stack:
        assert time.monotonic() < deadline, "walk exceeded its time budget"
        ino = stack.pop()
        if ino in seen:
            continue
        seen.add(ino)
        a = fs.getattr(ino)
        fs.xattrs(ino)
        if a.mode & 0o170000 == 0o040000:
            for e in fs.readdir(ino):
                if e.name not in (b".", b".."):
                    fs.lookup_ino(ino, e.name)
                    stack.append(e.ino)
        elif a.mode & 0o170000 == 0o100000:
            fs.read(ino, 0, 1 << 20)
            fs.read(ino, max(a.size - 4096, 0), 4096)
        elif a.mode & 0o170000 == 0o120000:
            fs.readlink(ino)
    return len(seen)


# --- struct round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "b1024", "no64bit", "ext2", "inline", "i128"])
def test_structs_round_trip(variant: str, image_factory: Callable[[str], Path]) -> None:
    image = image_factory(variant)
    raw = image.read_bytes()
    with Filesystem.open(image) as fs:
        sb = raw[1024:2048]
        assert SUPERBLOCK.unpack(sb).pack() == sb
        assert SUPERBLOCK.offsets["s_checksum"] == 0x3FC and SUPERBLOCK.offsets["s_orphan_file_inum"] == 0x280
        bs, ds = fs.block_size, fs.sb.desc_size
        gdt = (fs.sb.first_data_block + 1) * bs
        st_ = GROUP_DESC64 if ds >= 64 else GROUP_DESC32
        for g in range(min(fs.sb.group_count, bs // ds)):
            d = raw[gdt + g * ds : gdt + g * ds + st_.size]
            assert st_.unpack(d).pack() == d
        checked = 0
        for ino in range(1, 200):
            try:
                rec = fs.inode(ino)
            except CorruptError:
                continue
            n = min(len(rec.raw), INODE.size)
            assert INODE.unpack(rec.raw[:n].ljust(INODE.size, b"\0")).pack()[:n] == rec.raw[:n]
            if rec.flags & 0x80000:
                assert EXTENT_HEADER.unpack(rec.i_block).pack() == rec.i_block[:12]
            if rec.file_acl:
                blk = raw[rec.file_acl * bs : rec.file_acl * bs + XATTR_HEADER.size]
                assert XATTR_HEADER.unpack(blk).pack() == blk
            checked += 1
        assert checked > 50


# --- checksums and salvage ----------------------------------------------------------------------------

def _locations(image: Path) -> dict[str, int]:
    with Filesystem.open(image) as fs:
        bs = fs.block_size
        root_dir = fs.runlist(fs.inode(2)).map(0)
        x = fs.lookup_ino(2, b"xattrs.txt")
        _g, blk, off = fs.inode_location(x)
        frag = fs.inode(fs.lookup_ino(2, b"many"))
        assert root_dir is not None
        return {
            "superblock": 1024 + 0x3FC,
            "group descriptor": (fs.sb.first_data_block + 1) * bs + 0x1E,
            "inode": blk * bs + off + 0x7C,  # l_i_checksum_lo
            "directory block": root_dir * bs + bs - 1,
            "xattr block": fs.inode(x).file_acl * bs + 0x10,
            "many dir": (fs.runlist(frag).map(1) or 0) * bs + bs - 2,
        }


@pytest.mark.parametrize("what", ["superblock", "group descriptor", "inode", "directory block", "xattr block"])
def test_checksum_mismatch_is_named_and_salvage_reads_past(what: str, image_copy: Callable[[str], Path]) -> None:
    image = image_copy("default")
    flip_bits(image, _locations(image)[what], 0x40)
    with pytest.raises(CorruptError) as info:
        with Filesystem.open(image) as fs:
            _walk_all(fs)
    assert info.value.errno == errno.EUCLEAN
    assert info.value.structure.startswith(what.split()[0]), str(info.value)
    assert "checksum" in str(info.value)
    with Filesystem.open(image, salvage=True) as fs:
        assert _walk_all(fs) > 600


def test_bitmap_checksums(image_copy: Callable[[str], Path]) -> None:
    image = image_copy("default")
    with Filesystem.open(image) as fs:
        fs.verify_bitmaps()
        bb = fs.group_desc(0).block_bitmap * fs.block_size
    flip_bits(image, bb + 3, 0x40)
    with Filesystem.open(image) as fs:
        with pytest.raises(CorruptError, match="block bitmap"):
            fs.verify_bitmaps()


# --- feature gate, encryption, casefold, microsandbox look-alikes --------------------------------------

def test_unknown_incompat_feature_refuses_naming_it(image_copy: Callable[[str], Path]) -> None:
    image = image_copy("default")
    with open(image, "rb") as f:
        f.seek(1024 + 0x60)
        (incompat,) = struct.unpack("<I", f.read(4))
    images.patch_superblock(image, {0x60: struct.pack("<I", incompat | 0x80000 | 0x1)})
    with pytest.raises(VolfsError) as info:
        Filesystem.open(image)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "FEATURE_I19" in str(info.value) and "compression" in str(info.value)


def test_features_match_dumpe2fs(image_factory: Callable[[str], Path]) -> None:
    for variant in ("default", "ext2", "metabg", "inline", "nocsum", "sparse2", "orphanfile"):
        image = image_factory(variant)
        out = images.run(images.tool("dumpe2fs"), "-h", str(image)).stdout.decode()
        line = next(l for l in out.splitlines() if l.startswith("Filesystem features:"))
        with Filesystem.open(image) as fs:
            assert set(fs.features().names) == set(line.split(":", 1)[1].split()), variant


def test_encrypted_and_casefolded_dirs(image_copy: Callable[[str], Path], tmp_path: Path) -> None:
    image = image_copy("default")
    cmds = tmp_path / "cmds"
    cmds.write_text("feature encrypt\nset_inode_field /dir flags 0x80800\n"
                    "set_inode_field /many flags 0x40080000\n")
    images.run(images.tool("debugfs"), "-w", "-f", str(cmds), str(image))
    with Filesystem.open(image) as fs:
        d = fs.lookup(2, b"dir")
        assert d.mode & 0o170000 == 0o040000  # attributes stay readable
        with pytest.raises(VolfsError) as info:
            list(fs.readdir(d.ino))
        assert info.value.errno == errno.ENOKEY and "encrypted" in str(info.value)
        m = fs.lookup(2, b"many")
        with pytest.raises(VolfsError) as info:
            fs.lookup(m.ino, b"entry-00002-zz")
        assert info.value.errno == errno.EOPNOTSUPP and "casefold" in str(info.value)


@pytest.mark.root
def test_microsandbox_lookalike(tmp_path: Path, rich_tree: Path) -> None:
    """4 KiB, 64bit, csum, no flex_bg, 64 MiB journal, seed 0, nonzero s_error_count with a clean state."""
    from testsupport import need_root
    from ext4_walk import diff_trees, engine_tree, kernel_tree

    need_root("loop mounts")
    image = images.microsandbox_lookalike(tmp_path / "msb.img", rich_tree)
    with Filesystem.open(image) as fs:
        assert "flex_bg" not in fs.features() and "metadata_csum" in fs.features()
        assert fs.sb.record.u("s_error_count") == 0x3000 and fs.sb.state == 1
        assert fs.inode(8).size == 64 * 1024 * 1024
        ours = engine_tree(fs)
    with images.loop_mount(image) as mnt:
        theirs = kernel_tree(mnt)
    assert not diff_trees(ours, theirs)


# --- the mutator ----------------------------------------------------------------------------------------

def metadata_offsets(image: Path) -> list[tuple[int, int]]:
    """(byte offset, length) of the metadata blocks of an image, found by the engine."""
    out: list[tuple[int, int]] = [(1024, 1024)]
    with Filesystem.open(image) as fs:
        bs = fs.block_size
        out.append(((fs.sb.first_data_block + 1) * bs, bs))
        d = fs.group_desc(0)
        out += [(d.block_bitmap * bs, bs), (d.inode_bitmap * bs, bs), (d.inode_table * bs, 8 * bs)]
        stack = [2]
        seen = set()
        while stack:
            ino = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            rec = fs.inode(ino)
            if rec.file_acl:
                out.append((rec.file_acl * bs, bs))
            if rec.is_dir:
                for r in fs.runlist(rec).runs:
                    if r.physical is not None:
                        out.append((r.physical * bs, min(r.length, 4) * bs))
                for e in fs.readdir(ino):
                    if e.name not in (b".", b".."):
                        stack.append(e.ino)
        if fs.sb.journal_inum:
            j = fs.runlist(fs.inode(fs.sb.journal_inum)).map(0)
            if j is not None:
                out.append((j * bs, 1024))
    return out


@pytest.fixture(scope="module")
def mutation_bases(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, list[tuple[int, int]]]]:
    tmp = tmp_path_factory.mktemp("mutate")
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(70000))
    (tree / "l").symlink_to("x" * 80)
    (tree / "s").symlink_to("f")
    sub = tree / "d"
    sub.mkdir()
    for i in range(120):
        (sub / f"name-{i}").write_bytes(b"x" * i)
    os.setxattr(tree / "f", "user.a", b"v" * 300)
    images.build_frag_file(tree / "frag", 200, 1024)
    out = []
    for name, opts in (("csum", ()), ("plain", ("-O", "^metadata_csum,^has_journal")), ("ext2", ("-t", "ext2"))):
        img = tmp / f"{name}.img"
        if name == "ext2":
            images.mkfs(img, tree, "8M", "-b", "1024", fstype="ext2")
        else:
            images.mkfs(img, tree, "8M", "-b", "1024", *opts)
        out.append((img.read_bytes(), metadata_offsets(img)))
    return out


def run_mutation(base: bytes, regions: list[tuple[int, int]], edits: list[tuple[int, int, int]],
                 salvage: bool) -> None:
    data = bytearray(base)
    for region, pos, value in edits:
        off, length = regions[region % len(regions)]
        i = off + pos % length
        if i < len(data):
            data[i] = value
    start = time.monotonic()
    try:
        fs = Filesystem.open_device(MemoryDevice(bytes(data)), salvage=salvage)
        _walk_all(fs, budget=10.0)
        fs.orphans()
    except VolfsError:
        pass
    assert time.monotonic() - start < 10.0


EDITS = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1 << 16),
                           st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0xF3, 0x40])), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 2), edits=EDITS, salvage=st.booleans())
def test_mutated_metadata_never_escapes(mutation_bases: list[tuple[bytes, list[tuple[int, int]]]], which: int,
                                        edits: list[tuple[int, int, int]], salvage: bool) -> None:
    base, regions = mutation_bases[which]
    run_mutation(base, regions, edits, salvage)
