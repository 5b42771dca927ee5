"""Mounting a disk volume: the ext4 image served by volfs, compared with the kernel's view."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusemount.support import Mounter
from testsupport import e2fsck_clean, need_root, need_tool

from volfs.mounts import MountOptions
from volfs.sync import Volume


def tree_facts(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a host tool sees of a tree: type, mode, ids, size, nlink, mtime ns, target, xattrs, bytes."""
    facts: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            extra: object = None
            if os.path.islink(p):
                extra = os.readlink(p)
            elif p.is_file():
                extra = p.read_bytes()
            try:
                xattrs = {x: os.getxattr(p, x, follow_symlinks=False) for x in sorted(os.listxattr(p, follow_symlinks=False))}
            except OSError:
                xattrs = {}
            facts[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                                               st.st_mtime_ns, extra, tuple(xattrs.items()))  # fmt: skip
    return facts


@pytest.fixture
def kernel_view(tmp_path: Path) -> Iterator[Path]:
    need_root("loop-mounting an ext4 image")
    mnt = tmp_path / "kernel"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_volume_mount_reads_what_the_kernel_wrote(home: Path, mounter: Mounter, tmp_path: Path,
                                                      kernel_view: Path) -> None:  # fmt: skip
    tree = tmp_path / "tree"
    (tree / "app" / "lib").mkdir(parents=True)
    (tree / "app" / "main.py").write_text("print('hi')\n")
    (tree / "app" / "lib" / "blob").write_bytes(os.urandom(1 << 20))
    os.symlink("../app/main.py", tree / "app" / "lib" / "link")
    os.link(tree / "app" / "main.py", tree / "app" / "hard")
    os.setxattr(tree / "app" / "main.py", "user.note", b"kept")
    os.chown(tree / "app" / "main.py", 1000, 1000)
    vol = Volume.create("disk", home=home, kind="disk", size_mib=64)
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-d", str(tree), str(vol.disk_path)], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(["mount", "-o", "loop,ro,noload", str(vol.disk_path), str(kernel_view)], check=True)
    theirs = tree_facts(kernel_view)
    subprocess.run(["umount", str(kernel_view)], check=True)
    rec = mounter("disk", MountOptions(readonly=True))
    assert tree_facts(Path(rec.mountpoint)) == theirs
    with pytest.raises(OSError) as info:
        (Path(rec.mountpoint) / "new").write_text("x")
    assert info.value.errno == errno.EROFS


def test_disk_volume_tools_then_kernel_agrees(home: Path, mounter: Mounter, tmp_path: Path,
                                              kernel_view: Path) -> None:  # fmt: skip
    """Real tools write through the mount; after unmount e2fsck is clean and the kernel sees the same tree."""
    need_tool("git")
    vol = Volume.create("work", home=home, kind="disk", size_mib=128)
    mp = Path(mounter("work").mountpoint)
    src = Path(__file__).resolve().parents[2] / "volfs"
    sh("cp", "-a", str(src), str(mp / "copy"))
    sh("tar", "-C", str(src.parent), "-cf", str(tmp_path / "t.tar"), "fuse")
    (mp / "untar").mkdir()
    sh("tar", "-C", str(mp / "untar"), "-xf", str(tmp_path / "t.tar"))
    git_commit(mp / "repo")
    sh("python3", "-m", "compileall", "-q", str(mp / "copy"))
    sh("truncate", "-s", "50M", str(mp / "sparse"))
    sh("dd", "if=/dev/urandom", f"of={mp / 'dd'}", "bs=64k", "count=40", "seek=7", "status=none")
    sh("ln", str(mp / "dd"), str(mp / "dd-hard"))
    sh("ln", "-s", "dd", str(mp / "dd-sym"))
    sh("mv", str(mp / "copy" / "cli"), str(mp / "moved-cli"))
    sh("rm", "-rf", str(mp / "copy" / "ext4"))
    os.chmod(mp / "sparse", 0o600)
    os.chown(mp / "dd", 1234, 4321)
    os.utime(mp / "dd", ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
    os.setxattr(mp / "dd", "user.k", b"value")
    with open(mp / "log", "a") as f:
        f.write("one\n")
    with open(mp / "log", "a") as f:
        f.write("two\n")
    before = tree_facts(mp)
    assert len(before) > 60 and "repo/.git/HEAD" in before and "moved-cli/main.py" in before
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "work")
    e2fsck_clean(vol.disk_path)
    subprocess.run(["mount", "-o", "loop,ro", str(vol.disk_path), str(kernel_view)], check=True)
    after = tree_facts(kernel_view)
    assert sorted(after) == sorted(before)
    assert after == before
    assert (kernel_view / "log").read_text() == "one\ntwo\n"
    sh("git", "fsck", "--strict", cwd=kernel_view / "repo")


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main"]


