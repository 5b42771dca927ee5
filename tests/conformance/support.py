"""Helpers of the conformance suite: the standard tree and errno assertions."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from volfs.errors import VolfsError
from volfs.pathfs import PathFs

BIG_SIZE = (1 << 20) + 123
BIG = bytes(range(256)) * (BIG_SIZE // 256) + bytes(range(BIG_SIZE % 256))


def populate(root: Path) -> None:
    """Write the standard tree every read test expects, with plain os calls."""
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(BIG)
    (root / "dir" / "nested").mkdir(parents=True)
    (root / "dir" / "a.txt").write_bytes(b"a")
    (root / "dir" / "nested" / "deep.txt").write_bytes(b"deep")
    os.link(root / "dir" / "a.txt", root / "dir" / "hard")
    (root / "emptydir").mkdir()
    (root / "exec.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec.sh", 0o755)
    os.symlink("hello.txt", root / "link-rel")
    os.symlink("/dir/a.txt", root / "link-abs")
    os.symlink("dir", root / "link-dir")
    os.symlink("../../../../hello.txt", root / "link-up")
    os.symlink("nowhere", root / "dangling")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.mkfifo(root / "fifo")
    (root / "xattr.txt").write_bytes(b"x")
    os.setxattr(root / "xattr.txt", "user.color", b"blue")



def raises_errno(code: int, fn: Callable[..., object], *args: object, **kwargs: object) -> VolfsError:
    """Call ``fn`` and demand a VolfsError with errno ``code``; return it."""
    with pytest.raises(VolfsError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"
    return info.value


def mutate(fs: PathFs, fn: Callable[..., object], *args: object, **kwargs: object) -> bool:
    """Run a mutation: on a read-only handle demand EROFS and return False."""
    if fs.readonly:
        raises_errno(errno.EROFS, fn, *args, **kwargs)
        return False
    fn(*args, **kwargs)
    return True
