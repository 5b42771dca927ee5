"""Incremental extent-tree edits (extent_tree.py), checked against e2fsck, debugfs and the kernel.

Deep trees are built the way fragmentation happens: two files appending in turn, so no extent of
one is physically next to the previous one (one extent per written block).  Every image ends with
``e2fsck -fn`` printing nothing but its pass headers and summary (no "could be narrower/shorter"
either), and the kernel reads the bytes, sizes and st_blocks the model expects.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext4_write.support import debugfs, images, kernel_tree
from testsupport import need_tool
from volfs.backend import Ino, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4.cache import BlockCache

ROOT = Ino(2)
RW = OpenFlags.READ | OpenFlags.WRITE
VARIANTS = ["default", "b1024", "nocsum"]
_EX_ROW = re.compile(r"^\s*(\d+)/\s*(\d+)\s+(\d+)/\s*(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)")
# Pass headers, the summary, the version, and e2fsck's note that the superblock's write or mount time
# is up to a day ahead of its own clock: that says the host clock stepped back after the image was
# closed (seen on this VM), not anything about the image.
_E2FSCK_QUIET = re.compile(r"^(Pass \d[A-Z]?: .*|\S+: \d+/\d+ files .*|e2fsck \d.*|"
                           r"Superblock last (write|mount) time is in the future\.|"
                           r"\t\(by less than a day, probably due to the hardware clock being incorrectly set\)|)$")


def e2fsck_silent(image: Path) -> str:
    """``e2fsck -fn`` exits 0 and prints no problem (nor optimisation) line; returns its output."""
    proc = subprocess.run([need_tool("e2fsck"), "-fn", str(image)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    noise = [line for line in out.splitlines() if not _E2FSCK_QUIET.match(line)]
    assert proc.returncode == 0 and not noise, f"e2fsck -fn exited {proc.returncode}:\n{out}"
    return out


def ex_rows(image: Path, path: str) -> list[tuple[int, int, int]]:
    """(level, max level, physical start) of every row of debugfs ``ex``."""
    return [(int(m.group(1)), int(m.group(2)), int(m.group(7)))
            for m in map(_EX_ROW.match, debugfs(image, f"ex {path}").splitlines()) if m]


def leaf_rows(image: Path, path: str) -> list[tuple[int, int, bool]]:
    """(first logical, last logical, unwritten) of every extent debugfs ``ex`` shows."""
    out = []
    for line in debugfs(image, f"ex {path}").splitlines():
        m = _EX_ROW.match(line)
        if m and m.group(1) == m.group(2):
            out.append((int(m.group(5)), int(m.group(6)), "Uninit" in line))
    return out


def depth(image: Path, path: str) -> int:
    return max((d for _, d, _ in ex_rows(image, path)), default=0)


def tree_blocks(image: Path, path: str) -> list[int]:
    """The non-root tree blocks of ``path``: what every index row points at."""
    return [phys for level, top, phys in ex_rows(image, path) if level < top]


def free_blocks(image: Path) -> int:
    out = images.run(images.tool("dumpe2fs"), "-h", str(image)).stdout.decode()
    m = re.search(r"^Free blocks:\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(1))


def build_fragmented(b: Ext4Backend, nblocks: int, name: bytes = b"frag") -> tuple[Ino, bytearray]:
    """A file with one extent per written block (every other block), and its expected bytes."""
    bs = b.filesystem.block_size
    fh, attr = b.create(ROOT, name, 0o644, RW, 0, 0)
    fh2, _ = b.create(ROOT, name + b".filler", 0o644, RW, 0, 0)
    want = bytearray()
    for i in range(nblocks):
        chunk = (b"%07d\n" % i) * (bs // 8)
        want += (bytes(bs) if i else b"") + chunk  # block 2i holds chunk i, odd blocks are holes
        b.write(fh, 2 * i * bs, chunk)
        b.write(fh2, i * bs, b"f" * bs)  # the next block of the filler sits between two of ours
    b.release(fh2)
    b.release(fh)
    return attr.ino, want


def kernel_check(image: Path, path: str, want: bytes, blocks: int | None = None) -> None:
    got = kernel_tree(image)["/" + path]
    assert got["size"] == len(want)
    assert got["data"] == bytes(want), "the kernel reads other bytes"
    if blocks is not None:
        assert got["blocks"] == blocks


@pytest.mark.parametrize("variant", VARIANTS)
def test_deep_tree_builds_fast_reads_back_and_truncates_away(variant: str, make_image: Callable[..., Path]) -> None:
    image = make_image(variant)
    empty_free = free_blocks(image)
    b = Ext4Backend(image, readonly=False)
    bs = b.filesystem.block_size
    ino, want = build_fragmented(b, 3000)
    blocks = b.getattr(ino).blocks
    b.close()
    e2fsck_silent(image)
    assert depth(image, "/frag") >= 2
    rows = ex_rows(image, "/frag")
    leaves = [r for r in rows if r[0] == r[1]]
    assert len(leaves) == 3000  # no two extents merged: they are physically apart
    nodes = tree_blocks(image, "/frag")
    # i_blocks: every data block and every tree block, in 512-byte units.
    assert blocks == (3000 + len(nodes)) * (bs // 512)
    kernel_check(image, "frag", want, blocks)
    # Truncate to an intermediate size: the tree loses leaves from the right and stays valid.
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    cut = 2 * 700 * bs + 123
    b.setattr(ino, SetAttr(size=cut))
    blocks = b.getattr(ino).blocks
    b.close()
    e2fsck_silent(image)
    nodes_after = tree_blocks(image, "/frag")
    assert len(nodes_after) < len(nodes)
    assert blocks == (701 + len(nodes_after)) * (bs // 512)
    want_cut = bytes(want[:cut])
    kernel_check(image, "frag", want_cut, blocks)
    # Small enough for i_block: the tree returns into the inode.
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    b.setattr(ino, SetAttr(size=5 * bs))
    b.close()
    e2fsck_silent(image)
    assert depth(image, "/frag") == 0 and tree_blocks(image, "/frag") == []
    kernel_check(image, "frag", bytes(want[: 5 * bs]))
    # Everything truncated away (both files): every data and tree block is free again.
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    b.setattr(ino, SetAttr(size=0))
    filler = b.lookup(ROOT, b"frag.filler").ino
    b.setattr(filler, SetAttr(size=0))
    assert b.getattr(ino).blocks == 0 and b.getattr(filler).blocks == 0
    b.forget(filler)
    b.close()
    e2fsck_silent(image)
    assert free_blocks(image) == empty_free


def _kernel_fallocated(image: Path, nranges: int, bs: int) -> None:
    """A file of ``nranges`` unwritten 3-block extents, one every 4 blocks, made by the kernel."""
    with images.loop_mount(image, "rw") as mnt:
        fd = os.open(mnt / "pre", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for i in range(nranges):
                os.posix_fallocate(fd, 4 * i * bs, 3 * bs)
        finally:
            os.close(fd)


@pytest.mark.parametrize("variant", ["default", "b1024"])
def test_writes_into_unwritten_extents_of_a_deep_kernel_tree(variant: str, make_image: Callable[..., Path]) -> None:
    """Middles (1 -> 3 extents), edges (conversion merging with the written neighbour) and holes."""
    image = make_image(variant)
    bs = 4096 if variant == "default" else 1024
    n = 3000
    _kernel_fallocated(image, n, bs)
    assert depth(image, "/pre") >= 2
    model = bytearray(((n - 1) * 4 + 3) * bs)
    # One range by hand: the middle block (1 -> 3 extents), then each edge (merging with it).
    j = 1777
    steps = [(1, [(0, 0, True), (1, 1, False), (2, 2, True)]),
             (0, [(0, 1, False), (2, 2, True)]),
             (2, [(0, 2, False)])]
    for blk, want_rows in steps:
        b = Ext4Backend(image, readonly=False)
        ino = b.lookup(ROOT, b"pre").ino
        fh = b.open(ino, RW)
        b.write(fh, (4 * j + blk) * bs, b"M" * bs)
        model[(4 * j + blk) * bs : (4 * j + blk + 1) * bs] = b"M" * bs
        b.release(fh)
        b.forget(ino)
        b.close()
        got = [(lo - 4 * j, hi - 4 * j, unwritten) for lo, hi, unwritten in leaf_rows(image, "/pre")
               if 4 * j <= lo < 4 * j + 4]
        assert got == want_rows, (blk, got)
    rng = random.Random(5)
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"pre").ino
    fh = b.open(ino, RW)
    for i in rng.sample([k for k in range(n) if k != j], 400):
        which = rng.choice(["middle", "first", "last", "hole", "span"])
        base = 4 * i * bs
        if which == "middle":
            off, size = base + bs + 100, bs - 200
        elif which == "first":
            off, size = base, bs
        elif which == "last":
            off, size = base + 2 * bs, bs
        elif which == "hole":
            off, size = base + 3 * bs, bs
        else:
            off, size = base + bs // 2, 4 * bs  # across the hole into the next range
        data = bytes([rng.randrange(1, 256)]) * size
        b.write(fh, off, data)
        end = min(off + size, len(model))
        model[off:end] = data[: end - off]
        if off + size > len(model):
            model += data[end - off :]
    b.release(fh)
    b.forget(ino)
    b.close()
    e2fsck_silent(image)
    assert "Uninit" in debugfs(image, "ex /pre")
    kernel_check(image, "pre", bytes(model))


def test_a_loose_kernel_tree_is_left_packed(make_image: Callable[..., Path]) -> None:
    """The kernel splits leaves in the middle: e2fsck -fn says "could be narrower"; after a volfs
    edit in the middle of that tree it says nothing (the tree was repacked before the commit)."""
    image = make_image("b1024")
    bs = 1024
    with images.loop_mount(image, "rw") as mnt:
        fd = os.open(mnt / "k", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for i in range(3000):
                os.pwrite(fd, b"k" * bs, 2 * i * bs)
                os.fsync(fd)  # allocate now, block by block (no delayed allocation run)
            rng = random.Random(1)
            for i in rng.sample(range(3000), 300):  # unwritten extents in the holes: middle splits
                os.posix_fallocate(fd, (2 * i + 1) * bs, bs)
        finally:
            os.close(fd)
    out = subprocess.run([need_tool("e2fsck"), "-fn", str(image)], capture_output=True, text=True).stdout
    assert "could be narrower" in out or "could be shorter" in out, out  # the oracle does fire
    want = bytearray(kernel_tree(image)["/k"]["data"])  # type: ignore[arg-type]
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"k").ino
    fh = b.open(ino, RW)
    for i in range(1400, 1600, 7):  # holes and unwritten blocks in the middle
        off = (2 * i + 1) * bs + 5
        b.write(fh, off, b"v" * 10)
        want[off : off + 10] = b"v" * 10
    b.release(fh)
    b.forget(ino)
    b.close()
    e2fsck_silent(image)
    kernel_check(image, "k", bytes(want))


# -- incrementality, counted ---------------------------------------------------------------------


@pytest.fixture
def deep_image(make_image: Callable[..., Path]) -> Iterator[tuple[Path, Ino]]:
    image = make_image("b1024")
    b = Ext4Backend(image, readonly=False)
    ino, _ = build_fragmented(b, 3000)
    b.close()
    yield image, ino


def test_small_edits_touch_only_their_path(deep_image: tuple[Path, Ino], monkeypatch: pytest.MonkeyPatch) -> None:
    """Per small append or overwrite of a 3,000-extent file: tree blocks read and written <= c * depth."""
    image, ino = deep_image
    d = depth(image, "/frag")
    assert d >= 2
    reads: list[int] = []
    real_read = BlockCache.read

    def counting_read(self: BlockCache, block: int, structure: str = "block", inode: int | None = None) -> bytes:
        if structure == "extent tree":
            reads.append(block)
        return real_read(self, block, structure, inode)

    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    fs = b.filesystem
    bs = fs.block_size
    size = b.getattr(ino).size
    fh = b.open(ino, RW)
    monkeypatch.setattr(BlockCache, "read", counting_read)
    cases = [
        ("append a new extent", size + bs, b"A" * bs),
        ("append to the last extent", size, b"B" * 10),
        ("overwrite inside an extent", 1000 * 2 * bs + 10, b"C" * 100),
        ("fill a hole in the middle", 1501 * bs, b"D" * bs),
    ]
    for what, off, data in cases:
        fs.commit()
        reads.clear()
        b.write(fh, off, data)
        dirty = fs.cache.dirty
        tree = [blk for blk, raw in dirty.items() if raw[:2] == b"\x0a\xf3"]
        assert len(tree) <= d + 1, f"{what}: {len(tree)} tree blocks dirtied at depth {d}"
        assert len(dirty) <= 8 + d, f"{what}: {len(dirty)} metadata blocks dirtied"
        assert len(set(reads)) <= 2 * (d + 1), f"{what}: {len(set(reads))} tree blocks read at depth {d}"
    monkeypatch.undo()
    b.release(fh)
    b.close()
    e2fsck_silent(image)


def test_one_write_across_many_leaves(deep_image: tuple[Path, Ino]) -> None:
    """A write over 3,000 blocks in the middle: leaves it covers go, the holes it fills become
    about 1,500 new extents in one leaf, which splits many ways; then a commit repacks."""
    image, _ = deep_image
    bs = 1024
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    fh = b.open(ino, RW)
    want = bytearray(b.read(fh, 0, b.getattr(ino).size))
    off, data = 1000 * bs + 77, os.urandom(3000 * bs)
    b.write(fh, off, data)
    want[off : off + len(data)] = data
    b.release(fh)
    b.forget(ino)
    b.close()
    e2fsck_silent(image)
    kernel_check(image, "frag", bytes(want))


# -- corrupt nodes -------------------------------------------------------------------------------


def _corrupt(raw: bytearray, kind: str) -> None:
    if kind == "magic":
        raw[0:2] = b"\x00\x00"
    elif kind == "depth":
        raw[6:8] = (int.from_bytes(raw[6:8], "little") + 1).to_bytes(2, "little")
    elif kind == "entries":
        raw[2:4] = (int.from_bytes(raw[4:6], "little") + 1).to_bytes(2, "little")
    elif kind == "order":
        raw[12:24], raw[24:36] = bytes(raw[24:36]), bytes(raw[12:24])
    elif kind == "checksum":
        raw[12 + 12 * 10 + 4] ^= 1  # a physical block number: only the tail checksum notices


@pytest.mark.parametrize("kind", ["magic", "depth", "entries", "order", "checksum"])
def test_a_corrupt_leaf_fails_the_write_and_stays_as_it_was(kind: str, deep_image: tuple[Path, Ino]) -> None:
    image, ino = deep_image
    rows = ex_rows(image, "/frag")
    top = rows[0][1]
    leaves = [phys for level, mx, phys in rows if level == top - 1]
    leaf = leaves[len(leaves) // 2]
    bs = 1024
    with open(image, "r+b") as f:
        f.seek(leaf * bs)
        raw = bytearray(f.read(bs))
        first_logical = int.from_bytes(raw[12:16], "little")
        _corrupt(raw, kind)
        f.seek(leaf * bs)
        f.write(raw)
    b = Ext4Backend(image, readonly=False)
    ino = b.lookup(ROOT, b"frag").ino
    fh = b.open(ino, RW)
    with pytest.raises(VolfsError) as exc:
        b.write(fh, (first_logical + 1) * bs, b"x" * bs)
    assert exc.value.errno == errno.EUCLEAN
    b.release(fh)
    b.close()
    with open(image, "rb") as f:
        f.seek(leaf * bs)
        assert f.read(bs) == bytes(raw)


# -- random operations against a bytes model -------------------------------------------------------

_BASES: dict[str, Path] = {}


def _base(variant: str, tmp: Path) -> Path:
    """One fragmented image per variant (built once per session), copied for every example."""
    if variant not in _BASES:
        need_tool("mke2fs")
        image = images.mkfs(tmp / f"base-{variant}.img", None, "32M",
                            *{"default": ("-b", "4096"), "b1024": ("-b", "1024"), "unwritten": ("-b", "1024"),
                              "nocsum": ("-b", "4096", "-O", "^metadata_csum,uninit_bg")}[variant])
        if variant == "unwritten":
            # The kernel's unwritten extents (3 blocks every 4), over 1,000 ranges: depth 2.
            with images.loop_mount(image, "rw") as mnt:
                fd = os.open(mnt / "frag", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    for i in range(1000):
                        os.posix_fallocate(fd, 4 * i * 1024, 3 * 1024)
                finally:
                    os.close(fd)
        else:
            b = Ext4Backend(image, readonly=False)
            build_fragmented(b, 1200 if variant == "b1024" else 1500)
            b.close()
        _BASES[variant] = image
    return _BASES[variant]


op_s = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3200), st.integers(0, 4095),
              st.one_of(st.integers(1, 3 * 4096), st.integers(1, 400 * 1024)),  # large: across leaves
              st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 3300), st.integers(0, 4095)),
)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_s, min_size=1, max_size=25), variant=st.sampled_from(VARIANTS + ["unwritten"]))
def test_random_edits_of_a_deep_tree_match_a_bytes_model(ops: list[tuple[object, ...]], variant: str,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    base = _base(variant, tmp_path_factory.getbasetemp())
    work = tmp_path_factory.mktemp("ex")
    image = work / "img"
    shutil.copyfile(base, image)
    b = Ext4Backend(image, readonly=False)
    try:
        bs = b.filesystem.block_size
        ino = b.lookup(ROOT, b"frag").ino
        fh = b.open(ino, RW)
        model = bytearray(b.read(fh, 0, b.getattr(ino).size))
        for op in ops:
            if op[0] == "write":
                _, blk, inner, size, byte = op
                off = int(blk) * bs // 4 + int(inner)  # block-unaligned, spread over the file and past it
                data = bytes([int(byte)]) * int(size)
                b.write(fh, off, data)
                if off > len(model):
                    model += bytes(off - len(model))
                model[off : off + len(data)] = data
            else:
                _, blk, inner = op
                size = int(blk) * bs // 2 + int(inner)
                b.setattr(ino, SetAttr(size=size))
                model = model[:size] + bytes(max(0, size - len(model)))
            assert b.read(fh, 0, len(model) + 10) == bytes(model)
        b.release(fh)
    finally:
        b.close()
    e2fsck_silent(image)
    # i_blocks as written at the last commit (which may have repacked the tree), read back by us.
    b = Ext4Backend(image, readonly=True)
    try:
        blocks = b.getattr(b.lookup(ROOT, b"frag").ino).blocks
    finally:
        b.close()
    kernel_check(image, "frag", bytes(model), blocks)
