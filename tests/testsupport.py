"""Helpers shared by every test module (importable as ``testsupport``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def need(condition: bool, reason: str) -> None:
    """Skip the calling test when ``condition`` is false, saying why.

    A skip is only allowed on machines that truly lack something; under CI
    (``CI`` set) every requirement must hold, so a missing one fails instead.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI but missing: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def need_root(why: str) -> None:
    need(is_root(), f"needs root: {why}")


def need_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/sbin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def e2fsck_clean(image: str | Path) -> None:
    """Fail with e2fsck's own output unless ``e2fsck -fn`` finds ``image`` clean."""
    e2fsck = need_tool("e2fsck")
    proc = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"e2fsck -fn {image} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
