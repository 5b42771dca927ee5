"""htree directories: index lookups (all hash versions) and O(log n) block reads."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest

from testsupport import need_root
from volfs.ext4 import Filesystem
from volfs.ext4.dirhash import dirhash

import ext4_images as images


def _indexed_image(tmp: Path, count: int, *opts: str, unsigned: bool = False) -> tuple[Path, list[str]]:
    """An image whose /big holds ``count`` empty files, created by the kernel, then re-indexed by e2fsck -D."""
    need_root("the kernel builds big directories much faster than mkfs -d")
    image = images.mkfs(tmp / "htree.img", None, "128M", "-N", str(count + 200), *opts)
    if unsigned:
        with open(image, "rb") as f:
            f.seek(1024 + 0x160)
            (flags,) = struct.unpack("<I", f.read(4))
        images.patch_superblock(image, {0x160: struct.pack("<I", (flags & ~0x1) | 0x2)})
    with images.loop_mount(image, "rw") as mnt:
        names = images.build_big_dir(mnt / "big", count)
    proc = images.run(images.tool("e2fsck"), "-fyD", str(image), check=False)
    assert proc.returncode in (0, 1), proc.stdout.decode()
    return image, names


@pytest.fixture(scope="module")
def big_dir_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    return _indexed_image(tmp_path_factory.mktemp("htree100k"), 100_000)


def _no_linear(fs: Filesystem) -> None:
    def refuse(*_a: object) -> None:
        raise AssertionError("lookup fell back to a linear scan")

    fs._linear_find = refuse  # type: ignore[method-assign]


@pytest.mark.slow
def test_lookup_reads_log_n_blocks(big_dir_image: tuple[Path, list[str]]) -> None:
    image, names = big_dir_image
    rng = random.Random(4)
    with Filesystem.open(image) as fs:
        big = fs.lookup(2, b"big")
        _no_linear(fs)
        rec = fs.inode(big.ino)
        dir_blocks = rec.size // fs.block_size
        assert rec.flags & 0x1000, "e2fsck -D did not index the directory"
        for name in rng.sample(names, 300):
            before = fs.cache.reads
            fs.cache.drop()
            assert fs.lookup(big.ino, name.encode()).ino > 11
            # Root, one interior node, one leaf, the found inode's table block, and one spare for a
            # hash-collision continuation: a linear scan would read every one of the directory's blocks.
            assert fs.cache.reads - before <= 5, (name, fs.cache.reads - before)
        for missing in (b"nope", b"file-100000", b"file-0000000"):
            with pytest.raises(FileNotFoundError):
                fs.lookup(big.ino, missing)
        assert dir_blocks > 300
        entries = list(fs.readdir(big.ino))
        assert len(entries) == 100_002
        assert {e.name for e in entries} == {n.encode() for n in names} | {b".", b".."}


@pytest.mark.parametrize("hash_alg,unsigned", [("legacy", False), ("half_md4", False), ("tea", False),
                                               ("legacy", True), ("half_md4", True), ("tea", True)])
def test_every_hash_version(tmp_path: Path, hash_alg: str, unsigned: bool) -> None:
    image, names = _indexed_image(tmp_path, 3000, "-E", f"hash_seed={images.HASH_SEED}",
                                  "-O", "^metadata_csum" if hash_alg == "legacy" else "metadata_csum",
                                  unsigned=unsigned)
    images.run(images.tool("tune2fs"), "-E", f"hash_alg={hash_alg}", str(image))
    proc = images.run(images.tool("e2fsck"), "-fyD", str(image), check=False)
    assert proc.returncode in (0, 1)
    with Filesystem.open(image) as fs:
        big = fs.lookup(2, b"big")
        _no_linear(fs)
        assert fs.inode(big.ino).flags & 0x1000
        for name in names[::7]:
            fs.lookup(big.ino, name.encode())
        with pytest.raises(FileNotFoundError):
            fs.lookup(big.ino, b"file-x")


def test_hash_matches_debugfs(tmp_path: Path, image_factory) -> None:  # type: ignore[no-untyped-def]
    image = image_factory("default")
    for alg, version in (("legacy", 0), ("half_md4", 1), ("tea", 2)):
        for name in ("a", "hello", "x" * 100, "ünï"):
            out = images.run(images.tool("debugfs"), "-R", f"dx_hash -h {alg} -s {images.HASH_SEED} {name}",
                             str(image)).stdout.decode()
            major = int(out.split(" is ")[1].split()[0], 16)
            minor = int(out.split("minor ")[1].rstrip(")\n "), 16)
            import uuid

            seed = uuid.UUID(images.HASH_SEED).bytes
            words = [int.from_bytes(seed[i : i + 4], "little") for i in range(0, 16, 4)]
            assert dirhash(name.encode(), version, words) == (major, minor), (alg, name)
    shutil.rmtree(tmp_path, ignore_errors=True)
