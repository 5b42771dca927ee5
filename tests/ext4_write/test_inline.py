"""Writing inline_data images: files and directories inside the inode, and their conversion.

Oracles: e2fsck -fn after every change, the kernel (loop mount) for names,
bytes, modes and ``..``, and debugfs ``stat`` ("Size of inline data") for
what stays inline and what was converted.  Capacities are computed here
from the inode size the kernel's way (60 bytes of i_block plus the largest
system.data value the in-inode xattr area takes), not from volfs.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs, images, kernel_tree
from testsupport import loop_mount, need_root
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem

ROOT = 2
RW = OpenFlags.READ | OpenFlags.WRITE

# name -> (image size, mkfs options besides -O inline_data, inode size)
VARIANTS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "i256": ("32M", (), 256),
    "i1024": ("32M", ("-I", "1024"), 1024),
    "b1024-nocsum": ("16M", ("-b", "1024", "-O", "^metadata_csum"), 256),
}


def capacity(inode_size: int, others: int = 0) -> int:
    """Inline bytes of an inode (extra_isize 32): i_block + what system.data can take.

    The xattr area is inode_size - 160; it holds the magic (4), a terminator
    (4), the system.data entry head (16 + "data" = 20) and ``others`` bytes
    of other entries; the value is a multiple of 4.
    """
    return 60 + ((inode_size - 160 - 8 - 20 - others) & ~3)


def inline_size(image: Path, path: str) -> int | None:
    """debugfs's "Size of inline data", or None when the inode is not inline (then it has extents)."""
    out = debugfs(image, f"stat {path}")
    m = re.search(r"Size of inline data: (\d+)", out)
    if m is None and "Type: symlink" in out and "Flags: 0x10000000" in out:
        m = re.search(r"Size: (\d+)", out)  # debugfs shows an inline symlink as a "Fast link dest"
    if m is None:
        assert "Flags: 0x10000000" not in out, out
        return None
    assert "system.data" in out, out
    return int(m.group(1))


def make(tmp_path: Path, variant: str, tree: Path | None = None) -> Path:
    size, opts, _ = VARIANTS[variant]
    n = len(list(tmp_path.glob("*.img")))
    return images.mkfs(tmp_path / f"i{n}.img", tree, size, "-O", "inline_data", *opts)


def kernel_read(image: Path, path: str) -> bytes:
    with loop_mount(image) as mnt:
        return (mnt / path.lstrip("/")).read_bytes()


def kernel_names(image: Path, path: str) -> set[str]:
    with loop_mount(image) as mnt:
        return set(os.listdir(mnt / path.lstrip("/")))


def rw(image: Path) -> Filesystem:
    fs = Filesystem.open(image, readonly=False)
    assert not fs.readonly, fs.readonly_reason
    return fs


# -- regular files ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_file_grows_inline_then_converts(variant: str, tmp_path: Path) -> None:
    """Write within i_block, across 60 bytes into system.data, up to capacity, then past it."""
    need_root("kernel oracle")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"0123456789")
    image = make(tmp_path, variant, tree)
    cap = capacity(VARIANTS[variant][2])
    assert inline_size(image, "/f") == 60  # mkfs made it inline
    expect = bytearray(b"0123456789")
    steps = [(5, b"A" * 40), (45, b"B" * 40), (cap - 7, b"C" * 7), (cap, b"D"), (3, b"E" * 3)]
    for offset, data in steps:
        with rw(image) as fs:
            fs.writer.write_data(fs.lookup_ino(ROOT, b"f"), offset, data)
        if offset > len(expect):
            expect += bytes(offset - len(expect))
        expect[offset : offset + len(data)] = data
        check(image)
        got = inline_size(image, "/f")
        if offset + len(data) <= cap and not (got is None and len(expect) > cap):
            assert got == max(60, len(expect)), (offset, got)
        else:
            assert got is None  # converted, and stays converted
        assert kernel_read(image, "/f") == bytes(expect)
    assert len(expect) == cap + 1


