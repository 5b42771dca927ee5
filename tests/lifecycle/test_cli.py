"""The volfs CLI end to end, through subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def volfs(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("volfs", path=os.path.dirname(sys.executable)) or "volfs"
    return subprocess.run([exe, "--home", str(home), *args], capture_output=True, text=True, timeout=120)


def test_create_ls_inspect_rm(tmp_path: Path) -> None:
    home = tmp_path / "h"
    r = volfs(home, "create", "cache", "--quota", "1G", "--label", "team=ml", "--label", "tier=a=b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "cache\n", "")
    r = volfs(home, "create", "img", "--kind", "disk", "--size", "64M", "-q")
    assert (r.returncode, r.stdout) == (0, "")

    r = volfs(home, "ls")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "USED", "CREATED", "IN", "USE", "STATUS"]
    assert [ln.split()[0] for ln in lines[1:]] == ["img", "cache"]  # newest first
    assert lines[1].split()[1:4] == ["disk", "64.0", "MiB"]
    assert lines[2].split()[1:4] == ["dir", "1.0", "GiB"]

    data = json.loads(volfs(home, "ls", "--json").stdout)
    assert [d["name"] for d in data] == ["img", "cache"]
    assert data[0]["capacity_bytes"] == 64 << 20 and data[0]["disk_format"] == "raw" and data[0]["disk_fstype"] == "ext4"
    assert data[1]["labels"] == {"team": "ml", "tier": "a=b"} and data[1]["quota_mib"] == 1024
    assert data[0]["used_bytes"] > 0 and data[1]["in_use"] == []
    assert volfs(home, "ls", "-q").stdout == "img\ncache\n"

    r = volfs(home, "inspect", "img")
    assert r.returncode == 0
    assert "Kind:       disk" in r.stdout and f"Path:       {home / 'volumes' / 'img' / 'disk.raw'}" in r.stdout
    r = volfs(home, "inspect", "cache", "nope", "--json")
    assert r.returncode == 1 and "nope" in r.stderr and "ENOENT" in r.stderr
    assert [d["name"] for d in json.loads(r.stdout)] == ["cache"]

    r = volfs(home, "rm", "cache", "nope", "img")
    assert r.returncode == 1
    assert r.stdout == "cache\nimg\n"
    assert r.stderr.count("\n") == 1 and "nope" in r.stderr
    r = volfs(home, "ls")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "No volumes found.\n")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["create", "bad/name"], "invalid volume name"),
        (["create", "x", "--kind", "disk"], "require a size"),
        (["create", "x", "--size", "1G"], "do not take a size"),
        (["create", "x", "--kind", "disk", "--size", "12Q"], "unknown suffix"),
        (["create", "x", "--label", "novalue"], "expected key=value"),
        (["inspect", "missing"], "no such volume"),
        (["rm", "missing"], "no such volume"),
    ],
)
def test_errors_are_one_line_exit_1(tmp_path: Path, args: list[str], needle: str) -> None:
    r = volfs(tmp_path / "h", *args)
    assert r.returncode == 1
    assert r.stderr.startswith("volfs: ") and r.stderr.count("\n") == 1 and needle in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["create"], ["create", "x", "--kind", "nfs"], ["rm"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    r = volfs(tmp_path / "h", *args)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_duplicate_create(tmp_path: Path) -> None:
    assert volfs(tmp_path / "h", "create", "a").returncode == 0
    r = volfs(tmp_path / "h", "create", "a")
    assert r.returncode == 1 and "already exists" in r.stderr and "EEXIST" in r.stderr


def test_ls_reports_orphans(tmp_path: Path) -> None:
    home = tmp_path / "h"
    volfs(home, "create", "a")
    (home / "volumes" / "stray").mkdir()
    r = volfs(home, "ls")
    assert r.returncode == 0
    rows = {ln.split()[0]: ln.split()[-1] for ln in r.stdout.splitlines()[1:]}
    assert rows == {"a": "ok", "stray": "unregistered"}
    assert "stray" in r.stderr and "volfs rm" in r.stderr
    assert volfs(home, "rm", "stray").returncode == 0
    assert volfs(home, "ls", "-q").stdout == "a\n"


def test_msb_home_env_is_the_default(tmp_path: Path) -> None:
    env = {**os.environ, "MSB_HOME": str(tmp_path / "envhome")}
    exe = shutil.which("volfs", path=os.path.dirname(sys.executable)) or "volfs"
    r = subprocess.run([exe, "create", "viaenv"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "envhome" / "volumes" / "viaenv").is_dir()
