#!/usr/bin/env python3
"""Names whose ext4 directory hashes collide, for tests of the htree collision bit.

A birthday search over names ``<prefix><decimal>`` (fixed width) under one
hash seed: prints pairs of names with the same major hash (the low bit, which
ext4 reserves for "continued", is already cleared).  ``--count`` pairs need
about ``sqrt(count * 2**33)`` candidates.  The tests re-check every pair with
``debugfs dx_hash``, so this script is a generator, not an oracle.

    .venv/bin/python scripts/find_hash_collisions.py --seed 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 --count 300
"""

from __future__ import annotations

import argparse
import uuid

from volfs.ext4.dirhash import HASH_HALF_MD4, HASH_NAMES, dirhash


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", required=True, help="the filesystem's s_hash_seed (a UUID)")
    ap.add_argument("--count", type=int, default=100, help="pairs wanted")
    ap.add_argument("--version", type=int, default=HASH_HALF_MD4, help=f"hash version {HASH_NAMES}")
    ap.add_argument("--prefix", default="c")
    ap.add_argument("--width", type=int, default=11)
    args = ap.parse_args()
    raw = uuid.UUID(args.seed).bytes
    seed = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]
    seen: dict[int, int] = {}
    found: list[tuple[int, int]] = []
    i = 0
    while len(found) < args.count:
        name = f"{args.prefix}{i:0{args.width}d}".encode()
        h = dirhash(name, args.version, seed)[0]
        if h in seen:
            found.append((seen[h], i))
        else:
            seen[h] = i
        i += 1
    print(f"# {len(found)} pairs from {i} names, prefix {args.prefix!r}, width {args.width}")
    print(found)


if __name__ == "__main__":
    main()
