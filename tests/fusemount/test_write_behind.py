"""Write-behind of appends through write-only handles (fuse/writebehind.py).

The handlers are driven directly (no kernel) over a real ext4 backend whose
writes are counted, so each test can say exactly when bytes reach the
backend: never later than the next request that is not a continuing WRITE.
A real mount then fills a volume: ENOSPC must come from the write(2) that
does not fit, and every byte acknowledged before it must be in the image
(e2fsck clean, read back by the kernel); on a hostile image, a failure met
only by the drain is fsync's error, as a failed writeback is on ext4.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fusemount.support import Mounter, wait_gone
from testsupport import e2fsck_clean, flip_bits, loop_mount, need, need_root

from volfs.backend import FileHandle, OpenFlags, SetAttr
from volfs.backends.ext4 import Ext4Backend
from volfs.ext4.mkfs import mkfs
from volfs.sync import Volume

try:
    import pyfuse3
    import trio

    from volfs_fuse.idmap import IdMap
    from volfs_fuse.operations import VolfsOperations
    from volfs_fuse.writebehind import RUN_MAX
except ImportError:  # the FUSE extra is not installed
    pyfuse3 = None

CTX = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)  # what handlers read from a RequestContext
CHUNK = 10240  # tar's record size


class Counting:
    """The backend, with its writes recorded as (offset, length)."""

    def __init__(self, backend: Ext4Backend) -> None:
        self._b = backend
        self.writes: list[tuple[int, int]] = []
        self.thens: list[SetAttr | None] = []  # each write's attribute changes
        self.fail: Exception | None = None
        self.fail_then: Exception | None = None  # for writes with changes only
        self.then_fails_after_write = False  # as a backend that writes, then fails to change
        self.statfs_calls = 0
        self.setattrs: list[SetAttr] = []  # every setattr's changes
        self.fail_setattr: Callable[[SetAttr], bool] | None = None  # which setattrs fail with EIO

    def statfs(self) -> Any:
        self.statfs_calls += 1
        return self._b.statfs()

    def setattr(self, ino: Any, changes: SetAttr, fh: FileHandle | None = None) -> Any:
        self.setattrs.append(changes)
        if self.fail_setattr is not None and self.fail_setattr(changes):
            raise OSError(errno.EIO, "device error")
        return self._b.setattr(ino, changes, fh)

    def write(self, fh: FileHandle, offset: int, data: bytes, then: SetAttr | None = None) -> int:
        if self.fail is not None:
            raise self.fail
        if then is not None and self.fail_then is not None:
            if self.then_fails_after_write:
                self.writes.append((offset, len(data)))
                self.thens.append(None)
                self._b.write(fh, offset, data)
            raise self.fail_then
        self.writes.append((offset, len(data)))
        self.thens.append(then)
        return self._b.write(fh, offset, data, then)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)


class Harness:
    def __init__(self, image: Path, exclusive: bool = True) -> None:
        self.engine = Ext4Backend(image, readonly=False)
        self.backend = Counting(self.engine)
        self.ops = VolfsOperations(self.backend, IdMap((0, 0)), exclusive=exclusive)  # type: ignore[arg-type]

    def call(self, name: str, *args: Any) -> Any:
        return trio.run(getattr(self.ops, name), *args)

    def create(self, name: bytes, flags: int = os.O_WRONLY) -> tuple[int, int]:
        info, attr = self.call("create", 1, name, 0o644, flags | os.O_CREAT, CTX)
        return info.fh, attr.st_ino

    def content(self, ino: int) -> bytes:
        fh = self.engine.open(ino, OpenFlags.READ)
        try:
            return self.engine.read(fh, 0, 1 << 30)
        finally:
            self.engine.release(fh)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    need(pyfuse3 is not None, "pyfuse3 is not installed")
    image = tmp_path / "img.raw"
    mkfs(image, 64 << 20)
    h = Harness(image)
    yield h
    h.engine.close()
    e2fsck_clean(image)


def chunks(n: int, seed: int = 0) -> list[bytes]:
    return [bytes([(seed + i) % 251]) * CHUNK for i in range(n)]


def test_appends_reach_the_backend_as_one_write(harness: Harness) -> None:
    fh, ino = harness.create(b"f")
    data = chunks(8)
    for i, c in enumerate(data):
        assert harness.call("write", fh, i * CHUNK, c) == CHUNK
    assert harness.backend.writes == []  # all pending
    attr = harness.call("getattr", ino, CTX)  # any other request drains first
    assert harness.backend.writes == [(0, 8 * CHUNK)]
    assert attr.st_size == 8 * CHUNK
    assert harness.content(ino) == b"".join(data)
    harness.call("release", fh)


@pytest.mark.parametrize("request_name", ["lookup", "getattr", "setattr", "read", "fsync", "release", "statfs",
                                          "listxattr", "unlink", "forget"])  # fmt: skip
def test_every_other_request_drains_first(harness: Harness, request_name: str) -> None:
    fh, ino = harness.create(b"f")
    other_fh, other_ino = harness.create(b"g", os.O_RDWR)
    harness.call("write", fh, 0, b"x" * CHUNK)
    assert harness.backend.writes == []
    calls = {
        "lookup": lambda: harness.call("lookup", 1, b"f", CTX),
        "getattr": lambda: harness.call("getattr", other_ino, CTX),
        "setattr": lambda: harness.call("setattr", other_ino, _attrs(mode=0o600), _fields(update_mode=True), None, CTX),
        "read": lambda: harness.call("read", other_fh, 0, 10),
        "fsync": lambda: harness.call("fsync", other_fh, False),
        "release": lambda: harness.call("release", other_fh),
        "statfs": lambda: harness.call("statfs", CTX),
        "listxattr": lambda: harness.call("listxattr", other_ino, CTX),
        "unlink": lambda: harness.call("unlink", 1, b"g", CTX),
        "forget": lambda: harness.call("forget", [(other_ino, 1)]),
    }
    calls[request_name]()
    assert harness.backend.writes == [(0, CHUNK)]
    assert harness.engine.getattr(ino).size == CHUNK
    assert harness.content(ino) == b"x" * CHUNK


def _attrs(**kw: int) -> Any:
    a = pyfuse3.EntryAttributes()
    for k, v in kw.items():
        setattr(a, f"st_{k}", v)
    return a


def _fields(**kw: bool) -> Any:
    """What setattr reads from pyfuse3's SetattrFields (whose attributes are read-only)."""
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid", "update_size")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


