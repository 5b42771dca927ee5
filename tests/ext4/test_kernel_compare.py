"""Our view of every fixture variant against the kernel's (loop mount, ro, noload)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from testsupport import need_root
from volfs.ext4 import Filesystem

import ext4_images as images
from ext4_images import VARIANTS
from ext4_walk import diff_trees, engine_tree, kernel_tree


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.root
@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"b65536"}))
def test_tree_matches_kernel(variant: str, image_factory: Callable[[str], Path]) -> None:
    need_root("loop mounts")
    image = image_factory(variant)
    before = _sha(image)
    with Filesystem.open(image) as fs:
        ours = engine_tree(fs)
    with images.loop_mount(image) as mnt:
        theirs = kernel_tree(mnt)
    problems = diff_trees(ours, theirs)
    assert not problems, "\n".join(problems[:40])
    assert len(ours) > 600
    assert _sha(image) == before, "opening the image read-only changed it"


@pytest.mark.root
@pytest.mark.parametrize("variant", ["default", "b1024", "nocsum", "ext2", "metabg"])
def test_statfs_matches_kernel(variant: str, image_factory: Callable[[str], Path]) -> None:
    need_root("loop mounts")
    import os

    image = image_factory(variant)
    with Filesystem.open(image) as fs:
        ours = fs.statfs()
    with images.loop_mount(image) as mnt:
        st = os.statvfs(mnt)
    assert (ours.block_size, ours.blocks, ours.blocks_free, ours.blocks_available, ours.files, ours.files_free,
            ours.name_max) == (st.f_bsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                               st.f_namemax)
