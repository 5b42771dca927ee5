#!/usr/bin/env python3
"""Soak the ext4 engine with mutated metadata for a long time (the test suite runs a bounded number).

Usage: .venv/bin/python scripts/ext4_soak.py [--cases N] [--seed S]
Every case must end in a VolfsError or a clean walk within 10 s; anything else is printed and the run fails.
"""

from __future__ import annotations

import argparse
import random
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "ext4")]


def main() -> int:
    import tempfile

    import pytest  # noqa: F401 - the test helpers import it

    import test_hostile as th

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    class _Factory:
        def __init__(self, base: Path) -> None:
            self.base = base
            self.n = 0

        def mktemp(self, name: str) -> Path:
            self.n += 1
            p = self.base / f"{name}{self.n}"
            p.mkdir()
            return p

    with tempfile.TemporaryDirectory() as tmp:
        bases = th.mutation_bases.__wrapped__(_Factory(Path(tmp)))  # type: ignore[attr-defined]
        rng = random.Random(args.seed)
        failures = 0
        for case in range(args.cases):
            base, regions = bases[rng.randrange(len(bases))]
            edits = [(rng.randrange(1000), rng.randrange(1 << 16), rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)]))
                     for _ in range(rng.randint(1, 12))]
            try:
                th.run_mutation(base, regions, edits, rng.random() < 0.5)
            except Exception:  # noqa: BLE001 - report and continue
                failures += 1
                print(f"case {case}: edits={edits}")
                traceback.print_exc()
            if case % 1000 == 0:
                print(f"{case} cases, {failures} failures", flush=True)
        print(f"done: {args.cases} cases, {failures} failures")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
