"""volfs mount / unmount: readiness, state, locks, signals, stale mounts, the Python API."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fusemount.support import Mounter, teardown, wait_gone

import volfs
from volfs.errors import VolfsError, VolumeBusy
from volfs.home import resolve_home
from volfs.mounts import MountOptions, mounted_at, read_record, unmount
from volfs.sync import Volume



def test_mount_write_unmount(home: Path, dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    assert mounted_at(str(mp))
    (mp / "hello.txt").write_text("through fuse")
    assert (host / "hello.txt").read_text() == "through fuse"
    h = Volume.get("dvol", home=home)
    assert h.mountpoint == mp and any("mounted at" in r for r in h.in_use)
    with pytest.raises(VolumeBusy, match="mounted at"):
        Volume.remove("dvol", home=home)
    rec = unmount(resolve_home(home), str(mp))
    assert not mounted_at(str(mp))
    wait_gone(rec.pid)
    assert read_record(resolve_home(home), "dvol") is None
    assert Volume.get("dvol", home=home).in_use == ()
    Volume.remove("dvol", home=home)


def test_unmount_by_name(home: Path, dir_mount: tuple[Path, Path]) -> None:
    mp, _ = dir_mount
    unmount(resolve_home(home), "dvol")
    assert not mounted_at(str(mp))


def test_second_mount_of_same_volume_fails(home: Path, dir_mount: tuple[Path, Path], mounter: Mounter) -> None:
    with pytest.raises(VolumeBusy, match="already mounted"):
        mounter("dvol")


def test_mount_on_non_directory_or_busy_mountpoint(home: Path, dir_mount: tuple[Path, Path], tmp_path: Path) -> None:
    Volume.create("other", home=home)
    f = tmp_path / "file"
    f.write_text("x")
    from volfs.mounts import mount

    with pytest.raises(VolfsError) as info:
        mount(resolve_home(home), "other", f, MountOptions())
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(VolfsError) as info:
        mount(resolve_home(home), "other", dir_mount[0], MountOptions())
    assert info.value.errno == errno.EBUSY


def test_mount_fails_when_volume_locked(home: Path, mounter: Mounter) -> None:
    vol = Volume.create("locked", home=home)
    fs_lock = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,os,sys; fd=os.open({str(vol.path)!r}, os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert fs_lock.stdout is not None and fs_lock.stdout.readline().strip() == "locked"
        with pytest.raises(VolumeBusy) as info:
            mounter("locked")
        assert info.value.errno == errno.EBUSY and "locked" in str(info.value)
        assert Volume.get("locked", home=home).mountpoint is None
    finally:
        assert fs_lock.stdin is not None
        fs_lock.stdin.close()
        fs_lock.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(home: Path, dir_mount: tuple[Path, Path], sig: int) -> None:
    mp, host = dir_mount
    (mp / "f").write_text("data")
    rec = read_record(resolve_home(home), "dvol")
    assert rec is not None
    os.kill(rec.pid, sig)
    wait_gone(rec.pid)
    assert not mounted_at(str(mp))
    assert read_record(resolve_home(home), "dvol") is None
    assert (host / "f").read_text() == "data"
    Volume.remove("dvol", home=home)  # the lock was released


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_the_moment_the_mount_is_ready(home: Path, mounter: Mounter, tmp_path: Path, sig: int) -> None:
    """A signal sent as soon as the mount is ready waits for the daemon's handler: a clean stop, not a kill."""
    Volume.create("early", home=home, kind="disk", size_mib=16)
    rec = mounter("early")
    os.kill(rec.pid, sig)
    wait_gone(rec.pid, log=tmp_path / "daemon-early.log")
    assert not mounted_at(rec.mountpoint)
    assert read_record(resolve_home(home), "early") is None
    assert "volume early closed" in (tmp_path / "daemon-early.log").read_text()
    Volume.remove("early", home=home)  # the lock was released


def test_stale_mount_is_cleaned_by_unmount(home: Path, dir_mount: tuple[Path, Path]) -> None:
    mp, _ = dir_mount
    rec = read_record(resolve_home(home), "dvol")
    assert rec is not None
    os.kill(rec.pid, signal.SIGKILL)
    wait_gone(rec.pid)
    assert mounted_at(str(mp))  # the kernel mount outlives a killed daemon
    with pytest.raises(OSError) as info:
        os.listdir(mp)
    assert info.value.errno == errno.ENOTCONN
    unmount(resolve_home(home), "dvol")
    assert not mounted_at(str(mp))
    assert read_record(resolve_home(home), "dvol") is None
    assert Volume.get("dvol", home=home).in_use == ()


def test_python_api_blocking(home: Path, tmp_path: Path) -> None:
    from testsupport import need

    need(os.path.exists("/dev/fuse"), "/dev/fuse is not available")
    Volume.create("api", home=home)
    mp = tmp_path / "m"
    mp.mkdir()
    handle = Volume.get("api", home=home)
    try:
        with handle.mount(mp) as rec:
            (mp / "a.txt").write_bytes(b"abc")
            assert rec.mountpoint == str(mp)
        assert not mounted_at(str(mp))
        with handle.mount(mp, readonly=True):
            assert (mp / "a.txt").read_bytes() == b"abc"
            with pytest.raises(OSError) as info:
                (mp / "b.txt").write_bytes(b"no")
            assert info.value.errno == errno.EROFS
        assert not mounted_at(str(mp))
    finally:
        teardown(home, "api", mp)