WHEN = 1_500_000_000_123_456_789


def test_a_setattr_of_the_pending_file_goes_with_its_bytes(harness: Harness) -> None:
    """tar's utimensat (and any SETATTR but a truncate) of the file whose bytes are pending reaches
    the backend with them, as one write; its answer is the file's state after both."""
    fh, ino = harness.create(b"f")
    data = chunks(3)
    for i, c in enumerate(data):
        harness.call("write", fh, i * CHUNK, c)
    attr = harness.call("setattr", ino, _attrs(mtime_ns=WHEN, mode=0o100600),
                        _fields(update_mtime=True, update_mode=True), fh, CTX)
    assert harness.backend.writes == [(0, 3 * CHUNK)]
    assert harness.backend.thens == [SetAttr(mode=0o600, mtime_ns=WHEN)]
    assert (attr.st_mtime_ns, attr.st_mode, attr.st_size) == (WHEN, 0o100600, 3 * CHUNK)
    got = harness.engine.getattr(ino)
    assert (got.mtime_ns, got.mode, got.size, got.blocks) == (WHEN, 0o100600, 3 * CHUNK, attr.st_blocks)
    assert harness.content(ino) == b"".join(data)
    # Nothing pending now: the owner's SETATTR is answered, and made before the next request.
    attr = harness.call("setattr", ino, _attrs(uid=7, gid=8), _fields(update_uid=True, update_gid=True), fh, CTX)
    assert len(harness.backend.writes) == 1 and (attr.st_uid, attr.st_gid) == (7, 8)
    # A truncate does not go with the bytes: drained first, then truncated.
    harness.call("write", fh, 3 * CHUNK, b"t" * 100)
    assert (harness.engine.getattr(ino).uid, harness.engine.getattr(ino).gid) == (7, 8)
    attr = harness.call("setattr", ino, _attrs(size=10), _fields(update_size=True), fh, CTX)
    assert harness.backend.thens[1:] == [None] and attr.st_size == 10
    harness.call("release", fh)


