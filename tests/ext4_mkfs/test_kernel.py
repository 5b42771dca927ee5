"""Images from volfs mkfs used by peers we did not write: the kernel, debugfs, e2fsck."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mkfs_support import GiB, MiB, debugfs, dumpe2fs_fields, loop_mount
from testsupport import e2fsck_clean, need_root, need_tool
from volfs.ext4.mkfs import DEFAULT_FEATURES, mkfs

D = DEFAULT_FEATURES

VARIANTS: dict[str, tuple[int, int, dict[str, object]]] = {
    "1G-b4096": (GiB, 4096, {}),
    "64M-b1024": (64 * MiB, 1024, {}),
    "256M-b2048-no-journal": (256 * MiB, 2048, {"journal": False}),
    "300M-no-lost+found-seed": (300 * MiB, 4096, {"lost_found": False, "features": D | {"metadata_csum_seed"}}),
    "2G-orphan_file": (2 * GiB, 4096, {"features": D | {"orphan_file"}}),
}


@pytest.mark.root
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernel_mounts_writes_and_fsck_stays_clean(variant: str, tmp_path: Path) -> None:
    need_root("loop mounts")
    need_tool("mount")
    size, bs, opts = VARIANTS[variant]
    image = tmp_path / "disk.raw"
    mkfs(image, size, block_size=bs, **opts)  # type: ignore[arg-type]
    e2fsck_clean(image)
    payload = os.urandom(1 << 20)
    with loop_mount(image, "rw") as mnt:
        st = os.statvfs(mnt)
        assert st.f_bsize == bs
        (mnt / "dir" / "sub").mkdir(parents=True)
        for k in range(50):
            (mnt / "dir" / f"f{k}").write_bytes(b"x" * k)
        with open(mnt / "big", "wb") as f:
            for _ in range(50):
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.symlink("dir/f1", mnt / "link")
        with open(mnt / "doomed", "wb") as f:  # an orphan while open (orphan list or orphan file)
            os.unlink(mnt / "doomed")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        subprocess.run(["sync"], check=True)
    e2fsck_clean(image)
    listing = debugfs(image, "ls -l /")
    for name in ("dir", "big", "link"):
        assert f" {name}" in listing, listing
    assert ("lost+found" in listing) == opts.get("lost_found", True)
    stat_big = debugfs(image, "stat /big")
    assert "Size: 52428800" in stat_big, stat_big
    dumped = tmp_path / "big.out"
    debugfs(image, f"dump /big {dumped}")
    assert dumped.read_bytes() == payload * 50
    fields = dumpe2fs_fields(image)
    assert fields["Filesystem state"] == "clean"


@pytest.mark.root
def test_kernel_sees_root_owner_label_and_uuid(tmp_path: Path) -> None:
    need_root("loop mounts")
    image = tmp_path / "disk.raw"
    res = mkfs(image, 128 * MiB, label="vol-a", uuid="01234567-89ab-cdef-0123-456789abcdef", root_owner=(1234, 5678),
               root_mode=0o750)
    with loop_mount(image, "ro") as mnt:
        st = os.stat(mnt)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o750)
        lpf = os.stat(mnt / "lost+found")
        assert (lpf.st_uid, lpf.st_gid, lpf.st_mode & 0o7777) == (0, 0, 0o700)
    blkid = subprocess.run([need_tool("blkid"), "-o", "export", str(image)], capture_output=True, text=True).stdout
    assert "LABEL=vol-a" in blkid and "UUID=01234567-89ab-cdef-0123-456789abcdef" in blkid and "TYPE=ext4" in blkid
    assert str(res.uuid) == "01234567-89ab-cdef-0123-456789abcdef"


def test_debugfs_sees_root_and_lost_found(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    mkfs(image, 64 * MiB, timestamp=1_700_000_000)
    root = debugfs(image, "stat /")
    assert "Type: directory    Mode:  0755" in root and "Links: 3" in root, root
    lpf = debugfs(image, "stat /lost+found")
    assert "Mode:  0700" in lpf and "User:     0   Group:     0" in lpf and "Size: 16384" in lpf, lpf
    assert "ctime: 0x6553f100" in lpf
    listing = debugfs(image, "ls /lost+found")
    assert "." in listing and ".." in listing
    journal = debugfs(image, "logdump")
    assert "Journal starts at block 0, transaction 1" in journal, journal  # s_start 0: empty
    e2fsck_clean(image)


@pytest.mark.parametrize(("size", "bs"), [(8 * MiB, 1024), (20 * GiB, 4096), (5 * GiB + 3 * 4096, 4096)])
def test_fsck_clean_across_sizes(size: int, bs: int, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    res = mkfs(image, size, block_size=bs)
    assert image.stat().st_size == size
    assert image.stat().st_blocks * 512 < 64 * MiB, "mkfs must write metadata only"
    e2fsck_clean(image)
    fields = dumpe2fs_fields(image)
    assert int(fields["Block count"]) == res.blocks_count
    assert fields["Filesystem features"] == ("has_journal ext_attr resize_inode dir_index filetype extent 64bit "
                                             "flex_bg sparse_super large_file huge_file dir_nlink extra_isize "
                                             "metadata_csum")
