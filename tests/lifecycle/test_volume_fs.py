"""Volume.get(name).fs: the wiring from a volume to its filesystem handle."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from testsupport import e2fsck_clean

import volfs
from volfs.errors import VolfsError, VolumeBusy
from volfs.sync import Volume


def test_directory_volume_fs_reads_and_writes(home: Path) -> None:
    vol = Volume.create("d", home=home)
    fs = Volume.get("d", home=home).fs
    fs.write("/a/b.txt", b"hello")
    assert (vol.path / "a" / "b.txt").read_bytes() == b"hello"
    assert fs.read("/a/b.txt") == b"hello"
    st = os.stat(vol.path / "a" / "b.txt")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())  # a directory volume's default owner
    fs.close()


def test_open_handle_holds_the_lock(home: Path) -> None:
    Volume.create("d", home=home)
    h = Volume.get("d", home=home)
    fs = h.fs
    assert h.fs is fs  # one handle per VolumeHandle
    assert Volume.get("d", home=home).in_use
    with pytest.raises(VolumeBusy):
        Volume.remove("d", home=home)
    second = Volume.get("d", home=home).open_fs(readonly=True)  # directory volumes share the lock
    second.close()
    fs.close()
    assert Volume.get("d", home=home).in_use == ()
    Volume.remove("d", home=home)


def test_read_only_handle(home: Path) -> None:
    Volume.create("d", home=home)
    fs = Volume.get("d", home=home).open_fs(readonly=True)
    with pytest.raises(VolfsError) as info:
        fs.write("/x", b"no")
    assert info.value.errno == errno.EROFS
    fs.close()


def test_disk_volume_fs_reads_and_writes_the_image(home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("hello from the guest\n")
    vol = Volume.create("img", home=home, kind="disk", size_mib=64)
    # Fill the image as a guest would have (mkfs.ext4 -d rewrites it with content).
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(vol.disk_path)], check=True, capture_output=True)
    fs = Volume.get("img", home=home).fs
    assert fs.read_text("/etc/motd") == "hello from the guest\n"
    assert sorted(e.path for e in fs.list("/")) == ["/etc", "/lost+found"]
    fs.write("/srv/data/new.bin", b"from the host" * 1000)
    st = fs.stat("/srv/data/new.bin")
    assert (st.uid, st.gid) == (0, 0)  # a disk volume's files belong to the guest's root by default
    with pytest.raises(VolumeBusy):
        Volume.remove("img", home=home)  # the open handle holds the image's lock
    fs.close()
    assert Volume.get("img", home=home).in_use == ()
    e2fsck_clean(vol.disk_path)
    out = subprocess.run(["debugfs", "-R", "cat /srv/data/new.bin", str(vol.disk_path)], capture_output=True)
    assert out.stdout == b"from the host" * 1000
    ro = Volume.get("img", home=home).open_fs(readonly=True)
    with pytest.raises(VolfsError) as info:
        ro.write("/etc/other", b"x")
    assert info.value.errno == errno.EROFS
    ro.close()
    Volume.remove("img", home=home)


@pytest.mark.trio
async def test_async_handle_fs(home: Path) -> None:
    await volfs.Volume.create("d", home=home)
    h = await volfs.Volume.get("d", home=home)
    await h.fs.write("/n.txt", b"async")
    assert await h.fs.read("/n.txt") == b"async"
    assert [e.path for e in await h.fs.list("/")] == ["/n.txt"]
    await h.fs.aclose()