@pytest.mark.parametrize("failure", ["changes only", "both", "after the write"])
def test_a_failed_write_with_changes_is_done_apart(harness: Harness, failure: str, caplog: Any) -> None:
    """When the write with the changes fails, the run is written alone (unless the file shows it
    stood), its failure is the handle's as any drain's, and the SETATTR is made apart, with its own
    answer: no byte twice, no change lost."""
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"x" * CHUNK)
    harness.backend.fail_then = OSError(errno.EIO, "device error")
    harness.backend.then_fails_after_write = failure == "after the write"
    if failure == "both":
        harness.backend.fail = OSError(errno.EIO, "device error")
    attr = harness.call("setattr", ino, _attrs(mtime_ns=WHEN), _fields(update_mtime=True), fh, CTX)
    harness.backend.fail = harness.backend.fail_then = None
    assert attr.st_mtime_ns == WHEN == harness.engine.getattr(ino).mtime_ns
    if failure == "both":
        assert harness.backend.writes == [] and harness.engine.getattr(ino).size == 0
        assert "write-behind" in caplog.text
        with pytest.raises(pyfuse3.FUSEError) as err:
            harness.call("fsync", fh, False)  # the run's failure: the handle's, once
        assert err.value.errno == errno.EIO
    else:
        assert harness.backend.writes == [(0, CHUNK)] and harness.backend.thens == [None]
        assert harness.content(ino) == b"x" * CHUNK
    harness.call("fsync", fh, False)
    harness.call("release", fh)


def test_write_through_another_handle_keeps_order(harness: Harness) -> None:
    """A pending run is written before another handle's overlapping write, so the later write wins."""
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"a" * CHUNK)
    harness.call("write", fh, CHUNK, b"a" * CHUNK)
    info = harness.call("open", ino, os.O_RDWR, CTX)
    harness.call("write", info.fh, 5000, b"b" * 100)
    want = bytearray(b"a" * 2 * CHUNK)
    want[5000:5100] = b"b" * 100
    assert harness.content(ino) == bytes(want)
    # And a second write-only handle of the same file, too.
    fh2 = harness.call("open", ino, os.O_WRONLY, CTX).fh
    harness.call("write", fh, 2 * CHUNK, b"c" * CHUNK)
    harness.call("write", fh2, 2 * CHUNK + 10, b"d" * 10)
    harness.call("getattr", ino, CTX)
    want += b"c" * CHUNK
    want[2 * CHUNK + 10 : 2 * CHUNK + 20] = b"d" * 10
    assert harness.content(ino) == bytes(want)


def test_only_appends_at_the_end_wait(harness: Harness) -> None:
    """A run starts only at the end of the file and below RUN_MAX; anything else is written at once."""
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"a" * CHUNK)
    harness.call("getattr", ino, CTX)
    harness.backend.writes.clear()
    harness.call("write", fh, 100, b"b" * 10)  # an overwrite inside the file
    assert harness.backend.writes == [(100, 10)]
    harness.call("write", fh, 1 << 20, b"c" * 10)  # past the end: a hole
    assert harness.backend.writes[-1] == (1 << 20, 10)
    harness.call("write", fh, (1 << 20) + 10, b"d" * RUN_MAX)  # too big to wait
    assert harness.backend.writes[-1] == ((1 << 20) + 10, RUN_MAX)
    n = len(harness.backend.writes)
    harness.call("write", fh, (1 << 20) + 10 + RUN_MAX, b"e" * (RUN_MAX - 1))
    harness.call("write", fh, (1 << 20) + 10 + 2 * RUN_MAX - 1, b"f" * 2)  # would overflow the run: drains it
    assert harness.backend.writes[n:] == [((1 << 20) + 10 + RUN_MAX, RUN_MAX - 1)]
    harness.call("release", fh)
    assert harness.backend.writes[-1] == ((1 << 20) + 10 + 2 * RUN_MAX - 1, 2)


