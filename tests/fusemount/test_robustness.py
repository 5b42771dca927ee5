"""A mount survives hostile images, interrupted requests and clients killed mid-write."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fusemount.support import Mounter
from testsupport import need_tool

from volfs.home import resolve_home
from volfs.mounts import mounted_at, read_record, unmount
from volfs.sync import Volume


def corrupt_image(image: Path, tree: Path) -> None:
    """Fill the image from ``tree``, then point /bad/victim's data outside the image."""
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-O", "^metadata_csum", "-d", str(tree), str(image)],
                   check=True)  # fmt: skip
    out = subprocess.run([need_tool("debugfs"), "-R", "stat /bad/victim", str(image)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Inode:" in out
    # i_block[5] is the first extent's ee_start_lo: point the data beyond the image.
    subprocess.run([need_tool("debugfs"), "-w", "-R", "sif /bad/victim block[5] 0xfffffff0", str(image)],
                   capture_output=True, check=True)  # fmt: skip


def test_hostile_image_gives_errors_not_a_dead_mount(home: Path, mounter: Mounter, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bad").mkdir(parents=True)
    (tree / "bad" / "victim").write_bytes(os.urandom(64 << 10))
    (tree / "good.txt").write_text("still readable\n")
    vol = Volume.create("hostile", home=home, kind="disk", size_mib=64)
    corrupt_image(vol.disk_path, tree)
    mp = Path(mounter("hostile").mountpoint)
    for _ in range(3):
        try:
            (mp / "bad" / "victim").read_bytes()
            raise AssertionError("reading a corrupt extent tree must fail")
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.EUCLEAN), exc
        assert (mp / "good.txt").read_text() == "still readable\n"  # the mount is alive
    assert sorted(os.listdir(mp)) == ["bad", "good.txt", "lost+found"]
    unmount(resolve_home(home), "hostile")


def test_interrupted_read_and_killed_writer(home: Path, dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    big = host / "big"
    with open(big, "wb") as f:
        f.truncate(256 << 20)
    reader = subprocess.Popen(["cat", str(mp / "big")], stdout=subprocess.DEVNULL)
    time.sleep(0.05)  # let it get going: the point is to interrupt it mid-stream
    reader.send_signal(signal.SIGINT)
    reader.wait(timeout=60)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import os,sys\nf=open(sys.argv[1],'wb')\nwhile True: f.write(os.urandom(1<<20))",
         str(mp / "stream")])  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not (host / "stream").exists() or (host / "stream").stat().st_size < 4 << 20):
        time.sleep(0.02)
    writer.kill()
    writer.wait(timeout=60)
    assert (host / "stream").stat().st_size >= 4 << 20
    (mp / "after").write_text("alive")
    assert (host / "after").read_text() == "alive"
    rec = read_record(resolve_home(home), "dvol")
    assert rec is not None and rec.alive
    unmount(resolve_home(home), "dvol")
    assert not mounted_at(str(mp))
