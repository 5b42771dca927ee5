"""Real tools and POSIX file APIs on a real volfs mount (a directory volume).

Each test works through the mount and checks the result on the volume's host
directory (the storage underneath), or the other way round.
"""

from __future__ import annotations

import errno
import filecmp
import mmap
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from testsupport import need_tool, renameat2


def run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return proc.stdout


def same_tree(a: Path, b: Path, mtime_unit_ns: int = 1) -> None:
    """Names, types, modes, sizes, symlink targets and bytes agree; mtimes to ``mtime_unit_ns``."""
    def walk(root: Path) -> dict[str, os.stat_result]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                out[str(p.relative_to(root))] = os.lstat(p)
        return out

    sa, sb = walk(a), walk(b)
    assert sorted(sa) == sorted(sb)
    for rel, st in sa.items():
        other = sb[rel]
        assert (st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid) == (
            other.st_mode, other.st_size, other.st_nlink, other.st_uid, other.st_gid), rel
        if not stat.S_ISDIR(st.st_mode):
            assert st.st_mtime_ns // mtime_unit_ns == other.st_mtime_ns // mtime_unit_ns, rel
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(a / rel) == os.readlink(b / rel)
        elif stat.S_ISREG(st.st_mode):
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


@pytest.fixture
def src_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("def f():\n    return 42\n")
    (src / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "empty").write_bytes(b"")
    os.symlink("pkg/mod.py", src / "link")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.link(src / "empty", src / "hardlink")
    os.chmod(src / "pkg" / "mod.py", 0o640)
    os.utime(src / "empty", ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    return src


def test_cp_a_in_and_out(dir_mount: tuple[Path, Path], src_tree: Path, tmp_path: Path) -> None:
    mp, host = dir_mount
    run("cp", "-a", str(src_tree), str(mp / "copy"))
    same_tree(src_tree, mp / "copy")
    same_tree(src_tree, host / "copy")
    run("cp", "-a", str(mp / "copy"), str(tmp_path / "back"))
    same_tree(src_tree, tmp_path / "back")


def test_tar_round_trip(dir_mount: tuple[Path, Path], src_tree: Path, tmp_path: Path) -> None:
    mp, host = dir_mount
    archive = tmp_path / "a.tar"
    run("tar", "-C", str(src_tree), "-cf", str(archive), ".")
    (mp / "x").mkdir()
    run("tar", "-C", str(mp / "x"), "-xpf", str(archive))
    same_tree(src_tree, host / "x", mtime_unit_ns=10**9)  # tar keeps whole seconds
    run("tar", "-C", str(mp / "x"), "-cf", str(tmp_path / "b.tar"), ".")
    (tmp_path / "y").mkdir()
    run("tar", "-C", str(tmp_path / "y"), "-xpf", str(tmp_path / "b.tar"))
    same_tree(src_tree, tmp_path / "y", mtime_unit_ns=10**9)


def test_find_stat_ls(dir_mount: tuple[Path, Path], src_tree: Path) -> None:
    mp, host = dir_mount
    shutil.copytree(src_tree, host / "t", symlinks=True)
    found = sorted(run("find", ".", "-print", cwd=mp / "t").split())
    expected = sorted(run("find", ".", "-print", cwd=host / "t").split())
    assert found == expected
    fmt = "%n %s %f %h %u %g %Y"
    assert run("stat", "-c", fmt, "pkg/mod.py", "link", cwd=mp / "t") == run("stat", "-c", fmt, "pkg/mod.py", "link", cwd=host / "t")
    assert run("ls", "-l", "--time-style=full-iso", cwd=mp / "t") == run("ls", "-l", "--time-style=full-iso", cwd=host / "t")


def test_ln_mv_rm(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    (mp / "f").write_text("one")
    run("ln", str(mp / "f"), str(mp / "g"))
    run("ln", "-s", "f", str(mp / "s"))
    assert os.stat(mp / "f").st_nlink == 2 and os.stat(host / "f").st_nlink == 2
    assert os.readlink(mp / "s") == "f" and (mp / "s").read_text() == "one"
    (mp / "d" / "e").mkdir(parents=True)
    run("mv", str(mp / "g"), str(mp / "d" / "e" / "moved"))
    assert (host / "d" / "e" / "moved").read_text() == "one"
    run("mv", str(mp / "d"), str(mp / "d2"))
    assert not (host / "d").exists() and (host / "d2" / "e" / "moved").exists()
    run("rm", "-rf", str(mp / "d2"))
    assert not (host / "d2").exists() and os.stat(mp / "f").st_nlink == 1


def test_git_init_and_commit(dir_mount: tuple[Path, Path]) -> None:
    need_tool("git")
    mp, host = dir_mount
    repo = mp / "repo"
    repo.mkdir()
    env_cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main"]
    run(*env_cmd, "init", "-q", cwd=repo)
    (repo / "a.txt").write_text("hello\n")
    run(*env_cmd, "add", "a.txt", cwd=repo)
    run(*env_cmd, "commit", "-qm", "first", cwd=repo)
    (repo / "a.txt").write_text("hello again\n")
    run(*env_cmd, "commit", "-qam", "second", cwd=repo)
    log = run("git", "log", "--format=%s", cwd=host / "repo")
    assert log.split() == ["second", "first"]
    run("git", "fsck", "--strict", cwd=host / "repo")


def test_python_compileall(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    (mp / "p").mkdir()
    (mp / "p" / "m.py").write_text("X = 1\n")
    run(sys.executable, "-m", "compileall", "-q", str(mp / "p"))
    caches = list((host / "p" / "__pycache__").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("m.")


def test_sparse_truncate_and_dd(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    run("truncate", "-s", "64M", str(mp / "sparse"))
    assert os.stat(host / "sparse").st_size == 64 << 20 and os.stat(mp / "sparse").st_blocks == 0
    run("dd", "if=/dev/urandom", f"of={mp / 'dd'}", "bs=4096", "count=2", "seek=100", "status=none")
    st = os.stat(mp / "dd")
    assert st.st_size == 102 * 4096 and st.st_blocks <= 16 + 8
    with open(host / "dd", "rb") as f:
        assert f.read(4096 * 100) == bytes(4096 * 100)
    run("truncate", "-s", "10", str(mp / "dd"))
    assert os.stat(host / "dd").st_size == 10


def test_open_flags(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    p = mp / "flags"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"abc")
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"def")
    os.close(fd)
    assert (host / "flags").read_bytes() == b"abcdef"
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x")
    os.close(fd)
    assert (host / "flags").read_bytes() == b"x"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_rename_over_open_file_and_unlink_open_file(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    (mp / "old").write_text("old content")
    (mp / "new").write_text("new content")
    with open(mp / "old") as reader:
        os.rename(mp / "new", mp / "old")
        assert reader.read() == "old content"  # the open file is the replaced inode
    assert (host / "old").read_text() == "new content"
    f = open(mp / "old", "r+")
    os.unlink(mp / "old")
    assert not (host / "old").exists()
    f.write("still works")
    f.seek(0)
    assert f.read().startswith("still works")
    f.close()


def test_chmod_chown_utimens(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    p = mp / "attrs"
    p.write_text("a")
    os.chmod(p, 0o751)
    assert stat.S_IMODE(os.stat(host / "attrs").st_mode) == 0o751
    os.chown(p, 1234, 5678)
    st = os.stat(host / "attrs")
    assert (st.st_uid, st.st_gid) == (1234, 5678) and (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 5678)
    os.utime(p, ns=(1_111_111_111_222_333_444, 1_234_567_890_123_456_789))
    assert os.stat(p).st_mtime_ns == 1_234_567_890_123_456_789 == os.stat(host / "attrs").st_mtime_ns
    assert os.stat(host / "attrs").st_atime_ns == 1_111_111_111_222_333_444
    before = os.stat(host / "attrs").st_mtime_ns
    os.utime(p)  # UTIME_NOW
    assert os.stat(host / "attrs").st_mtime_ns > before


def test_xattrs_with_attr_tools(dir_mount: tuple[Path, Path]) -> None:
    need_tool("setfattr")
    mp, host = dir_mount
    p = mp / "x"
    p.write_text("x")
    run("setfattr", "-n", "user.comment", "-v", "hello", str(p))
    assert os.getxattr(host / "x", "user.comment") == b"hello"
    out = run("getfattr", "-n", "user.comment", "--only-values", str(p))
    assert out == "hello"
    assert "user.comment" in os.listxattr(p)
    run("setfattr", "-x", "user.comment", str(p))
    with pytest.raises(OSError) as info:
        os.getxattr(host / "x", "user.comment")
    assert info.value.errno == errno.ENODATA


def test_mmap_read_write(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    p = mp / "m"
    p.write_bytes(bytes(8192))
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 8192) as m:
        m[100:105] = b"hello"
        m.flush()
        assert m[0:4] == bytes(4)
    assert (host / "m").read_bytes()[100:105] == b"hello"


def test_two_writers_at_once(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    payloads = {f"w{i}": os.urandom(1 << 20) for i in range(2)}
    script = "import sys; open(sys.argv[1], 'wb').write(open(sys.argv[2], 'rb').read())"
    procs = []
    for name, data in payloads.items():
        src = mp.parent / f"{name}.src"
        src.write_bytes(data)
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(mp / name), str(src)]))
    for p in procs:
        assert p.wait(timeout=120) == 0
    for name, data in payloads.items():
        assert (host / name).read_bytes() == data


def test_threads_share_the_mount(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                (mp / f"t{i}-{j}").write_bytes(bytes([i]) * 1000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(os.listdir(host)) == 80


def test_long_names_are_refused(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    for n in (256, 300, 1000):
        with pytest.raises(OSError) as info:
            (mp / ("n" * n)).write_text("x")
        assert info.value.errno == errno.ENAMETOOLONG
    (mp / ("n" * 255)).write_text("ok")
    assert (host / ("n" * 255)).read_text() == "ok"
    assert os.statvfs(mp).f_namemax == 255


def test_rename_flags(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    (mp / "a").write_text("A")
    (mp / "b").write_text("B")
    assert renameat2(mp / "a", mp / "b", 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert renameat2(mp / "a", mp / "b", 2) == 0  # RENAME_EXCHANGE
    assert (host / "a").read_text() == "B" and (host / "b").read_text() == "A"
    assert renameat2(mp / "a", mp / "c", 2) == errno.ENOENT


def test_host_changes_visible_through_mount(dir_mount: tuple[Path, Path], src_tree: Path) -> None:
    mp, host = dir_mount
    shutil.copytree(src_tree, host / "fromhost", symlinks=True)
    same_tree(host / "fromhost", mp / "fromhost")


def test_readdir_lists_dot_entries_and_survives_big_dirs(dir_mount: tuple[Path, Path]) -> None:
    mp, host = dir_mount
    for i in range(3000):  # more than one kernel readdir buffer
        (host / f"entry-{i:05d}").write_bytes(b"")
    names = run("ls", "-a", "-1", str(mp)).split()
    assert names[:2] == [".", ".."]
    assert sorted(names[2:]) == sorted(os.listdir(host)) and len(names) == 3002
    assert len(os.listdir(mp)) == 3000