def test_read_write_and_directory_mounts_do_not_wait(tmp_path: Path) -> None:
    need(pyfuse3 is not None, "pyfuse3 is not installed")
    image = tmp_path / "img.raw"
    mkfs(image, 16 << 20)
    for exclusive, flags, expect in ((True, os.O_RDWR, 1), (False, os.O_WRONLY, 1), (True, os.O_WRONLY, 0)):
        h = Harness(image, exclusive=exclusive)
        try:
            fh, _ = h.create(f"f-{exclusive}-{flags}".encode(), flags)
            h.call("write", fh, 0, b"x" * 100)
            assert len(h.backend.writes) == expect, (exclusive, flags)
            h.call("release", fh)
        finally:
            h.engine.close()


def test_a_failed_drain_is_reported_by_the_next_write_or_fsync(harness: Harness, caplog: Any) -> None:
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"x" * CHUNK)
    harness.backend.fail = OSError(errno.EIO, "device error")
    harness.call("getattr", ino, CTX)  # drains; the failure must not become this request's error
    harness.backend.fail = None
    assert "write-behind" in caplog.text
    with pytest.raises(pyfuse3.FUSEError) as err:
        harness.call("write", fh, CHUNK, b"y" * 10)
    assert err.value.errno == errno.EIO
    harness.call("fsync", fh, False)  # reported once
    harness.call("write", fh, 0, b"z" * 10)  # the file is empty again: a new run
    harness.backend.fail = OSError(errno.EUCLEAN, "corrupt")
    with pytest.raises(pyfuse3.FUSEError) as err:
        harness.call("write", fh, 100, b"w")  # not contiguous: drains its own run first, which fails
    assert err.value.errno == errno.EUCLEAN
    harness.backend.fail = None
    harness.call("fsync", fh, False)
    harness.call("write", fh, 0, b"v" * 10)
    harness.backend.fail = OSError(errno.EIO, "device error")
    harness.call("release", fh)  # drains, fails: only the log knows (a close without fsync, as on ext4)
    harness.backend.fail = None
    assert harness.ops._behind.take_error(fh) is None  # type: ignore[attr-defined]  # forgotten with the handle


def test_a_bug_in_a_drain_never_escapes(harness: Harness, caplog: Any) -> None:
    """Drains run before requests and from the idle task, outside the handlers' error mapping: an
    unexpected exception there would end the FUSE loop (a dead mount), so it becomes the handle's EIO."""
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"x" * CHUNK)
    harness.backend.fail = RuntimeError("a bug")  # type: ignore[assignment]
    harness.ops.drain()  # as the idle task does: nothing raised
    with pytest.raises(pyfuse3.FUSEError) as err:
        harness.call("write", fh, 0, b"x" * CHUNK)  # the handle hears of it
    assert err.value.errno == errno.EIO
    harness.call("write", fh, 0, b"x" * CHUNK)  # a new run (the file is still empty) ...
    harness.call("getattr", ino, CTX)  # ... drained before a request: that request still runs
    harness.backend.fail = None
    assert "internal error in the write-behind" in caplog.text
    with pytest.raises(pyfuse3.FUSEError) as err:
        harness.call("fsync", fh, False)
    assert err.value.errno == errno.EIO
    harness.call("release", fh)


