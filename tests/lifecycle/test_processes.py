"""Several processes at once, locks held by other processes, and crashes between steps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from volfs.errors import VolumeBusy, VolumeExists
from volfs.sync import Volume, VolumeStatus


def run_py(code: str, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=timeout, check=check
    )


class Holder:
    """A child process that holds a flock on a path until told to stop."""

    def __init__(self, path: Path, mode: str) -> None:
        code = f"""
            import fcntl, os, sys
            fd = os.open({str(path)!r}, os.O_RDONLY)
            fcntl.flock(fd, fcntl.{mode})
            print("locked", flush=True)
            sys.stdin.read()
        """
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_exclusive_holder_blocks_remove_and_rw_access(home: Path) -> None:
    vol = Volume.create("img", home=home, kind="disk", size_mib=64)
    holder = Holder(vol.disk_path, "LOCK_EX")
    try:
        with pytest.raises(VolumeBusy) as info:
            Volume.remove("img", home=home)
        assert "img" in str(info.value)
        assert Volume.get("img", home=home).in_use  # shown as in use
        from volfs.locks import AccessLock

        with pytest.raises(VolumeBusy, match="img"):
            AccessLock(vol.disk_path, "img", exclusive=True)
        with pytest.raises(VolumeBusy, match="in use for writing"):
            AccessLock(vol.disk_path, "img", exclusive=False)
        with pytest.raises(VolumeBusy, match="img"):
            Volume.get("img", home=home).fs  # no access at all while a sandbox writes the image
    finally:
        holder.stop()
    assert vol.disk_path.is_file()
    Volume.remove("img", home=home)


def test_shared_holder_allows_readers_not_writers(home: Path) -> None:
    from volfs.locks import AccessLock

    vol = Volume.create("img", home=home, kind="disk", size_mib=64)
    holder = Holder(vol.disk_path, "LOCK_SH")  # a read-only sandbox attach
    try:
        with AccessLock(vol.disk_path, "img", exclusive=False):
            pass
        with pytest.raises(VolumeBusy):
            AccessLock(vol.disk_path, "img", exclusive=True)
        with pytest.raises(VolumeBusy):
            Volume.remove("img", home=home)
    finally:
        holder.stop()


def test_directory_volume_lock_blocks_remove(home: Path) -> None:
    vol = Volume.create("d", home=home)
    holder = Holder(vol.path, "LOCK_SH")
    try:
        with pytest.raises(VolumeBusy):
            Volume.remove("d", home=home)
    finally:
        holder.stop()
    Volume.remove("d", home=home)


def test_name_lock_times_out(home: Path) -> None:
    from volfs.home import resolve_home
    from volfs.locks import name_lock

    Volume.create("n", home=home)
    lock_file = resolve_home(home).lock_file("n")
    holder = Holder(lock_file, "LOCK_EX")
    try:
        with pytest.raises(VolumeBusy, match="timed out"):
            with name_lock(lock_file, "n", timeout=0.3):
                pass
    finally:
        holder.stop()


CREATE_CHILD = """
    import sys
    from volfs.sync import Volume
    from volfs.errors import VolumeExists
    home, name, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    try:
        Volume.create(name, home=home, kind=kind, size_mib=64 if kind == "disk" else None)
        print("created")
    except VolumeExists:
        print("exists")
"""


@pytest.mark.parametrize("kind", ["dir", "disk"])
def test_concurrent_creates_same_name(home: Path, kind: str) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(CREATE_CHILD), str(home), "race", kind],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]  # fmt: skip
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["created"] + ["exists"] * 5
    assert [h.name for h in Volume.list(home=home)] == ["race"]
    assert sorted(os.listdir(home / "volumes")) == [".locks", "race"]


def test_concurrent_creates_different_names(home: Path) -> None:
    names = [f"v{i}" for i in range(8)]
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(CREATE_CHILD), str(home), n, "dir"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in names
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "created", err
    handles = Volume.list(home=home)
    assert sorted(h.name for h in handles) == names
    assert all(h.status is VolumeStatus.OK for h in handles)
    ids = sqlite3.connect(home / "db" / "volfs.db").execute("SELECT count(*), count(DISTINCT id) FROM volume").fetchone()
    assert ids == (8, 8)


CRASH_CHILD = """
    import os, signal, sys
    import volfs._faults
    from volfs.sync import Volume
    home, op, point = sys.argv[1], sys.argv[2], sys.argv[3]
    def reached(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)
    volfs._faults.reached = reached
    if op == "create":
        Volume.create("vol", home=home, kind="disk", size_mib=64)
    else:
        Volume.remove("vol", home=home)
    print("finished")
