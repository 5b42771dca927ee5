"""Tree walkers that compare the engine's view with the kernel's (or each other)."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from volfs.ext4 import Filesystem, ROOT_INO

BIG = 64 * 1024 * 1024


@dataclass(frozen=True)
class Node:
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None
    xattrs: tuple[tuple[bytes, bytes], ...]
    digest: str | None


def _digest_chunks(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _sample_offsets(size: int) -> list[int]:
    return sorted({0, size // 3, 4 * 1024**3 - 4096, 4 * 1024**3 + 8192, max(size - 65536, 0)} - {size})


def kernel_tree(mnt: Path) -> dict[bytes, Node]:
    out: dict[bytes, Node] = {}

    def visit(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple((n.encode(), os.getxattr(path, n, follow_symlinks=False)) for n in names)
        digest = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                if st.st_size <= BIG:
                    digest = _digest_chunks([f.read()])
                else:
                    parts = []
                    for off in _sample_offsets(st.st_size):
                        f.seek(off)
                        parts.append(f.read(65536))
                    digest = _digest_chunks(parts)
        out[rel] = Node(st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                        st.st_blocks, st.st_rdev, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
                        target if isinstance(target, bytes) else None, xattrs, digest)
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(path):
                visit(os.path.join(path, name), rel + b"/" + name)

    visit(os.fsencode(mnt), b"")
    return out


def engine_tree(fs: Filesystem) -> dict[bytes, Node]:
    out: dict[bytes, Node] = {}

    def visit(ino: int, rel: bytes) -> None:
        a = fs.getattr(ino)
        target = fs.readlink(ino) if stat.S_ISLNK(a.mode) else None
        xattrs = tuple(sorted(fs.xattrs(ino).items()))
        digest = None
        if stat.S_ISREG(a.mode):
            if a.size <= BIG:
                digest = _digest_chunks([fs.read(ino, 0, a.size + 10)])
            else:
                digest = _digest_chunks([fs.read(ino, off, 65536) for off in _sample_offsets(a.size)])
        out[rel] = Node(a.mode, a.nlink, a.uid, a.gid, a.size, a.blocks, a.rdev, a.atime_ns, a.mtime_ns,
                        a.ctime_ns, target, xattrs, digest)
        if stat.S_ISDIR(a.mode):
            for e in fs.readdir(ino):
                if e.name in (b".", b".."):
                    continue
                assert fs.lookup_ino(ino, e.name) == e.ino
                visit(e.ino, rel + b"/" + e.name)

    visit(ROOT_INO, b"")
    return out


def diff_trees(ours: dict[bytes, Node], theirs: dict[bytes, Node]) -> list[str]:
    problems = []
    for p in sorted(set(ours) | set(theirs)):
        if p not in ours:
            problems.append(f"{p!r}: missing from the engine's view")
        elif p not in theirs:
            problems.append(f"{p!r}: only in the engine's view")
        elif ours[p] != theirs[p]:
            a, b = ours[p], theirs[p]
            fields = [f for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)]
            problems.append(f"{p!r}: differs in {fields}: engine {[getattr(a, f) for f in fields]} "
                            f"kernel {[getattr(b, f) for f in fields]}")
    return problems
