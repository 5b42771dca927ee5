"""The registry: volfs's own database, and microsandbox's msb.db when present."""

from __future__ import annotations

import errno
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from msbdb import add_sandbox, make_msb_db

from volfs.errors import RegistryError, VolumeBusy, VolumeExists
from volfs.home import resolve_home
from volfs.registry import Registry, VolumeRecord, parse_time
from volfs.sync import Volume


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT name, kind, quota_mib, capacity_bytes, disk_format, disk_fstype, labels FROM volume ORDER BY id").fetchall()
    finally:
        conn.close()


def test_own_db_created_on_first_write_only(home: Path) -> None:
    reg = Registry(resolve_home(home))
    assert reg.records() == [] and reg.get("x") is None
    assert not (home / "db").exists()  # reading never creates anything
    Volume.create("x", home=home, labels={"team": "a"}, quota_mib=10)
    assert (home / "db" / "volfs.db").is_file()
    assert not (home / "db" / "msb.db").exists()
    assert rows(home / "db" / "volfs.db") == [("x", "dir", 10, None, None, None, json.dumps([["team", "a"]]))]
    mode = sqlite3.connect(home / "db" / "volfs.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_duplicate_insert(home: Path) -> None:
    reg = Registry(resolve_home(home))
    reg.insert(VolumeRecord(name="a"))
    with pytest.raises(VolumeExists):
        reg.insert(VolumeRecord(name="a"))
    assert reg.delete("a") and not reg.delete("a")


def test_list_newest_first(home: Path) -> None:
    reg = Registry(resolve_home(home))
    for i, name in enumerate(["old", "mid", "new"]):
        reg.insert(VolumeRecord(name=name, created_at=datetime(2026, 1, 1 + i, tzinfo=UTC)))
    assert [r.name for r in reg.records()] == ["new", "mid", "old"]


def test_msb_db_is_used_and_schema_untouched(msb_home: Path) -> None:
    db = msb_home / "db" / "msb.db"
    schema_before = sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    Volume.create("shared", home=msb_home, labels=[("a", "b")])
    Volume.create("img", home=msb_home, kind="disk", size_mib=64)
    assert not (msb_home / "db" / "volfs.db").exists()
    assert rows(db) == [
        ("shared", "dir", None, None, None, None, '[["a", "b"]]'),
        ("img", "disk", None, 64 << 20, "raw", "ext4", None),
    ]
    schema_after = sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert schema_after == schema_before
    assert Registry(resolve_home(msb_home)).is_microsandbox


def test_reads_rows_microsandbox_wrote(msb_home: Path) -> None:
    db = msb_home / "db" / "msb.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO volume (name, quota_mib, size_bytes, labels, created_at, kind, capacity_bytes, disk_format, disk_fstype)"
        " VALUES ('fromsdk', NULL, NULL, '[[\"env\",\"prod\"]]', '2026-03-05 12:34:56.123456789', 'disk', 1073741824, 'raw', 'ext4')"
    )
    conn.execute("INSERT INTO volume (name, kind, created_at) VALUES ('legacy', 'weird', '2026-01-01 00:00:00')")
    conn.commit()
    conn.close()
    (msb_home / "volumes" / "fromsdk").mkdir()
    (msb_home / "volumes" / "fromsdk" / "disk.raw").write_bytes(b"\0" * 4096)
    (msb_home / "volumes" / "legacy").mkdir()
    handles = {h.name: h for h in Volume.list(home=msb_home)}
    sdk = handles["fromsdk"]
    assert sdk.kind.value == "disk" and sdk.capacity_bytes == 1 << 30 and sdk.labels == {"env": "prod"}
    assert sdk.created_at == datetime(2026, 3, 5, 12, 34, 56, 123456, tzinfo=UTC)
    assert handles["legacy"].kind.value == "dir"  # microsandbox reads unknown kinds as dir
    assert [h.name for h in Volume.list(home=msb_home)] == ["fromsdk", "legacy"]


