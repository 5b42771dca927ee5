#!/usr/bin/env python3
"""Replay the FUSE requests of a ``tar`` extract through the FUSE layer, without the kernel.

What ``scripts/bench/fuse_mount.py``'s tar workload costs the daemon in its
own handlers (the FUSE layer, the write-behind and the ext4 engine), with
none of the kernel's or pyfuse3's per-request cost and none of the noise of
a shared machine's scheduling: ``VolfsOperations`` of a fresh 1 GiB image
(our mkfs) gets the requests GNU tar's extract sends through a volfs disk
mount, in order, as observed by recording a real mount (Linux 6.x,
``default_permissions``, run as root with umask 0):

- per directory: GETATTR of the parent, LOOKUP (miss), MKDIR (mode 0700);
  at the very end, in reverse order, SETATTR of its mtime, of its owner and
  of its mode;
- per regular file: GETATTR of the parent, LOOKUP (miss), CREATE (mode
  0600, write-only), WRITEs of up to 10 KiB that end at the archive's 10 KiB
  record boundaries (tar writes what each record holds), SETATTR of the
  mtime, GETXATTR ``security.capability`` (miss) and GETATTR (both from the
  kernel's chown), SETATTR of the owner, SETATTR of the mode, RELEASE.

Prints the CPU time, the requests per kind with their time, and checks the
image with ``e2fsck -fn``. ``--profile`` adds a cProfile by internal time.

``--instructions`` counts instructions instead of time: valgrind's callgrind
runs this script twice, once in full and once with ``--setup-only`` (the
same archive read, image made and mount objects built, but no request), and
the difference is what the replay itself executed. Unlike CPU time, that
count does not move with the load of a shared machine (the same code gives
the same count to within a few parts in ten thousand), so it can tell
whether a change to the daemon's per-request work helped, where timing runs
on a noisy host cannot. It takes a few minutes; valgrind is a Debian package.

Usage: .venv/bin/python scripts/bench/fuse_requests.py [ARCHIVE] [--profile | --instructions]
(default ARCHIVE: a tar of Python's standard library, made as fuse_mount.py makes it)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "bench")]

import pyfuse3  # noqa: E402

from volfs.backends.ext4 import Ext4Backend  # noqa: E402
from volfs.ext4.mkfs import mkfs  # noqa: E402
from volfs_fuse.daemon import tune_gc  # noqa: E402
from volfs_fuse.idmap import IdMap  # noqa: E402
from volfs_fuse.operations import VolfsOperations  # noqa: E402

RECORD = 10240  # tar's default record size: it writes file data in these pieces
CAPS = b"security.capability"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
Request = tuple[str, Callable[..., Coroutine[Any, Any, Any]], tuple[Any, ...]]


def _fields(**set_: bool) -> SimpleNamespace:
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid",
             "update_size")
    return SimpleNamespace(**{n: set_.get(n, False) for n in names})


def _attr(**values: int) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    for k, v in values.items():
        setattr(e, k, v)
    return e


class Replay:
    """The request stream of extracting one archive, run against ``ops``."""

    def __init__(self, ops: VolfsOperations) -> None:
        self.ops = ops
        self.ctx = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0)
        self.times: dict[str, list[float]] = {}

    def _call(self, kind: str, *args: Any) -> Any:
        start = time.perf_counter()
        coro = getattr(self.ops, kind)(*args)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        except pyfuse3.FUSEError:
            return None
        finally:
            t = self.times.setdefault(kind, [0, 0.0])
            t[0] += 1
            t[1] += time.perf_counter() - start
        raise RuntimeError(f"{kind} awaited: handlers are expected never to")

    def run(self, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
        ctx = self.ctx
        inos: dict[str, int] = {"": pyfuse3.ROOT_INODE, ".": pyfuse3.ROOT_INODE}
        made_dirs: list[tuple[int, tarfile.TarInfo]] = []
        for m, data in members:
            name = m.name.rstrip("/")
            parent_path, _, base = name.rpartition("/")
            parent = inos.get(parent_path)
            if parent is None:
                continue
            nb = base.encode()
            self._call("getattr", parent, ctx)
            self._call("lookup", parent, nb, ctx)
            if data is None:
                entry = self._call("mkdir", parent, nb, stat.S_IFDIR | 0o700, ctx)
                inos[name] = entry.st_ino
                made_dirs.append((entry.st_ino, m))
                continue
            info, entry = self._call("create", parent, nb, stat.S_IFREG | 0o600, CREATE_FLAGS, ctx)
            ino, fh = entry.st_ino, info.fh
            pos = 0
            while pos < len(data):
                n = min(len(data) - pos, RECORD - (m.offset_data + pos) % RECORD)
                self._call("write", fh, pos, data[pos : pos + n])
                pos += n
            self._set_times_owner_mode(ino, m)
            self._call("release", fh)
        for ino, m in reversed(made_dirs):
            self._set_times_owner_mode(ino, m, dir_=True)

    def _set_times_owner_mode(self, ino: int, m: tarfile.TarInfo, dir_: bool = False) -> None:
        # The kernel names a file handle in SETATTR only for truncation: these come without one.
        ctx, fh = self.ctx, None
        self._call("setattr", ino, _attr(st_mtime_ns=int(m.mtime) * 10**9), _fields(update_mtime=True), fh, ctx)
        if not dir_:
            self._call("getxattr", ino, CAPS, ctx)
            self._call("getattr", ino, ctx)
        self._call("setattr", ino, _attr(st_uid=0, st_gid=0), _fields(update_uid=True, update_gid=True), fh, ctx)
        kind = stat.S_IFDIR if dir_ else stat.S_IFREG
        self._call("setattr", ino, _attr(st_mode=kind | (m.mode & 0o7777)), _fields(update_mode=True), fh, ctx)


def read_members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(archive) as t:
        for m in t:
            if m.isdir():
                out.append((m, None))
            elif m.isfile():
                f = t.extractfile(m)
                assert f is not None
                out.append((m, f.read()))
    return out


def _callgrind(archive: Path, *flags: str) -> tuple[int, str]:
    """(instructions executed, standard output) of this script run under callgrind with ``flags``."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, str(Path(__file__).resolve()), str(archive), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout}{r.stderr[-2000:]}")
    return int(found.group(1)), r.stdout