@pytest.mark.parametrize("variant", ["i256", "b1024-nocsum"])
def test_truncate_inline_both_ways(variant: str, tmp_path: Path) -> None:
    need_root("kernel oracle")
    tree = tmp_path / "tree"
    tree.mkdir()
    data = bytes(range(100))
    (tree / "f").write_bytes(data)
    image = make(tmp_path, variant, tree)
    cap = capacity(VARIANTS[variant][2])
    for size, want_inline in [(30, 60), (90, 90), (cap, cap), (0, 60), (5, 60), (cap + 500, None)]:
        with rw(image) as fs:
            fs.writer.truncate(fs.lookup_ino(ROOT, b"f"), size)
        data = data[:size] + bytes(max(size - len(data), 0))
        check(image)
        assert inline_size(image, "/f") == want_inline, size
        assert kernel_read(image, "/f") == data
    out = debugfs(image, "stat /f")
    assert "EXTENTS:\n(0):" in out  # converted: the first bytes in one block, the rest a hole


def test_new_files_small_writes_go_inline_sparse_writes_do_not(tmp_path: Path) -> None:
    need_root("kernel oracle")
    image = make(tmp_path, "i256")
    with rw(image) as fs:
        w = fs.writer
        small = w.create(ROOT, b"small", 0o100640, 1000, 1000)
        w.write_data(small, 0, b"tiny file")
        w.create(ROOT, b"empty", 0o100644, 0, 0)
        sparse = w.create(ROOT, b"sparse", 0o100644, 0, 0)
        w.write_data(sparse, 70_000, b"far")
        at_end = w.create(ROOT, b"exact", 0o100644, 0, 0)
        w.write_data(at_end, 0, b"e" * 128)
    check(image)
    assert inline_size(image, "/small") == 60
    assert inline_size(image, "/exact") == 128
    assert inline_size(image, "/empty") is None
    assert inline_size(image, "/sparse") is None
    tree = kernel_tree(image)
    assert tree["/small"]["data"] == b"tiny file" and tree["/small"]["mode"] == 0o100640
    assert tree["/small"]["uid"] == 1000
    assert tree["/sparse"]["data"] == bytes(70_000) + b"far"
    assert tree["/exact"]["data"] == b"e" * 128
    assert tree["/empty"]["data"] == b""


def test_kernel_made_inline_files_and_dirs(tmp_path: Path) -> None:
    """Inline files and directories the kernel wrote, changed by volfs, read back by the kernel."""
    need_root("kernel writes the fixture")
    image = make(tmp_path, "i256")
    with loop_mount(image, "rw") as mnt:
        (mnt / "d").mkdir()
        (mnt / "d" / "sub").mkdir()
        (mnt / "d" / "k1").write_bytes(b"kernel one")
        (mnt / "d" / "k2").write_bytes(b"k" * 100)
        for i in range(3):
            (mnt / "d" / f"n{i}").write_bytes(b"")
    assert inline_size(image, "/d") == 128 and inline_size(image, "/d/k2") == 100
    with rw(image) as fs:
        w = fs.writer
        d = fs.lookup_ino(ROOT, b"d")
        w.write_data(fs.lookup_ino(d, b"k1"), 10, b" and volfs")
        w.write_data(fs.lookup_ino(d, b"k2"), 100, b"+" * 100)  # past 128: converts
        w.unlink(d, b"n1")
        w.rename(d, b"sub", ROOT, b"sub")
        w.setattr(fs.lookup_ino(d, b"k1"), mode=0o600)
    check(image)
    assert inline_size(image, "/d/k1") == 60 and inline_size(image, "/d/k2") is None
    tree = kernel_tree(image)
    assert tree["/d/k1"]["data"] == b"kernel one and volfs" and tree["/d/k1"]["mode"] == 0o100600
    assert tree["/d/k2"]["data"] == b"k" * 100 + b"+" * 100
    assert sorted(p for p in tree if p.startswith("/d/")) == ["/d/k1", "/d/k2", "/d/n0", "/d/n2"]
    with loop_mount(image) as mnt:
        assert os.stat(mnt / "sub" / "..").st_ino == 2