def test_free_space_is_measured_only_when_the_bound_runs_low(harness: Harness) -> None:
    """Runs do not each cost a statfs: the bound is measured once, then lowered per request and write."""
    from volfs_fuse.writebehind import REQUEST_BLOCKS

    for i in range(50):
        fh, ino = harness.create(f"f{i}".encode())
        harness.call("write", fh, 0, b"x" * CHUNK)
        harness.call("write", fh, CHUNK, b"x" * CHUNK)
        harness.call("release", fh)
    assert harness.backend.statfs_calls == 1
    assert len(harness.backend.writes) == 50
    behind = harness.ops._behind  # type: ignore[attr-defined]
    free = harness.engine.statfs().bfree
    assert behind._floor <= free  # a lower bound ...
    assert behind._floor < free - 150 * REQUEST_BLOCKS  # ... lowered by every request (create, release) and drain
    behind._floor = behind._blocks_for(RUN_MAX) - 1  # as if the volume had filled up since
    fh, ino = harness.create(b"again")
    harness.call("write", fh, 0, b"x" * CHUNK)
    assert harness.backend.statfs_calls == 2  # too low for a run: measured again
    assert behind._floor == harness.engine.statfs().bfree
    harness.call("release", fh)


def test_idle_drain(harness: Harness) -> None:
    """What the daemon's once-a-second task calls."""
    fh, ino = harness.create(b"f")
    harness.call("write", fh, 0, b"x" * 100)
    assert harness.backend.writes == []
    harness.ops.drain()
    assert harness.backend.writes == [(0, 100)]
    harness.ops.drain()  # nothing pending: nothing happens
    assert harness.backend.writes == [(0, 100)]
    harness.call("release", fh)


def _chown(harness: Harness, ino: int, uid: int = 7, gid: int = 8) -> Any:
    return harness.call("setattr", ino, _attrs(uid=uid, gid=gid), _fields(update_uid=True, update_gid=True), None,
                        CTX)


def _chmod(harness: Harness, ino: int, mode: int) -> Any:
    return harness.call("setattr", ino, _attrs(mode=mode), _fields(update_mode=True), None, CTX)


@pytest.fixture
def invalidated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The FUSE inodes whose attributes the daemon told the kernel to forget."""
    calls: list[int] = []

    def record(ino: int, attr_only: bool = False) -> None:
        assert attr_only
        calls.append(ino)

    if pyfuse3 is not None:
        monkeypatch.setattr(pyfuse3, "invalidate_inode", record)
    return calls


@pytest.mark.parametrize("request_name", ["getattr", "getattr other", "lookup", "setattr other", "write other",
                                          "release", "forget", "idle drain"])  # fmt: skip
def test_an_owner_change_is_answered_now_and_made_before_the_next_request(
        harness: Harness, request_name: str, invalidated: list[int]) -> None:
    """An owner-only SETATTR is answered at once with the attributes it will give (new owner, a ctime
    taken then) and made, with that very ctime, before whatever request comes next."""
    fh, ino = harness.create(b"f")
    other_fh, other_ino = harness.create(b"g", os.O_RDWR)
    before = harness.engine.getattr(ino)
    attr = _chown(harness, ino)
    assert harness.backend.setattrs == []  # answered, not made
    assert (harness.engine.getattr(ino).uid, harness.engine.getattr(ino).gid) == (before.uid, before.gid)
    assert (attr.st_uid, attr.st_gid, attr.st_mode, attr.st_size) == (7, 8, before.mode, before.size)
    assert attr.st_ctime_ns >= before.ctime_ns
    calls = {
        "getattr": lambda: harness.call("getattr", ino, CTX),
        "getattr other": lambda: harness.call("getattr", other_ino, CTX),
        "lookup": lambda: harness.call("lookup", 1, b"g", CTX),
        "setattr other": lambda: _chmod(harness, other_ino, 0o100600),
        "write other": lambda: harness.call("write", other_fh, 0, b"w"),
        "release": lambda: harness.call("release", fh),
        "forget": lambda: harness.call("forget", [(other_ino, 1)]),
        "idle drain": lambda: harness.ops.drain(),
    }
    calls[request_name]()
    assert harness.backend.setattrs[0] == SetAttr(uid=7, gid=8, ctime_ns=attr.st_ctime_ns)
    got = harness.engine.getattr(ino)
    assert (got.uid, got.gid, got.mode, got.size, got.ctime_ns, got.mtime_ns) == \
        (7, 8, attr.st_mode, attr.st_size, attr.st_ctime_ns, attr.st_mtime_ns)
    assert invalidated == []  # made as answered


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_chmod_after_chown_is_one_backend_call(harness: Harness, kind: str) -> None:
    """tar's chown then chmod of a file or directory: one backend setattr with both, answered with its result."""
    if kind == "file":
        fh, ino = harness.create(b"f")
        mode = 0o100640
    else:
        ino = harness.call("mkdir", 1, b"d", 0o700, CTX).st_ino
        mode = 0o40750
    _chown(harness, ino)
    attr = _chmod(harness, ino, mode)
    assert harness.backend.setattrs == [SetAttr(mode=mode & 0o7777, uid=7, gid=8)]
    got = harness.engine.getattr(ino)
    assert (got.uid, got.gid, got.mode, got.ctime_ns) == (7, 8, mode, attr.st_ctime_ns)
    assert (attr.st_uid, attr.st_gid, attr.st_mode) == (7, 8, mode)
    harness.call("getattr", ino, CTX)
    assert len(harness.backend.setattrs) == 1  # nothing left pending


