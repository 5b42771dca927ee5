"""Fixtures for lifecycle tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from msbdb import make_msb_db


@pytest.fixture
def msb_home(home: Path) -> Path:
    """A volumes home that has microsandbox's msb.db."""
    make_msb_db(home)
    (home / "volumes").mkdir()
    return home
