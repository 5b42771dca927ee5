"""Helpers for FUSE tests: real mounts served by the volfs daemon in a subprocess.

Every mount is torn down by a finalizer that unmounts through volfs and, if
that fails, detaches the mount lazily and kills the daemon: a hung mount must
never hang the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testsupport import need, need_tool

from volfs.errors import VolfsError
from volfs.home import resolve_home
from volfs import mounts
from volfs.mounts import MountOptions, MountRecord, mounted_at, mount, read_record, unmount
from volfs.sync import Volume


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def teardown(home: Path, name: str, mountpoint: Path) -> None:
    h = resolve_home(home)
    record = read_record(h, name)
    try:
        if record is not None:
            unmount(h, name, timeout=30)
    except VolfsError:
        pass
    if mounted_at(str(mountpoint)):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    if record is not None:
        try:
            os.kill(record.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


Mounter = Callable[..., MountRecord]


def wait_gone(pid: int, timeout: float = 30, log: Path | None = None) -> None:
    """Wait until daemon ``pid`` has exited (and reap it: it is this process's child).

    If it has not, the failure says where each of its threads waits in the kernel and, with its
    ``log``, in Python (the daemon dumps its tracebacks there on SIGUSR1), with the end of that
    log: a daemon that does not stop is a bug to be found from one failed run.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mounts._pid_alive(pid):
            child = mounts._children.pop(pid, None)
            if child is not None:
                child.wait()
            return
        time.sleep(0.05)
    if log is not None:
        os.kill(pid, signal.SIGUSR1)  # the daemon writes its Python tracebacks to its log
        time.sleep(0.5)
    raise AssertionError(f"pid {pid} still alive after {timeout} s\n{_where(pid)}"
                         + (f"\nits log:\n{log.read_text()[-4000:]}" if log is not None and log.exists() else ""))


def _where(pid: int) -> str:
    """Each thread of ``pid``: its state, kernel wait channel and (as root) kernel stack."""
    out = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        parts = [f"thread {task.name}"]
        for name in ("stat", "wchan", "status", "stack"):
            try:
                text = (task / name).read_text().strip()
            except OSError:
                continue
            if name == "stat":
                text = "state " + text.rsplit(")", 1)[-1].split()[0]
            elif name == "status":  # pending, blocked, ignored and caught signals (hex masks)
                text = " ".join(line.replace("\t", "") for line in text.splitlines()
                                if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
            elif name == "stack":
                text = "stack:\n" + text
            parts.append(text)
        out.append("\n".join(parts))
    return "\n".join(out)