@pytest.mark.parametrize("failing", ["both together", "the mode too"])
def test_a_failed_combined_change_is_made_apart(harness: Harness, failing: str) -> None:
    """If the chmod that takes the pending chown along fails, the owner change is made alone and the
    chmod apart, whose error (if it fails again) is the one reported."""
    fh, ino = harness.create(b"f")
    _chown(harness, ino)
    if failing == "both together":
        harness.backend.fail_setattr = lambda c: c.mode is not None and c.uid is not None
    else:
        harness.backend.fail_setattr = lambda c: c.mode is not None
    if failing == "both together":
        attr = _chmod(harness, ino, 0o100640)
        assert (attr.st_uid, attr.st_mode) == (7, 0o100640)
    else:
        with pytest.raises(pyfuse3.FUSEError) as err:
            _chmod(harness, ino, 0o100640)
        assert err.value.errno == errno.EIO
    assert [(c.uid, c.mode) for c in harness.backend.setattrs] == [(7, 0o640), (7, None), (None, 0o640)]
    got = harness.engine.getattr(ino)
    assert (got.uid, got.gid, got.mode) == (7, 8, 0o100640 if failing == "both together" else 0o100644)


def test_a_failed_owner_change_is_logged_and_forgotten_by_the_kernel(harness: Harness, invalidated: list[int],
                                                                     caplog: Any) -> None:
    fh, ino = harness.create(b"f")
    _chown(harness, ino)
    harness.backend.fail_setattr = lambda c: c.uid is not None
    attr = harness.call("getattr", ino, CTX)  # makes it first: fails, and this request still runs
    assert "already answered, failed" in caplog.text
    assert invalidated == [ino]
    assert attr.st_uid == 0 == harness.engine.getattr(ino).uid


def test_an_owner_change_that_gives_other_attributes_is_forgotten_by_the_kernel(
        tmp_path: Path, invalidated: list[int]) -> None:
    """With 128-byte inodes a ctime is stored in whole seconds: not what was answered, so the kernel is
    told to ask again; after the session is closed, it is not told anything."""
    need(pyfuse3 is not None, "pyfuse3 is not installed")
    image = tmp_path / "img.raw"
    mkfs(image, 16 << 20, inode_size=128)
    h = Harness(image)
    try:
        fh, ino = h.create(b"f")
        attr = _chown(h, ino)
        h.call("getattr", ino, CTX)
        assert invalidated == [ino]
        assert h.engine.getattr(ino).ctime_ns == attr.st_ctime_ns // 10**9 * 10**9
        _chown(h, ino, 9, 9)
        h.ops.drain(closed=True)
        assert invalidated == [ino] and h.engine.getattr(ino).uid == 9
    finally:
        h.engine.close()
    e2fsck_clean(image)


