"""Host mounts of volumes: starting the FUSE daemon, finding it, ending it.

Theory of operation
-------------------
``volfs mount`` never serves the filesystem in the calling process: a process
that reads its own FUSE mount from the thread that serves it deadlocks. It
starts the daemon (``python -m volfs_fuse.daemon``, the only code that imports
pyfuse3) in a new session and waits on a pipe until the daemon says
``ready`` (the kernel mount exists) or ``error: ...`` (then that message
becomes the error here). The daemon holds the volume's access lock for its
whole life and records itself in a state file
``<home>/volumes/.locks/<name>.mount`` (JSON: pid, mountpoint, options), which
``volfs ls`` and ``volfs unmount NAME`` read.

Unmounting asks the kernel (``fusermount3 -u``); the daemon's main loop then
ends, it flushes and closes the backend, releases the lock and deletes its
state file, and ``unmount`` waits for the process to exit, so when it returns
the image is consistent on disk. A daemon that died (killed, crashed) leaves
a stale mount ("Transport endpoint is not connected") and a stale state file;
``unmount`` detects the dead pid and detaches the mount lazily.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from volfs.errors import InvalidArgument, VolfsError, VolumeBusy, error
from volfs.home import Home
from volfs.names import host_component, validate_name

__all__ = ["MountOptions", "MountRecord", "mount", "unmount", "read_record", "list_records", "find_record"]

_READY_TIMEOUT = 60.0
_EXIT_TIMEOUT = 60.0
# Daemons started by this process, reaped by unmount (no zombies, no
# "subprocess still running" warnings in long-lived programs).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How a volume is mounted (the ``volfs mount`` flags)."""

    readonly: bool = False
    noexec: bool = False
    nosuid: bool = False
    nodev: bool = False
    allow_other: bool = False
    owner: tuple[int, int] | None = None
    uid_map: tuple[tuple[int, int, int], ...] = ()
    gid_map: tuple[tuple[int, int, int], ...] = ()
    log: str | None = None

    def validate(self) -> None:
        if self.owner is not None and (self.uid_map or self.gid_map):
            raise InvalidArgument("--owner and --uid-map/--gid-map exclude each other")
        for guest, host, count in (*self.uid_map, *self.gid_map):
            if min(guest, host) < 0 or count <= 0 or max(guest, host) + count > 2**32:
                raise InvalidArgument(f"invalid id map {guest}:{host}:{count}")


@dataclass(frozen=True, slots=True)
class MountRecord:
    """A live (or stale) mount, from its state file."""

    name: str
    mountpoint: str
    pid: int
    readonly: bool
    started: float
    options: dict[str, object] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """True if the daemon process still runs."""
        return _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def state_file(home: Home, name: str) -> Path:
    return home.locks / host_component("", name, ".mount")


