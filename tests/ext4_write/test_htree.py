"""htree inserts that keep the index: leaf splits, index growth, conversion of full linear directories.

Oracles: e2fsck -fn, debugfs htree_dump, and a kernel loop mount that looks up (stats) and lists every
name.  Our own lookups are checked to read one block per index level plus the leaf.
"""

from __future__ import annotations

import os
import random
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs, images
from testsupport import need_root
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4 import Filesystem
from volfs.ext4.cache import BlockCache
from volfs.ext4.dirhash import dirhash

ROOT = Ino(2)

# Pairs of names whose half_md4 (signed) hashes collide under the test images' fixed s_hash_seed
# (ext4_images.HASH_SEED); found by a birthday search.  The test re-checks that they collide.
COLLIDING = [(b"c0024662", b"c0118610"), (b"c0126186", b"c0134004"), (b"c0017763", b"c0146316"),
             (b"c0105442", b"c0148150"), (b"c0082529", b"c0150278"), (b"c0103693", b"c0152836"),
             (b"c0135201", b"c0175655"), (b"c0088931", b"c0181110"), (b"c0007038", b"c0188607"),
             (b"c0080202", b"c0190379"), (b"c0143155", b"c0195809"), (b"c0129435", b"c0202618")]


def _random_names(count: int, lo: int, hi: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
    out: set[bytes] = set()
    while len(out) < count:
        n = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(lo, hi)))
        if n not in (b".", b".."):
            out.add(n)
    return sorted(out, key=lambda _: rnd.random())


def _root_info(image: Path, path: str) -> tuple[int, int]:
    """(indirect levels, root count) from debugfs htree_dump; fails if the directory is not indexed."""
    out = debugfs(image, f"htree_dump {path}")
    levels = re.search(r"Indirect levels: (\d+)", out)
    count = re.search(r"Number of entries \(count\): (\d+)", out)
    assert levels and count, out[:2000]
    return int(levels.group(1)), int(count.group(1))


def _indexed(image: Path, path: str) -> bool:
    """Whether the inode has EXT4_INDEX_FL (0x1000), as debugfs stat shows."""
    m = re.search(r"Flags: 0x([0-9a-f]+)", debugfs(image, f"stat {path}"))
    assert m
    return bool(int(m.group(1), 16) & 0x1000)


def _kernel_check(image: Path, path: str, names: list[bytes]) -> None:
    """The kernel lists exactly ``names`` and finds each by lookup."""
    need_root("loop mounts")
    with images.loop_mount(image, "ro") as mnt:
        d = os.fsencode(str(mnt)) + path.encode()
        assert sorted(os.listdir(d)) == sorted(names)
        for n in names:
            assert stat.S_ISREG(os.lstat(d + b"/" + n).st_mode)


def _dir_block_reads(fs: Filesystem, dir_ino: int, names: list[bytes], monkeypatch: pytest.MonkeyPatch) -> int:
    """The most directory blocks one lookup reads."""
    calls = [0]
    real = BlockCache.read

    def counting(self: BlockCache, block: int, what: str = "", *args: object, **kw: object) -> bytes:
        if what.startswith("directory"):
            calls[0] += 1
        return real(self, block, what, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(BlockCache, "read", counting)
    worst = 0
    try:
        for n in names:
            calls[0] = 0
            assert fs.lookup_ino(dir_ino, n) > 0
            worst = max(worst, calls[0])
    finally:
        monkeypatch.setattr(BlockCache, "read", real)
    return worst


@pytest.mark.parametrize(("variant", "count", "lo", "hi"), [
    ("b1024", 12000, 1, 60),  # 1 KiB blocks: the root fills, a level is added, dx_nodes split
    ("default", 9000, 100, 250),  # 4 KiB blocks, long names: the root (507 entries) fills
])
def test_htree_insert_keeps_the_index(variant: str, count: int, lo: int, hi: int, make_image: Callable[..., Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(variant, opts=("-N", str(count + 2000)))
    names = _random_names(count, lo, hi, seed=count)
    b = Ext4Backend(image, readonly=False)
    fs = b.filesystem
    assert fs.sb.def_hash_version == 1 and not fs.sb.flags & 2  # half_md4, signed
    for x, y in COLLIDING:
        assert dirhash(x, 1, fs.sb.hash_seed)[0] == dirhash(y, 1, fs.sb.hash_seed)[0]
    names += [n for pair in COLLIDING for n in pair]
    d = b.mkdir(ROOT, b"dir", 0o755, 0, 0).ino
    for n in names:
        b.create(d, n, 0o644, OpenFlags.WRITE, 0, 0)
    # Removal keeps the index; the removed names' slots are reused by later inserts.
    for n in names[:200]:
        b.unlink(d, n)
    names = names[200:]
    b.close()
    check(image)
    levels, root_count = _root_info(image, "/dir")
    assert levels == 1 and root_count >= 2
    assert _indexed(image, "/dir")
    _kernel_check(image, "/dir", names)
    fs2 = Filesystem.open(image)
    try:
        d2 = fs2.lookup_ino(2, b"dir")
        assert _dir_block_reads(fs2, d2, names[::97] + [n for p in COLLIDING for n in p], monkeypatch) <= 4
    finally:
        fs2.close()


def test_small_directory_becomes_indexed_and_renames_keep_it(make_image: Callable[..., Path]) -> None:
    """A one-block directory that fills up is converted as the kernel does; '..' edits keep dx_tail exact."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    d = b.mkdir(ROOT, b"d", 0o755, 0, 0).ino
    names = [b"entry-%04d-%s" % (i, b"x" * (i % 50)) for i in range(400)]
    for n in names:
        b.create(d, n, 0o644, OpenFlags.WRITE, 0, 0)
    b.mkdir(ROOT, b"other", 0o755, 0, 0)
    b.rename(ROOT, b"d", b.lookup(ROOT, b"other").ino, b"moved")  # ".." in the dx_root changes
    other = b.lookup(ROOT, b"other").ino
    moved = b.lookup(other, b"moved").ino
    for n in names[:50]:  # renames inside the indexed directory
        b.rename(moved, n, moved, n + b"-renamed")
    b.close()
    check(image)
    levels, root_count = _root_info(image, "/other/moved")
    assert levels == 0 and root_count >= 2
    want = [n + b"-renamed" for n in names[:50]] + names[50:]
    _kernel_check(image, "/other/moved", want)
    out = debugfs(image, "stat /other/moved/..")
    assert f"Inode: {other}" in out


def test_linear_directories_of_several_blocks_stay_linear(make_image: Callable[..., Path]) -> None:
    """Only one-block directories are converted (the kernel's rule); lost+found (4 blocks) stays linear."""
    image = make_image("default")
    b = Ext4Backend(image, readonly=False)
    lf = b.lookup(ROOT, b"lost+found").ino
    names = [b"n%05d" % i for i in range(1000)]
    for n in names:
        b.create(lf, n, 0o644, OpenFlags.WRITE, 0, 0)
    b.close()
    check(image)
    assert not _indexed(image, "/lost+found")
    need_root("loop mounts")
    with images.loop_mount(image, "ro") as mnt:
        assert sorted(os.listdir(os.fsencode(str(mnt / "lost+found")))) == sorted(names)