# -- directories --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inline_dir_fills_converts_and_keeps_growing(variant: str, tmp_path: Path) -> None:
    """mkdir makes an inline dir; entries fill i_block, then system.data, then it becomes a block
    directory, and later an htree; removals work at every stage."""
    need_root("kernel oracle")
    image = make(tmp_path, variant)
    cap = capacity(VARIANTS[variant][2])
    names: list[str] = []
    with rw(image) as fs:
        d = fs.writer.mkdir(ROOT, b"d", 0o750, 0, 0)
    check(image)
    assert inline_size(image, "/d") == 60
    stages = [2, 4, 8, 40, 400]  # 12-byte records for "eNNN": i_block's 56 bytes take 4
    in_head, in_tail = 56 // 12, (cap - 60) // 12
    seen_sizes = set()
    for count in stages:
        with rw(image) as fs:
            for i in range(len(names), count):
                name = f"e{i:03d}"
                ino = fs.writer.create(d, name.encode(), 0o100644, 0, 0)
                fs.writer.write_data(ino, 0, name.encode())
                names.append(name)
        check(image)
        size = inline_size(image, "/d")
        seen_sizes.add(size)
        if count <= in_head:
            assert size == 60
        elif count <= in_head + in_tail:
            assert size == cap  # system.data grown to the capacity at once, as the kernel does
        else:
            assert size is None
        assert kernel_names(image, "/d") == set(names)
    assert {60, cap, None} <= seen_sizes
    assert "Flags: 0x81000" in debugfs(image, "stat /d")  # indexed after 400 entries
    with rw(image) as fs:
        for name in names[::3]:
            fs.writer.unlink(d, name.encode())
    check(image)
    tree = kernel_tree(image)
    assert sorted(p[3:] for p in tree if p.startswith("/d/")) == sorted(set(names) - set(names[::3]))
    assert all(tree[f"/d/{n}"]["data"] == n.encode() for n in names if f"/d/{n}" in tree)


def test_remove_entries_from_both_regions_and_rmdir(tmp_path: Path) -> None:
    need_root("kernel oracle")
    image = make(tmp_path, "i256")
    with rw(image) as fs:
        w = fs.writer
        d = w.mkdir(ROOT, b"d", 0o755, 0, 0)
        for i in range(8):  # 4 in i_block, 4 in system.data
            w.create(d, b"f%d" % i, 0o100644, 0, 0)
        empty = w.mkdir(d, b"sub", 0o700, 0, 0)
        assert empty
    assert inline_size(image, "/d") == 128
    with rw(image) as fs:
        w = fs.writer
        d = fs.lookup_ino(ROOT, b"d")
        with pytest.raises(VolfsError) as info:
            w.rmdir(ROOT, b"d")
        assert info.value.errno == errno.ENOTEMPTY
        for name in (b"f0", b"f5", b"f3", b"f7"):  # first of a region, middle, last
            w.unlink(d, name)
        w.rmdir(d, b"sub")
        w.create(d, b"again", 0o100600, 0, 0)  # reuses a freed record
    check(image)
    assert kernel_names(image, "/d") == {"f1", "f2", "f4", "f6", "again"}
    with rw(image) as fs:
        d = fs.lookup_ino(ROOT, b"d")
        for name in (b"f1", b"f2", b"f4", b"f6", b"again"):
            fs.writer.unlink(d, name)
        fs.writer.rmdir(ROOT, b"d")
    check(image)
    assert kernel_names(image, "/") == {"lost+found"}


