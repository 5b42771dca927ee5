"""The volume registry: one SQLite ``volume`` table with microsandbox's columns.

Two databases, one table shape:

* **microsandbox's** ``<home>/db/msb.db``, used whenever it exists and has a
  ``volume`` table. volfs is a guest there: it opens the file without ever
  creating it, keeps microsandbox's PRAGMAs (WAL, a busy timeout, foreign
  keys), and never changes its schema (that would break microsandbox's
  migrations). Its ``sandbox`` table tells which volumes active sandboxes use.
* **volfs's own** ``<home>/db/volfs.db`` otherwise, created on first write.
  volfs never creates ``msb.db``.

Every call opens its own short-lived connection: the registry is touched a few
times per lifecycle operation, callers run in worker threads, and several
processes share the file; SQLite's locking (plus a busy timeout) serialises
them, and a write that cannot begin within the busy timeout tries again for up
to ``SETUP_TIMEOUT_S`` before it reports EBUSY. SQLite errors become
:class:`RegistryError` naming the database file.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.request import pathname2url

from volfs.errors import RegistryError, VolumeExists
from volfs.home import Home

__all__ = ["VolumeRecord", "Registry", "ACTIVE_SANDBOX_STATES"]

BUSY_TIMEOUT_MS: Final = 5000
SETUP_TIMEOUT_S: Final = 20.0
"""How long a write waits, in all, for the lock it needs to begin (see Registry._write)."""
ACTIVE_SANDBOX_STATES: Final = ("Running", "Draining", "Paused")

# The column set of microsandbox's volume table (migrations m20260305_000003
# and m20260606_000001_named_volume_kinds).
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS volume (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    quota_mib INTEGER NULL,
    size_bytes BIGINT NULL,
    labels TEXT NULL,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    kind TEXT NOT NULL DEFAULT 'dir',
    capacity_bytes BIGINT NULL,
    disk_format TEXT NULL,
    disk_fstype TEXT NULL
)
"""
_COLUMNS: Final = (
    "id, name, kind, quota_mib, size_bytes, capacity_bytes, disk_format, disk_fstype, labels, created_at, updated_at"
)
# sqlx writes chrono's NaiveDateTime as "%F %T%.f" (naive UTC).
_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """One registry row. ``kind`` is ``"dir"`` or ``"disk"``; times are aware UTC."""

    name: str
    kind: str = "dir"
    quota_mib: int | None = None
    capacity_bytes: int | None = None
    disk_format: str | None = None
    disk_fstype: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    size_bytes: int | None = None
    id: int | None = None


