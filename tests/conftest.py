"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty volumes home; $MSB_HOME points at it and HOME away from the real one."""
    h = tmp_path / "msb-home"
    h.mkdir()
    monkeypatch.setenv("MSB_HOME", str(h))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    yield h
