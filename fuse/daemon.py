"""The mount daemon: serves one volume through FUSE until it is unmounted.

Started by :func:`volfs.mounts.mount` as ``python -m volfs_fuse.daemon ARGS
READY_FD`` (or in-process for ``--foreground``). Its life:

1. open the volume's backend, taking the volume's access lock (a conflict is
   reported back through the ready pipe as ``error: ...``);
2. mount with pyfuse3, record itself in the mount state file, write
   ``ready`` to the pipe;
3. serve until the kernel unmounts (``fusermount3 -u``) or SIGINT/SIGTERM
   arrive (then it unmounts itself);
4. whatever happened: close the backend (everything written is flushed),
   release the lock, delete the state file. The FUSE session is always
   closed; on a signal the mount is removed too.

``kill -USR1 PID`` writes where every thread of the daemon is (Python
tracebacks) to its log (``--log``), and changes nothing else.
"""

from __future__ import annotations

import errno
import faulthandler
import gc
import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from volfs.access import default_owner, open_backend
from volfs.errors import VolfsError, error
from volfs.home import Home
from volfs.mounts import MountOptions, MountRecord, remove_record, write_record
from volfs.volume import Volume, VolumeKind
from volfs_fuse.idmap import IdMap
from volfs_fuse.operations import VolfsOperations
from volfs_fuse.quickwait import BRIEF_WAIT_MS, quick_wait

__all__ = ["serve", "main", "tune_gc"]

log = logging.getLogger("volfs.fuse")

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


GC_THRESHOLDS = (20_000, 20, 20)
"""The cyclic collector's thresholds while serving (Python's default: 700, 10, 10)."""


def tune_gc() -> None:
    """Set the cyclic garbage collector up for serving requests.

    Each request allocates a few dozen short-lived container objects (decoded
    records, attribute objects, tuples) that reference counting frees; almost
    none is part of a cycle. With the default thresholds the youngest
    generation is collected every few requests, and the older ones, which walk
    every long-lived object (the caches), every few hundred. Objects alive once
    the volume is open (modules, the opened filesystem) are moved out of the
    collector's sight (``gc.freeze``), and collections run about thirty times
    less often: cyclic garbage then waits for at most 20,000 allocations. In the
    replay of a ``tar`` extract (``scripts/bench/fuse_requests.py``) the
    collector cost about 2% of the daemon's instructions; this saves most of it.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _options(raw: dict[str, Any]) -> MountOptions:
    def triples(items: list[list[int]]) -> tuple[tuple[int, int, int], ...]:
        return tuple((int(a), int(b), int(c)) for a, b, c in items)

    owner = raw.get("owner")
    return MountOptions(
        readonly=bool(raw.get("readonly")),
        noexec=bool(raw.get("noexec")),
        nosuid=bool(raw.get("nosuid")),
        nodev=bool(raw.get("nodev")),
        allow_other=bool(raw.get("allow_other")),
        owner=(int(owner[0]), int(owner[1])) if owner else None,
        uid_map=triples(raw.get("uid_map") or []),
        gid_map=triples(raw.get("gid_map") or []),
        log=raw.get("log"),
    )


def _fuse_options(name: str, opts: MountOptions) -> set[str]:
    out = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    out |= {f"fsname=volfs:{name}", "subtype=volfs"}
    for flag, option in ((opts.readonly, "ro"), (opts.noexec, "noexec"), (opts.nosuid, "nosuid"),
                         (opts.nodev, "nodev"), (opts.allow_other, "allow_other")):  # fmt: skip
        if flag:
            out.add(option)
    return out


def _tell(ready_fd: int | None, failure: OSError | None = None) -> None:
    """Tell the parent ``ready``, or ``error {json}`` with the failure's errno, message and path."""
    if ready_fd is None:
        if failure is not None:
            print(f"volfs mount: {failure}", file=sys.stderr)
        return
    if failure is None:
        line = "ready"
    else:
        detail = {"errno": failure.errno or errno.EIO, "message": failure.strerror or str(failure),
                  "path": getattr(failure, "path", None) or failure.filename}  # fmt: skip
        line = "error " + json.dumps(detail)
    try:
        os.write(ready_fd, (line + "\n").encode())
    finally:
        os.close(ready_fd)