def write_record(home: Home, record: MountRecord) -> None:
    """Write ``record`` atomically (the daemon calls this once mounted)."""
    path = state_file(home, record.name)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def remove_record(home: Home, name: str, pid: int | None = None) -> None:
    """Delete the state file of ``name`` (only if it is ``pid``'s, when given)."""
    path = state_file(home, name)
    if pid is not None:
        record = read_record(home, name)
        if record is None or record.pid != pid:
            return
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_record(home: Home, name: str) -> MountRecord | None:
    """The state file of ``name``, or None (a damaged file reads as None)."""
    try:
        data = json.loads(state_file(home, name).read_text())
        return MountRecord(
            name=str(data["name"]),
            mountpoint=str(data["mountpoint"]),
            pid=int(data["pid"]),
            readonly=bool(data["readonly"]),
            started=float(data["started"]),
            options=dict(data.get("options") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_records(home: Home) -> list[MountRecord]:
    """Every mount state file under ``home`` (live and stale)."""
    try:
        names = sorted(p.name for p in home.locks.iterdir() if p.name.endswith(".mount"))
    except OSError:
        return []
    records = []
    for entry in names:
        try:
            data = json.loads((home.locks / entry).read_text())
            record = read_record(home, str(data["name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record is not None:
            records.append(record)
    return records


def mounted_at(path: str) -> bool:
    """True if ``path`` is a mount point in this mount namespace."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == real:
                    return True
    except OSError:
        pass
    return False


def _unescape(raw: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) + 1 and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _fusermount() -> str:
    found = shutil.which("fusermount3") or shutil.which("fusermount")
    if found is None:
        raise error(errno.ENOENT, "fusermount3 is not installed (Debian package fuse3)", "fusermount3")
    return found


def find_record(home: Home, target: str) -> MountRecord | None:
    """The mount named by ``target``: a volume name or a mount point path."""
    try:
        record = read_record(home, validate_name(target))
        if record is not None:
            return record
    except VolfsError:
        pass
    real = os.path.realpath(target)
    return next((r for r in list_records(home) if os.path.realpath(r.mountpoint) == real), None)


def mount(home: Home, name: str, mountpoint: str | os.PathLike[str], options: MountOptions, *,
          foreground: bool = False) -> MountRecord:  # fmt: skip
    """Mount volume ``name`` at ``mountpoint``; return once the mount is ready.

    With ``foreground`` this process becomes the daemon (``exec``) and serves
    until unmounted (``volfs mount --foreground``); it does not return.
    """
    validate_name(name)
    options.validate()
    mp = os.path.abspath(os.fspath(mountpoint))
    if not os.path.isdir(mp):
        raise error(errno.ENOTDIR, "mount point is not a directory", mp)
    if mounted_at(mp):
        raise error(errno.EBUSY, "something is already mounted there", mp)
    existing = read_record(home, name)
    if existing is not None and existing.alive:
        raise VolumeBusy(name, f"volume is already mounted at {existing.mountpoint} (pid {existing.pid})")
    args = json.dumps({"home": str(home.root), "volumes": str(home.volumes), "name": name, "mountpoint": mp,
                       "options": asdict(options)})  # fmt: skip
    if foreground:
        # Become the daemon: it serves until unmounted, then exits with its status.
        os.execv(sys.executable, [sys.executable, "-m", "volfs_fuse.daemon", args])
    read_end, write_end = os.pipe()
    log = open(options.log, "ab") if options.log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "volfs_fuse.daemon", args, str(write_end)],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        os.close(write_end)
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
    try:
        status = _wait_ready(read_end, proc)
    finally:
        os.close(read_end)
    if status != "ready":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise _daemon_failure(status, name)
    record = read_record(home, name)
    if record is None:  # pragma: no cover - the daemon writes it before saying ready
        raise error(errno.EIO, "the mount daemon did not record itself", name)
    _children[proc.pid] = proc
    return record


def _daemon_failure(status: str, name: str) -> VolfsError:
    """The error a daemon reported (``error {"errno", "message", "path"}``), rebuilt here."""
    if status.startswith("error "):
        try:
            detail = json.loads(status[len("error ") :])
            code, message = int(detail["errno"]), str(detail["message"])
            if code == errno.EBUSY:
                return VolumeBusy(name, message)
            return error(code, message, detail.get("path") or name)
        except (ValueError, KeyError, TypeError):
            pass
    if status.startswith("timeout"):
        return error(errno.ETIMEDOUT, "timed out waiting for the mount to become ready", name)
    return error(errno.EIO, "the mount daemon exited before the mount was ready (see its --log)", name)


def _wait_ready(fd: int, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + _READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None and not buf:
            break
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def unmount(home: Home, target: str, *, timeout: float = _EXIT_TIMEOUT) -> MountRecord:
    """Unmount a volume by name or mount point and wait for its daemon to finish.

    A stale mount (daemon gone) is detached lazily and its state file removed.
    Raises VolumeBusy if the kernel refuses because files are open there.
    """
    record = find_record(home, target)
    if record is None:
        raise error(errno.EINVAL, "no volfs mount of that name or at that path", target)
    mp = record.mountpoint
    if not record.alive:
        if mounted_at(mp):
            subprocess.run([_fusermount(), "-u", "-z", mp], capture_output=True)
        remove_record(home, record.name)
        return record
    proc = subprocess.run([_fusermount(), "-u", mp], capture_output=True, text=True)
    if proc.returncode != 0 and mounted_at(mp):
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        detail = reason[-1] if reason else f"exit status {proc.returncode}"
        if "busy" in detail.lower():
            raise VolumeBusy(record.name, f"mount at {mp} is busy (files are open there)")
        raise error(errno.EIO, f"unmount failed: {detail}", mp)
    deadline = time.monotonic() + timeout
    while _pid_alive(record.pid):
        if time.monotonic() > deadline:
            os.kill(record.pid, signal.SIGTERM)
            raise error(errno.ETIMEDOUT, f"the mount daemon (pid {record.pid}) did not finish in {timeout:g}s", mp)
        time.sleep(0.05)  # polling another process's exit
    child = _children.pop(record.pid, None)
    if child is not None:
        child.wait()
    remove_record(home, record.name, record.pid)
    return record