def test_msb_db_without_volume_table_is_not_used(home: Path) -> None:
    (home / "db").mkdir()
    sqlite3.connect(home / "db" / "msb.db").close()  # an empty file, mid-migration
    Volume.create("v", home=home)
    assert (home / "db" / "volfs.db").is_file()
    assert sqlite3.connect(home / "db" / "msb.db").execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


@pytest.mark.parametrize("status", ["Running", "Draining", "Paused"])
def test_active_sandbox_makes_volume_busy(msb_home: Path, status: str) -> None:
    Volume.create("cache", home=msb_home)
    add_sandbox(msb_home / "db" / "msb.db", "worker", status, ["cache"])
    handle = Volume.get("cache", home=msb_home)
    assert handle.in_use == ("sandbox worker",)
    with pytest.raises(VolumeBusy) as info:
        Volume.remove("cache", home=msb_home)
    assert "worker" in str(info.value) and info.value.errno == errno.EBUSY
    assert (msb_home / "volumes" / "cache").is_dir()
    assert Volume.get("cache", home=msb_home).status.value == "ok"


@pytest.mark.parametrize("status", ["Stopped", "Crashed", "Created"])
def test_inactive_sandbox_does_not_block(msb_home: Path, status: str) -> None:
    Volume.create("cache", home=msb_home)
    add_sandbox(msb_home / "db" / "msb.db", "old", status, ["cache"])
    add_sandbox(msb_home / "db" / "msb.db", "other", "Running", ["different"])
    assert Volume.get("cache", home=msb_home).in_use == ()
    Volume.remove("cache", home=msb_home)


def test_corrupt_database(home: Path) -> None:
    (home / "db").mkdir()
    (home / "db" / "volfs.db").write_bytes(b"this is not a sqlite database at all" * 200)
    before = (home / "db" / "volfs.db").read_bytes()
    with pytest.raises(RegistryError) as info:
        Volume.list(home=home)
    assert "volfs.db" in str(info.value) and "corrupt" in str(info.value)
    with pytest.raises(RegistryError):
        Volume.create("x", home=home)
    assert not (home / "volumes" / "x").exists()
    assert (home / "db" / "volfs.db").read_bytes() == before


def test_corrupt_msb_database(home: Path) -> None:
    (home / "db").mkdir()
    (home / "db" / "msb.db").write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(RegistryError):
        Volume.list(home=home)


def test_locked_database(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("volfs.registry.BUSY_TIMEOUT_MS", 200)
    Volume.create("a", home=home)
    holder = sqlite3.connect(home / "db" / "volfs.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RegistryError) as info:
            Volume.create("b", home=home)
        assert info.value.errno == errno.EBUSY and "locked" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not (home / "volumes" / "b").exists()  # the insert failed, so the directory went too
    Volume.create("b", home=home)


def test_parse_time_variants() -> None:
    want = datetime(2026, 3, 5, 12, 34, 56, tzinfo=UTC)
    assert parse_time("2026-03-05 12:34:56") == want
    assert parse_time("2026-03-05T12:34:56Z") == want
    assert parse_time("2026-03-05 12:34:56.5") == want.replace(microsecond=500000)
    assert parse_time("garbage") is None and parse_time(None) is None


def test_junk_labels_read_as_none(home: Path) -> None:
    Volume.create("a", home=home)
    conn = sqlite3.connect(home / "db" / "volfs.db")
    conn.execute("UPDATE volume SET labels = '{not json'")
    conn.commit()
    conn.close()
    assert Volume.get("a", home=home).labels == {}


def test_make_msb_db_helper_is_microsandbox_shaped(home: Path) -> None:
    db = make_msb_db(home)
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(volume)")]
    assert cols == ["id", "name", "quota_mib", "size_bytes", "labels", "created_at", "updated_at", "kind",
                    "capacity_bytes", "disk_format", "disk_fstype"]  # fmt: skip
