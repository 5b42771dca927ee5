"""Helpers shared by every test module (importable as ``testsupport``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def need(condition: bool, reason: str) -> None:
    """Skip the calling test when ``condition`` is false, saying why.

    A skip is only allowed on machines that truly lack something; under CI
    (``CI`` set) every requirement must hold, so a missing one fails instead.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def need_root(why: str) -> None:
    need(is_root(), f"needs root: {why}")


def need_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/sbin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def e2fsck_clean(image: str | Path) -> None:
    """Fail with e2fsck's own output unless ``e2fsck -fn`` finds ``image`` clean."""
    e2fsck = need_tool("e2fsck")
    proc = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"e2fsck -fn {image} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")


@contextlib.contextmanager
def loop_mount(image: str | Path, options: str = "ro,noload") -> Iterator[Path]:
    """Mount an ext4 ``image`` through a loop device; always unmounts (lazily as a last resort).

    A refused mount fails the test with the kernel's reason and the end of dmesg.
    """
    need_root("loop mounts")
    mnt = Path(tempfile.mkdtemp(prefix="volfs-loop-"))
    try:
        proc = subprocess.run(["mount", "-t", "ext4", "-o", f"loop,{options}", str(image), str(mnt)],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout[-1500:]
            pytest.fail(f"the kernel refused to mount {image}: {proc.stderr.strip()}\n{dmesg}")
        try:
            yield mnt
        finally:
            for _ in range(20):
                if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                    break
                subprocess.run(["sync"])
            else:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def renameat2(old: str | os.PathLike[str], new: str | os.PathLike[str], flags: int) -> int:
    """renameat2(2) through libc: 0, or the errno it failed with."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags)
    return 0 if rc == 0 else ctypes.get_errno()


def flip_bits(path: str | os.PathLike[str], offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` of file ``path`` with ``mask``: a corruption made on purpose."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))
