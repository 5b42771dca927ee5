"""pyfuse3's worker goes straight on to a queued request (fuse/quickwait.py).

The stand-in's wait must behave as trio's (return once the descriptor is
readable, failed or hung up; wait while it is not), and spin only while the
host is not taking CPU time from the machine (steal); its lock must exclude
as trio's does and checkpoint at least every CHECKPOINT_EVERY acquires;
everything else must be trio's own. It must be removed again and never
replace a stand-in that is not trio itself. A real mount must use it: its
log counts the waits and how many found a request queued.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean

from volfs.home import resolve_home
from volfs.mounts import unmount
from volfs.sync import Volume

try:
    import pyfuse3
    import trio
    import trio.testing

    import volfs_fuse.quickwait as quickwait
    from volfs_fuse.quickwait import CHECKPOINT_EVERY, StealWatch, cpu_times, quick_wait
except ImportError:  # the FUSE extra is not installed
    pyfuse3 = None

pytestmark = pytest.mark.skipif(pyfuse3 is None, reason="pyfuse3 is not installed")


def _quiet() -> StealWatch:
    """A host that never takes CPU time away (the tests below count spins: they must not depend on
    this machine's load)."""
    return StealWatch(read=lambda: None)


class _Ticks:
    """A /proc/stat stand-in: (steal, all) ticks, advanced by the test."""

    def __init__(self) -> None:
        self.steal = 0
        self.all = 1000

    def advance(self, steal: int, all_: int) -> None:
        self.steal += steal
        self.all += all_

    def __call__(self) -> tuple[int, int]:
        return self.steal, self.all


def test_swaps_pyfuse3_trio_and_restores_it() -> None:
    assert pyfuse3.trio is trio
    with quick_wait(_quiet()) as stats:
        assert stats is not None
        stand_in = pyfuse3.trio
        assert stand_in is not trio
        # Everything but Lock and wait_readable is trio's own object.
        assert stand_in.Lock is not trio.Lock
        assert stand_in.Event is trio.Event
        assert stand_in.ClosedResourceError is trio.ClosedResourceError
        assert stand_in.lowlevel.notify_closing is trio.lowlevel.notify_closing
        assert stand_in.lowlevel.current_trio_token is trio.lowlevel.current_trio_token
        assert stand_in.lowlevel.wait_readable is not trio.lowlevel.wait_readable
    assert pyfuse3.trio is trio


def test_restores_trio_after_an_exception() -> None:
    with pytest.raises(KeyError), quick_wait(_quiet()):
        raise KeyError("x")
    assert pyfuse3.trio is trio


def test_leaves_another_stand_in_alone() -> None:
    other = object()
    pyfuse3.trio = other
    try:
        with quick_wait(_quiet()) as stats:
            assert stats is None
            assert pyfuse3.trio is other
        assert pyfuse3.trio is other
    finally:
        pyfuse3.trio = trio


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """(read end, write end) of a pipe: the device a wait waits on, and the client's side of it."""
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


@pytest.fixture
def write_later(pipe: tuple[int, int]) -> Iterator[Callable[[float], None]]:
    """write_later(delay): another thread (the client) writes a byte into the pipe after ``delay`` s.

    Every such thread has ended before the pipe is closed (this fixture ends before ``pipe``).
    """
    timers: list[threading.Timer] = []

    def start(delay: float) -> None:
        timer = threading.Timer(delay, os.write, (pipe[1], b"x"))
        timers.append(timer)
        timer.start()

    yield start
    for timer in timers:
        timer.join()


def test_wait_returns_at_once_for_a_readable_pipe(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"x")

    async def main() -> None:
        with quick_wait(_quiet()) as stats:
            assert stats is not None
            with trio.fail_after(5):
                await pyfuse3.trio.lowlevel.wait_readable(r)
            assert (stats.waits, stats.skipped, stats.spun, stats.brief) == (1, 1, 0, 0)

    trio.run(main)


def test_wait_blocks_until_the_pipe_becomes_readable(pipe: tuple[int, int]) -> None:
    r, w = pipe

    async def main() -> None:
        with quick_wait(_quiet()) as stats:
            assert stats is not None
            order: list[str] = []

            async def writer() -> None:
                await trio.sleep(0.2)
                order.append("write")
                os.write(w, b"x")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                with trio.fail_after(5):
                    await pyfuse3.trio.lowlevel.wait_readable(r)
                order.append("woke")
            assert order == ["write", "woke"]
            assert (stats.waits, stats.skipped, stats.spun, stats.brief) == (1, 0, 0, 0)

    trio.run(main)


def test_wait_catches_a_request_that_comes_within_the_brief_wait(
        pipe: tuple[int, int], write_later: Callable[[float], None], monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread (the client) writes while the worker waits in the kernel: trio is not involved.
    monkeypatch.setattr(quickwait, "BRIEF_WAIT_MS", 30_000)

    async def main() -> None:
        with quick_wait(_quiet()) as stats:
            assert stats is not None
            write_later(0.1)
            await pyfuse3.trio.lowlevel.wait_readable(pipe[0])
            assert (stats.waits, stats.skipped, stats.spun, stats.brief) == (1, 0, 0, 1)

    trio.run(main)


def test_spinning_stops_for_a_slow_client_and_resumes_for_a_fast_one(
        pipe: tuple[int, int], write_later: Callable[[float], None], monkeypatch: pytest.MonkeyPatch) -> None:
    # A request 10 ms away is caught while spinning (200 ms here); one 1 s away is not, which turns
    # spinning off, so the next fast one is caught by the sleeping wait, which turns it on again.
    monkeypatch.setattr(quickwait, "SPIN_US", 200_000)
    monkeypatch.setattr(quickwait, "BRIEF_WAIT_MS", 30_000)
    r = pipe[0]

    async def main() -> None:
        with quick_wait(_quiet()) as stats:
            assert stats is not None
            seen = []
            for delay in (0.01, 1.0, 0.01, 0.01):
                write_later(delay)
                await pyfuse3.trio.lowlevel.wait_readable(r)
                os.read(r, 1)
                seen.append((stats.spun, stats.brief))
            assert seen == [(1, 0), (1, 1), (1, 2), (2, 2)]
            assert (stats.waits, stats.skipped) == (4, 0)

    trio.run(main)


def test_cpu_times_reads_this_machine() -> None:
    first = cpu_times()
    assert first is not None  # Linux: /proc/stat
    steal, all_ = first
    assert 0 <= steal <= all_ and all_ > 0
    later = cpu_times()
    assert later is not None and later[0] >= steal and later[1] >= all_


def test_steal_watch_follows_the_steal_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quickwait, "STEAL_EVERY_S", 0.0)
    ticks = _Ticks()
    t = time.perf_counter() + 1000  # (update takes perf_counter times, later than the watch's birth)
    watch = StealWatch(read=ticks)
    assert not watch.busy
    ticks.advance(steal=10, all_=200)  # 5%: busy
    assert watch.update(t + 1)
    ticks.advance(steal=0, all_=200)  # none since: not busy
    assert not watch.update(t + 2)
    ticks.advance(steal=6, all_=200)  # 3%: at the limit, not above it
    assert not watch.update(t + 3)
    ticks.advance(steal=50, all_=0)  # no time passed on the CPUs: no new verdict
    assert not watch.update(t + 4)
    monkeypatch.setattr(quickwait, "STEAL_EVERY_S", 10.0)
    ticks.advance(steal=500, all_=1000)
    assert not watch.update(t + 5)  # looked at most every STEAL_EVERY_S
    assert watch.update(t + 14)
    assert not StealWatch(read=lambda: None).update(t + 100)  # unreadable: never busy


def test_no_spinning_while_the_host_takes_cpu_time(
        pipe: tuple[int, int], write_later: Callable[[float], None], monkeypatch: pytest.MonkeyPatch) -> None:
    # With 200 ms of spinning, a request 10 ms away is caught while spinning, unless the host is busy:
    # then it is caught by the sleeping wait, and the spin is not even tried (spinning stays on).
    monkeypatch.setattr(quickwait, "SPIN_US", 200_000)
    monkeypatch.setattr(quickwait, "BRIEF_WAIT_MS", 30_000)
    monkeypatch.setattr(quickwait, "STEAL_EVERY_S", 0.0)
    r = pipe[0]
    ticks = _Ticks()

    async def main() -> None:
        with quick_wait(StealWatch(read=ticks)) as stats:
            assert stats is not None
            seen = []
            for steal in (50, 50, 0):
                ticks.advance(steal=steal, all_=200)
                write_later(0.01)
                await pyfuse3.trio.lowlevel.wait_readable(r)
                os.read(r, 1)
                seen.append((stats.spun, stats.brief, stats.unspun))
            assert seen == [(0, 1, 1), (0, 2, 2), (1, 2, 2)]

    trio.run(main)


def test_lock_goes_to_each_waiter_once_and_a_cancelled_waiter_gives_up() -> None:
    async def main() -> None:
        with quick_wait(_quiet()):
            lock = pyfuse3.trio.Lock()
            got: list[str] = []
            scopes = {name: trio.CancelScope() for name in "abc"}

            async def user(name: str) -> None:
                with scopes[name]:
                    async with lock:
                        got.append(name)
                        assert lock.locked()
                        await trio.sleep(0.01)  # holds it across a checkpoint
                        assert got[-1] == name  # nobody else got in meanwhile

            async with trio.open_nursery() as nursery:
                await lock.__aenter__()
                for name in "abc":
                    nursery.start_soon(user, name)
                await trio.testing.wait_all_tasks_blocked()
                scopes["b"].cancel()  # b stops waiting
                await trio.testing.wait_all_tasks_blocked()
                assert got == [] and lock.locked()
                await lock.__aexit__(None, None, None)
            assert sorted(got) == ["a", "c"]
            assert not lock.locked()
            async with lock:  # still usable
                pass

    trio.run(main)


def test_wait_returns_for_a_hung_up_pipe() -> None:
    # The FUSE device reports an unmount as an error on read; the wait must not sleep through it.
    r, w = os.pipe()
    os.close(w)
    try:

        async def main() -> None:
            with quick_wait(_quiet()) as stats:
                assert stats is not None
                with trio.fail_after(5):
                    await pyfuse3.trio.lowlevel.wait_readable(r)
                assert stats.skipped == 1

        trio.run(main)
    finally:
        os.close(r)


def test_wait_is_cancellable_when_it_waits(pipe: tuple[int, int]) -> None:
    async def main() -> None:
        with quick_wait(_quiet()):
            with trio.move_on_after(0.2) as scope:
                await pyfuse3.trio.lowlevel.wait_readable(pipe[0])
            assert scope.cancelled_caught

    trio.run(main)


def test_lock_is_taken_without_a_checkpoint_but_every_nth_time() -> None:
    # Under a cancelled scope, an await that checkpoints raises Cancelled; one that does not, returns.
    async def main() -> None:
        with quick_wait(_quiet()):
            lock = pyfuse3.trio.Lock()
            with trio.CancelScope() as scope:
                scope.cancel()
                for _ in range(CHECKPOINT_EVERY - 1):
                    async with lock:
                        pass
                with pytest.raises(trio.Cancelled):
                    async with lock:
                        pass
                assert not lock.locked()

    trio.run(main)


def test_lock_excludes() -> None:
    async def main() -> None:
        with quick_wait(_quiet()):
            lock = pyfuse3.trio.Lock()
            held: list[str] = []
            events: list[str] = []

            async def user(name: str) -> None:
                async with lock:
                    assert not held
                    held.append(name)
                    events.append(f"{name} in")
                    await trio.sleep(0.05)
                    events.append(f"{name} out")
                    held.remove(name)

            async with trio.open_nursery() as nursery:
                for name in ("a", "b", "c"):
                    nursery.start_soon(user, name)
            assert len(events) == 6
            for i in range(0, 6, 2):
                assert events[i].endswith(" in") and events[i + 1] == events[i].replace(" in", " out")

    trio.run(main)


def test_a_mount_serves_through_it(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    vol = Volume.create("quick", home=home, kind="disk", size_mib=16)
    mp = Path(mounter("quick").mountpoint)
    # RELEASE is sent without waiting for its answer, so the next file's LOOKUP queues behind it.
    for i in range(200):
        (mp / f"f{i}").write_bytes(b"%d" % i)
    assert sorted(p.name for p in mp.iterdir() if p.name.startswith("f")) == sorted(f"f{i}" for i in range(200))
    unmount(resolve_home(home), "quick")
    text = (tmp_path / "daemon-quick.log").read_text()
    m = re.search(r"waited for (\d+) requests: (\d+) already queued, (\d+) came while spinning, (\d+) more within "
                  r"\d+ ms", text)
    assert m, text
    waits, queued, spun, brief = (int(g) for g in m.groups())
    assert waits >= 600  # at least LOOKUP, CREATE and WRITE per file
    assert 0 < queued + spun + brief <= waits
    e2fsck_clean(vol.disk_path)
