"""Differential test: the same random operations on the directory backend and the ext4 backend.

After every step the two trees (names, types, modes, sizes, link counts, bytes, symlink targets,
xattrs) and the outcome (success or the errno) must agree; at the end the image is e2fsck -fn
clean and the kernel shows the same tree.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext4_write.support import INLINE_VARIANTS, WRITE_VARIANTS, check, images, kernel_tree
from volfs.backend import Backend, Ino, OpenFlags, RenameFlags, SetAttr
from volfs.backends.directory import DirectoryBackend
from volfs.backends.ext4 import Ext4Backend
from volfs.errors import VolfsError

DIRS = ["", "d", "d/e"]
NAMES = [b"a", b"b", b"e", b"long-" + b"n" * 200]
RW = OpenFlags.READ | OpenFlags.WRITE

name_s = st.sampled_from(NAMES)
dir_s = st.sampled_from(DIRS)
data_s = st.one_of(st.binary(max_size=64), st.sampled_from([b"x" * 5000, b"y" * 70000]))
op_s = st.one_of(
    st.tuples(st.just("write"), dir_s, name_s, st.integers(0, 300_000), data_s),
    st.tuples(st.just("truncate"), dir_s, name_s, st.integers(0, 200_000)),
    st.tuples(st.just("mkdir"), dir_s, name_s),
    st.tuples(st.just("unlink"), dir_s, name_s),
    st.tuples(st.just("rmdir"), dir_s, name_s),
    st.tuples(st.just("rename"), dir_s, name_s, dir_s, name_s, st.sampled_from([0, 1, 2])),
    st.tuples(st.just("symlink"), dir_s, name_s, st.sampled_from([b"t", b"../" * 30 + b"far"])),
    st.tuples(st.just("link"), dir_s, name_s, dir_s, name_s),
    st.tuples(st.just("chmod"), dir_s, name_s, st.integers(0, 0o7777)),
    st.tuples(st.just("xattr"), dir_s, name_s, st.sampled_from([b"user.k", b"user.big"]),
              st.one_of(st.none(), st.binary(max_size=300))),
)


def _resolve(b: Backend, path: str) -> Ino:
    ino = b.root
    for part in [p for p in path.split("/") if p]:
        attr = b.lookup(ino, part.encode())
        if ino != b.root:
            b.forget(ino)
        ino = attr.ino
    return ino


def _apply(b: Backend, op: tuple[object, ...]) -> str:
    """Run ``op``; 'ok' or the errno name."""
    kind = op[0]
    parent: Ino | None = None
    try:
        parent = _resolve(b, str(op[1]))
        name = op[2]
        assert isinstance(name, bytes)
        if kind == "write":
            fh, attr = b.create(parent, name, 0o644, RW, 0, 0)
            try:
                b.write(fh, int(op[3]), op[4])  # type: ignore[arg-type]
            finally:
                b.release(fh)
                b.forget(attr.ino)
        elif kind == "truncate":
            attr = b.lookup(parent, name)
            try:
                b.setattr(attr.ino, SetAttr(size=int(op[3])))  # type: ignore[call-overload]
            finally:
                b.forget(attr.ino)
        elif kind == "mkdir":
            b.forget(b.mkdir(parent, name, 0o755, 0, 0).ino)
        elif kind == "unlink":
            b.unlink(parent, name)
        elif kind == "rmdir":
            b.rmdir(parent, name)
        elif kind == "symlink":
            b.forget(b.symlink(parent, name, op[3], 0, 0).ino)  # type: ignore[arg-type]
        elif kind in ("rename", "link"):
            other = _resolve(b, str(op[3]))
            try:
                if kind == "rename":
                    b.rename(parent, name, other, op[4], RenameFlags(int(op[5])))  # type: ignore[arg-type,call-overload]
                else:
                    src = b.lookup(parent, name)
                    try:
                        b.forget(b.link(src.ino, other, op[4]).ino)  # type: ignore[arg-type]
                    finally:
                        b.forget(src.ino)
            finally:
                if other != b.root:
                    b.forget(other)
        elif kind == "chmod":
            attr = b.lookup(parent, name)
            try:
                if not stat.S_ISLNK(attr.mode):
                    b.setattr(attr.ino, SetAttr(mode=int(op[3])))  # type: ignore[call-overload]
            finally:
                b.forget(attr.ino)
        elif kind == "xattr":
            attr = b.lookup(parent, name)
            try:
                if stat.S_ISREG(attr.mode) or stat.S_ISDIR(attr.mode):
                    if op[4] is None:
                        b.removexattr(attr.ino, op[3])  # type: ignore[arg-type]
                    else:
                        b.setxattr(attr.ino, op[3], op[4])  # type: ignore[arg-type]
            finally:
                b.forget(attr.ino)
        return "ok"
    except VolfsError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    finally:
        if parent is not None and parent != b.root:
            b.forget(parent)


def _snapshot(b: Backend, ino: Ino | None = None, prefix: str = "") -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    ino = b.root if ino is None else ino
    for e in list(b.readdir(ino)):
        if e.name == b"lost+found" and ino == b.root:
            continue
        attr = b.lookup(ino, e.name)
        path = prefix + "/" + e.name.decode()
        try:
            key: tuple[object, ...] = (stat.S_IFMT(attr.mode), attr.mode & 0o7777 if not attr.is_symlink else 0,
                                       attr.nlink, attr.size if not attr.is_dir else 0)
            if attr.is_file:
                fh = b.open(attr.ino, OpenFlags.READ)
                key += (b.read(fh, 0, attr.size + 10),)
                b.release(fh)
            elif attr.is_symlink:
                key += (b.readlink(attr.ino),)
            if not attr.is_symlink:
                key += (tuple(sorted((n, b.getxattr(attr.ino, n)) for n in b.listxattr(attr.ino)
                                     if n.startswith(b"user."))),)
            out[path] = key
            if attr.is_dir:
                out.update(_snapshot(b, attr.ino, path))
        finally:
            b.forget(attr.ino)
    return out


def _setup(b: Backend) -> None:
    for d in DIRS[1:]:
        parent, _, name = d.rpartition("/")
        assert _apply(b, ("mkdir", parent, name.encode())) == "ok"


# Inline data: small writes near the start of files, so files stay inline, grow into system.data and
# convert; the 205-byte name does not fit an inline directory of a 256-byte inode and converts it.
inline_data_s = st.one_of(st.binary(max_size=140), st.sampled_from([b"z" * 61, b"w" * 900]))
inline_op_s = st.one_of(
    op_s,
    st.tuples(st.just("write"), dir_s, name_s, st.integers(0, 130), inline_data_s),
    st.tuples(st.just("truncate"), dir_s, name_s, st.integers(0, 1000)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_s, min_size=10, max_size=40), variant=st.sampled_from(sorted(WRITE_VARIANTS)))
def test_ext4_matches_directory_backend(ops: list[tuple[object, ...]], variant: str,
                                        make_image: Callable[..., Path], tmp_path_factory: object) -> None:
    _differential(ops, variant, make_image)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(inline_op_s, min_size=10, max_size=40), variant=st.sampled_from(sorted(INLINE_VARIANTS)))
def test_inline_data_matches_directory_backend(ops: list[tuple[object, ...]], variant: str,
                                               make_image: Callable[..., Path]) -> None:
    _differential(ops, variant, make_image)


def _differential(ops: list[tuple[object, ...]], variant: str, make_image: Callable[..., Path]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hostdir = Path(tmp) / "host"
        hostdir.mkdir()
        image = make_image(variant, size="32M")
        ref = DirectoryBackend(hostdir)
        ext = Ext4Backend(image, readonly=False)
        try:
            _setup(ref)
            _setup(ext)
            for op in ops:
                want = _apply(ref, op)
                got = _apply(ext, op)
                assert got == want, f"{op!r:.200}: directory backend {want}, ext4 {got}"
                assert _snapshot(ext) == _snapshot(ref), f"trees differ after {op!r:.200}"
        finally:
            ref.close()
            ext.close()
        check(image)
        kt = kernel_tree(image)
        view = {p: v for p, v in kt.items()}
        for path, key in _snapshot_host(hostdir).items():
            assert path in view, path
            if key[0] == stat.S_IFREG:
                assert view[path]["data"] == key[1], path
        assert len(view) == len(_snapshot_host(hostdir))


def _snapshot_host(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        rel = "/" + str(p.relative_to(root))
        st_ = p.lstat()
        out[rel] = (stat.S_IFMT(st_.st_mode), p.read_bytes() if stat.S_ISREG(st_.st_mode) else None)
    return out


_ = images  # the fixture helpers are imported for their side effect on sys.path
