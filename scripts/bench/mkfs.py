#!/usr/bin/env python3
"""Benchmark volfs mkfs against mkfs.ext4 on sparse image files of 1, 20 and 100 GiB.

Each tool formats a freshly created sparse file (best of N runs, each on a new
file, including the final fsync both tools do).  mkfs.ext4 runs with its
defaults plus -q -F; volfs mkfs with its defaults (the same feature set and
layout).  Prints wall times, the bytes each left allocated in the file, and
the ratio volfs / mkfs.ext4.

Usage: .venv/bin/python scripts/bench/mkfs.py [--sizes-gib 1 20 100] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from volfs.ext4.mkfs import mkfs  # noqa: E402


def fresh(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def best_of(runs: int, prepare: Callable[[], None], action: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(runs):
        prepare()
        t0 = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-gib", type=int, nargs="+", default=[1, 20, 100])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the images (default: a temp dir)")
    args = ap.parse_args()
    mke2fs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    work = Path(tempfile.mkdtemp(prefix="volfs-bench-mkfs-", dir=args.dir))
    try:
        print(f"{'size':>8} {'volfs mkfs':>12} {'mkfs.ext4':>12} {'ratio':>7} {'volfs alloc':>12} {'ext4 alloc':>12}")
        for gib in args.sizes_gib:
            size = gib << 30
            a = work / "volfs.img"
            b = work / "mke2fs.img"
            t_volfs = best_of(args.runs, lambda: a.unlink(missing_ok=True), lambda: mkfs(a, size))
            t_ext4 = best_of(args.runs, lambda: fresh(b, size),
                             lambda: subprocess.run([mke2fs, "-q", "-F", str(b)], check=True))
            alloc_a = a.stat().st_blocks * 512
            alloc_b = b.stat().st_blocks * 512
            print(f"{gib:>5}GiB {t_volfs * 1000:>10.1f}ms {t_ext4 * 1000:>10.1f}ms {t_volfs / t_ext4:>7.2f}"
                  f" {alloc_a / 1024:>10.0f}KiB {alloc_b / 1024:>10.0f}KiB")
            a.unlink()
            b.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o022)
    main()
