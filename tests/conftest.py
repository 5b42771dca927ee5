"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI must be reproducible: there hypothesis draws the same examples every run
# (a seed derived from each test). Developers' runs stay random and keep
# finding new cases; a failure prints the example and a reproduce blob.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty volumes home; $MSB_HOME points at it and HOME away from the real one."""
    h = tmp_path / "msb-home"
    h.mkdir()
    monkeypatch.setenv("MSB_HOME", str(h))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    yield h
