"""Let pyfuse3's worker go from one queued request to the next without trio's scheduler.

Before reading each request, pyfuse3's worker takes its read lock, a
``trio.Lock`` (whose acquire is a checkpoint: a full pass of trio's
scheduler), and then awaits ``trio.lowlevel.wait_readable`` on the device
(another pass, plus an epoll re-arm and an epoll_wait). On our 2-core
machines the two passes cost about 45 us of Python per request, where a
bare GETATTR round trip without them takes about 20 us. With them, a busy
client's next request was nearly always queued already by the time the
worker came back for it (93% of the 35,000 requests of a ``tar`` extract),
so both passes only cost time.

:func:`quick_wait` swaps pyfuse3's ``trio`` for a stand-in that differs from
trio in two places, and is trio's own object everywhere else:

- ``lowlevel.wait_readable`` first asks the kernel, with a zero-timeout
  ``poll``, whether the descriptor is readable (or has hung up or failed: the
  read that follows reports those); if so it returns at once. Otherwise it
  polls without sleeping for up to :data:`SPIN_US` (while spinning pays,
  and not while the hypervisor takes CPU time from the machine: see
  :class:`StealWatch`), then waits in ``poll`` itself for up to
  :data:`BRIEF_WAIT_MS`, and only then with trio. With both passes gone the
  worker is usually back before a busy client has sent its next request: in
  a ``tar`` extract, 25,000 of
  35,000 requests came while it spun, 10,000 were queued already, and about
  fifty came during the sleeping wait; trio's wait, which re-arms epoll and
  runs the scheduler, was needed a dozen times;
- ``Lock`` makes a lock that, when free, is taken by setting a flag (no
  checkpoint, none of ``trio.Lock``'s bookkeeping of its owner), except every
  :data:`CHECKPOINT_EVERY`-th time, when it checkpoints first.

So while requests keep coming, the worker yields to the other tasks (the
signal watcher, the idle drain) at least every 64 requests, and whenever the
device stays idle for SPIN_US plus BRIEF_WAIT_MS; a cancellation (SIGINT/SIGTERM) is seen
at the latest then. Shutdown is unchanged: ``pyfuse3.terminate`` closes the
descriptor through trio's ``notify_closing``, which wakes a waiting worker,
and a worker that did not wait finds the session's exit flag at its next
request.

pyfuse3 looks ``trio`` up as a module attribute at every use, and swaps it
itself for its asyncio mode (``pyfuse3.asyncio.enable``), and it creates its
read lock only at the first wait "so that pyfuse3.asyncio can replace the
trio module": this is the seam pyfuse3 provides. Nothing of pyfuse3 is
copied or patched.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyfuse3
import trio

__all__ = ["BRIEF_WAIT_MS", "CHECKPOINT_EVERY", "SPIN_US", "STEAL_LIMIT", "QuickWaitStats", "cpu_times", "quick_wait",
           "steal_share"]

CHECKPOINT_EVERY = 64


BRIEF_WAIT_MS = 1
"""How long the worker waits for the next request in the kernel before it waits through trio."""

SPIN_US = 100
"""How long the worker polls for the next request without sleeping, while that pays (see wait_readable)."""


STEAL_LIMIT = 0.03
"""Above this share of the machine's CPU time taken by its hypervisor (``steal`` in /proc/stat), the
worker does not spin."""

STEAL_EVERY_S = 0.5
"""How often the worker looks at the steal share again (reading /proc/stat costs tens of microseconds)."""


class QuickWaitStats:
    """Of all waits (``waits``): how many found the device ready (``skipped``), how many saw a
    request come while spinning (``spun``) and how many within BRIEF_WAIT_MS (``brief``); and how
    many did not spin because the host was taking CPU time from this machine (``unspun``)."""

    def __init__(self) -> None:
        self.waits = 0
        self.skipped = 0
        self.spun = 0
        self.brief = 0
        self.unspun = 0


def cpu_times() -> tuple[int, int] | None:
    """(steal, all) clock ticks of every CPU since boot, from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice: already in user and nice]
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    try:
        ticks = [int(x) for x in fields[1:9]]
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time the hypervisor took between two :func:`cpu_times` readings;
    None when either is missing or no CPU time passed between them."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class StealWatch:
    """Whether the hypervisor is taking CPU time from this machine (its steal share above
    :data:`STEAL_LIMIT` over the last :data:`STEAL_EVERY_S` or so).

    A spinning worker keeps its virtual CPU busy. On an oversubscribed host
    that time comes out of what the client's virtual CPU could have had: a
    ``tar`` extract under about 20% steal took 13 s with spinning and 9 to 10 s
    without (on a quiet host spinning is the faster, see ``wait_readable``).
    ``read`` gives (steal, all) ticks, as :func:`cpu_times`.
    """

    def __init__(self, read: Callable[[], tuple[int, int] | None] = cpu_times) -> None:
        self._read = read
        self._last = read()
        self._at = time.perf_counter()
        self.busy = False

    def update(self, now: float) -> bool:
        """Look again if STEAL_EVERY_S has passed since the last look; returns :attr:`busy`."""
        if now - self._at >= STEAL_EVERY_S:
            cur = self._read()
            share = steal_share(self._last, cur)
            if share is not None:
                self.busy = share > STEAL_LIMIT
            self._last, self._at = cur, now
        return self.busy


