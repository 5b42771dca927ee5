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
  polls without sleeping for up to :data:`SPIN_US` (while spinning pays),
  then waits in ``poll`` itself for up to :data:`BRIEF_WAIT_MS`, and only
  then with trio. With both passes gone the worker is usually back before a
  busy client has sent its next request: in a ``tar`` extract, 25,000 of
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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyfuse3
import trio

__all__ = ["BRIEF_WAIT_MS", "CHECKPOINT_EVERY", "SPIN_US", "QuickWaitStats", "quick_wait"]

CHECKPOINT_EVERY = 64


BRIEF_WAIT_MS = 1
"""How long the worker waits for the next request in the kernel before it waits through trio."""

SPIN_US = 100
"""How long the worker polls for the next request without sleeping, while that pays (see wait_readable)."""


class QuickWaitStats:
    """Of all waits (``waits``): how many found the device ready (``skipped``), how many saw a
    request come while spinning (``spun``) and how many within BRIEF_WAIT_MS (``brief``)."""

    def __init__(self) -> None:
        self.waits = 0
        self.skipped = 0
        self.spun = 0
        self.brief = 0


class _Lowlevel:
    """``trio.lowlevel`` with a ``wait_readable`` that returns at once for a ready descriptor."""

    def __init__(self, stats: QuickWaitStats) -> None:
        self._stats = stats
        self._polls: dict[int, select.poll] = {}
        self._spin = True

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
        spin = SPIN_US / 1e6
        if self._spin:
            end = time.perf_counter() + spin
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

    def __init__(self, stats: QuickWaitStats) -> None:
        self.lowlevel = _Lowlevel(stats)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


@contextmanager
def quick_wait() -> Iterator[QuickWaitStats | None]:
    """Within this block pyfuse3's worker goes straight on to a request that is already queued.

    Yields the counters, or None (and changes nothing) when pyfuse3 is not
    using trio itself (its asyncio mode, or another stand-in).
    """
    if pyfuse3.trio is not trio:  # type: ignore[attr-defined]
        yield None
        return
    stats = QuickWaitStats()
    pyfuse3.trio = _Trio(stats)  # type: ignore[attr-defined]
    try:
        yield stats
    finally:
        pyfuse3.trio = trio  # type: ignore[attr-defined]