def test_enospc_comes_from_the_write_that_does_not_fit(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    need_root("the kernel reads the image back")
    vol = Volume.create("full", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("full").mountpoint)
    acked = 0
    fd = os.open(mp / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pattern = bytes(range(256)) * (CHUNK // 256)
    try:
        while True:
            try:
                acked += os.write(fd, pattern)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        assert acked > 8 << 20  # most of the volume was written before the refusal
        os.fsync(fd)  # nothing failed later than the write that reported it
    finally:
        os.close(fd)
    assert os.stat(mp / "big").st_size == acked
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "full")
    e2fsck_clean(vol.disk_path)
    with loop_mount(vol.disk_path) as seen:
        got = (seen / "big").read_bytes()
    assert len(got) == acked
    assert got == (pattern * (acked // len(pattern) + 1))[:acked]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_daemon_writes_the_pending_run(home: Path, mounter: Mounter, sig: str) -> None:
    """Bytes acknowledged but still in a run when the daemon is told to stop reach the image."""
    import signal

    from volfs.home import resolve_home
    from volfs.mounts import read_record

    need_root("the kernel reads the image back")
    vol = Volume.create("stop", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("stop").mountpoint)
    rec = read_record(resolve_home(home), "stop")
    assert rec is not None
    data = b"".join(chunks(3, seed=7))
    fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(3):
            assert os.write(fd, data[i * CHUNK : (i + 1) * CHUNK]) == CHUNK
        os.kill(rec.pid, getattr(signal, sig))  # the file is still open: the run is pending
        wait_gone(rec.pid)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the connection is gone
    e2fsck_clean(vol.disk_path)
    with loop_mount(vol.disk_path) as seen:
        assert (seen / "f").read_bytes() == data


def test_an_idle_run_is_drained_within_seconds(home: Path, mounter: Mounter) -> None:
    """The daemon drains about once a second: an idle writer's bytes reach the image file (its data
    blocks are written at once; the metadata waits for the commit) without any further request."""
    from volfs.home import resolve_home
    from volfs.mounts import read_record

    Volume.create("idle", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("idle").mountpoint)
    rec = read_record(resolve_home(home), "idle")
    assert rec is not None

    def written() -> int:  # bytes the daemon has passed to write(2)-like calls so far
        for line in Path(f"/proc/{rec.pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise AssertionError("no wchar in /proc/PID/io")

    data = b"".join(chunks(4, seed=3))
    fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(4):
            os.write(fd, data[i * CHUNK : (i + 1) * CHUNK])
        before = written()
        time.sleep(3)
        assert written() - before >= len(data)
    finally:
        os.close(fd)
    assert (mp / "f").read_bytes() == data


def test_a_corrupt_bitmap_met_by_a_drain_is_reported_by_fsync(home: Path, mounter: Mounter) -> None:
    """A hostile image whose failure shows only when a run drains: fsync reports it (as ext4 reports a
    failed writeback), the mount lives on, and the corrupt bitmap is left exactly as it was."""
    from volfs.ext4 import Filesystem
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    vol = Volume.create("badmap", home=home, kind="disk", size_mib=16)
    fs = Filesystem.open(vol.disk_path)
    try:
        bs = fs.sb.block_size
        bitmap = fs.group_desc(0).block_bitmap
    finally:
        fs.close()
    where = bitmap * bs + bs // 2  # a byte of free blocks' bits: the checksum no longer matches
    flip_bits(vol.disk_path, where, 0x0F)
    with open(vol.disk_path, "rb") as f:
        f.seek(bitmap * bs)
        corrupt = f.read(bs)
    mp = Path(mounter("badmap").mountpoint)
    fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for c in chunks(3):
            assert os.write(fd, c) == CHUNK  # acknowledged: the run waits
        with pytest.raises(OSError) as err:
            os.fsync(fd)
        assert err.value.errno == errno.EUCLEAN
    finally:
        os.close(fd)
    assert "f" in os.listdir(mp)  # the mount is alive
    unmount(resolve_home(home), "badmap")
    with open(vol.disk_path, "rb") as f:
        f.seek(bitmap * bs)
        assert f.read(bs) == corrupt


def test_tar_owners_and_modes_reach_the_image(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    """GNU tar, run as root, gives each member its owner and then its mode (the owner change waits for
    the mode's SETATTR): what stat shows through the mount, and what the kernel reads from the image
    after the unmount, are each member's owner, mode, mtime and bytes; and the image is clean."""
    import tarfile

    from volfs.home import resolve_home
    from volfs.mounts import unmount

    need_root("tar restores owners as root, and the kernel reads the image back")
    archive = tmp_path / "owners.tar"
    want: dict[str, tuple[int, int, int, int, bytes | None]] = {}
    with tarfile.open(archive, "w") as tar:
        # Each directory, then its files (tar sets a directory's times once it has left it for good).
        for i in sorted(range(40), key=lambda i: (i % 4, i)):
            info = tarfile.TarInfo(f"top/d{i % 4}" if i < 4 else f"top/d{i % 4}/f{i:02d}")
            info.uid, info.gid, info.mtime = 1000 + i, 2000 + i * 3, 1_600_000_000 + i
            if i < 4:
                info.type, info.mode = tarfile.DIRTYPE, (0o750, 0o700, 0o2775, 0o755)[i]
                tar.addfile(info)
                want[info.name] = (info.uid, info.gid, stat.S_IFDIR | info.mode, info.mtime, None)
            else:
                data = bytes([i]) * (i * 700)
                info.size, info.mode = len(data), (0o640, 0o4755, 0o600, 0o444)[i % 4]
                tar.addfile(info, io.BytesIO(data))
                want[info.name] = (info.uid, info.gid, stat.S_IFREG | info.mode, info.mtime, data)
    Volume.create("owners", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("owners").mountpoint)
    subprocess.run(["tar", "-C", str(mp), "--same-owner", "-xpf", str(archive)], check=True)

    def seen_in(root: Path) -> dict[str, tuple[int, int, int, int, bytes | None]]:
        out = {}
        for name in want:
            st = os.lstat(root / name)
            data = (root / name).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[name] = (st.st_uid, st.st_gid, st.st_mode, int(st.st_mtime), data)
        return out

    assert seen_in(mp) == want
    unmount(resolve_home(home), "owners")
    disk = Volume.get("owners", home=home).disk_path
    e2fsck_clean(disk)
    with loop_mount(disk) as seen:
        assert seen_in(seen) == want


@pytest.mark.parametrize("how", ["unmount", "SIGTERM"])
def test_an_owner_change_pending_at_the_end_reaches_the_image(home: Path, mounter: Mounter, how: str) -> None:
    """A chown that is the mount's last request (answered, not yet made) is made when the daemon
    ends, by an unmount or a signal: the kernel reads the new owner from the image."""
    import signal

    from volfs.home import resolve_home
    from volfs.mounts import read_record, unmount

    need_root("chown, and the kernel reads the image back")
    vol = Volume.create("last", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("last").mountpoint)
    (mp / "f").write_bytes(b"data")
    os.stat(mp / "f")
    os.chown(mp / "f", 1234, 5678)
    rec = read_record(resolve_home(home), "last")
    assert rec is not None
    if how == "unmount":
        unmount(resolve_home(home), "last")
    else:
        os.kill(rec.pid, signal.SIGTERM)
        wait_gone(rec.pid)
    e2fsck_clean(vol.disk_path)
    with loop_mount(vol.disk_path) as seen:
        st = os.stat(seen / "f")
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert (seen / "f").read_bytes() == b"data"
