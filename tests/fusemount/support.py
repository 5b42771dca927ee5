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


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait until daemon ``pid`` has exited (and reap it: it is this process's child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mounts._pid_alive(pid):
            child = mounts._children.pop(pid, None)
            if child is not None:
                child.wait()
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")
