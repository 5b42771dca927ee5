#!/usr/bin/env python3
"""Benchmark the ext4 engine's small-file create path as a FUSE mount drives it.

Per new file the backend gets what the kernel sends for ``open(O_CREAT)``,
one 4 KiB write and ``close``: a negative LOOKUP of the name, GETATTR of the
directory, CREATE, WRITE, RELEASE and FORGET.  All files go into one fresh
(htree-indexed once it outgrows a block) directory of a new 1 GiB image
made by our own mkfs.  Prints milliseconds per file, both wall clock and the
process's CPU time (steadier on a shared machine), and the close (final
commit) time.  ``--check`` runs ``e2fsck -fn`` on the image afterwards.

Usage: .venv/bin/python scripts/bench/ext4_create_path.py [FILES] [--check]
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from volfs.backend import OpenFlags  # noqa: E402
from volfs.backends.ext4 import Ext4Backend  # noqa: E402
from volfs.errors import VolfsError  # noqa: E402
from volfs.ext4.mkfs import mkfs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="?", type=int, default=4000)
    ap.add_argument("--check", action="store_true", help="e2fsck -fn the image afterwards")
    args = ap.parse_args()
    n: int = args.files
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="volfs-create-"))
    try:
        img = work / "bench.img"
        mkfs(img, 1 << 30)
        b = Ext4Backend(img, readonly=False)
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
        print(f"{n} files: {wall / n * 1e3:.3f} ms/file wall, {cpu / n * 1e3:.3f} ms/file cpu; "
              f"close {closing:.2f}s")
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


if __name__ == "__main__":
    sys.exit(main())
