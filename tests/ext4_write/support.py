"""Oracles for the write tests: the kernel's view of an image, and debugfs."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).parent.parent / "ext4"))  # ext4_images

import ext4_images as images  # noqa: E402
from testsupport import e2fsck_clean, need_root, need_tool  # noqa: E402

# name -> (size, mkfs options)
WRITE_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("128M", ("-b", "4096")),
    "b1024": ("64M", ("-b", "1024")),
    "nocsum": ("64M", ("-b", "4096", "-O", "^metadata_csum,uninit_bg")),
    "noflex": ("64M", ("-b", "1024", "-O", "^flex_bg")),
    "i128": ("64M", ("-I", "128")),
    "csumseed": ("64M", ("-b", "4096", "-O", "metadata_csum_seed")),
    "inline": ("64M", ("-b", "4096", "-O", "inline_data")),
}
# inline_data images with more room in the inode (-I 1024), and with 1 KiB blocks and no metadata_csum
INLINE_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "inline": WRITE_VARIANTS["inline"],
    "inline-i1024": ("64M", ("-I", "1024", "-O", "inline_data")),
    "inline-b1024-nocsum": ("64M", ("-b", "1024", "-O", "inline_data,^metadata_csum")),
}

# path -> attributes as the kernel reports them
Tree = dict[str, dict[str, object]]


def kernel_tree(image: Path) -> Tree:
    """Every object of ``image`` as a read-only kernel loop mount shows it (lost+found skipped)."""
    need_root("loop mounts")
    need_tool("mount")
    out: Tree = {}
    with images.loop_mount(image, "ro") as mnt:
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                rel = "/" + str(p.relative_to(mnt))
                if rel.startswith("/lost+found"):
                    continue
                st = os.lstat(p)
                info: dict[str, object] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                                           "nlink": st.st_nlink, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
                if stat.S_ISREG(st.st_mode):
                    info["size"] = st.st_size
                    info["data"] = p.read_bytes()
                    info["blocks"] = st.st_blocks
                elif stat.S_ISLNK(st.st_mode):
                    info["target"] = os.readlink(p).encode()
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    info["rdev"] = st.st_rdev
                if not stat.S_ISLNK(st.st_mode):
                    info["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False)
                                      for n in os.listxattr(p, follow_symlinks=False) if n.startswith("user.")}
                out[rel] = info
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return out


def debugfs(image: Path, cmd: str) -> str:
    proc = images.run(images.tool("debugfs"), "-R", cmd, str(image))
    return proc.stdout.decode(errors="replace")


def check(image: Path) -> None:
    e2fsck_clean(image)


def assert_subset(expected: Tree, actual: Tree) -> None:
    """Every expected path exists with the expected values; nothing extra exists."""
    assert sorted(actual) == sorted(expected), (sorted(set(actual) ^ set(expected)))
    for path, want in expected.items():
        got = actual[path]
        for key, value in want.items():
            assert got.get(key) == value, f"{path}: {key} is {got.get(key)!r:.200}, expected {value!r:.200}"


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, check=True)
