#!/usr/bin/env python3
"""Overhead of the volfs handle (PathFs over DirectoryBackend) against plain os calls.

Runs each workload on the same host directory, once with ``os`` and once
through the handle, and prints seconds and the ratio (handle / os; 1.0 means
no overhead). Workloads: read and write of one 256 MiB file; create, stat and
list of 10,000 small files.

    .venv/bin/python scripts/bench/handle_vs_os.py [--dir DIR] [--mib 256] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable

from volfs.backends.directory import DirectoryBackend
from volfs.pathfs import PathFs


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best(fn: Callable[[], object], setup: Callable[[], object] | None = None, runs: int = 3) -> float:
    """Best of ``runs`` (the least disturbed by the rest of the machine)."""
    out = []
    for _ in range(runs):
        if setup is not None:
            setup()
        out.append(timed(fn))
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dir", default=None, help="work directory (default: a fresh temp dir)")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()

    base = tempfile.mkdtemp(prefix="volfs-bench-", dir=args.dir)
    try:
        run(base, args.mib << 20, args.files)
    finally:
        shutil.rmtree(base)


def run(base: str, size: int, nfiles: int) -> None:
    payload = os.urandom(1 << 20) * (size >> 20)
    fs = PathFs(DirectoryBackend(base))
    rows: list[tuple[str, float, float]] = []

    big = os.path.join(base, "big.bin")

    def os_write() -> None:
        fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def os_read() -> None:
        with open(big, "rb") as f:
            assert len(f.read()) == size

    def vol_read() -> None:
        assert len(fs.read("big.bin")) == size

    rows.append((f"write {size >> 20} MiB", best(os_write), best(lambda: fs.write("big.bin", payload))))
    rows.append((f"read {size >> 20} MiB", best(os_read), best(vol_read)))
    os.unlink(big)

    small = b"x" * 100
    d_os = os.path.join(base, "os")
    names = [f"f{i:05}" for i in range(nfiles)]

    def reset_os() -> None:
        shutil.rmtree(d_os, ignore_errors=True)
        os.mkdir(d_os)

    def reset_vol() -> None:
        if fs.exists("vol"):
            fs.remove_dir("vol")
        fs.mkdir("vol")

    def os_create() -> None:
        for n in names:
            fd = os.open(os.path.join(d_os, n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, small)
            os.close(fd)

    def vol_create() -> None:
        for n in names:
            fs.write(f"vol/{n}", small)

    rows.append((f"create {nfiles} files", best(os_create, reset_os), best(vol_create, reset_vol)))

    def os_stat() -> None:
        for n in names:
            os.stat(os.path.join(d_os, n))

    def vol_stat() -> None:
        for n in names:
            fs.stat(f"vol/{n}")

    rows.append((f"stat {nfiles} files", best(os_stat), best(vol_stat)))

    def os_list() -> None:
        # What list() returns: names plus lstat of each, sorted.
        with os.scandir(d_os) as it:
            out = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        assert len(out) == nfiles

    def vol_list() -> None:
        assert len(fs.list("vol")) == nfiles

    rows.append((f"list {nfiles} files", best(os_list), best(vol_list)))
    fs.close()

    print(f"{'workload':<24}{'os (s)':>10}{'volfs (s)':>12}{'ratio':>8}")
    for name, t_os, t_vol in rows:
        print(f"{name:<24}{t_os:>10.3f}{t_vol:>12.3f}{t_vol / t_os:>8.2f}")


if __name__ == "__main__":
    main()
