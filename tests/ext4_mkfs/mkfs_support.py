"""Helpers for the mkfs tests: the mkfs.ext4 oracle, image comparison, dumpe2fs, loop mounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from testsupport import loop_mount  # noqa: F401 - the one loop mount helper, re-exported

from testsupport import need_tool
from volfs.ext4.superblock import SUPERBLOCK

UUID = "11111111-2222-3333-4444-555555555555"
SEED = "99999999-8888-7777-6666-555555555555"
FAKE_TIME = 1700000000
MiB = 1 << 20
GiB = 1 << 30


def mke2fs(path: Path, size: int, block_size: int, *opts: str, extended: str = "") -> None:
    """The oracle: mkfs.ext4 with our UUID, hash seed and time, on a fresh sparse file.

    ``extended`` is added to the one ``-E`` option (a second ``-E`` would replace it).
    """
    mk = need_tool("mkfs.ext4")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(size)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FAKE_TIME))
    env.pop("MKE2FS_CONFIG", None)
    proc = subprocess.run([mk, "-q", "-F", "-b", str(block_size), "-U", UUID, "-E",
                           f"hash_seed={SEED},lazy_itable_init=1" + (f",{extended}" if extended else ""), *opts, str(path)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        pytest.fail(f"mkfs.ext4 failed:\n{proc.stdout}{proc.stderr}")


def _data_segments(path: Path) -> list[tuple[int, int]]:
    """The (start, end) byte ranges of ``path`` that hold data (SEEK_DATA/SEEK_HOLE)."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def differing_blocks(a: Path, b: Path, block_size: int) -> list[int]:
    """Blocks whose bytes differ between two images of the same size (only their data is read)."""
    assert a.stat().st_size == b.stat().st_size
    segs = sorted(_data_segments(a) + _data_segments(b))
    merged: list[list[int]] = []
    for s, e in segs:
        s -= s % block_size
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out: list[int] = []
    chunk = 1 << 20
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for s, e in merged:
            pos = s
            while pos < e:
                n = min(chunk, e - pos)
                x = os.pread(fa.fileno(), n, pos)
                y = os.pread(fb.fileno(), n, pos)
                if x != y:
                    for k in range(0, max(len(x), len(y)), block_size):
                        if x[k : k + block_size] != y[k : k + block_size]:
                            out.append((pos + k) // block_size)
                pos += n
    return sorted(set(out))


def superblock_fields(path: Path, offset: int) -> dict[str, int | bytes]:
    with open(path, "rb") as f:
        return SUPERBLOCK.unpack(os.pread(f.fileno(), 1024, offset)).values()


def dumpe2fs(path: Path, *args: str) -> str:
    tool = need_tool("dumpe2fs")
    proc = subprocess.run([tool, *args, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"dumpe2fs {' '.join(args)} {path} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def dumpe2fs_fields(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in dumpe2fs(path, "-h").splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def debugfs(path: Path, request: str) -> str:
    tool = need_tool("debugfs")
    proc = subprocess.run([tool, "-R", request, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"debugfs -R {request!r} {path} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


