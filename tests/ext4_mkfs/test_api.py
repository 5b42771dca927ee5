"""The mkfs API: options, errors, overwrite, layering and speed."""

from __future__ import annotations

import ast
import errno
import sys
import time
from pathlib import Path

import pytest

from mkfs_support import GiB, MiB, dumpe2fs_fields
from testsupport import e2fsck_clean
from volfs.errors import VolfsError
from volfs.ext4 import Filesystem
from volfs.ext4.mkfs import DEFAULT_FEATURES, SUPPORTED_FEATURES, mkfs

ROOT = Path(__file__).resolve().parents[2]


def test_default_features_are_debian12_mkfs_ext4() -> None:
    assert DEFAULT_FEATURES == {
        "has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent", "64bit", "flex_bg",
        "sparse_super", "large_file", "huge_file", "dir_nlink", "extra_isize", "metadata_csum",
    }
    assert SUPPORTED_FEATURES == DEFAULT_FEATURES | {"metadata_csum_seed", "orphan_file"}


def test_mkfs_modules_import_only_the_engine_rules() -> None:
    allowed = {"crc32c", "volfs.errors"}
    for name in ("mkfs.py", "_mkfs_layout.py"):
        path = ROOT / "volfs" / "ext4" / name
        for node in ast.walk(ast.parse(path.read_text())):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                assert (top in sys.stdlib_module_names or top == "__future__" or mod in allowed
                        or mod.startswith("volfs.ext4.")), f"{name} imports {mod}"


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"old contents" * 1000)
    with pytest.raises(FileExistsError) as info:
        mkfs(image, 64 * MiB)
    assert isinstance(info.value, VolfsError) and info.value.errno == errno.EEXIST
    assert image.read_bytes() == b"old contents" * 1000
    mkfs(image, 64 * MiB, overwrite=True)
    assert image.stat().st_size == 64 * MiB
    e2fsck_clean(image)


def test_overwrite_discards_old_contents(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.write(b"\xa5" * (8 * MiB))  # garbage where inode tables and the journal go
    mkfs(image, 8 * MiB, block_size=1024, overwrite=True)
    e2fsck_clean(image)
    assert image.stat().st_blocks * 512 < 2 * MiB


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"features": DEFAULT_FEATURES | {"inline_data"}}, errno.EOPNOTSUPP),
    ({"features": DEFAULT_FEATURES - {"metadata_csum"}}, errno.EOPNOTSUPP),
    ({"label": "x" * 17}, errno.EINVAL),
    ({"block_size": 3000}, errno.EINVAL),
    ({"inode_size": 100}, errno.EINVAL),
    ({"reserved_ratio": 60.0}, errno.EINVAL),
    ({"uuid": "not-a-uuid"}, errno.EINVAL),
    ({"root_owner": (-1, 0)}, errno.EINVAL),
    ({"journal_blocks": 100}, errno.EINVAL),
    ({"journal": False, "features": DEFAULT_FEATURES | {"orphan_file"}}, errno.EINVAL),
])
def test_bad_options(kwargs: dict[str, object], code: int, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    with pytest.raises(VolfsError) as info:
        mkfs(image, 64 * MiB, **kwargs)  # type: ignore[arg-type]
    assert info.value.errno == code
    assert not image.exists(), "a refused mkfs must not leave an image behind"


def test_too_small(tmp_path: Path) -> None:
    with pytest.raises(VolfsError) as info:
        mkfs(tmp_path / "disk.raw", 64 * 1024)
    assert info.value.errno == errno.EINVAL


def test_tiny_image_has_no_journal(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    res = mkfs(image, 1 * MiB + 512 * 1024, block_size=1024)  # 1536 blocks: below 2048, too small for a journal
    assert "has_journal" not in res.features and res.journal_blocks == 0
    e2fsck_clean(image)


def test_own_reader_opens_result(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    res = mkfs(image, 256 * MiB, label="hello")
    with Filesystem.open(image) as fs:
        names = sorted(e.name for e in fs.readdir(2, 0))
        assert b"lost+found" in names
        st = fs.statfs()
        assert st.blocks == res.blocks_count - res.overhead_clusters and st.files == res.inodes_count
        assert st.blocks_free == res.free_blocks and st.files_free == res.free_inodes
    assert dumpe2fs_fields(image)["Filesystem volume name"] == "hello"


def test_20g_formats_in_about_a_second(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    t0 = time.perf_counter()
    res = mkfs(image, 20 * GiB)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"20 GiB took {elapsed:.2f}s"
    assert res.bytes_written < 8 * MiB
    e2fsck_clean(image)