def format_time(value: datetime) -> str:
    """Aware or naive-UTC datetime -> the naive UTC text microsandbox stores."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime(_TIME_FORMAT)


def parse_time(text: object) -> datetime | None:
    """Parse a stored timestamp (naive UTC text, with or without fraction or 'T')."""
    if not isinstance(text, str) or not text:
        return None
    cleaned = text.strip().replace("T", " ").removesuffix("Z").removesuffix("+00:00")
    head, dot, frac = cleaned.partition(".")
    if dot:
        cleaned = f"{head}.{(frac + '000000')[:6]}"  # %f takes at most 6 digits; sqlx may write 9
    for fmt in (_TIME_FORMAT, "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(cleaned, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _parse_labels(text: object) -> tuple[tuple[str, str], ...]:
    # A JSON array of [key, value] pairs; anything else (NULL, junk written
    # by some other tool) reads as no labels rather than failing every list.
    if not isinstance(text, str):
        return ()
    try:
        data = json.loads(text)
    except ValueError:
        return ()
    if isinstance(data, dict):
        data = list(data.items())
    if not isinstance(data, list):
        return ()
    return tuple(
        (p[0], p[1])
        for p in data
        if isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str)
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _record(row: tuple[object, ...]) -> VolumeRecord:
    rid, name, kind, quota, size, capacity, fmt, fstype, labels, created, updated = row
    return VolumeRecord(
        id=_int_or_none(rid),
        name=str(name),
        kind="disk" if kind == "disk" else "dir",  # microsandbox reads unknown kinds as dir
        quota_mib=_int_or_none(quota),
        size_bytes=_int_or_none(size),
        capacity_bytes=_int_or_none(capacity),
        disk_format=_str_or_none(fmt),
        disk_fstype=_str_or_none(fstype),
        labels=_parse_labels(labels),
        created_at=parse_time(created),
        updated_at=parse_time(updated),
    )


def _named_mounts(config: object) -> Iterator[str]:
    """Names of the named-volume mounts in a sandbox config (microsandbox JSON)."""
    if not isinstance(config, dict):
        return
    mounts = config.get("mounts")
    if not isinstance(mounts, list):
        spec = config.get("spec")
        mounts = spec.get("mounts") if isinstance(spec, dict) else None
    if not isinstance(mounts, list):
        return
    for mount in mounts:
        if not isinstance(mount, dict):
            continue
        if str(mount.get("type", "")).lower() == "named" and isinstance(mount.get("name"), str):
            yield mount["name"]
        # serde's externally tagged form: {"Named": {"name": ...}}
        inner = mount.get("Named")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            yield inner["name"]


class Registry:
    """Access to the ``volume`` table of one volumes home."""

    def __init__(self, home: Home) -> None:
        self.home = home

    @property
    def is_microsandbox(self) -> bool:
        """True when microsandbox's own database is the registry."""
        return self._msb_usable()

    @property
    def path(self) -> Path:
        """The database file in use (it may not exist yet)."""
        return self.home.msb_db if self._msb_usable() else self.home.volfs_db

    def _msb_usable(self) -> bool:
        if not self.home.msb_db.is_file():
            return False
        with self._connect(self.home.msb_db, mode="ro") as conn:
            return self._has_table(conn, "volume")

    @staticmethod
    def _has_table(conn: sqlite3.Connection, table: str) -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        return row is not None

    @contextmanager
    def _connect(self, path: Path, *, mode: str) -> Iterator[sqlite3.Connection]:
        """A connection with microsandbox's PRAGMAs; SQLite errors become RegistryError.

        ``mode`` is SQLite's URI mode: ``ro``, ``rw`` or ``rwc`` (create).
        """
        uri = f"file:{pathname2url(str(path))}?mode={mode}"
        if mode == "ro" and not os.access(path.parent, os.W_OK):
            # A WAL database on a read-only filesystem cannot get its -shm
            # file; nobody can write it there either, so read it as immutable.
            uri += "&immutable=1"
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if _is_busy(exc):
                raise RegistryError(f"registry database is locked: {message}", str(path), errno.EBUSY) from None
            if "unable to open" in message:
                raise RegistryError(f"cannot open registry database: {message}", str(path)) from None
            raise RegistryError(f"registry database error: {message}", str(path)) from None
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"registry database is corrupt or unreadable: {exc}", str(path)) from None
        finally:
            if conn is not None:
                conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for reading, or None when no registry exists yet."""
        if self._msb_usable():
            with self._connect(self.home.msb_db, mode="ro") as conn:
                yield conn
        elif self.home.volfs_db.is_file():
            with self._connect(self.home.volfs_db, mode="ro") as conn:
                yield conn if self._has_table(conn, "volume") else None
        else:
            yield None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside an immediate (write-locked) transaction."""
        if self._msb_usable():
            path, own = self.home.msb_db, False
        else:
            path, own = self.home.volfs_db, True
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"cannot create the registry directory: {exc.strerror}", str(path.parent), exc.errno or errno.EIO) from None
        with self._connect(path, mode="rwc" if own else "rw") as conn:
            # Nothing is done before the transaction begins, so a lock that outlasts the busy
            # timeout (several processes making a new database WAL at once, each needing it alone
            # for that) is waited out a while longer, instead of failing the caller with EBUSY.
            deadline = time.monotonic() + SETUP_TIMEOUT_S
            while True:
                try:
                    if own:
                        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                            conn.execute("PRAGMA journal_mode = WAL")
                        conn.execute(_SCHEMA)
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
                time.sleep(0.05)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def get(self, name: str) -> VolumeRecord | None:
        """The row for ``name``, or None."""
        with self._read() as conn:
            if conn is None:
                return None
            row = conn.execute(f"SELECT {_COLUMNS} FROM volume WHERE name = ?", (name,)).fetchone()
        return _record(row) if row is not None else None

    def records(self) -> list[VolumeRecord]:
        """All rows, newest first (as ``msb volume list``)."""
        with self._read() as conn:
            if conn is None:
                return []
            rows = conn.execute(f"SELECT {_COLUMNS} FROM volume ORDER BY created_at DESC, id DESC").fetchall()
        return [_record(r) for r in rows]

    def insert(self, record: VolumeRecord) -> VolumeRecord:
        """Insert a row; VolumeExists if the name is taken. Returns it with its id."""
        now = datetime.now(UTC)
        created = record.created_at or now
        labels = json.dumps([list(p) for p in record.labels]) if record.labels else None
        with self._write() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO volume (name, kind, quota_mib, size_bytes, capacity_bytes, disk_format,"
                    " disk_fstype, labels, created_at, updated_at) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.kind,
                        record.quota_mib,
                        record.capacity_bytes,
                        record.disk_format,
                        record.disk_fstype,
                        labels,
                        format_time(created),
                        format_time(now),
                    ),
                )
            except sqlite3.IntegrityError:
                raise VolumeExists(record.name) from None
            rowid = cursor.lastrowid
        return replace(record, id=rowid, created_at=created, updated_at=now)

    def delete(self, name: str) -> bool:
        """Delete the row for ``name``; False if there was none."""
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM volume WHERE name = ?", (name,))
            return cursor.rowcount > 0

    def sandboxes_using(self, name: str) -> list[str]:
        """Active microsandbox sandboxes (Running, Draining, Paused) that mount ``name``."""
        if not self._msb_usable():
            return []
        with self._connect(self.home.msb_db, mode="ro") as conn:
            if not self._has_table(conn, "sandbox"):
                return []
            columns = {r[1] for r in conn.execute("PRAGMA table_info(sandbox)").fetchall()}
            if not {"name", "status"} <= columns:
                return []
            configs = [c for c in ("config", "active_config") if c in columns]
            if not configs:
                return []
            marks = ", ".join("?" for _ in ACTIVE_SANDBOX_STATES)
            rows = conn.execute(
                f"SELECT name, {', '.join(configs)} FROM sandbox WHERE status IN ({marks})", ACTIVE_SANDBOX_STATES
            ).fetchall()
        users: list[str] = []
        for sandbox, *texts in rows:
            for text in texts:
                try:
                    config = json.loads(text) if isinstance(text, str) else None
                except ValueError:
                    continue
                if name in _named_mounts(config):
                    users.append(str(sandbox))
                    break
        return users


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (SQLITE_BUSY, SQLITE_LOCKED)."""
    message = str(exc)
    return "locked" in message or "busy" in message
