"""Let pyfuse3's worker go from one queued request to the next without trio's scheduler.

Before reading each request, pyfuse3's worker takes its read lock, a
``trio.Lock`` (whose acquire is a checkpoint: a full pass of trio's
scheduler), and then awaits ``trio.lowlevel.wait_readable`` on the device
(another pass, plus an epoll re-arm and an epoll_wait). On our 2-core
machines the two passes cost about 45 us of Python per request, where a
bare GETATTR round trip without them takes about 20 us. Under a busy client
the next request is nearly always queued already by the time a reply is
sent (93% of the 35,000 requests of a ``tar`` extract), so both passes only
cost time.

:func:`quick_wait` swaps pyfuse3's ``trio`` for a stand-in that differs from
trio in two places, and is trio's own object everywhere else:

- ``lowlevel.wait_readable`` first asks the kernel, with a zero-timeout
  ``poll``, whether the descriptor is readable (or has hung up or failed: the
  read that follows reports those); if so it returns at once, otherwise it
  waits with trio;
- ``Lock`` makes a lock that is a real ``trio.Lock`` but, when it is free, is
  taken without the checkpoint, except every :data:`CHECKPOINT_EVERY`-th
  time.

So while requests keep coming, the worker yields to the other tasks (the
signal watcher, the idle drain) at least every 64 requests, and at once
whenever the device is idle; a cancellation (SIGINT/SIGTERM) is seen at the
latest then. Shutdown is unchanged: ``pyfuse3.terminate`` closes the
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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyfuse3
import trio

__all__ = ["CHECKPOINT_EVERY", "QuickWaitStats", "quick_wait"]

CHECKPOINT_EVERY = 64


class QuickWaitStats:
    """How many waits found the device ready (``skipped``) out of all waits (``waits``)."""

    def __init__(self) -> None:
        self.waits = 0
        self.skipped = 0


class _Lowlevel:
    """``trio.lowlevel`` with a ``wait_readable`` that returns at once for a ready descriptor."""

    def __init__(self, stats: QuickWaitStats) -> None:
        self._stats = stats
        self._polls: dict[int, select.poll] = {}

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
        await trio.lowlevel.wait_readable(fd)


class _Lock:
    """A ``trio.Lock`` that is taken without a checkpoint when free, but every CHECKPOINT_EVERY-th time."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._taken = 0

    async def __aenter__(self) -> None:
        self._taken += 1
        if self._taken % CHECKPOINT_EVERY and not self._lock.locked():
            self._lock.acquire_nowait()
            return
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


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