async def _serve_until_done(ops: VolfsOperations) -> bool:
    """Run the FUSE loop; True if a signal (not an unmount) ended it."""
    signalled = False
    async with trio.open_nursery() as nursery:

        async def drain_when_idle() -> None:
            # Bytes a writer left in a write-behind run go to the volume within about a second
            # even if no other request comes (every other request drains the run anyway).
            while True:
                await trio.sleep(1.0)
                ops.drain()

        async def watch_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal signalled
            with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
                # serve() blocked them: one that came while the mount started is delivered now, to trio.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                task_status.started()
                async for _ in signals:
                    signalled = True
                    nursery.cancel_scope.cancel()
                    return

        # Before the first request: the worker may go on from request to request for a while
        # without letting another task run (quickwait.py).
        await nursery.start(watch_signals)
        nursery.start_soon(drain_when_idle)
        # One worker task: handlers never await (the backend is called directly), so a second worker
        # could never run while one works, and pyfuse3 would otherwise start a task for nearly every
        # request (none is left waiting for the next one) and end it afterwards.
        with quick_wait() as waits:
            try:
                await pyfuse3.main(min_tasks=1, max_tasks=1)
            finally:
                if waits is not None:
                    log.info("waited for %d requests: %d already queued, %d came while spinning, %d more within %d ms; "
                             "%d waits did not spin (host CPU steal)",
                             waits.waits, waits.skipped, waits.spun, waits.brief, BRIEF_WAIT_MS, waits.unspun)
        nursery.cancel_scope.cancel()
    return signalled


def serve(args: dict[str, Any], ready_fd: int | None) -> int:
    """Mount and serve one volume (see the module header); returns an exit status."""
    # SIGINT and SIGTERM wait (blocked) until the signal watcher runs: one that arrives while the
    # mount starts, or just after it is ready, then stops it cleanly instead of ending the process
    # with the kernel's default action (no commit, a dead mount left behind).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    # And they are not ignored, even when this process was started ignoring them (a shell starts a
    # background job without job control ignoring SIGINT and SIGQUIT, and the daemon inherits that):
    # a pending SIGINT would be lost, blocked or not, when trio sets SIGINT's disposition again at
    # its start (its main-thread test does), because setting SIG_IGN discards a pending signal.
    old_handlers = {sig: signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
                    for sig in _STOP_SIGNALS}
    try:
        return _serve(args, ready_fd)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _serve(args: dict[str, Any], ready_fd: int | None) -> int:
    home = Home(root=Path(args["home"]), volumes=Path(args["volumes"]))
    name: str = args["name"]
    mountpoint: str = args["mountpoint"]
    opts = _options(args["options"])
    try:
        handle = Volume.get(name, home=home)
        backend, lock = open_backend(handle, readonly=opts.readonly)
    except VolfsError as exc:
        _tell(ready_fd, exc)
        return 1
    if backend.readonly:
        opts = replace(opts, readonly=True)  # the kernel then refuses writes itself and shows "ro"
    ids = IdMap(default_owner(handle), owner=opts.owner, uid_map=opts.uid_map, gid_map=opts.gid_map)
    ops = VolfsOperations(backend, ids, exclusive=handle.kind is VolumeKind.DISK)
    tune_gc()
    try:
        try:
            pyfuse3.init(ops, mountpoint, _fuse_options(name, opts))
        except Exception as exc:  # pyfuse3 raises RuntimeError with libfuse's reason
            _tell(ready_fd, error(errno.EIO, f"cannot mount: {exc}", mountpoint))
            return 1
        record = MountRecord(name=name, mountpoint=mountpoint, pid=os.getpid(), readonly=opts.readonly,
                             started=time.time(), options=args["options"])  # fmt: skip
        unmount = True
        try:
            write_record(home, record)
            _tell(ready_fd)
            ready_fd = None
            log.info("serving volume %s at %s", name, mountpoint)
            unmount = trio.run(_serve_until_done, ops)
        finally:
            pyfuse3.close(unmount=unmount)
    finally:
        try:
            try:
                ops.drain(closed=True)  # a failure is logged: no handle is left to report it to
            finally:
                backend.close()
        finally:
            lock.release()
            remove_record(home, name, os.getpid())
            log.info("volume %s closed", name)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m volfs_fuse.daemon ARGS_JSON READY_FD``."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s volfs-fuse[%(process)d] %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # to stderr: the log
    args = json.loads(argv[0])
    ready_fd = int(argv[1]) if len(argv) > 1 else None
    return serve(args, ready_fd)


if __name__ == "__main__":
    sys.exit(main())
