"""Named points in multi-step operations, for crash tests.

Production code calls :func:`reached` between the steps of create and remove.
It does nothing; crash tests replace it in a subprocess to kill the process at
one named point and then check that what is left is recoverable.
"""

from __future__ import annotations


def reached(point: str) -> None:
    """Mark that the operation got to ``point`` (a no-op outside crash tests)."""

