"""Fixture image builders for the ext4 engine tests (and the benchmark).

Images are built with e2fsprogs from host trees, deterministically:
E2FSPROGS_FAKE_TIME, a fixed UUID (-U) and hash seed (-E hash_seed).
Nothing here needs volfs: the oracles are mkfs/e2fsck/debugfs and the kernel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import struct
import subprocess
from pathlib import Path

from testsupport import loop_mount  # noqa: F401 - the one loop mount helper, re-exported

UUID = "6b1e3d6a-8b0f-4a2e-9c3d-2f1e0a9b8c7d"
HASH_SEED = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
FAKE_TIME = "1700000000"


# name -> (fstype, size, mkfs options)
VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "default": ("ext4", "64M", ()),
    "b1024": ("ext4", "64M", ("-b", "1024")),
    "b2048": ("ext4", "64M", ("-b", "2048")),
    "i128": ("ext4", "64M", ("-I", "128")),
    "i1024": ("ext4", "64M", ("-I", "1024")),
    "nofiletype": ("ext4", "64M", ("-O", "^filetype")),
    "no64bit": ("ext4", "64M", ("-O", "^64bit")),
    "noflex": ("ext4", "64M", ("-O", "^flex_bg")),
    "nocsum": ("ext4", "64M", ("-O", "^metadata_csum,uninit_bg")),
    "csumseed": ("ext4", "64M", ("-O", "metadata_csum_seed")),
    "inline": ("ext4", "64M", ("-O", "inline_data")),
    "nojournal": ("ext4", "64M", ("-O", "^has_journal")),
    "ext2": ("ext2", "64M", ()),
    "ext2-b1024": ("ext2", "64M", ("-b", "1024")),
    "ext3": ("ext3", "64M", ()),
    "metabg": ("ext4", "64M", ("-O", "meta_bg,^resize_inode")),
    "sparse2": ("ext4", "64M", ("-O", "sparse_super2")),
    "manyinodes": ("ext4", "64M", ("-N", "60000")),
    "orphanfile": ("ext4", "64M", ("-O", "orphan_file")),
    "b65536": ("ext4", "256M", ("-b", "65536")),
}


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/sbin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        raise FileNotFoundError(name)
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["E2FSPROGS_FAKE_TIME"] = FAKE_TIME
    e["MKE2FS_CONFIG"] = e.get("MKE2FS_CONFIG", "/etc/mke2fs.conf")
    return e


def run(*args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(list(args), capture_output=True, env=env(), input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}")
    return proc


def mkfs(image: Path, tree: Path | None, size: str, *opts: str, fstype: str = "ext4") -> Path:
    args = [tool("mke2fs"), "-q", "-F", "-t", fstype, "-U", UUID, "-E", f"hash_seed={HASH_SEED}"]
    args += list(opts)
    if tree is not None:
        args += ["-d", str(tree)]
    args += [str(image), size]
    run(*args)
    return image


def acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_* value (version 2) from (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def build_rich_tree(root: Path) -> Path:
    """A tree with every kind of object the engine must read."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello, ext4\n")
    (root / "tiny").write_bytes(b"x" * 50)  # fits inline (inline_data images)
    (root / "medium.bin").write_bytes(bytes(range(256)) * 300)  # 76800 bytes
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    with open(root / "holes.bin", "wb") as f:  # data, hole, data, trailing hole
        f.write(b"A" * 5000)
        f.seek(300_000)
        f.write(b"B" * 7000)
        f.truncate(1_000_000)
    with open(root / "huge-sparse.bin", "wb") as f:  # > 4 GiB, mostly holes
        f.write(b"start")
        f.seek(4 * 1024**3 + 12345)
        f.write(b"past four gibibytes")
        f.truncate(5 * 1024**3)
    os.link(root / "small.txt", root / "hardlink.txt")
    d = root / "dir" / "sub" / "deeper"
    d.mkdir(parents=True)
    (d / "leaf.txt").write_bytes(b"leaf\n")
    os.symlink("small.txt", root / "fast-link")
    os.symlink("dir/sub/" + "long-name-component-" * 5 + "target", root / "slow-link")
    os.symlink("/" + "/".join(["abcdefghij"] * 90), root / "very-long-link")  # ~990 bytes
    os.mkfifo(root / "fifo")
    os.mknod(root / "chardev", stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.mknod(root / "blockdev", stat.S_IFBLK | 0o600, os.makedev(259, 70000 & 0xFFFFF))
    with contextlib.closing(socket.socket(socket.AF_UNIX)) as s:
        s.bind(str(root / "sock"))
    (root / ("n" * 255)).write_bytes(b"longest name\n")
    (root / "ünïcödé-名前.txt").write_bytes("utf-8 name\n".encode())
    (root / "mode-4755").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "mode-4755", 0o4755)
    os.chown(root / "mode-4755", 1234, 5678)
    os.chown(root / "small.txt", 100000, 200000)
    x = root / "xattrs.txt"
    x.write_bytes(b"xattrs\n")
    os.setxattr(x, "user.small", b"v")
    os.setxattr(x, "user.empty", b"")
    os.setxattr(x, "trusted.t", b"trusted value")
    os.setxattr(x, "user.big", bytes(range(200)) * 3)  # 600 bytes: goes to the xattr block
    acl = acl_xattr([(1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (8, 5, 2000), (0x10, 6, 0xFFFFFFFF),
                     (0x20, 4, 0xFFFFFFFF)])
    a = root / "acl-dir"
    a.mkdir()
    os.setxattr(a, "system.posix_acl_access", acl)
    os.setxattr(a, "system.posix_acl_default", acl)
    many = root / "many"
    many.mkdir()
    for i in range(600):
        (many / f"entry-{i:05d}-{'z' * (i % 40)}").write_bytes(b"%d\n" % i)
    # Timestamps with nanoseconds, before 1970, and past 2038.
    t = root / "times"
    t.mkdir()
    for name, ns in (("ns", 1_600_000_000_123_456_789), ("pre-1970", -86_400 * 365 * 10 * 10**9 + 5),
                     ("y2040", 2_208_988_800 * 10**9 + 999_999_999), ("y2400", 13_569_465_600 * 10**9 + 7)):
        p = t / name
        p.write_bytes(name.encode())
        os.utime(p, ns=(ns, ns))
    return root


def build_frag_file(path: Path, blocks: int, block_size: int) -> None:
    """A sparse file with data in every other block (one extent per data block)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(blocks):
            os.pwrite(fd, (b"%08d" % i) * (block_size // 8), 2 * i * block_size)
    finally:
        os.close(fd)


def build_big_dir(path: Path, count: int, prefix: str = "file") -> list[str]:
    path.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}-{i:06d}" for i in range(count)]
    for n in names:
        fd = os.open(path / n, os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    return names


def patch_superblock(image: Path, updates: dict[int, bytes]) -> None:
    """Write bytes at superblock offsets and refresh s_checksum when metadata_csum is on."""
    import crc32c

    with open(image, "r+b") as f:
        f.seek(1024)
        sb = bytearray(f.read(1024))
        for off, data in updates.items():
            sb[off : off + len(data)] = data
        ro_compat = struct.unpack_from("<I", sb, 0x64)[0]
        if ro_compat & 0x400:
            # crc32c() is the standard (inverted) value; ext4 stores the raw one: ~standard.
            struct.pack_into("<I", sb, 0x3FC, (~crc32c.crc32c(bytes(sb[:0x3FC]))) & 0xFFFFFFFF)
        f.seek(1024)
        f.write(sb)


def microsandbox_lookalike(image: Path, tree: Path | None) -> Path:
    """An image shaped like microsandbox's format_ext4 output (its reference, section 1e).

    4 KiB blocks, 64bit, metadata_csum with the seed left 0 (derived from the
    UUID), no flex_bg, 32768 blocks and 8192 inodes per group, a 64 MiB
    journal, resize inode, no reserved blocks, no lost+found, the hash seed
    equal to the UUID, and the legacy quirk: a nonzero value at the
    s_error_count offset (0x194) with a clean state.
    """
    mkfs(image, tree, "160M", "-b", "4096", "-I", "256", "-g", "32768", "-N", "16384", "-J", "size=64", "-m", "0",
         "-O", "^flex_bg,^metadata_csum_seed,^orphan_file,metadata_csum,64bit,resize_inode")
    run(tool("debugfs"), "-w", "-R", "rmdir lost+found", str(image))
    with open(image, "rb") as f:
        f.seek(1024 + 0x68)
        uuid = f.read(16)
    patch_superblock(image, {0x194: struct.pack("<I", 0x3000), 0xEC: uuid, 0x270: b"\0\0\0\0",
                             0x108: b"\0\0\0\0", 0x30: b"\0\0\0\0"})
    return image


def copy_while_mounted(live: Path, dst: Path, tries: int = 5) -> Path:
    """Copy an image the kernel has mounted: a crash image (needs_recovery, journal not checkpointed).

    The kernel may be writing the image during the copy, so a block can be
    caught half-written; such a copy is not a crash the kernel could have
    left. A copy counts only if the kernel recovers it into an e2fsck-clean
    filesystem (oracles only, no volfs); otherwise it is taken again.
    """
    for _ in range(tries):
        shutil.copyfile(live, dst)
        probe = dst.with_suffix(".probe")
        shutil.copyfile(dst, probe)
        try:
            with loop_mount(probe, "rw"):
                pass
            if run(tool("e2fsck"), "-fn", str(probe), check=False).returncode == 0:
                return dst
        finally:
            probe.unlink()
    raise RuntimeError(f"could not take a whole copy of the mounted {live} in {tries} tries")
