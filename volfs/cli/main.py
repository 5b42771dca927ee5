"""The ``volfs`` command line: volume lifecycle commands in the style of ``msb volume``.

Every command takes the global ``--home``. Errors are one line on stderr
(``volfs: <name>: <cause> (<ERRNO>)``) with exit status 1; usage errors exit 2
(argparse's convention). ``--json`` output is stable and meant for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from volfs import mounts
from volfs.errors import InvalidArgument, VolfsError
from volfs.home import resolve_home
from volfs.mounts import MountOptions
from volfs.names import parse_label
from volfs.volume import Volume, VolumeHandle, VolumeKind

__all__ = ["main"]


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _size_column(h: VolumeHandle) -> str:
    if h.kind is VolumeKind.DISK:
        return _human(h.capacity_bytes)
    return _human(h.quota_mib << 20) if h.quota_mib is not None else "-"


def _created(h: VolumeHandle) -> str:
    return h.created_at.strftime("%Y-%m-%d %H:%M:%S") if h.created_at else "-"


def volume_json(h: VolumeHandle) -> dict[str, Any]:
    """The JSON object for one volume (``ls --json`` and ``inspect --json``)."""
    return {
        "name": h.name,
        "kind": h.kind.value,
        "status": h.status.value,
        "path": str(h.path),
        "disk_path": str(h.disk_path) if h.disk_path else None,
        "quota_mib": h.quota_mib,
        "used_bytes": h.used_bytes,
        "capacity_bytes": h.capacity_bytes,
        "disk_format": h.disk_format,
        "disk_fstype": h.disk_fstype,
        "labels": h.labels,
        "created_at": h.created_at.isoformat() if h.created_at else None,
        "in_use": list(h.in_use),
        "mountpoint": str(h.mountpoint) if h.mountpoint else None,
    }


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _in_use_column(h: VolumeHandle) -> str:
    if h.mountpoint is not None:
        return f"mounted:{h.mountpoint}"
    return "yes" if h.in_use else "no"


def cmd_create(args: argparse.Namespace) -> int:
    labels = [parse_label(text) for text in args.label]
    vol = Volume.create(
        args.name, kind=args.kind, size_mib=args.size, quota_mib=args.quota, labels=labels, home=args.home
    )
    if not args.quiet:
        print(vol.name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    handles = Volume.list(home=args.home)
    if args.json:
        print(json.dumps([volume_json(h) for h in handles], indent=2))
        return 0
    if args.quiet:
        for h in handles:
            print(h.name)
        return 0
    if not handles:
        print("No volumes found.", file=sys.stderr)
        return 0
    rows = [["NAME", "KIND", "SIZE", "USED", "CREATED", "IN USE", "STATUS"]]
    for h in handles:
        rows.append(
            [h.name, h.kind.value, _size_column(h), _human(h.used_bytes), _created(h),
             _in_use_column(h), h.status.value]
        )  # fmt: skip
    print(_table(rows))
    broken = [h.name for h in handles if h.status.value != "ok"]
    if broken:
        print(f"volfs: {len(broken)} volume(s) need attention ({', '.join(broken)}): "
              "`volfs rm NAME` clears them", file=sys.stderr)  # fmt: skip
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    found: list[VolumeHandle] = []
    status = 0
    for name in args.names:
        try:
            found.append(Volume.get(name, home=args.home))
        except VolfsError as exc:
            _report(exc)
            status = 1
    if args.json:
        print(json.dumps([volume_json(h) for h in found], indent=2))
        return status
    for i, h in enumerate(found):
        if i:
            print()
        fields: list[tuple[str, str]] = [("Name", h.name), ("Kind", h.kind.value), ("Status", h.status.value)]
        if h.kind is VolumeKind.DISK:
            fields += [("Format", h.disk_format or "-"), ("Filesystem", h.disk_fstype or "-"),
                       ("Capacity", _human(h.capacity_bytes)), ("Path", str(h.disk_path))]  # fmt: skip
        else:
            fields += [("Quota", _human(h.quota_mib << 20) if h.quota_mib is not None else "unlimited"),
                       ("Path", str(h.path))]  # fmt: skip
        fields += [
            ("Used", _human(h.used_bytes)),
            ("Created", _created(h)),
            ("Labels", ", ".join(f"{k}={v}" for k, v in h.labels.items()) or "-"),
            ("In use", "; ".join(h.in_use) or "no"),
        ]
        width = max(len(k) for k, _ in fields) + 1
        for key, value in fields:
            print(f"{key + ':':<{width}} {value}")
    return status


def cmd_rm(args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            Volume.remove(name, home=args.home)
        except VolfsError as exc:
            _report(exc)
            status = 1
            continue
        if not args.quiet:
            print(name)
    return status


def _ids(text: str, what: str) -> tuple[int, ...]:
    parts = text.split(":")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    want = 2 if what == "--owner" else 3
    if len(values) != want or min(values) < 0:
        shape = "UID:GID" if want == 2 else "GUEST:HOST:COUNT"
        raise InvalidArgument(f"invalid {what} {text!r}: expected {shape} (non-negative integers)")
    return values


def cmd_mount(args: argparse.Namespace) -> int:
    owner = _ids(args.owner, "--owner") if args.owner else None
    options = MountOptions(
        readonly=args.ro, noexec=args.noexec, nosuid=args.nosuid, nodev=args.nodev, allow_other=args.allow_other,
        owner=(owner[0], owner[1]) if owner else None,
        uid_map=tuple(_ids(t, "--uid-map") for t in args.uid_map),  # type: ignore[misc]
        gid_map=tuple(_ids(t, "--gid-map") for t in args.gid_map),  # type: ignore[misc]
        log=os.path.abspath(args.log) if args.log else None,
    )  # fmt: skip
    handle = Volume.get(args.name, home=args.home)
    record = mounts.mount(handle.home, handle.name, args.mountpoint, options, foreground=args.foreground)
    if not args.quiet:
        print(f"{record.name} mounted at {record.mountpoint} (pid {record.pid})")
    return 0


def cmd_unmount(args: argparse.Namespace) -> int:
    record = mounts.unmount(resolve_home(args.home), args.target)
    if not args.quiet:
        print(f"{record.name} unmounted from {record.mountpoint}")
    return 0


def _report(exc: BaseException) -> None:
    print(f"volfs: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volfs", description="Work with sandbox volumes from the host.")
    parser.add_argument("--home", help="volumes home (default: $MSB_HOME, else ~/.microsandbox)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", help="create a volume")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--kind", choices=["dir", "disk"], default="dir", help="directory (default) or ext4 disk image")
    p.add_argument("--size", help="disk capacity, e.g. 512M, 1G, 1.5GiB (required for disk)")
    p.add_argument("--quota", help="recorded quota of a directory volume, e.g. 10G")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("ls", aliases=["list"], help="list volumes")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("inspect", help="show everything about volumes")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--json", action="store_true", help="JSON output (an array)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("mount", help="mount a volume on the host through FUSE")
    p.add_argument("name", metavar="NAME")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--ro", action="store_true", help="read-only")
    p.add_argument("--noexec", action="store_true", help="no program execution from the mount")
    p.add_argument("--nosuid", action="store_true", help="ignore set-user-id bits")
    p.add_argument("--nodev", action="store_true", help="no device access")
    p.add_argument("--allow-other", action="store_true", help="let other users access the mount")
    p.add_argument("--owner", metavar="UID:GID", help="show every file as owned by UID:GID")
    p.add_argument("--uid-map", action="append", default=[], metavar="GUEST:HOST:COUNT", help="map guest uids")
    p.add_argument("--gid-map", action="append", default=[], metavar="GUEST:HOST:COUNT", help="map guest gids")
    p.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    p.add_argument("--log", metavar="FILE", help="append the daemon's log to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], help="unmount a volume (commits everything first)")
    p.add_argument("target", metavar="MOUNTPOINT|NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("rm", aliases=["remove"], help="remove volumes and their data")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_rm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``volfs`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VolfsError as exc:
        _report(exc)
        return 1
    except KeyboardInterrupt:
        print("volfs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
