"""The backend conformance suite's fixtures: one list of backend factories.

Every test in this directory runs once per factory in :data:`FACTORIES`.
Adding a backend is one line there. A factory builds a backend over a tree
that :func:`populate` writes into a plain host directory first (so an ext4
factory can turn the same directory into an image with ``mkfs.ext4 -d``).
A factory that declares ``readonly=True`` gets tests that expect EROFS for
every mutation; read tests run against the same populated tree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fusemount.support import fuse_available, teardown
from testsupport import e2fsck_clean, need, need_tool

from volfs.backend import Backend
from volfs.backends.directory import DirectoryBackend
from volfs.backends.ext4 import Ext4Backend
from volfs.fs import VolumeFsHandle
from volfs.home import resolve_home
from volfs.mounts import MountOptions, mount
from volfs.pathfs import PathFs
from volfs.sync import Volume

from conformance.support import populate

@dataclass(frozen=True)
class Factory:
    """How to build one backend kind over a populated tree."""

    name: str
    readonly: bool
    # make(tree_dir, work_dir) -> backend; tree_dir is already populated.
    make: Callable[[Path, Path], Backend]


def _dir_rw(tree: Path, work: Path) -> Backend:
    return DirectoryBackend(tree)


def _dir_ro(tree: Path, work: Path) -> Backend:
    return DirectoryBackend(tree, readonly=True)


def _image_from(tree: Path, image: Path) -> Path:
    """Make ``image`` an ext4 filesystem holding ``tree`` (mkfs.ext4 -d), without lost+found."""
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}
    subprocess.run([need_tool("mkfs.ext4"), "-q", "-F", "-d", str(tree), str(image), "64M"], check=True, env=env,
                   capture_output=True)  # fmt: skip
    # mkfs adds lost+found, which the standard tree does not have.
    subprocess.run([need_tool("debugfs"), "-w", "-R", "rmdir lost+found", str(image)], check=True, env=env,
                   capture_output=True)  # fmt: skip
    return image


def _ext4_ro(tree: Path, work: Path) -> Backend:
    """The tree as an ext4 image built by mkfs.ext4 -d, read by volfs's engine."""
    return Ext4Backend(_image_from(tree, work / "ext4.img"))


class _CheckedExt4(Ext4Backend):
    """A writable ext4 backend whose close demands an e2fsck-clean image."""

    def __init__(self, image: Path) -> None:
        super().__init__(image, readonly=False)
        assert not self.readonly, self.readonly_reason
        self._image = image
        self._checked = False

    def close(self) -> None:
        super().close()
        if not self._checked:
            self._checked = True
            e2fsck_clean(self._image)


def _ext4_rw(tree: Path, work: Path) -> Backend:
    """The tree as an ext4 image built by mkfs.ext4 -d, written by volfs; e2fsck -fn clean on close."""
    return _CheckedExt4(_image_from(tree, work / "ext4-rw.img"))


class _MountedBackend(DirectoryBackend):
    """A directory backend over a live volfs FUSE mount; closing it unmounts (and checks a disk image)."""

    def __init__(self, mountpoint: Path, home: Path, name: str, *, readonly: bool, image: Path | None) -> None:
        super().__init__(mountpoint, readonly=readonly)
        self._home, self._name, self._mountpoint, self._image = home, name, mountpoint, image

    def close(self) -> None:
        try:
            super().close()
        finally:
            teardown(self._home, self._name, self._mountpoint)
        if self._image is not None:
            e2fsck_clean(self._image)


def _fuse(kind: str, readonly: bool) -> Callable[[Path, Path], Backend]:
    """The tree becomes a volume of ``kind`` served by the volfs daemon; the suite runs on the mount."""

    def make(tree: Path, work: Path) -> Backend:
        need(fuse_available(), "/dev/fuse is not available")
        home = work / "fuse-home"
        image: Path | None = None
        if kind == "disk":
            vol = Volume.create("conformance", home=home, kind="disk", size_mib=64)
            image = _image_from(tree, vol.disk_path)
        else:
            vol = Volume.create("conformance", home=home)
            for entry in os.listdir(tree):  # rename keeps hard links, FIFOs and xattrs as they are
                os.rename(tree / entry, vol.path / entry)
        mp = work / "fuse-mnt"
        mp.mkdir()
        mount(resolve_home(home), "conformance", mp, MountOptions(readonly=readonly, log=str(work / "daemon.log")))
        return _MountedBackend(mp, home, "conformance", readonly=readonly, image=image)

    return make


FACTORIES: list[Factory] = [
    Factory("directory", False, _dir_rw),
    Factory("directory-ro", True, _dir_ro),
    Factory("fuse-directory", False, _fuse("dir", False)),
    Factory("fuse-directory-ro", True, _fuse("dir", True)),
    Factory("fuse-disk", False, _fuse("disk", False)),
    Factory("fuse-disk-ro", True, _fuse("disk", True)),
    Factory("ext4-ro", True, _ext4_ro),
    Factory("ext4", False, _ext4_rw),
]


@pytest.fixture(params=FACTORIES, ids=lambda f: f.name)
def factory(request: pytest.FixtureRequest) -> Factory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    populate(root)
    return root


@pytest.fixture
def backend(factory: Factory, tree: Path, tmp_path: Path) -> Iterator[Backend]:
    b = factory.make(tree, tmp_path)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def fs(backend: Backend) -> Iterator[PathFs]:
    p = PathFs(backend)
    yield p
    # Every call must leave the backend's lookup counts balanced.
    nodes = getattr(backend, "_nodes", None)
    if nodes is not None and not p.closed:
        assert len(nodes) == 1, f"leaked inode references: {sorted(nodes)}"
    p.close()


@pytest.fixture
def afs(fs: PathFs) -> VolumeFsHandle:
    return VolumeFsHandle(fs)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]
