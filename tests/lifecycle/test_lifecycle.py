"""Volume lifecycle: create, get, list, remove, builder, modes; async and blocking."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import e2fsck_clean, need_root

import volfs
from volfs.errors import InvalidArgument, VolfsError, VolumeExists, VolumeNotFound
from volfs.sync import NamedVolumeMode, Volume, VolumeConfig, VolumeKind, VolumeStatus


def test_create_directory_volume(home: Path) -> None:
    vol = Volume.create("data", home=home, quota_mib="2G", labels={"team": "infra"})
    assert vol.name == "data" and vol.kind is VolumeKind.DIRECTORY
    assert vol.path == home / "volumes" / "data" and vol.path.is_dir()
    assert vol.disk_path is None and vol.capacity_bytes is None
    h = Volume.get("data", home=home)
    assert (h.quota_mib, h.labels, h.status, h.in_use) == (2048, {"team": "infra"}, VolumeStatus.OK, ())
    assert h.created_at is not None and h.created_at.tzinfo is not None
    assert os.listdir(vol.path) == []  # metadata never lives inside a directory volume


def test_create_disk_volume_is_sparse_clean_ext4(home: Path) -> None:
    vol = Volume.builder("img", home=home).disk().size("96M").label("a", "1").create()
    image = vol.disk_path
    assert image == home / "volumes" / "img" / "disk.raw"
    st = image.stat()
    assert st.st_size == 96 << 20
    assert st.st_blocks * 512 < st.st_size // 4  # sparse: only metadata was written
    e2fsck_clean(image)
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Filesystem magic number:  0xEF53" in out and "has_journal" in out and "extent" in out
    h = Volume.get("img", home=home)
    assert (h.kind, h.capacity_bytes, h.disk_format, h.disk_fstype) == (VolumeKind.DISK, 96 << 20, "raw", "ext4")
    facts = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    used = (int(facts["Block count"]) - int(facts["Free blocks"])) * int(facts["Block size"])
    assert h.used_bytes == used > 0  # what the filesystem inside uses, as dumpe2fs reports it


def test_used_bytes_of_a_broken_image_falls_back_to_host_space(home: Path) -> None:
    vol = Volume.create("junk", home=home, kind="disk", size_mib=64)
    with open(vol.disk_path, "r+b") as f:
        f.write(b"\xff" * 4096)  # no superblock any more
    assert Volume.get("junk", home=home).used_bytes == os.stat(vol.disk_path).st_blocks * 512
    vol.disk_path.write_bytes(b"")
    assert Volume.get("junk", home=home).used_bytes == 0


def test_used_bytes_is_measured(home: Path) -> None:
    vol = Volume.create("u", home=home)
    assert Volume.get("u", home=home).used_bytes == 0
    (vol.path / "sub").mkdir()
    (vol.path / "sub" / "f").write_bytes(b"x" * 100_000)
    os.link(vol.path / "sub" / "f", vol.path / "hard")  # counted once, as du does
    os.symlink("/etc/passwd", vol.path / "link")  # never followed
    used = Volume.get("u", home=home).used_bytes
    du = int(subprocess.run(["du", "-s", "-B1", str(vol.path)], capture_output=True, text=True).stdout.split()[0])
    dir_itself = os.stat(vol.path).st_blocks * 512
    assert used == du - dir_itself
    assert used >= 100_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "dir", "size_mib": 10}, "do not take a size"),
        ({"kind": "disk"}, "require a size"),
        ({"kind": "disk", "size_mib": 100, "quota_mib": 5}, "do not take a quota"),
        ({"kind": "nfs"}, "invalid volume kind"),
        ({"quota_mib": "0"}, "greater than zero"),
        ({"labels": {"": "x"}}, "must not be empty"),
    ],
)
def test_config_validation(home: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Volume.create("v", home=home, **kwargs)  # type: ignore[arg-type]
    assert not (home / "volumes").exists() or os.listdir(home / "volumes") == [".locks"] or not os.listdir(home / "volumes")
    assert not (home / "db").exists()


def test_invalid_name_touches_nothing(home: Path) -> None:
    for bad in ["../evil", ".x", "a/b", "", "x" * 256]:
        with pytest.raises(InvalidArgument):
            Volume.create(bad, home=home)
        with pytest.raises(InvalidArgument):
            Volume.get(bad, home=home)
        with pytest.raises(InvalidArgument):
            Volume.remove(bad, home=home)
    assert os.listdir(home) == []


def test_longest_name_works(home: Path) -> None:
    name = "n" * 255
    Volume.create(name, home=home)
    assert Volume.get(name, home=home).status is VolumeStatus.OK
    Volume.remove(name, home=home)
    assert [e for e in os.listdir(home / "volumes") if not e.startswith(".locks")] == []


def test_exists_and_not_found(home: Path) -> None:
    Volume.create("a", home=home)
    with pytest.raises(VolumeExists) as info:
        Volume.create("a", home=home, kind="disk", size_mib=64)
    assert isinstance(info.value, FileExistsError) and info.value.errno == errno.EEXIST
    with pytest.raises(VolumeNotFound) as nf:
        Volume.get("b", home=home)
    assert isinstance(nf.value, FileNotFoundError) and "b" in str(nf.value)
    with pytest.raises(VolumeNotFound):
        Volume.remove("b", home=home)


def test_list_skips_dot_entries_and_files(home: Path) -> None:
    Volume.create("real", home=home)
    vols = home / "volumes"
    (vols / ".locks" / "ghost.lock").touch()
    (vols / ".real.abc123").mkdir()  # microsandbox's transient create dir
    (vols / ".hidden").mkdir()
    (vols / "afile").write_text("not a volume")
    (vols / "bad name").mkdir()
    assert [h.name for h in Volume.list(home=home)] == ["real"]


def test_remove_deletes_row_and_data(home: Path) -> None:
    vol = Volume.create("gone", home=home)
    (vol.path / "deep" / "er").mkdir(parents=True)
    (vol.path / "deep" / "er" / "f").write_text("x")
    os.symlink("/etc", vol.path / "etc-link")  # remove never follows it
    Volume.get("gone", home=home).remove()
    assert not vol.path.exists() and os.path.exists("/etc/passwd")
    assert Volume.list(home=home) == []
    assert sorted(os.listdir(home / "volumes")) == [".locks"]


def test_orphans_reported_and_cleared(home: Path) -> None:
    Volume.create("rowonly", home=home)
    os.rmdir(home / "volumes" / "rowonly")
    (home / "volumes" / "dironly").mkdir()
    (home / "volumes" / "dironly" / "keep").write_text("data")
    Volume.create("fine", home=home)
    status = {h.name: h.status for h in Volume.list(home=home)}
    assert status == {"rowonly": VolumeStatus.MISSING, "dironly": VolumeStatus.UNREGISTERED, "fine": VolumeStatus.OK}
    with pytest.raises(VolumeNotFound, match="not registered"):
        Volume.get("dironly", home=home)
    with pytest.raises(VolumeExists, match="not registered"):
        Volume.create("dironly", home=home)
    with pytest.raises(VolumeNotFound, match="missing"):
        Volume.get("rowonly", home=home).open_fs()
    Volume.remove("rowonly", home=home)
    Volume.remove("dironly", home=home)
    assert [h.name for h in Volume.list(home=home)] == ["fine"]


def test_disk_volume_missing_image_is_missing(home: Path) -> None:
    vol = Volume.create("d", home=home, kind="disk", size_mib=64)
    os.unlink(vol.disk_path)
    assert Volume.get("d", home=home).status is VolumeStatus.MISSING
    Volume.remove("d", home=home)
    assert not vol.path.exists()


def test_modes(home: Path) -> None:
    cfg = VolumeConfig.make("m", kind="disk", size_mib=64, labels={"a": "1"})
    with pytest.raises(VolumeNotFound):
        Volume.open(cfg, NamedVolumeMode.EXISTING, home=home)
    created = Volume.open(cfg, NamedVolumeMode.CREATE, home=home)
    with pytest.raises(VolumeExists):
        Volume.open(cfg, NamedVolumeMode.CREATE, home=home)
    again = Volume.open(cfg, NamedVolumeMode.ENSURE_EXISTS, home=home)
    assert again.created_at == created.created_at
    assert Volume.open(cfg, NamedVolumeMode.EXISTING, home=home).name == "m"
    fresh = Volume.builder("n", home=home).quota(5).ensure_exists()  # creates when missing
    assert fresh.quota_mib == 5


@pytest.mark.parametrize(
    ("request_kwargs", "problem"),
    [
        ({"kind": "dir"}, "kind is disk, requested dir"),
        ({"kind": "disk", "size_mib": 128}, "capacity"),
        ({"kind": "disk", "size_mib": 64, "labels": {"env": "dev"}}, "label 'env'"),
        ({"kind": "disk", "size_mib": 64, "labels": {"new": "x"}}, "label 'new' is missing"),
    ],
)
def test_ensure_exists_mismatch(home: Path, request_kwargs: dict[str, object], problem: str) -> None:
    Volume.create("e", home=home, kind="disk", size_mib=64, labels={"env": "prod", "extra": "ok"})
    before = Volume.get("e", home=home)
    with pytest.raises(InvalidArgument, match=problem):
        Volume.ensure_exists("e", home=home, **request_kwargs)  # type: ignore[arg-type]
    after = Volume.get("e", home=home)
    assert (after.labels, after.capacity_bytes, after.created_at) == (before.labels, before.capacity_bytes, before.created_at)


def test_ensure_exists_quota_rules(home: Path) -> None:
    Volume.create("q", home=home, quota_mib=100, labels={"a": "1", "b": "2"})
    Volume.ensure_exists("q", home=home)  # nothing requested: kind only
    Volume.ensure_exists("q", home=home, quota_mib=100, labels={"a": "1"})  # subset of labels is fine
    with pytest.raises(InvalidArgument, match="quota is 100 MiB, requested 200 MiB"):
        Volume.ensure_exists("q", home=home, quota_mib=200)


def test_msb_home_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "u"))
    monkeypatch.delenv("MSB_HOME", raising=False)
    monkeypatch.delenv("MSB_CONFIG_PATH", raising=False)
    Volume.create("dflt")
    assert (tmp_path / "u" / ".microsandbox" / "volumes" / "dflt").is_dir()
    monkeypatch.setenv("MSB_HOME", str(tmp_path / "env"))
    Volume.create("viaenv")
    assert (tmp_path / "env" / "volumes" / "viaenv").is_dir()
    Volume.create("explicit", home=tmp_path / "x")  # the override wins over $MSB_HOME
    assert (tmp_path / "x" / "volumes" / "explicit").is_dir()
    assert [h.name for h in Volume.list()] == ["viaenv"]


def test_config_json_moves_volumes(home: Path) -> None:
    (home / "config.json").write_text(json.dumps({"paths": {"volumes": "elsewhere"}}))
    Volume.create("v", home=home)
    assert (home / "elsewhere" / "v").is_dir()
    (home / "config.json").write_text("{broken")
    with pytest.raises(InvalidArgument, match="config"):
        Volume.list(home=home)


def test_home_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "homefile"
    f.write_text("precious")
    with pytest.raises(VolfsError) as info:
        Volume.create("v", home=f)
    assert info.value.errno == errno.ENOTDIR and str(f) in str(info.value)
    with pytest.raises(VolfsError):
        Volume.list(home=f)
    assert f.read_text() == "precious"


def test_volumes_dir_is_a_file(home: Path) -> None:
    (home / "volumes").write_text("precious")
    with pytest.raises(VolfsError) as info:
        Volume.create("v", home=home)
    assert info.value.errno == errno.ENOTDIR
    assert (home / "volumes").read_text() == "precious"


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    need_root("mounting a tmpfs to make a full or read-only disk")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_home(tiny_mount: Path) -> None:
    Volume.create("before", home=tiny_mount)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    assert [h.name for h in Volume.list(home=tiny_mount)] == ["before"]  # reading still works
    with pytest.raises(VolfsError) as info:
        Volume.create("after", home=tiny_mount)
    assert info.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(VolfsError):
        Volume.remove("before", home=tiny_mount)
    assert (tiny_mount / "volumes" / "before").is_dir()


def test_full_disk(tiny_mount: Path) -> None:
    Volume.create("small", home=tiny_mount)
    with pytest.raises(VolfsError) as info:
        Volume.create("big", home=tiny_mount, kind="disk", size_mib=16384)  # ~4 MiB of metadata
    assert info.value.errno in (errno.ENOSPC, errno.EIO, errno.EFBIG)
    assert [h.name for h in Volume.list(home=tiny_mount)] == ["small"]
    assert not (tiny_mount / "volumes" / "big").exists()
    leftovers = [e for e in os.listdir(tiny_mount / "volumes") if e not in (".locks", "small")]
    assert leftovers == []
    Volume.remove("small", home=tiny_mount)  # space freed later is usable again
    Volume.create("small2", home=tiny_mount)


async def _async_roundtrip(home: Path) -> None:
    vol = await volfs.Volume.create("as", home=home, labels={"k": "v"})
    assert vol.name == "as" and vol.path.is_dir()
    disk = await volfs.Volume.builder("ad", home=home).disk().size(64).create()
    assert disk.kind is VolumeKind.DISK
    h = await volfs.Volume.get("as", home=home)
    assert h.labels == {"k": "v"} and h.kind is VolumeKind.DIRECTORY and h.used_bytes == 0
    assert [x.name for x in await volfs.Volume.list(home=home)] == ["ad", "as"]
    again = await volfs.Volume.ensure_exists("as", home=home)
    assert again.created_at == h.created_at
    await h.remove()
    await volfs.Volume.remove("ad", home=home)
    assert await volfs.Volume.list(home=home) == []
    with pytest.raises(VolumeNotFound):
        await volfs.Volume.get("as", home=home)


@pytest.mark.trio
async def test_async_api_under_trio(home: Path) -> None:
    await _async_roundtrip(home)


def test_async_api_under_asyncio(home: Path) -> None:
    import asyncio

    asyncio.run(_async_roundtrip(home))


def test_public_names() -> None:
    assert set(volfs.__all__) >= {
        "Volume", "VolumeHandle", "VolumeBuilder", "VolumeKind", "NamedVolumeMode", "VolumeConfig",
        "VolfsError", "VolumeNotFound", "VolumeExists", "VolumeBusy", "InvalidArgument", "VolumeFs", "VolumeFsHandle",
    }  # fmt: skip
    code = "import sys, volfs, volfs.sync; sys.exit('pyfuse3' in sys.modules or 'trio' in sys.modules)"
    assert subprocess.run([os.sys.executable, "-c", code]).returncode == 0