@pytest.mark.parametrize("variant", ["i256", "b1024-nocsum"])
def test_rename_between_inline_and_block_dirs(variant: str, tmp_path: Path) -> None:
    """Files and directories move between inline dirs (``..`` retargeted in i_block) and block dirs."""
    need_root("kernel oracle")
    tree = tmp_path / "tree"
    (tree / "a" / "x").mkdir(parents=True)
    (tree / "a" / "x" / "inner").write_bytes(b"inner")
    (tree / "b").mkdir()
    (tree / "a" / "file").write_bytes(b"file in a")
    (tree / "big").mkdir()
    for i in range(60):
        (tree / "big" / f"entry-{i:02d}").write_bytes(b"")
    image = make(tmp_path, variant, tree)
    assert inline_size(image, "/a") == 60 and inline_size(image, "/big") is None
    with rw(image) as fs:
        w = fs.writer
        a, b, big = (fs.lookup_ino(ROOT, n) for n in (b"a", b"b", b"big"))
        w.rename(a, b"x", b, b"x")  # inline dir to inline dir
        w.rename(a, b"file", big, b"file")  # inline to block
        w.rename(big, b"entry-00", a, b"from-big")  # block to inline
        w.rename(big, b"entry-01", b, b"x2")
        w.mkdir(big, b"blockchild", 0o755, 0, 0)
        w.rename(big, b"blockchild", a, b"child")  # an (inline) dir from a block dir
        w.rename(b, b"x", big, b"x")  # and an inline dir into a block dir
        w.rename(big, b"x", a, b"x")  # and back
        w.rename(a, b"from-big", b, b"x2")  # over an existing file
        x_ino = fs.lookup_ino(a, b"x")
    check(image)
    with loop_mount(image) as mnt:
        assert sorted(os.listdir(mnt / "a")) == ["child", "x"]
        assert sorted(os.listdir(mnt / "b")) == ["x2"]
        assert (mnt / "a" / "x" / "inner").read_bytes() == b"inner"
        assert (mnt / "big" / "file").read_bytes() == b"file in a"
        assert os.stat(mnt / "a" / "x").st_ino == x_ino
        assert os.stat(mnt / "a" / "x" / "..").st_ino == os.stat(mnt / "a").st_ino
        assert os.stat(mnt / "a" / "child" / "..").st_ino == os.stat(mnt / "a").st_ino
        assert os.stat(mnt / "a").st_nlink == 4 and os.stat(mnt / "b").st_nlink == 2
    assert inline_size(image, "/a") is not None and inline_size(image, "/a/child") == 60
    with rw(image) as fs:  # exchange an inline dir with a block dir across parents
        w = fs.writer
        a, big = fs.lookup_ino(ROOT, b"a"), fs.lookup_ino(ROOT, b"big")
        w.rename(a, b"x", ROOT, b"big", flags=2)
    check(image)
    with loop_mount(image) as mnt:
        assert (mnt / "big" / "inner").read_bytes() == b"inner"
        assert (mnt / "a" / "x" / "file").read_bytes() == b"file in a"
        assert os.stat(mnt / "a" / "x" / "..").st_ino == os.stat(mnt / "a").st_ino


def test_hard_links_and_open_unlinked_inline_file(tmp_path: Path) -> None:
    """Links to an inline file; the last name goes while a handle is open (an orphan), a crash
    copy is recovered by the next writer, and the release frees it."""
    need_root("kernel oracle")
    image = make(tmp_path, "i256")
    b = Ext4Backend(image, readonly=False)
    fh, attr = b.create(Ino(ROOT), b"f", 0o644, RW, 0, 0)
    b.write(fh, 0, b"inline body")
    b.link(attr.ino, Ino(ROOT), b"g")
    b.unlink(Ino(ROOT), b"f")
    b.release(fh)
    b.close()
    check(image)
    tree = kernel_tree(image)
    assert tree["/g"]["data"] == b"inline body" and tree["/g"]["nlink"] == 1
    b = Ext4Backend(image, readonly=False)
    fh = b.open(b.lookup(Ino(ROOT), b"g").ino, RW)
    b.unlink(Ino(ROOT), b"g")
    b.write(fh, 11, b", still inline")
    b.fsync(fh)
    crashed_inline = tmp_path / "crashed-inline.img"
    shutil.copyfile(image, crashed_inline)
    b.write(fh, 11, b" grows past the inode into blocks" * 10)
    assert b.read(fh, 0, 20) == b"inline body grows pa"
    b.fsync(fh)
    crashed = tmp_path / "crashed.img"
    shutil.copyfile(image, crashed)
    b.release(fh)
    b.close()
    check(image)
    assert kernel_names(image, "/") == {"lost+found"}
    for copy in (crashed, crashed_inline):  # the orphan (converted, or still inline) is freed
        assert "orphan" in debugfs(copy, "stats").lower()
        Filesystem.open(copy, readonly=False).close()
        check(copy)
        assert kernel_names(copy, "/") == {"lost+found"}


