"""Session fixtures: ext4 images built once by mkfs.ext4 and shared by the tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the ext4_* helper modules

from testsupport import need_tool  # noqa: E402

import ext4_images as images  # noqa: E402
from ext4_images import VARIANTS  # noqa: E402

@pytest.fixture(scope="session")
def rich_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.build_rich_tree(tmp_path_factory.mktemp("tree") / "root")


@pytest.fixture(scope="session")
def image_factory(tmp_path_factory: pytest.TempPathFactory, rich_tree: Path) -> Callable[[str], Path]:
    built: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("images")

    def get(variant: str) -> Path:
        if variant not in built:
            need_tool("mke2fs")
            fstype, size, opts = VARIANTS[variant]
            built[variant] = images.mkfs(base / f"{variant}.img", rich_tree, size, *opts, fstype=fstype)
        return built[variant]

    return get


@pytest.fixture
def image_copy(tmp_path: Path, image_factory: Callable[[str], Path]) -> Callable[[str], Path]:
    """A private copy of a variant image (for tests that patch or corrupt it)."""

    def get(variant: str) -> Path:
        dst = tmp_path / f"{variant}-copy.img"
        shutil.copyfile(image_factory(variant), dst)
        return dst

    return get
