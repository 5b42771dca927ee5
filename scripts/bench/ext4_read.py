#!/usr/bin/env python3
"""Benchmark the ext4 engine's read side against its peers, side by side (needs root for the loop mount).

1. Large contiguous file: read it in 1 MiB requests, compared with os.pread of the same bytes of the
   image (the ceiling for a userspace reader), the kernel loop mount (O_DIRECT-free, page cache
   dropped first), `debugfs cat`, and the PyPI readers `ext4` and `dissect.extfs`.
2. Walk + stat of a 100,000-file tree: volfs (readdir + getattr), the kernel (os.walk + lstat),
   `debugfs rdump`, `ext4` and `dissect.extfs`.

Usage: .venv/bin/python scripts/bench/ext4_read.py [--size-mib 1024] [--files 100000]
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "ext4")]

import ext4_images as images  # noqa: E402
from volfs.ext4 import Filesystem  # noqa: E402

CHUNK = 1 << 20


def drop_caches() -> None:
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def timed(fn: Callable[[], object]) -> float:
    drop_caches()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def build(work: Path, size_mib: int, files: int) -> Path:
    image = images.mkfs(work / "bench.img", None, f"{size_mib + 1024}M", "-b", "4096", "-N", str(files + 1000))
    with images.loop_mount(image, "rw") as mnt:
        with open(mnt / "big.bin", "wb") as f:
            block = os.urandom(CHUNK)
            for _ in range(size_mib):
                f.write(block)
        for d in range(100):
            sub = mnt / "tree" / f"d{d:03d}"
            sub.mkdir(parents=True)
            for i in range(files // 100):
                fd = os.open(sub / f"f{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"x" * (i % 200))
                os.close(fd)
    return image


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=100_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="volfs-bench-"))
    try:
        image = build(work, args.size_mib, args.files)
        fs = Filesystem.open(image)
        big = fs.lookup(2, b"big.bin")
        size = big.size
        rl = fs.runlist(fs.inode(big.ino))
        print(f"image {image.stat().st_size >> 20} MiB, big.bin {size >> 20} MiB in {len(rl)} run(s)")

        # --- large file ---
        results: dict[str, float] = {}
        fd = os.open(image, os.O_RDONLY)
        start = rl.runs[0].physical or 0

        def raw() -> None:
            off = 0
            while off < size:
                os.pread(fd, CHUNK, start * fs.block_size + off)
                off += CHUNK

        def ours() -> None:
            off = 0
            while off < size:
                fs.read(big.ino, off, CHUNK)
                off += CHUNK

        results["os.pread on the image"] = timed(raw)
        results["volfs.ext4"] = timed(ours)
        with images.loop_mount(image) as mnt:
            def kernel() -> None:
                with open(mnt / "big.bin", "rb", buffering=0) as f:
                    while f.read(CHUNK):
                        pass
            results["kernel loop mount"] = timed(kernel)
        results["debugfs cat"] = timed(lambda: subprocess.run(
            [images.tool("debugfs"), "-R", "cat /big.bin", str(image)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, check=True))
        try:
            import ext4 as pyext4

            def pypi_ext4() -> None:
                with open(image, "rb") as f:
                    vol = pyext4.Volume(f)
                    num = next(e.inode for e, _ in vol.root.opendir() if e.name_str == "big.bin")
                    r = vol.inodes[num].open()
                    while r.read(CHUNK):
                        pass
            results["PyPI ext4"] = timed(pypi_ext4)
        except Exception as exc:  # noqa: BLE001
            print(f"PyPI ext4: cannot read: {exc!r}")
        try:
            from dissect.extfs import ExtFS

            def dissect() -> None:
                with open(image, "rb") as f:
                    r = ExtFS(f).get("/big.bin").open()
                    while r.read(CHUNK):
                        pass
            results["dissect.extfs"] = timed(dissect)
        except Exception as exc:  # noqa: BLE001
            print(f"dissect.extfs: cannot read: {exc!r}")
        print(f"\nlarge file ({size >> 20} MiB, {CHUNK >> 10} KiB requests, cold cache):")
        base = results["os.pread on the image"]
        for k, v in results.items():
            print(f"  {k:24s} {v:7.3f} s  {size / v / 2**20:8.0f} MiB/s  time ratio vs os.pread {v / base:5.2f}")

        # --- walk + stat ---
        walk: dict[str, float] = {}

        def ours_walk() -> int:
            f2 = Filesystem.open(image)
            n = 0
            stack = [f2.lookup_ino(2, b"tree")]
            while stack:
                ino = stack.pop()
                for e in f2.readdir(ino):
                    if e.name in (b".", b".."):
                        continue
                    a = f2.getattr(e.ino)
                    n += 1
                    if a.mode & 0o170000 == 0o040000:
                        stack.append(e.ino)
            return n

        walk["volfs.ext4"] = timed(ours_walk)
        with images.loop_mount(image) as mnt:
            def kwalk() -> None:
                for dirpath, dirnames, filenames in os.walk(mnt / "tree"):
                    for n in dirnames + filenames:
                        os.lstat(os.path.join(dirpath, n))
            walk["kernel loop mount"] = timed(kwalk)
        out = work / "rdump"
        out.mkdir()
        walk["debugfs rdump (copies data)"] = timed(lambda: subprocess.run(
            [images.tool("debugfs"), "-R", f"rdump /tree {out}", str(image)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, check=True))
        try:
            from dissect.extfs import ExtFS

            def dwalk() -> None:
                with open(image, "rb") as f:
                    e = ExtFS(f)
                    stack = [e.get("/tree")]
                    while stack:
                        node = stack.pop()
                        for child in node.iterdir():
                            if child.filename in (".", ".."):
                                continue
                            if child.filetype == 0o040000:
                                stack.append(child)
                            child.size  # noqa: B018 - forces the inode
            walk["dissect.extfs"] = timed(dwalk)
        except Exception as exc:  # noqa: BLE001
            print(f"dissect.extfs walk: {exc!r}")
        try:
            import ext4 as pyext4

            def ewalk() -> None:
                with open(image, "rb") as f:
                    vol = pyext4.Volume(f)
                    stack = [vol.inodes[next(e.inode for e, _ in vol.root.opendir() if e.name_str == "tree")]]
                    while stack:
                        d = stack.pop()
                        for entry, _ in d.opendir():
                            if entry.name_str in (".", ".."):
                                continue
                            ino = vol.inodes[entry.inode]
                            if isinstance(ino, pyext4.Directory):
                                stack.append(ino)
            walk["PyPI ext4"] = timed(ewalk)
        except Exception as exc:  # noqa: BLE001
            print(f"PyPI ext4 walk: {exc!r}")
        print(f"\nwalk + stat of {args.files} files in 100 directories (cold cache):")
        kbase = walk["kernel loop mount"]
        for k, v in walk.items():
            print(f"  {k:28s} {v:7.3f} s  ratio vs kernel {v / kbase:6.2f}")
        fs.close()
        os.close(fd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
