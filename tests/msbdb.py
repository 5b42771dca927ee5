"""microsandbox's database, built the way its migrations build it, for interop tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


# microsandbox's schema for the tables volfs reads (migrations
# m20260305_000003 and m20260606_000001_named_volume_kinds, and the sandbox
# table), as sea-orm creates them on SQLite.
MSB_SCHEMA = """
CREATE TABLE seaql_migrations (version varchar NOT NULL PRIMARY KEY, applied_at bigint NOT NULL);
CREATE TABLE volume (
    id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    name varchar NOT NULL UNIQUE,
    quota_mib integer NULL,
    size_bytes bigint NULL,
    labels text NULL,
    created_at timestamp_text NULL,
    updated_at timestamp_text NULL,
    kind varchar NOT NULL DEFAULT 'dir',
    capacity_bytes bigint NULL,
    disk_format varchar NULL,
    disk_fstype varchar NULL
);
CREATE TABLE sandbox (
    id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    name varchar NOT NULL UNIQUE,
    config text NOT NULL,
    status varchar NOT NULL,
    created_at timestamp_text NULL,
    updated_at timestamp_text NULL
);
CREATE TABLE volume_attach (
    id integer NOT NULL PRIMARY KEY AUTOINCREMENT,
    volume_id integer NOT NULL REFERENCES volume (id) ON DELETE CASCADE,
    sandbox_id integer NULL REFERENCES sandbox (id) ON DELETE SET NULL,
    pid integer NOT NULL,
    mode varchar NOT NULL,
    created_at timestamp_text NULL
);
"""


def make_msb_db(home: Path) -> Path:
    db = home / "db" / "msb.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(MSB_SCHEMA)
    conn.commit()
    conn.close()
    return db


def add_sandbox(db: Path, name: str, status: str, volumes: list[str]) -> None:
    config = {
        "name": name,
        "image": "python",
        "mounts": [
            {"type": "Named", "name": v, "guest": f"/mnt/{v}", "options": {"readonly": False}} for v in volumes
        ]
        + [{"type": "Bind", "host": "/tmp", "guest": "/host-tmp"}],
    }
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO sandbox (name, config, status) VALUES (?, ?, ?)", (name, json.dumps(config), status)
    )
    conn.commit()
    conn.close()
