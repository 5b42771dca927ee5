"""Runlists: a file's data as (logical block, length, physical start or hole) runs.

Built once per inode from its extent tree or block map; physically adjacent
runs are merged so that a read moves each run with one device read.
Unwritten extents are holes (they read as zeros).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Run", "RunList"]


@dataclass(frozen=True, slots=True)
class Run:
    logical: int
    length: int
    physical: int | None  # None: unwritten (reads as zeros)


class RunList:
    """Sorted, non-overlapping mapped runs; anything not covered is a hole."""

    __slots__ = ("runs", "_starts")

    def __init__(self, runs: Sequence[Run]) -> None:
        merged: list[Run] = []
        for r in runs:
            if r.length <= 0:
                continue
            if merged:
                p = merged[-1]
                if p.logical + p.length == r.logical and (
                    (p.physical is None and r.physical is None)
                    or (p.physical is not None and r.physical is not None and p.physical + p.length == r.physical)
                ):
                    merged[-1] = Run(p.logical, p.length + r.length, p.physical)
                    continue
            merged.append(r)
        self.runs: tuple[Run, ...] = tuple(merged)
        self._starts = [r.logical for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def map(self, lblock: int) -> int | None:
        """Physical block of logical block ``lblock``, or None for a hole."""
        i = bisect.bisect_right(self._starts, lblock) - 1
        if i >= 0:
            r = self.runs[i]
            if lblock < r.logical + r.length and r.physical is not None:
                return r.physical + (lblock - r.logical)
        return None

    def segments(self, first: int, count: int) -> Iterator[tuple[int, int, int | None]]:
        """(logical, length, physical or None) pieces covering ``[first, first+count)``."""
        end = first + count
        i = max(bisect.bisect_right(self._starts, first) - 1, 0)
        pos = first
        runs = self.runs
        while pos < end:
            if i < len(runs) and runs[i].logical + runs[i].length <= pos:
                i += 1
                continue
            if i >= len(runs) or runs[i].logical >= end:
                yield pos, end - pos, None
                return
            r = runs[i]
            if r.logical > pos:
                yield pos, r.logical - pos, None
                pos = r.logical
                continue
            n = min(end, r.logical + r.length) - pos
            yield pos, n, (r.physical + (pos - r.logical)) if r.physical is not None else None
            pos += n
            i += 1

    def mapped_blocks(self) -> int:
        return sum(r.length for r in self.runs if r.physical is not None)
