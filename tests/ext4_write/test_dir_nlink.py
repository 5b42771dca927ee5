"""dir_nlink: a directory with more than 65,000 subdirectories counts its links as 1, as the kernel does."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ext4_write.support import check, debugfs, images
from testsupport import need_root
from volfs.backend import Ino
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError
from volfs.ext4.writer import LINK_MAX

ROOT = Ino(2)
# Made by mkfs.ext4 -d: the parent then has 2 + SUBDIRS = LINK_MAX links, the most it can count exactly.
SUBDIRS = LINK_MAX - 2


def _links(image: Path, path: str) -> int:
    out = debugfs(image, f"stat {path}")
    return int(out.split("Links:")[1].split()[0])


@pytest.fixture(scope="module")
def full_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose /p has exactly LINK_MAX links, made by the kernel (mke2fs -d is quadratic here)."""
    need_root("loop mounts")
    image = images.mkfs(tmp_path_factory.mktemp("img") / "base.img", None, "160M", "-b", "1024", "-N", "70000")
    with images.loop_mount(image, "rw") as mnt:
        os.mkdir(mnt / "p")
        for i in range(SUBDIRS):
            os.mkdir(mnt / "p" / f"{i:05d}")
    assert _links(image, "/p") == LINK_MAX
    return image


def _copy(src: Path, dst: Path) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(1 << 22):
            if chunk.count(0) == len(chunk):
                g.seek(len(chunk), os.SEEK_CUR)  # keep it sparse
            else:
                g.write(chunk)
        g.truncate(f.tell())
    return dst


def test_crossing_link_max_sets_one_and_stays_there(full_parent: Path, tmp_path: Path) -> None:
    image = _copy(full_parent, tmp_path / "img")
    b = Ext4Backend(image, readonly=False)
    p = b.lookup(ROOT, b"p").ino
    assert b.getattr(p).nlink == LINK_MAX
    b.mkdir(p, b"over1", 0o755, 0, 0)  # the 64,999th subdirectory: 65,001 links cannot be counted
    assert b.getattr(p).nlink == 1
    b.mkdir(p, b"over2", 0o755, 0, 0)
    assert b.getattr(p).nlink == 1
    b.rmdir(p, b"over2")  # as the kernel's ext4_dec_count: a count of 1 stays 1
    assert b.getattr(p).nlink == 1
    b.rename(p, b"over1", ROOT, b"moved")  # moving a subdirectory out: still "many" (65,000 + 2 counted)
    b.rename(ROOT, b"moved", p, b"back")
    b.close()
    check(image)  # e2fsck agrees: more than LINK_MAX counted links must be recorded as 1
    assert _links(image, "/p") == 1
    need_root("loop mounts")
    with images.loop_mount(image, "ro") as mnt:
        assert os.stat(mnt / "p").st_nlink == 1
        assert os.path.isdir(mnt / "p" / "back") and not os.path.exists(mnt / "p" / "over2")
        assert len(os.listdir(mnt / "p")) == SUBDIRS + 1


@pytest.mark.parametrize("opts", [("-O", "^dir_nlink"), ()], ids=["no-dir_nlink", "linear-dir"])
def test_the_limit_is_emlink_unless_dir_nlink_and_indexed(tmp_path: Path, opts: tuple[str, ...]) -> None:
    """Past LINK_MAX only an indexed directory on a dir_nlink filesystem takes more: the kernel agrees."""
    image = images.mkfs(tmp_path / "img", None, "64M", *opts, "-N", "4096")
    b = Ext4Backend(image, readonly=False)
    b.mkdir(ROOT, b"d", 0o755, 0, 0)  # one block: not indexed
    b.close()
    # Pretend d already has LINK_MAX links (debugfs sif): creating its subdirectories is the slow part.
    images.run(images.tool("debugfs"), "-w", "-R", f"sif /d links_count {LINK_MAX}", str(image))
    kernel_copy = _copy(image, tmp_path / "kernel.img")
    b = Ext4Backend(image, readonly=False)
    d = b.lookup(ROOT, b"d").ino
    with pytest.raises(VolfsError) as info:
        b.mkdir(d, b"one-too-many", 0o755, 0, 0)
    assert info.value.errno == errno.EMLINK
    b.mkdir(ROOT, b"other", 0o755, 0, 0)
    with pytest.raises(VolfsError) as info:
        b.rename(ROOT, b"other", d, b"moved-in")
    assert info.value.errno == errno.EMLINK
    assert b.getattr(d).nlink == LINK_MAX
    b.close()
    need_root("loop mounts")
    with images.loop_mount(kernel_copy, "rw") as mnt:
        with pytest.raises(OSError) as kinfo:
            os.mkdir(mnt / "d" / "one-too-many")
        assert kinfo.value.errno == errno.EMLINK
