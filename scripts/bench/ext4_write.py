#!/usr/bin/env python3
"""Benchmark the ext4 engine's write side against its peers, side by side (root for the loop mount).

1. Large file: write it in 1 MiB requests through the backend (then fsync), compared with
   os.pwrite of the same bytes into the image file (the ceiling for a userspace writer) and the
   kernel loop mount (write + fsync).
2. 10,000 small files (4 KiB each) in one directory through the backend (then sync), compared with
   the kernel loop mount (write, then syncfs) and fuse2fs when it is installed.

Every volfs image is checked with e2fsck -fn afterwards.  Prints seconds and ratios.

Usage: .venv/bin/python scripts/bench/ext4_write.py [--size-mib 512] [--files 10000] [--extents 1500,6000]
       [--only large,small,fragmented]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "ext4")]

import ext4_images as images  # noqa: E402
from volfs.backend import Ino, OpenFlags  # noqa: E402
from volfs.backends.ext4 import Ext4Backend  # noqa: E402
from volfs.pathfs import PathFs  # noqa: E402

CHUNK = 1 << 20
RW = OpenFlags.READ | OpenFlags.WRITE


def fresh(work: Path, name: str, size: str) -> Path:
    return images.mkfs(work / name, None, size, "-b", "4096")


def fsck(image: Path) -> None:
    proc = subprocess.run([images.tool("e2fsck"), "-fn", str(image)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"e2fsck -fn {image} failed:\n{proc.stdout}{proc.stderr}")


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def bench_large(work: Path, size_mib: int) -> None:
    data = os.urandom(CHUNK)
    img_size = f"{size_mib * 2 + 256}M"
    image = fresh(work, "large.img", img_size)

    def volfs() -> None:
        b = Ext4Backend(image, readonly=False)
        fh, _ = b.create(Ino(2), b"large", 0o644, RW, 0, 0)
        for i in range(size_mib):
            b.write(fh, i * CHUNK, data)
        b.fsync(fh)
        b.release(fh)
        b.close()

    t_volfs = timed(volfs)
    fsck(image)

    raw = work / "raw.bin"
    raw.write_bytes(b"")
    os.truncate(raw, size_mib * CHUNK)

    def pwrite_all(path: Path) -> None:
        """The reference writer: 1 MiB pwrites, then fsync."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(size_mib):
                os.pwrite(fd, data, i * CHUNK)
            os.fsync(fd)
        finally:
            os.close(fd)

    t_pwrite = timed(lambda: pwrite_all(raw))
    print(f"large file, {size_mib} MiB in 1 MiB writes + fsync:")
    print(f"  volfs backend   {t_volfs:8.3f} s   {size_mib / t_volfs:8.1f} MiB/s")
    print(f"  os.pwrite       {t_pwrite:8.3f} s   ratio volfs/pwrite = {t_volfs / t_pwrite:.2f}")
    if os.geteuid() == 0:
        kimg = fresh(work, "large-k.img", img_size)
        with images.loop_mount(kimg, "rw") as mnt:

            t_kernel = timed(lambda: pwrite_all(mnt / "large"))
        print(f"  kernel mount    {t_kernel:8.3f} s   ratio volfs/kernel = {t_volfs / t_kernel:.2f}")