def count_instructions(archive: Path) -> int:
    """Print what the replay of ``archive`` executes, setup excluded (see the module header)."""
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind (Debian package valgrind)", file=sys.stderr)
        return 2
    base, _ = _callgrind(archive, "--setup-only")
    total, out = _callgrind(archive)
    sys.stdout.write(out)
    counts = re.search(r"^(\d+) requests for (\d+) members", out, re.MULTILINE)
    if counts is None:
        raise SystemExit("the replay printed no request count")
    requests, members = int(counts.group(1)), int(counts.group(2))
    replay = total - base
    print(f"instructions: {replay / 1e6:.1f} M for the replay ({total / 1e6:.1f} M in all, "
          f"{base / 1e6:.1f} M without a request): {replay / requests / 1e3:.1f} k per request, "
          f"{replay / members / 1e3:.1f} k per member")
    return 0 if "e2fsck -fn: clean" in out else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", nargs="?", type=Path)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--profile", action="store_true", help="print a cProfile of the replay (by internal time)")
    mode.add_argument("--instructions", action="store_true",
                      help="count the instructions the replay executes, under valgrind (see the module docstring)")
    mode.add_argument("--setup-only", action="store_true",
                      help="do everything but the replay (the baseline of --instructions)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="volfs-requests-"))
    try:
        archive = args.archive
        if archive is None:
            from fuse_mount import source_tarball

            archive = source_tarball(work, Path(sysconfig.get_paths()["stdlib"]))
        if args.instructions:
            return count_instructions(archive)
        members = read_members(archive)
        img = work / "bench.img"
        mkfs(img, 1 << 30)
        backend = Ext4Backend(img, readonly=False)
        ops = VolfsOperations(backend, IdMap((0, 0)), exclusive=True)
        replay = Replay(ops)
        tune_gc()  # as the daemon does before it serves
        if args.setup_only:
            ops.drain()
            backend.close()
            return 0
        wall, cpu = time.perf_counter(), time.process_time()
        prof = cProfile.Profile() if args.profile else None
        if prof is not None:
            prof.runcall(replay.run, members)
        else:
            replay.run(members)
        ops.drain()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        backend.close()
        n = sum(c for c, _ in replay.times.values())
        print(f"{n} requests for {len(members)} members: {cpu:.2f}s cpu ({wall:.2f}s wall), "
              f"{cpu / n * 1e6:.1f} us cpu per request")
        for kind, (count, t) in sorted(replay.times.items(), key=lambda kv: -kv[1][1]):
            print(f"  {kind:10} {count:7d} {t:7.3f}s {t / count * 1e6:8.1f} us")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
        print("e2fsck -fn:", "clean" if r.returncode == 0 else f"exit {r.returncode}\n{r.stdout}{r.stderr}")
        return 0 if r.returncode == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