"""


def crash(home: Path, op: str, point: str) -> None:
    proc = run_py(CRASH_CHILD, str(home), op, point)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)


def visible(home: Path) -> dict[str, VolumeStatus]:
    return {h.name: h.status for h in Volume.list(home=home)}


@pytest.mark.parametrize("point", ["create:tempdir", "create:materialized"])
def test_crash_before_rename_leaves_nothing_visible(home: Path, point: str) -> None:
    crash(home, "create", point)
    assert visible(home) == {}
    assert any(e.startswith(".vol.tmp-") for e in os.listdir(home / "volumes"))
    Volume.create("vol", home=home, kind="disk", size_mib=64)  # the name is free and the leftover is swept
    assert visible(home) == {"vol": VolumeStatus.OK}
    assert sorted(os.listdir(home / "volumes")) == [".locks", "vol"]


def test_crash_after_rename_is_an_unregistered_orphan(home: Path) -> None:
    crash(home, "create", "create:renamed")
    assert visible(home) == {"vol": VolumeStatus.UNREGISTERED}
    with pytest.raises(VolumeExists):
        Volume.create("vol", home=home)
    Volume.remove("vol", home=home)
    assert visible(home) == {}
    Volume.create("vol", home=home)


def test_crash_after_register_is_a_healthy_volume(home: Path) -> None:
    crash(home, "create", "create:registered")
    assert visible(home) == {"vol": VolumeStatus.OK}


def test_crash_after_remove_rename_is_a_missing_orphan(home: Path) -> None:
    Volume.create("vol", home=home, kind="disk", size_mib=64)
    crash(home, "remove", "remove:renamed")
    assert visible(home) == {"vol": VolumeStatus.MISSING}
    Volume.remove("vol", home=home)
    assert visible(home) == {}
    assert sorted(os.listdir(home / "volumes")) == [".locks"]


def test_crash_after_unregister_leaves_only_a_dot_dir(home: Path) -> None:
    Volume.create("vol", home=home, kind="disk", size_mib=64)
    crash(home, "remove", "remove:unregistered")
    assert visible(home) == {}
    assert any(e.startswith(".vol.del-") for e in os.listdir(home / "volumes"))
    Volume.create("vol", home=home)  # sweeps the leftover under the name lock
    assert sorted(os.listdir(home / "volumes")) == [".locks", "vol"]


def test_sweep_spares_other_names(home: Path) -> None:
    other = home / "volumes" / ".a.b.tmp-0123abcd"  # belongs to volume "a.b", not "a"
    other.mkdir(parents=True)
    Volume.create("a", home=home)
    Volume.remove("a", home=home)
    assert other.is_dir()


def test_a_registry_lock_longer_than_the_busy_timeout_is_waited_out(home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Another process keeps the registry write-locked past SQLite's busy timeout (shortened to
    # 0.2 s here): a create waits for it instead of failing with EBUSY, and nothing is lost.
    import threading
    import time

    from volfs import registry

    Volume.create("first", home=home, kind="dir")
    db = home / "db" / "volfs.db"
    monkeypatch.setattr(registry, "BUSY_TIMEOUT_MS", 200)
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.5)
        conn.execute("COMMIT")
        conn.close()
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        Volume.create("second", home=home, kind="dir")
        assert done.is_set()  # it could only have been written after the lock went
    finally:
        holder.join()
    assert sorted(h.name for h in Volume.list(home=home)) == ["first", "second"]