class _Lowlevel:
    """``trio.lowlevel`` with a ``wait_readable`` that returns at once for a ready descriptor."""

    def __init__(self, stats: QuickWaitStats, steal: StealWatch) -> None:
        self._stats = stats
        self._polls: dict[int, select.poll] = {}
        self._spin = True
        self._steal = steal

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd: int) -> None:
        stats = self._stats
        stats.waits += 1
        poll = self._polls.get(fd)
        if poll is None:
            poll = self._polls[fd] = select.poll()
            poll.register(fd, select.POLLIN)
        # Any event counts (POLLIN, POLLERR, POLLHUP, POLLNVAL): trio's wait would end too, and the
        # read that follows reports the error.
        if poll.poll(0):
            stats.skipped += 1
            return
        # A busy client's next request is a few microseconds away: it is waking up from our reply
        # (in a tar extract, half came within 7 us and 95% within 50 us). Sleeping for so short a
        # time costs more than it saves: on a virtual machine the wake-up alone can take longer
        # than the wait. So poll without sleeping for up to SPIN_US first, as long as that pays:
        # a spin that sees nothing turns spinning off, and a request that then comes within
        # SPIN_US of the sleep turns it on again, so a slow client costs one spin, not one per request.
        # Not while the host takes CPU time from this machine (StealWatch): then it costs the client.
        spin = SPIN_US / 1e6
        if self._spin:
            now = time.perf_counter()
            if self._steal.update(now):
                stats.unspun += 1
            else:
                end = now + spin
                while time.perf_counter() < end:
                    if poll.poll(0):
                        stats.spun += 1
                        return
                self._spin = False
        # Then wait in the kernel, which costs nothing while it sleeps, rather than through trio,
        # whose wait re-arms epoll and runs the scheduler. Other tasks wait BRIEF_WAIT_MS at most.
        start = time.perf_counter()
        if poll.poll(BRIEF_WAIT_MS):
            stats.brief += 1
            self._spin = time.perf_counter() - start < spin
            return
        await trio.lowlevel.wait_readable(fd)


class _Lock:
    """A lock that is taken without a checkpoint when free, but every CHECKPOINT_EVERY-th time.

    pyfuse3 uses it only to let one worker at a time wait for the device, and
    our daemon runs one worker, so it is nearly always free: then taking it is
    setting a flag, without ``trio.Lock``'s bookkeeping of its owner. Tasks
    that find it taken queue in a parking lot, first come first served, as on
    ``trio.Lock``.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiting = trio.lowlevel.ParkingLot()
        self._taken = 0

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        self._taken += 1
        if not self._taken % CHECKPOINT_EVERY:
            await trio.lowlevel.checkpoint()
        if self._held:
            await self._waiting.park()  # returns holding it: __aexit__ hands it over
            return
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        # Handed straight to the first waiter, which then holds it without setting the flag again.
        if self._waiting:
            self._waiting.unpark()
        else:
            self._held = False


class _Trio:
    """The ``trio`` module as pyfuse3 sees it under :func:`quick_wait`."""

    Lock = _Lock

    def __init__(self, stats: QuickWaitStats, steal: StealWatch) -> None:
        self.lowlevel = _Lowlevel(stats, steal)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


@contextmanager
def quick_wait(steal: StealWatch | None = None) -> Iterator[QuickWaitStats | None]:
    """Within this block pyfuse3's worker goes straight on to a request that is already queued.

    Yields the counters, or None (and changes nothing) when pyfuse3 is not
    using trio itself (its asyncio mode, or another stand-in). ``steal``: what
    tells whether the host is busy (default: this machine's /proc/stat).
    """
    if pyfuse3.trio is not trio:  # type: ignore[attr-defined]
        yield None
        return
    stats = QuickWaitStats()
    pyfuse3.trio = _Trio(stats, steal if steal is not None else StealWatch())  # type: ignore[attr-defined]
    try:
        yield stats
    finally:
        pyfuse3.trio = trio  # type: ignore[attr-defined]
