"""A journal with unreplayed fast-commit blocks is refused clearly (we do not replay them yet)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import ext4_images as images
import pytest
from testsupport import need_root

from volfs.errors import VolfsError
from volfs.ext4 import Filesystem


def test_unreplayed_fast_commit_is_refused_and_kernel_replay_is_read(tmp_path: Path) -> None:
    need_root("a kernel rw mount makes the fast commits")
    image = images.mkfs(tmp_path / "fc.img", None, "64M", "-O", "fast_commit")
    copy = tmp_path / "copy.img"
    with images.loop_mount(image, "rw") as mnt:
        for i in range(3):
            fd = os.open(mnt / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"data%d" % i * 100)
            os.fsync(fd)  # fsync of a new file goes through the fast-commit area
            os.close(fd)
        # The kernel rewrites the superblock now and then; copy until the copy's is whole.
        for _ in range(50):
            shutil.copyfile(image, copy)
            check = subprocess.run([images.tool("dumpe2fs"), "-h", str(copy)], capture_output=True, text=True)
            if check.returncode == 0 and "checksum does not match" not in check.stderr:
                break
            time.sleep(0.1)
    log = subprocess.run([images.tool("debugfs"), "-R", "logdump", str(copy)], capture_output=True, text=True).stdout
    assert "Fast Commit Area" in log and "CREAT_DENTRY" in log  # the fixture really holds fast commits
    for readonly in (True, False):
        with pytest.raises(VolfsError) as info:
            Filesystem.open(copy, readonly=readonly)
        assert info.value.errno == errno.EOPNOTSUPP and "fast-commit" in str(info.value)
    # The kernel replays fast commits on mount (e2fsck 1.47.0's replay leaves a bad superblock
    # checksum behind, so it is not the oracle here); afterwards the image reads normally.
    replayed = tmp_path / "replayed.img"
    shutil.copyfile(copy, replayed)
    with images.loop_mount(replayed, "rw"):
        pass
    fs = Filesystem.open(replayed)
    try:
        for i in range(3):
            assert fs.read(fs.lookup_ino(2, b"f%d" % i), 0, 1000) == b"data%d" % i * 100
    finally:
        fs.close()
