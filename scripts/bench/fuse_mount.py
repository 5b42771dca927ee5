#!/usr/bin/env python3
"""Benchmark: a volfs FUSE mount against the kernel loop mount and fuse2fs, side by side.

Run as root from the repository root (loop mounts)::

    .venv/bin/python scripts/bench/fuse_mount.py [--size-mib 1024] [--files 10000]

Needs fuse2fs (``apt-get install fuse2fs``). All three mount copies of the
same ext4 image (built with ``mkfs.ext4 -d``), so they read identical data.
Workloads: sequential write and read of one large file, creating, stat'ing
and reading many small files, and a ``tar`` extract of a source tree. Caches
are dropped before each read workload. A workload a mount cannot run is
reported as n/a, never guessed. The tar workload extracts ``--tree``
(default: Python's standard library, a few thousand real source files).

Prints seconds per workload and the ratio to fuse2fs (volfs / fuse2fs: lower
is better; the issue's target is at most 1.0) and to the kernel (the limit).
``--only "tar extract,small-file create"`` runs only those workloads.
``--repeat N`` runs the three side by side N times (fresh image copies each
time) and ends with the min / median / max of each volfs/fuse2fs ratio, since
one run on a shared machine is one noisy sample. The daemons' CPU seconds per
workload (fuse2fs's and volfs's, from /proc) are printed too: under load,
wall time punishes whichever side needs more CPU, and the CPU ratio shows how
far each side is from the other with less noise. So is the share of the
machine's CPU time its hypervisor took meanwhile (``steal`` in /proc/stat),
per workload and mount: on a shared host it moves the ratios more than any
change to the daemon does, so the summary also gives the ratios of the runs
in which neither FUSE side saw more than 1% (``QUIET_STEAL``).

``--interleave N`` measures the tar extract differently: the archive is cut
into N consecutive pieces, the three mounts are up at once (each on its own
copy of the image), and the pieces are extracted one after another on each
mount in turn, fuse2fs and volfs taking turns going first; each side's time,
CPU and steal are summed over its pieces. The speed of a shared host drifts
within seconds (the same pure-Python loop took from 0.14 to 0.34 s within
minutes, with no steal), so a whole extract on one side and then on the
other compares two different machines; pieces of a fraction of a second,
alternated, see much the same one.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from volfs_fuse.quickwait import cpu_times, steal_share


def sh(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def build_image(work: Path, size_mib: int, files: int, tar_mib: int) -> Path:
    tree = work / "tree"
    (tree / "small").mkdir(parents=True)
    for i in range(files):
        (tree / "small" / f"f{i:06d}").write_bytes(b"x" * 512)
    with open(tree / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(chunk)
    image = work / "base.img"
    # The big file twice (read, then the write workload), the small files twice (4 KiB blocks each),
    # the tar extract, and a quarter more for metadata, the journal and the reserved blocks.
    total = (size_mib * 2 + files * 8 // 1024 + tar_mib * 2 + 256) * 5 // 4
    sh("mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{total}M")
    shutil.rmtree(tree)
    return image


def source_tarball(work: Path, tree: Path) -> Path:
    """A tar of the source tree ``tree`` (``__pycache__``, ``site-packages`` and ``.git`` left out)."""
    out = work / "src.tar"
    skip = ("__pycache__", "site-packages", ".git")
    with tarfile.open(out, "w") as tar:
        tar.add(tree, arcname=tree.name, filter=lambda ti: None if any(p in skip for p in Path(ti.name).parts) else ti)
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    print(f"tar extract: {tree} ({len(members)} entries, {out.stat().st_size >> 20} MiB)")
    return out


@contextmanager
def kernel_mount(image: Path, mnt: Path) -> Iterator[Path]:
    sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        sh("umount", str(mnt))


@contextmanager
def fuse2fs_mount(image: Path, mnt: Path) -> Iterator[Path]:
    sh("fuse2fs", "-o", "fakeroot", str(image), str(mnt))
    try:
        yield mnt
    finally:
        sh("fusermount3", "-u", str(mnt))
        time.sleep(1)  # fuse2fs may still be flushing after fusermount returns


@contextmanager
def volfs_mount(image: Path, mnt: Path) -> Iterator[Path]:
    from volfs.home import resolve_home
    from volfs.mounts import MountOptions, mount, unmount
    from volfs.sync import Volume

    home = image.parent / "volfs-home"
    if home.exists():
        shutil.rmtree(home)
    vol = Volume.create("bench", home=home, kind="disk", size_mib=64)
    os.replace(image, vol.disk_path)
    try:
        mount(resolve_home(home), "bench", mnt, MountOptions())
        try:
            yield mnt
        finally:
            unmount(resolve_home(home), "bench")
    finally:
        os.replace(vol.disk_path, image)


class Tally:
    """Wall time, the CPU time of daemon ``pid`` and the machine's (steal, all) clock ticks, summed over
    the intervals :meth:`measure` runs; a reading that cannot be made leaves its total unknown (None)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seconds = 0.0
        self.cpu: float | None = 0.0
        self._ticks: tuple[int, int] | None = (0, 0)

    def measure(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` and add what it took (even when it raises, which goes on to the caller)."""
        cpu, ticks, start = cpu_seconds(self.pid), cpu_times(), time.perf_counter()
        try:
            fn()
        finally:
            self.seconds += time.perf_counter() - start
            cpu_after, ticks_after = cpu_seconds(self.pid), cpu_times()
            self.cpu = None if self.cpu is None or cpu is None or cpu_after is None \
                else self.cpu + cpu_after - cpu
            self._ticks = None if self._ticks is None or ticks is None or ticks_after is None \
                else (self._ticks[0] + ticks_after[0] - ticks[0], self._ticks[1] + ticks_after[1] - ticks[1])

    @property
    def steal(self) -> float | None:
        """The hypervisor's share of the machine's CPU time over the intervals measured."""
        return steal_share((0, 0), self._ticks)


def daemon_pid(mnt: Path) -> int | None:
    """The process serving ``mnt`` (its command line names the mount point), None for the kernel."""
    needle = os.fsencode(str(mnt))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes() and b"mount" not in (entry / "comm").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` so far (from /proc/PID/stat)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


QUIET_STEAL = 0.01
"""Runs in which both FUSE sides saw at most this steal share are summarised apart ("quiet")."""

WORKLOADS = ("sequential read", "stat walk", "small-file read", "sequential write", "small-file create",
             "tar extract")


def workloads(mnt: Path, size_mib: int, files: int, tarball: Path, cpu: dict[str, float | None],
              steal: dict[str, float | None], only: frozenset[str]) -> dict[str, float | None]:
    """Seconds per workload; ``cpu`` receives the serving daemon's CPU seconds per workload, ``steal``
    the hypervisor's share of the machine's CPU time meanwhile."""
    out: dict[str, float | None] = {}
    pid = daemon_pid(mnt)

    def seq_read() -> None:
        with open(mnt / "big.bin", "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass

    def stat_walk() -> None:
        for name in os.listdir(mnt / "small"):
            os.lstat(mnt / "small" / name)

    def small_read() -> None:
        for name in os.listdir(mnt / "small"):
            with open(mnt / "small" / name, "rb") as f:
                f.read()

    def seq_write() -> None:
        with open(mnt / "written.bin", "wb", buffering=0) as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size_mib):
                f.write(chunk)
            os.fsync(f.fileno())

    def small_create() -> None:
        d = mnt / "created"
        d.mkdir()
        for i in range(files):
            with open(d / f"n{i:06d}", "wb") as f:
                f.write(b"y" * 512)

    def tar_extract() -> None:
        d = mnt / "extract"
        d.mkdir()
        sh("tar", "-C", str(d), "-xf", str(tarball))

    for name, fn, drop in (("sequential read", seq_read, True), ("stat walk", stat_walk, True),
                           ("small-file read", small_read, True), ("sequential write", seq_write, False),
                           ("small-file create", small_create, False), ("tar extract", tar_extract, False)):  # fmt: skip
        if name not in only:
            continue
        if drop:
            drop_caches()
        tally = Tally(pid)
        try:
            tally.measure(fn)
            out[name] = tally.seconds
        except OSError as exc:
            out[name] = None
            print(f"  {name}: n/a ({exc.strerror})", file=sys.stderr)
        cpu[name], steal[name] = tally.cpu, tally.steal
    return out


def split_tarball(tarball: Path, pieces: int) -> list[Path]:
    """``tarball`` cut into ``pieces`` archives of consecutive members, of about equal data each (a
    directory's entry comes before its contents, so each piece extracts onto the ones before it)."""
    with tarfile.open(tarball) as src:
        members = src.getmembers()
        total = sum(m.size for m in members) or 1
        out: list[Path] = []
        done = 0
        i = 0
        for n in range(pieces):
            path = tarball.with_name(f"{tarball.stem}-{n:03d}.tar")
            with tarfile.open(path, "w", format=src.format) as piece:
                while i < len(members) and (n == pieces - 1 or done < total * (n + 1) // pieces):
                    m = members[i]
                    piece.addfile(m, src.extractfile(m) if m.isfile() else None)
                    done += m.size
                    i += 1
            out.append(path)
    return out


def interleaved_tar(work: Path, base: Path, pieces: list[Path], run: int) -> dict[str, Tally]:
    """The tar extract, piece by piece on the three mounts in turn (see ``--interleave``): what each
    mount's pieces took, by mount label. ``run``: which FUSE side goes first (they alternate)."""
    with ExitStack() as stack:
        mounts: dict[str, Path] = {}
        for label, mounter in MOUNTERS.items():
            image, mnt = fresh_copy(work, base, label)
            stack.callback(image.unlink)
            mounts[label] = stack.enter_context(mounter(image, mnt))
            (mnt / "extract").mkdir()
        tallies = {label: Tally(daemon_pid(m)) for label, m in mounts.items()}
        for n, piece in enumerate(pieces):
            fuse = ["fuse2fs", "volfs"] if (run + n) % 2 == 0 else ["volfs", "fuse2fs"]
            for label in ["kernel", *fuse]:
                os.sync()  # the last piece's writes are not this one's to pay for
                tallies[label].measure(
                    functools.partial(sh, "tar", "-C", str(mounts[label] / "extract"), "-xf", str(piece)))
    return tallies


def fresh_copy(work: Path, base: Path, label: str) -> tuple[Path, Path]:
    """A copy of ``base`` for ``label``'s mount, and its (empty) mount point."""
    image = work / f"{label}.img"
    sh("cp", "--sparse=always", str(base), str(image))
    # The copy leaves the image's gigabyte or more in the page cache, dirty: written back while
    # a workload runs, it would take a CPU from whichever side came first after it.
    os.sync()
    mnt = work / f"mnt-{label}"
    mnt.mkdir(exist_ok=True)
    return image, mnt


ByMount = dict[str, dict[str, float | None]]
Run = tuple[ByMount, ByMount, ByMount]
"""Seconds, daemon CPU seconds and steal share, each by mount label and workload."""


MOUNTERS = {"kernel": kernel_mount, "fuse2fs": fuse2fs_mount, "volfs": volfs_mount}


def one_run(work: Path, base: Path, tarball: Path, size_mib: int, files: int, only: frozenset[str],
            run: int = 0, pieces: list[Path] | None = None) -> Run:
    """All workloads on the kernel, fuse2fs and volfs, each on a fresh copy of ``base``.

    The two FUSE sides take turns going first (fuse2fs when ``run`` is even), so neither always runs in
    the wake of the other. With ``pieces`` (``--interleave``), the tar extract is measured apart, by
    :func:`interleaved_tar`. Returns (seconds, daemon CPU seconds, steal share), each by mount label
    and workload.
    """
    results: ByMount = {label: {} for label in MOUNTERS}
    cpu: ByMount = {label: {} for label in MOUNTERS}
    steal: ByMount = {label: {} for label in MOUNTERS}
    if "tar extract" not in only:
        pieces = None
    each = only - {"tar extract"} if pieces is not None else only
    if each:
        for label in ("kernel", "fuse2fs", "volfs") if run % 2 == 0 else ("kernel", "volfs", "fuse2fs"):
            image, mnt = fresh_copy(work, base, label)
            print(f"{label}...", file=sys.stderr)
            with MOUNTERS[label](image, mnt) as m:
                results[label] = workloads(m, size_mib, files, tarball, cpu[label], steal[label], each)
            image.unlink()
    if pieces is not None:
        for label, tally in interleaved_tar(work, base, pieces, run).items():
            results[label]["tar extract"] = tally.seconds
            cpu[label]["tar extract"] = tally.cpu
            steal[label]["tar extract"] = tally.steal
    return results, cpu, steal


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_run(run: Run) -> None:
    results, cpu, steal = run

    def fmt(x: float | None, digits: int = 3) -> str:
        return f"{x:.{digits}f}" if x is not None else "n/a"

    def pct(x: float | None) -> str:
        return f"{100 * x:.1f}%" if x is not None else "n/a"

    print(f"{'workload':<20}{'kernel s':>10}{'fuse2fs s':>11}{'volfs s':>10}{'volfs/fuse2fs':>15}{'volfs/kernel':>14}"
          f"{'fuse2fs cpu':>13}{'volfs cpu':>11}{'cpu ratio':>11}{'steal f/v':>15}")
    for n in results["kernel"]:
        k, f, v = results["kernel"][n], results["fuse2fs"][n], results["volfs"][n]
        fc, vc = cpu["fuse2fs"].get(n), cpu["volfs"].get(n)
        print(f"{n:<20}{fmt(k):>10}{fmt(f):>11}{fmt(v):>10}{fmt(ratio(v, f), 2):>15}{fmt(ratio(v, k), 2):>14}"
              f"{fmt(fc, 2):>13}{fmt(vc, 2):>11}{fmt(ratio(vc, fc), 2):>11}"
              f"{pct(steal['fuse2fs'].get(n)) + ' / ' + pct(steal['volfs'].get(n)):>15}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--tree", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="the source tree of the tar workload (default: Python's standard library, "
                             "a few thousand real source files)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="side-by-side runs; with more than one, the range of each ratio is printed too")
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="extract the tar workload in N pieces, alternating between the mounts (all "
                             "three up at once); see above")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help="comma-separated workloads to run (default: all): " + ", ".join(WORKLOADS))
    args = parser.parse_args()
    only = frozenset(w.strip() for w in args.only.split(","))
    if not only <= set(WORKLOADS):
        parser.error(f"unknown workload(s): {', '.join(sorted(only - set(WORKLOADS)))}")
    if os.geteuid() != 0 or shutil.which("fuse2fs") is None:
        print("needs root and fuse2fs (apt-get install fuse2fs)", file=sys.stderr)
        return 2
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="volfs-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        print(f"building a {args.size_mib} MiB file and {args.files} small files...", file=sys.stderr)
        tarball = source_tarball(work, args.tree)
        base = build_image(work, args.size_mib, args.files, tarball.stat().st_size >> 20)
        pieces = split_tarball(tarball, args.interleave) if args.interleave > 1 else None
        for i in range(args.repeat):
            print(f"run {i + 1} of {args.repeat}", file=sys.stderr)
            runs.append(one_run(work, base, tarball, args.size_mib, args.files, only, run=i, pieces=pieces))
            print(f"run {i + 1} ({'fuse2fs' if i % 2 == 0 else 'volfs'} first):")
            print_run(runs[-1])
            sys.stdout.flush()
    if len(runs) > 1:
        # The machine may be shared: one side-by-side run is one sample; report the spread, over all
        # runs and over the runs the hypervisor left alone.
        print(f"volfs/fuse2fs over {len(runs)} runs, min / median / max (time, then daemon CPU; runs: "
              f"all, then those where both FUSE sides saw at most {100 * QUIET_STEAL:.0f}% steal):")
        for n in runs[0][0]["kernel"]:
            quiet = [run for run in runs if all((run[2][side].get(n) or 0.0) <= QUIET_STEAL
                                                for side in ("fuse2fs", "volfs"))]
            for label, chosen in (("all", runs), ("quiet", quiet)):
                line = f"  {n:<20}{label:<6}{len(chosen):>3} runs  "
                for part in (0, 1):
                    rs = sorted(r for r in (ratio(run[part]["volfs"].get(n), run[part]["fuse2fs"].get(n))
                                            for run in chosen) if r is not None)
                    line += f"{rs[0]:.2f} / {statistics.median(rs):.2f} / {rs[-1]:.2f}    " if rs else "n/a    "
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