def bench_small(work: Path, files: int) -> None:
    payload = b"s" * 4096
    names = [b"f%06d" % i for i in range(files)]
    image = fresh(work, "small.img", "1G")

    def volfs() -> None:
        b = Ext4Backend(image, readonly=False)
        d = b.mkdir(Ino(2), b"d", 0o755, 0, 0).ino
        for n in names:
            fh, _ = b.create(d, n, 0o644, RW, 0, 0)
            b.write(fh, 0, payload)
            b.release(fh)
        b.sync()
        b.close()

    t_volfs = timed(volfs)
    fsck(image)
    himage = fresh(work, "small-h.img", "1G")

    def handle() -> None:
        # The Python user's path: VolumeFs.write (atomic: a temporary, then rename) per file.
        fs = PathFs(Ext4Backend(himage, readonly=False))
        fs.mkdir("/d")
        for n in names:
            fs.write("/d/" + n.decode(), payload)
        fs.close()

    t_handle = timed(handle)
    fsck(himage)
    print(f"{files} small files (4 KiB) in one directory, then sync:")
    print(f"  volfs backend   {t_volfs:8.3f} s   {files / t_volfs:8.0f} files/s")
    print(f"  volfs handle    {t_handle:8.3f} s   {files / t_handle:8.0f} files/s   (VolumeFs.write, atomic)")
    if os.geteuid() == 0:
        kimg = fresh(work, "small-k.img", "1G")
        with images.loop_mount(kimg, "rw") as mnt:

            def kernel() -> None:
                (mnt / "d").mkdir()
                for n in names:
                    fd = os.open(mnt / "d" / n.decode(), os.O_WRONLY | os.O_CREAT, 0o644)
                    os.write(fd, payload)
                    os.close(fd)
                fd = os.open(mnt, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                subprocess.run(["sync", "-f", str(mnt)], check=True)

            t_kernel = timed(kernel)
        print(f"  kernel mount    {t_kernel:8.3f} s   ratio volfs/kernel = {t_volfs / t_kernel:.2f}, "
              f"handle/kernel = {t_handle / t_kernel:.2f}")
    fuse2fs = shutil.which("fuse2fs")
    if fuse2fs and os.path.exists("/dev/fuse"):
        fimg = fresh(work, "small-f.img", "1G")
        mnt = Path(tempfile.mkdtemp(prefix="volfs-bench-fuse2fs-"))
        proc = subprocess.run([fuse2fs, str(fimg), str(mnt), "-o", "rw"], capture_output=True)
        if proc.returncode == 0:
            try:

                def fuse() -> None:
                    (mnt / "d").mkdir()
                    for n in names:
                        fd = os.open(mnt / "d" / n.decode(), os.O_WRONLY | os.O_CREAT, 0o644)
                        os.write(fd, payload)
                        os.close(fd)
                    subprocess.run(["sync", "-f", str(mnt)], check=True)

                t_fuse = timed(fuse)
                print(f"  fuse2fs         {t_fuse:8.3f} s   ratio volfs/fuse2fs = {t_volfs / t_fuse:.2f}, "
                      f"handle/fuse2fs = {t_handle / t_fuse:.2f}")
            finally:
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        else:
            print("  fuse2fs: mount failed, skipped")
        mnt.rmdir()
    else:
        print("  fuse2fs: not installed, skipped")


def bench_fragmented(work: Path, counts: list[int]) -> None:
    print("fragmented file (one extent per written block), 4 KiB blocks:")
    for n in counts:
        image = fresh(work, f"frag{n}.img", "1G")
        block = b"e" * 4096

        def volfs() -> None:
            b = Ext4Backend(image, readonly=False)
            fh, _ = b.create(Ino(2), b"frag", 0o644, RW, 0, 0)
            fh2, _ = b.create(Ino(2), b"filler", 0o644, RW, 0, 0)
            for i in range(n):
                b.write(fh, 2 * i * 4096, block)
                b.write(fh2, i * 4096, block)  # keeps the next extent of "frag" physically apart
            b.release(fh2)
            b.fsync(fh)
            b.release(fh)
            b.close()

        t = timed(volfs)
        fsck(image)
        print(f"  {n:6d} extents  {t:8.3f} s   {t / n * 1e3:7.3f} ms per extent (incl. the filler write)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--extents", default="1500,6000")
    ap.add_argument("--only", default="large,small,fragmented")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="volfs-bench-w-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        if "large" in only:
            bench_large(work, args.size_mib)
        if "small" in only:
            bench_small(work, args.files)
        if "fragmented" in only:
            bench_fragmented(work, [int(x) for x in args.extents.split(",")])


if __name__ == "__main__":
    main()