@pytest.mark.trio
async def test_python_api_async(home: Path, tmp_path: Path) -> None:
    from testsupport import need

    need(os.path.exists("/dev/fuse"), "/dev/fuse is not available")
    await volfs.Volume.create("aapi", home=home)
    mp = tmp_path / "m"
    mp.mkdir()
    handle = await volfs.Volume.get("aapi", home=home)
    try:
        async with handle.mount(mp):
            (mp / "x").write_text("y")
        assert not mounted_at(str(mp))
        assert (handle.path / "x").read_text() == "y"
    finally:
        teardown(home, "aapi", mp)


def volfs_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "volfs")
    return subprocess.run([exe, "--home", str(home), *args], capture_output=True, text=True, timeout=120)


def test_cli_mount_ls_unmount(home: Path, tmp_path: Path) -> None:
    from testsupport import need

    need(os.path.exists("/dev/fuse"), "/dev/fuse is not available")
    mp = tmp_path / "cli-mnt"
    mp.mkdir()
    assert volfs_cli(home, "create", "c").returncode == 0
    try:
        r = volfs_cli(home, "mount", "c", str(mp), "--log", str(tmp_path / "daemon.log"))
        assert r.returncode == 0, r.stderr
        assert f"mounted at {mp}" in r.stdout
        (mp / "file").write_text("cli")
        listing = json.loads(volfs_cli(home, "ls", "--json").stdout)
        assert listing[0]["mountpoint"] == str(mp)
        assert f"mounted:{mp}" in volfs_cli(home, "ls").stdout
        r = volfs_cli(home, "rm", "c")
        assert r.returncode == 1 and "mounted" in r.stderr
        r = volfs_cli(home, "unmount", str(mp))
        assert r.returncode == 0, r.stderr
        assert not mounted_at(str(mp))
        r = volfs_cli(home, "unmount", "c")
        assert r.returncode == 1 and "no volfs mount" in r.stderr
        assert "serving volume c" in (tmp_path / "daemon.log").read_text()
    finally:
        teardown(home, "c", mp)


@pytest.mark.parametrize(
    "args",
    [["--owner", "1:2:3"], ["--uid-map", "0:1000"], ["--owner", "a:b"], ["--owner", "0:0", "--uid-map", "0:1000:1"]],
)
def test_cli_mount_bad_options(home: Path, tmp_path: Path, args: list[str]) -> None:
    volfs_cli(home, "create", "c")
    r = volfs_cli(home, "mount", "c", str(tmp_path), *args)
    assert r.returncode == 1 and r.stderr.startswith("volfs: ")
    assert not mounted_at(str(tmp_path))


def test_cli_foreground_mount(home: Path, tmp_path: Path) -> None:
    from testsupport import need

    need(os.path.exists("/dev/fuse"), "/dev/fuse is not available")
    mp = tmp_path / "fg"
    mp.mkdir()
    assert volfs_cli(home, "create", "fg").returncode == 0
    exe = os.path.join(os.path.dirname(sys.executable), "volfs")
    proc = subprocess.Popen([exe, "--home", str(home), "mount", "fg", str(mp), "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not mounted_at(str(mp)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the foreground mount never became ready"
            time.sleep(0.05)  # polling for the mount
        (mp / "x").write_text("fg")
        r = volfs_cli(home, "unmount", "fg")
        assert r.returncode == 0, r.stderr
        assert proc.wait(timeout=60) == 0
        assert (home / "volumes" / "fg" / "x").read_text() == "fg"
    finally:
        teardown(home, "fg", mp)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unmount_refuses_while_files_are_open(home: Path, dir_mount: tuple[Path, Path]) -> None:
    mp, _ = dir_mount
    with open(mp / "held", "w") as held:
        held.write("x")
        os.chdir(mp)  # a busy working directory too
        try:
            with pytest.raises(VolumeBusy, match="busy"):
                unmount(resolve_home(home), "dvol")
        finally:
            os.chdir("/")
    assert mounted_at(str(mp))
    unmount(resolve_home(home), "dvol")
    assert not mounted_at(str(mp))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_early_signal_stops_a_daemon_started_ignoring_it(home: Path, mounter: Mounter, tmp_path: Path,
                                                            sig: int) -> None:
    """A daemon started by a process that ignores SIGINT and SIGQUIT (as a shell's background job without job
    control does: ``volfs mount ... &`` in a script) still stops cleanly on a signal sent the moment it is ready."""
    Volume.create("bg", home=home, kind="disk", size_mib=16)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        rec = mounter("bg")  # (the daemon inherits the ignored dispositions)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    os.kill(rec.pid, sig)
    wait_gone(rec.pid, log=tmp_path / "daemon-bg.log")
    assert not mounted_at(rec.mountpoint)
    assert "volume bg closed" in (tmp_path / "daemon-bg.log").read_text()


def test_sigusr1_writes_where_the_daemon_is_to_its_log(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    """``kill -USR1`` makes the daemon write its Python tracebacks to its log, and nothing else: it goes on serving."""
    Volume.create("dump", home=home, kind="disk", size_mib=16)
    rec = mounter("dump")
    log = tmp_path / "daemon-dump.log"
    os.kill(rec.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "most recent call first" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert "most recent call first" in text and "daemon.py" in text, text
    (Path(rec.mountpoint) / "after").write_bytes(b"still serving")
    assert (Path(rec.mountpoint) / "after").read_bytes() == b"still serving"
    os.kill(rec.pid, 0)  # (raises if the daemon is gone)