@pytest.mark.parametrize("variant", ["i256", "i1024"])
def test_xattrs_next_to_system_data(variant: str, tmp_path: Path) -> None:
    """User xattrs share the inode body with system.data: the capacity shrinks by their size,
    a big one goes to an xattr block, system.data stays in the body."""
    need_root("kernel oracle")
    image = make(tmp_path, variant)
    isize = VARIANTS[variant][2]
    with rw(image) as fs:
        w = fs.writer
        f = w.create(ROOT, b"f", 0o100644, 0, 0)
        w.write_data(f, 0, b"x" * 70)
        w.setxattr(f, b"user.small", b"v" * 8)  # entry 16 + "small" 8 + value 8 = 32 bytes
        w.setxattr(f, b"user.big", os.urandom(600))
        d = w.mkdir(ROOT, b"d", 0o755, 0, 0)
        w.setxattr(d, b"user.tag", b"dir")
        for i in range(4):
            w.create(d, b"g%d" % i, 0o100644, 0, 0)
    check(image)
    # user.small: entry 16 + name 8 + value 8; user.big: entry 16 + name 4 + value 600 (when in the body)
    big_in_body = variant == "i1024"
    cap = capacity(isize, 32 + (620 if big_in_body else 0))
    assert inline_size(image, "/f") == 70
    assert ("File ACL: 0" in debugfs(image, "stat /f")) == big_in_body
    with rw(image) as fs:
        w = fs.writer
        f = fs.lookup_ino(ROOT, b"f")
        w.write_data(f, 70, b"y" * (cap - 70))  # exactly the reduced capacity
    check(image)
    assert inline_size(image, "/f") == cap
    with rw(image) as fs:
        f = fs.lookup_ino(ROOT, b"f")
        fs.writer.removexattr(f, b"user.small")
        fs.writer.write_data(f, cap, b"z")
    check(image)
    expect_inline = cap + 1 if cap + 1 <= capacity(isize) else None
    if expect_inline is not None:  # the freed room is usable again
        assert inline_size(image, "/f") == max(expect_inline, 60)
    with loop_mount(image) as mnt:
        assert (mnt / "f").read_bytes() == b"x" * 70 + b"y" * (cap - 70) + b"z"
        assert len(os.getxattr(mnt / "f", "user.big")) == 600
        assert os.getxattr(mnt / "d", "user.tag") == b"dir"
        assert "user.small" not in os.listxattr(mnt / "f")
        assert sorted(os.listdir(mnt / "d")) == ["g0", "g1", "g2", "g3"]
    with rw(image) as fs:
        with pytest.raises(VolfsError) as info:
            fs.writer.removexattr(fs.lookup_ino(ROOT, b"f"), b"system.data")
        assert info.value.errno in (errno.EOPNOTSUPP, errno.ENODATA)
    # The directory: user.tag (entry 16 + name 4 + value 4) shrinks its capacity; entries fill it;
    # once the xattr goes, system.data grows again (its last record covers the new room).
    tagged = capacity(isize, 24)
    with rw(image) as fs:
        d = fs.lookup_ino(ROOT, b"d")
        for i in range(4, 7):  # i_block holds g0..g3; these go to system.data
            fs.writer.create(d, b"g%d" % i, 0o100644, 0, 0)
    check(image)
    assert inline_size(image, "/d") == tagged
    with rw(image) as fs:
        d = fs.lookup_ino(ROOT, b"d")
        fs.writer.removexattr(d, b"user.tag")
        for i in range(7, 9):
            fs.writer.create(d, b"g%d" % i, 0o100644, 0, 0)
    check(image)
    # 256-byte inodes: 44 bytes of system.data held three 12-byte records, so it had to grow.
    assert inline_size(image, "/d") == (capacity(isize) if variant == "i256" else tagged)
    assert kernel_names(image, "/d") == {f"g{i}" for i in range(9)}


# -- failure paths ------------------------------------------------------------------------------


def _fill(fs: Filesystem) -> None:
    """Use every free block (a big file, then small ones) so the next allocation fails."""
    w = fs.writer
    ino = w.create(ROOT, b"filler", 0o100644, 0, 0)
    chunk = b"\xff" * (256 * 1024)
    off = 0
    while True:
        try:
            w.write_data(ino, off, chunk)
            off += len(chunk)
        except VolfsError as exc:
            assert exc.errno == errno.ENOSPC
            if len(chunk) <= fs.block_size:
                return
            chunk = chunk[: len(chunk) // 2]


def test_enospc_during_conversion_changes_nothing(tmp_path: Path) -> None:
    need_root("kernel oracle")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"q" * 100)
    image = make(tmp_path, "b1024-nocsum", tree)
    with rw(image) as fs:
        d = fs.writer.mkdir(ROOT, b"d", 0o755, 0, 0)
        for i in range(8):  # 4 records in i_block, 4 of the 5 that fit system.data
            fs.writer.create(d, b"n%d" % i, 0o100644, 0, 0)
    assert inline_size(image, "/d") == 128
    with rw(image) as fs:
        _fill(fs)
        f = fs.lookup_ino(ROOT, b"f")
        d = fs.lookup_ino(ROOT, b"d")
        before = (fs.inode(f).raw, fs.inode(d).raw)
        with pytest.raises(VolfsError) as info:
            fs.writer.write_data(f, 100, b"r" * 100)
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(VolfsError) as info:
            fs.writer.create(d, b"a-long-name-that-needs-conversion", 0o100644, 0, 0)
        assert info.value.errno == errno.ENOSPC
        assert (fs.inode(f).raw, fs.inode(d).raw) == before
    check(image)
    assert inline_size(image, "/f") == 100 and inline_size(image, "/d") == 128
    assert kernel_read(image, "/f") == b"q" * 100
    assert kernel_names(image, "/d") == {f"n{i}" for i in range(8)}