def git_commit(repo: Path) -> None:
    """A new repository at ``repo`` with one commit of one file."""
    repo.mkdir()
    sh(*GIT, "init", "-q", cwd=repo)
    (repo / "f.txt").write_text("v1\n")
    sh(*GIT, "add", ".", cwd=repo)
    sh(*GIT, "commit", "-qm", "one", cwd=repo)


def sh(*cmd: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"


def test_inline_data_volume_tools_then_kernel_agrees(home: Path, mounter: Mounter, tmp_path: Path,
                                                     kernel_view: Path) -> None:  # fmt: skip
    """An inline_data image (mkfs.ext4 -O inline_data): small files and directories stay in their
    inodes, grow out of them and shrink, all through real tools on the mount; then e2fsck and the
    kernel agree."""
    need_tool("git")
    vol = Volume.create("inl", home=home, kind="disk", size_mib=64)
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-O", "inline_data", str(vol.disk_path)], check=True,
                   capture_output=True)  # fmt: skip
    mp = Path(mounter("inl").mountpoint)
    src = Path(__file__).resolve().parents[2] / "volfs"
    sh("cp", "-a", str(src), str(mp / "copy"))
    git_commit(mp / "repo")
    for i in range(40):  # an inline directory filling up and converting
        (mp / "many").mkdir(exist_ok=True)
        (mp / "many" / f"n{i}").write_bytes(b"x" * i)
    with open(mp / "log", "a") as f:
        f.write("one\n")
    for _ in range(30):  # appends across 60 bytes, into system.data, then out of the inode
        with open(mp / "log", "a") as f:
            f.write("more text\n")
    sh("truncate", "-s", "7", str(mp / "many" / "n30"))
    sh("mv", str(mp / "copy" / "cli"), str(mp / "many" / "cli"))
    sh("rm", "-rf", str(mp / "copy" / "ext4"))
    os.setxattr(mp / "many" / "n5", "user.k", b"value")
    before = tree_facts(mp)
    assert (mp / "log").read_text() == "one\n" + "more text\n" * 30
    from volfs.home import resolve_home
    from volfs.mounts import unmount

    unmount(resolve_home(home), "inl")
    e2fsck_clean(vol.disk_path)
    stat_of = {p: subprocess.run([need_tool("debugfs"), "-R", f"stat {p}", str(vol.disk_path)], capture_output=True,
                                 text=True).stdout for p in ("/many/n5", "/repo", "/log", "/many")}  # fmt: skip
    assert "Size of inline data: 60" in stat_of["/many/n5"] and "Size of inline data" in stat_of["/repo"]
    assert "Size of inline data" not in stat_of["/log"] + stat_of["/many"]  # both grew out of the inode
    subprocess.run(["mount", "-o", "loop,ro", str(vol.disk_path), str(kernel_view)], check=True)
    after = tree_facts(kernel_view)
    assert sorted(after) == sorted(before)
    assert after == before
    sh("git", "fsck", "--strict", cwd=kernel_view / "repo")
