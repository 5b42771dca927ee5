"""Fixtures of the ext4 write tests: empty images per variant, built by mke2fs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "ext4"))  # ext4_images

from testsupport import need_tool  # noqa: E402

import ext4_images as images  # noqa: E402
from ext4_write.support import INLINE_VARIANTS, WRITE_VARIANTS  # noqa: E402

@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(variant or None, size=..., opts=..., tree=...) -> a fresh image path."""
    counter = [0]

    def make(variant: str | None = "default", *, size: str | None = None, opts: tuple[str, ...] = (),
             tree: Path | None = None) -> Path:
        need_tool("mke2fs")
        counter[0] += 1
        vsize, vopts = {**WRITE_VARIANTS, **INLINE_VARIANTS}[variant] if variant else ("64M", ())
        return images.mkfs(tmp_path / f"img{counter[0]}.img", tree, size or vsize, *vopts, *opts)

    return make