@pytest.mark.parametrize(("target", "field", "value"), [
    ("/d", "size", "61"),  # an inline dir's i_size must be 60 + the system.data value
    ("/f", "size", "200"),  # more bytes than stored inline
    ("/d", "block[0]", "99999999"),  # parent beyond s_inodes_count
    ("/d", "block[1]", "0x00040000"),  # first record's inode beyond s_inodes_count
    ("/d", "block[2]", "0x00000004"),  # first record's rec_len 4 (below the minimum)
])
def test_corrupt_inline_inodes_give_euclean_and_change_nothing(target: str, field: str, value: str,
                                                               tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "x").write_bytes(b"")
    (tree / "f").write_bytes(b"f" * 80)
    image = make(tmp_path, "i256", tree)
    images.run(images.tool("debugfs"), "-w", "-R", f"set_inode_field {target} {field} {value}", str(image))
    before = image.read_bytes()
    with Filesystem.open(image, readonly=False) as fs:
        d = fs.lookup_ino(ROOT, b"d")
        f = fs.lookup_ino(ROOT, b"f")
        if target == "/d":
            ops = [lambda: fs.writer.create(d, b"new", 0o100644, 0, 0),
                   lambda: fs.writer.unlink(d, b"x"),
                   lambda: fs.writer.rename(d, b"x", ROOT, b"x"),
                   lambda: fs.writer.mkdir(d, b"sub", 0o755, 0, 0)]
        else:
            ops = [lambda: fs.writer.write_data(f, 0, b"g" * 100),
                   lambda: fs.writer.write_data(f, 0, b"g"),
                   lambda: fs.writer.truncate(f, 10)]
        for op in ops:
            with pytest.raises(VolfsError) as info:
                op()
            assert info.value.errno == errno.EUCLEAN, info.value
    after = image.read_bytes()
    # Only the superblock bookkeeping of the writable open/close may differ: compare every inode table
    # and directory byte through e2fsck's verdict staying the same and the corrupt inode unchanged.
    assert debugfs_stat_equal(before, after, tmp_path, target)


def debugfs_stat_equal(before: bytes, after: bytes, tmp_path: Path, target: str) -> bool:
    b, a = tmp_path / "before.img", tmp_path / "after.img"
    b.write_bytes(before)
    a.write_bytes(after)
    strip = re.compile(r"(ctime|atime|mtime|crtime|Inode checksum).*")
    return strip.sub("", debugfs(b, f"stat {target}")) == strip.sub("", debugfs(a, f"stat {target}"))


def test_inline_symlinks_and_links_in_inline_dirs(tmp_path: Path) -> None:
    """libext2fs makes long symlinks inline: they move, get links counted and go away cleanly;
    new long symlinks are extent-mapped (as the kernel makes them); hard links into inline dirs."""
    need_root("kernel oracle")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    target = "/a/rather/long/symlink/target/that/does/not/fit/in/sixty/bytes/at/all"
    os.symlink(target, tree / "d" / "long")
    os.symlink(target + "/2", tree / "d" / "gone")
    (tree / "d" / "file").write_bytes(b"linked")
    image = make(tmp_path, "i256", tree)
    assert inline_size(image, "/d/long") == len(target)
    with rw(image) as fs:
        w = fs.writer
        d = fs.lookup_ino(ROOT, b"d")
        w.rename(d, b"long", ROOT, b"long")
        w.unlink(d, b"gone")
        w.setattr(fs.lookup_ino(ROOT, b"long"), uid=7, gid=8)
        w.symlink(d, b"new", (target + "/new").encode(), 0, 0)
        sub = w.mkdir(d, b"sub", 0o755, 0, 0)
        w.link(fs.lookup_ino(d, b"file"), sub, b"again")
    check(image)
    assert inline_size(image, "/long") == len(target)
    assert inline_size(image, "/d/new") is None
    tree_k = kernel_tree(image)
    assert tree_k["/long"]["target"] == target.encode() and tree_k["/long"]["uid"] == 7
    assert tree_k["/d/new"]["target"] == (target + "/new").encode()
    assert tree_k["/d/sub/again"]["data"] == b"linked" and tree_k["/d/file"]["nlink"] == 2
    assert "/d/gone" not in tree_k


