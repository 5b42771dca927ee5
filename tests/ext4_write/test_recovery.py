"""Opening for writing replays a journal that needs recovery onto the disk first."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ext4_write.support import check, debugfs, images, kernel_tree
from testsupport import need_root
from volfs.backend import Ino, OpenFlags
from volfs.backends.ext4 import Ext4Backend

ROOT = Ino(2)


def test_write_after_recovery(make_image: Callable[..., Path], tmp_path: Path) -> None:
    need_root("loop mounts")
    image = make_image("default")
    work = tmp_path / "live.img"
    dirty = tmp_path / "dirty.img"
    shutil.copyfile(image, work)
    with images.loop_mount(work, "rw") as mnt:
        (mnt / "journaled").mkdir()
        for i in range(20):
            with open(mnt / "journaled" / f"f{i}", "wb") as f:
                f.write(b"%d" % i * 1000)
                f.flush()
                os.fsync(f.fileno())
        fd = os.open(mnt / "journaled", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        images.copy_while_mounted(work, dirty)  # needs_recovery, the journal not checkpointed
    assert "needs_recovery" in debugfs(dirty, "stats")
    b = Ext4Backend(dirty, readonly=False)
    assert not b.readonly, b.readonly_reason
    d = b.lookup(ROOT, b"journaled").ino
    fh, _ = b.create(d, b"after", 0o644, OpenFlags.WRITE, 0, 0)
    b.write(fh, 0, b"written after replay")
    b.release(fh)
    b.forget(d)
    b.close()
    stats = debugfs(dirty, "stats")
    assert "needs_recovery" not in stats
    check(dirty)
    got = kernel_tree(dirty)
    for i in range(20):
        assert got[f"/journaled/f{i}"]["data"] == b"%d" % i * 1000
    assert got["/journaled/after"]["data"] == b"written after replay"
