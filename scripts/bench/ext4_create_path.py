#!/usr/bin/env python3
"""Benchmark the ext4 engine's small-file create path as a FUSE mount drives it.

Per new file the backend gets what the kernel sends for ``open(O_CREAT)``,
one 4 KiB write and ``close``: a negative LOOKUP of the name, GETATTR of the
directory, CREATE, WRITE, RELEASE and FORGET.  All files go into one fresh
(htree-indexed once it outgrows a block) directory of a new 1 GiB image
made by our own mkfs.  Prints milliseconds per file, both wall clock and the
process's CPU time (steadier on a shared machine), and the close (final
commit) time.  ``--check`` runs ``e2fsck -fn`` on the image afterwards.

``--tar ARCHIVE`` replays extracting ARCHIVE as tar(1) would through a
mount instead: per directory a MKDIR; per regular file a negative LOOKUP,
CREATE, 10 KiB WRITEs, SETATTR of the owner, of the mode and of the times,
and RELEASE (other members are skipped).  FILES then limits the members
replayed (0: all).

Usage: .venv/bin/python scripts/bench/ext4_create_path.py [FILES] [--check] [--tar ARCHIVE]
       PROF=1 ... prints a cProfile of the create loop (by internal time); PROF_OUT=path also saves it.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from volfs.backend import Ino, OpenFlags, SetAttr  # noqa: E402
from volfs.backends.ext4 import Ext4Backend  # noqa: E402
from volfs.errors import VolfsError  # noqa: E402
from volfs.ext4.mkfs import mkfs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="?", type=int, default=4000)
    ap.add_argument("--check", action="store_true", help="e2fsck -fn the image afterwards")
    ap.add_argument("--tar", metavar="ARCHIVE", help="replay extracting this tar archive instead")
    args = ap.parse_args()
    n: int = args.files
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="volfs-create-"))
    try:
        img = work / "bench.img"
        mkfs(img, 1 << 30)
        b = Ext4Backend(img, readonly=False)
        if args.tar:
            loop, n, unit = _tar_replay(b, Path(args.tar), n)
        else:
            loop, unit = _create_loop(b, n), "file"

        wall, cpu = time.perf_counter(), time.process_time()
        if os.environ.get("PROF"):
            prof = cProfile.Profile()
            prof.runcall(loop)
            if os.environ.get("PROF_OUT"):
                prof.dump_stats(os.environ["PROF_OUT"])
        else:
            loop()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        t = time.perf_counter()
        b.close()
        closing = time.perf_counter() - t
        print(f"{n} {unit}s: {wall / n * 1e3:.3f} ms/{unit} wall, {cpu / n * 1e3:.3f} ms/{unit} cpu "
              f"({wall:.2f}s wall, {cpu:.2f}s cpu); close {closing:.2f}s")
        if os.environ.get("PROF"):
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        if args.check:
            r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
            print("e2fsck -fn:", "clean" if r.returncode == 0 else f"exit {r.returncode}\n{r.stdout}{r.stderr}")
            if r.returncode != 0:
                return 1
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _create_loop(b: Ext4Backend, n: int) -> Callable[[], None]:
    d = b.mkdir(b.root, b"small", 0o755, 0, 0).ino
    data = os.urandom(4096)

    def loop() -> None:
        for i in range(n):
            name = b"f%06d" % i
            try:
                b.lookup(d, name)
            except VolfsError:
                pass  # ENOENT: the kernel's negative lookup before CREATE
            b.getattr(d)
            fh, attr = b.create(d, name, 0o644, OpenFlags.WRITE, 0, 0)
            b.write(fh, 0, data)
            b.release(fh)
            b.forget(attr.ino)

    return loop


def _tar_replay(b: Ext4Backend, archive: Path, limit: int) -> tuple[Callable[[], None], int, str]:
    """The loop replaying ``archive`` (members read into memory first), and how many members it replays."""
    members: list[tuple[str, bytes | None, int, int]] = []
    with tarfile.open(archive) as t:
        for m in t:
            if m.isdir():
                members.append((m.name.rstrip("/"), None, m.mode, int(m.mtime)))
            elif m.isfile():
                f = t.extractfile(m)
                assert f is not None
                members.append((m.name, f.read(), m.mode, int(m.mtime)))
    if limit:
        members = members[:limit]
    flags = OpenFlags.from_os(os.O_WRONLY | os.O_CREAT | os.O_EXCL)

    def loop() -> None:
        dirs: dict[str, Ino] = {"": b.root, ".": b.root}
        for name, data, mode, mtime in members:
            parent_path, _, base = name.rpartition("/")
            parent = dirs.get(parent_path)
            if parent is None:
                continue  # a member whose directory the archive does not list first
            nb = base.encode()
            if data is None:
                dirs[name] = b.mkdir(parent, nb, mode & 0o7777, 0, 0).ino
                continue
            try:
                b.lookup(parent, nb)
            except VolfsError:
                pass  # ENOENT: the kernel's negative lookup before CREATE
            fh, attr = b.create(parent, nb, 0o644, flags, 0, 0)
            for off in range(0, len(data), 10240):
                b.write(fh, off, data[off : off + 10240])
            b.setattr(attr.ino, SetAttr(uid=0, gid=0), fh)
            b.setattr(attr.ino, SetAttr(mode=mode & 0o7777), fh)
            b.setattr(attr.ino, SetAttr(atime_ns=mtime * 10**9, mtime_ns=mtime * 10**9), None)
            b.release(fh)
            b.forget(attr.ino)

    return loop, len(members), "member"


if __name__ == "__main__":
    sys.exit(main())