def test_kernel_keeps_writing_what_volfs_made_inline(tmp_path: Path) -> None:
    """The kernel, mounted read-write, grows an inline file and fills an inline dir volfs made:
    the layout is the one the kernel's own write paths expect."""
    need_root("kernel writes")
    image = make(tmp_path, "i256")
    with rw(image) as fs:
        w = fs.writer
        d = w.mkdir(ROOT, b"d", 0o755, 0, 0)
        f = w.create(d, b"f", 0o100644, 0, 0)
        w.write_data(f, 0, b"v" * 70)
        w.create(d, b"g", 0o100644, 0, 0)
    assert inline_size(image, "/d") == 60 and inline_size(image, "/d/f") == 70
    with loop_mount(image, "rw") as mnt:
        with open(mnt / "d" / "f", "ab") as fh:
            fh.write(b"k" * 20)
        for i in range(3):
            (mnt / "d" / f"k{i}").write_bytes(b"")
        assert (mnt / "d" / "f").read_bytes() == b"v" * 70 + b"k" * 20
    check(image)
    assert inline_size(image, "/d") == 128 and inline_size(image, "/d/f") == 90
    with loop_mount(image, "rw") as mnt:
        for i in range(3, 40):
            (mnt / "d" / f"k{i}").write_bytes(b"")
        (mnt / "d" / "f").write_bytes(b"w" * 500)
    check(image)
    assert inline_size(image, "/d") is None and inline_size(image, "/d/f") is None
    assert kernel_names(image, "/d") == {"f", "g"} | {f"k{i}" for i in range(40)}


# -- the layout module against images others wrote ------------------------------------------------


def test_layout_round_trips_kernel_made_inodes_and_capacity_matches_the_packer(tmp_path: Path) -> None:
    """inline.py decodes and re-encodes kernel-made inline dirs byte for byte; the capacity it
    computes is the size the kernel grew a full directory to; the xattr packer agrees with it."""
    need_root("kernel writes the fixture")
    from volfs.ext4.inline import DATA_INDEX, DATA_NAME, InlineDir, capacity, inline_bytes, value_capacity
    from volfs.ext4.writer import _pack_ibody

    image = make(tmp_path, "i1024")
    with loop_mount(image, "rw") as mnt:
        (mnt / "d").mkdir()
        for i in range(30):
            (mnt / "d" / f"entry-{i}").write_bytes(b"")
        os.setxattr(mnt / "d", "user.note", b"n" * 10)
        (mnt / "f").write_bytes(b"f" * 300)
    with Filesystem.open(image) as fs:
        d = fs.inode(fs.lookup_ino(ROOT, b"d"))
        loaded = InlineDir.load(d, inodes_count=fs.sb.inodes_count)
        raw = inline_bytes(d)
        assert loaded.i_block() == d.i_block and bytes(loaded.tail) == raw[60:]
        assert {e.name for e in loaded.entries} == {b"entry-%d" % i for i in range(30)}
        assert d.size == len(raw) == 60 + value_capacity([], 1024 - 160)  # grown to the capacity at once
        assert capacity(d) == d.size and d.file_acl  # the body was full: the kernel put user.note in a block
        f = fs.inode(fs.lookup_ino(ROOT, b"f"))
        assert inline_bytes(f)[:300] == b"f" * 300
    for others in ([], [(1, b"note", b"n" * 10)], [(1, b"x" * 40, b"y" * 200), (6, b"selinux", b"z" * 30)]):
        for area in (96, 352, 864):
            v = value_capacity(others, area)
            if v < 0:
                assert _pack_ibody(others + [(DATA_INDEX, DATA_NAME, b"")], area) is None
                continue
            assert _pack_ibody(others + [(DATA_INDEX, DATA_NAME, b"d" * v)], area) is not None
            assert _pack_ibody(others + [(DATA_INDEX, DATA_NAME, b"d" * (v + 1))], area) is None
