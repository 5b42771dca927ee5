"""Rename's error cases in the kernel's order (do_renameat2's subtree traps before vfs_rename's type checks).

The reference is the kernel's ext4 on a loop mount doing the same renames on the same tree; the ext4
backend is called directly (through FUSE the kernel would answer these itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, images
from testsupport import need_root, renameat2
from volfs.backend import Ino, OpenFlags, RenameFlags
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError

ROOT = Ino(2)
NOREPLACE, EXCHANGE = 1, 2

# (old path, new path, renameat2 flags) on the tree made by _build
CASES = [
    ("d/e/b", "d/e", 0),  # the target is an ancestor of the source: ENOTEMPTY, though b is a file
    ("d/e/sub", "d/e", 0),
    ("d/e/sub/deep", "d", 0),  # an ancestor two levels up
    ("d/e", "d/e/sub/new", 0),  # a directory into its own subtree: EINVAL
    ("d/e", "d/e/sub", 0),
    ("d/e/b", "d/e", EXCHANGE),  # exchange with an ancestor: EINVAL
    ("d/e", "d/e/b", EXCHANGE),
    ("d/e/b", "d/e", NOREPLACE),  # NOREPLACE comes first: EEXIST
    ("d/x", "d/e/b", 0),  # directory onto a file: ENOTDIR
    ("d/e/b", "d/x", 0),  # file onto a directory: EISDIR
    ("d/x", "d/e", 0),  # onto a non-empty directory: ENOTEMPTY
    ("d/missing", "d/y", 0),
    ("d/e/b", "d/e/b", 0),  # onto itself: nothing to do
]


def _build_kernel(mnt: Path) -> None:
    for d in ("d", "d/e", "d/e/sub", "d/e/sub/deep", "d/x"):
        os.mkdir(mnt / d)
    (mnt / "d/e/b").write_bytes(b"b")


def _build(b: Ext4Backend) -> dict[str, Ino]:
    inos = {"": ROOT}
    for d in ("d", "d/e", "d/e/sub", "d/e/sub/deep", "d/x"):
        parent, _, name = d.rpartition("/")
        inos[d] = b.mkdir(inos[parent], name.encode(), 0o755, 0, 0).ino
    fh, attr = b.create(inos["d/e"], b"b", 0o644, OpenFlags.WRITE, 0, 0)
    b.write(fh, 0, b"b")
    b.release(fh)
    inos["d/e/b"] = attr.ino
    return inos


def _split(inos: dict[str, Ino], path: str) -> tuple[Ino, bytes]:
    parent, _, name = path.rpartition("/")
    return inos[parent], name.encode()


def test_rename_errors_in_the_kernels_order(make_image: Callable[..., Path]) -> None:
    need_root("loop mounts")
    ref, ours = make_image("default"), make_image("default")
    want = []
    with images.loop_mount(ref, "rw") as mnt:
        _build_kernel(mnt)
        for old, new, flags in CASES:
            want.append(renameat2(mnt / old, mnt / new, flags))
    b = Ext4Backend(ours, readonly=False)
    inos = _build(b)
    got = []
    for old, new, flags in CASES:
        try:
            b.rename(*_split(inos, old), *_split(inos, new), RenameFlags(flags))
            got.append(0)
        except VolfsError as exc:
            got.append(exc.errno)
    b.close()
    check(ours)
    assert [os.strerror(e) for e in got] == [os.strerror(e) for e in want], list(zip(CASES, got, want))
    assert sum(e == 0 for e in want) == 1  # only the rename onto itself succeeds: the tree is unchanged
