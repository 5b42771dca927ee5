"""The main job: a short tour of volfs on a temporary volumes home.

Run with ``python -m volfs.demo`` (or ``bash scripts/demo``). It creates a
directory volume and a disk volume, works with their files through the async
handle, lists and inspects them, and removes them; nothing outside the
temporary home is touched unless ``--home`` names another one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

import volfs
from volfs.errors import VolfsError


def _say(text: str) -> None:
    print(text, flush=True)


async def tour(home: Path) -> None:
    _say(f"volumes home: {home}")
    cache = await volfs.Volume.create("demo-cache", quota_mib="1G", labels={"team": "demo"}, home=home)
    _say(f"created directory volume {cache.name!r} at {cache.path}")
    disk = await volfs.Volume.builder("demo-disk", home=home).disk().size("128M").label("kind", "db").create()
    _say(f"created disk volume {disk.name!r}: {disk.disk_path} ({disk.capacity_bytes >> 20} MiB ext4 image)")

    await _files(home)

    _say("\nvolumes (newest first):")
    for h in await volfs.Volume.list(home=home):
        _say(f"  {h.name:<12} {h.kind.value:<5} used={h.used_bytes:>9} B  labels={h.labels}  status={h.status.value}")

    again = await volfs.Volume.ensure_exists("demo-cache", labels={"team": "demo"}, home=home)
    _say(f"\nensure_exists reused {again.name!r} (created {again.created_at:%Y-%m-%d %H:%M:%S} UTC)")
    try:
        await volfs.Volume.ensure_exists("demo-cache", kind="disk", size_mib=64, home=home)
    except VolfsError as exc:
        _say(f"ensure_exists with another kind is refused: {exc}")

    for name in ("demo-cache", "demo-disk"):
        await volfs.Volume.remove(name, home=home)
        _say(f"removed {name!r}")
    _say(f"volumes left: {[h.name for h in await volfs.Volume.list(home=home)]}")


async def _files(home: Path) -> None:
    """Files written and read through each volume's handle."""
    for name in ("demo-cache", "demo-disk"):
        handle = await volfs.Volume.get(name, home=home)
        fs = handle.fs
        where = "inside its ext4 image, by volfs's own engine" if handle.kind.value == "disk" else "in its directory"
        _say(f"\n{name}: files through the handle ({where})")
        await fs.write("/notes/hello.txt", b"hello from the host\n")
        await fs.mkdir("/src/pkg")
        await fs.write("/src/pkg/__init__.py", b"VERSION = '1.0'\n")
        _say(f"  read /notes/hello.txt -> {await fs.read('/notes/hello.txt')!r}")
        for entry in await fs.list("/src/pkg"):
            _say(f"  list /src/pkg -> {entry.path} ({entry.kind}, {entry.size} bytes)")
        st = await fs.stat("/notes/hello.txt")
        _say(f"  stat /notes/hello.txt -> size={st.size} mode={oct(st.mode)}")
        await fs.rename("/notes/hello.txt", "/notes/renamed.txt")
        _say(f"  exists after rename: {await fs.exists('/notes/hello.txt')} / {await fs.exists('/notes/renamed.txt')}")
        _say(f"  list / -> {[e.path for e in await fs.list('/')]}")
        await fs.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volfs.demo", description=__doc__)
    parser.add_argument("--home", type=Path, help="volumes home to use (default: a new temporary directory)")
    args = parser.parse_args(argv)
    try:
        if args.home is not None:
            anyio.run(tour, args.home)
        else:
            with tempfile.TemporaryDirectory(prefix="volfs-demo-") as tmp:
                anyio.run(tour, Path(tmp))
    except VolfsError as exc:
        print(f"volfs demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
