"""Engines for the two databases honed supports, with the settings each one needs.

SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout, and
SQLAlchemy in charge of BEGIN so that a write transaction starts with ``BEGIN IMMEDIATE``.
A deferred transaction that reads first and writes later can fail at once with
"database is locked" when another writer committed in between; taking the write lock
up front makes writers queue on the busy timeout instead.

PostgreSQL: ``postgresql+psycopg://...`` (a bare ``postgresql://`` is read as psycopg,
the driver honed installs), with connections checked before use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from honed.store.errors import StoreError
from honed.store.schema import encode_non_finite

log = logging.getLogger(__name__)

# Execution option that marks a connection as a writer (see Store._write).
WRITE_OPTION = "honed_write"


def parse_url(url: str | Path) -> sa.URL:
    """Turn a store URL (or a plain filesystem path, read as a SQLite file) into a URL
    object, choosing psycopg for PostgreSQL."""
    text = str(url)
    if not text:
        raise StoreError("empty store URL; give sqlite:///PATH or postgresql+psycopg://...")
    if "://" not in text:
        return sa.URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        parsed = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"not a store URL: {mask_password(text)!r} ({exc})") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported store database {parsed.get_backend_name()!r} in "
            f"{display(parsed)}; use sqlite:///PATH or postgresql+psycopg://..."
        )
    return parsed


def display(url: sa.URL) -> str:
    """The URL as it may be shown to people and logs: the password replaced by ***."""
    return url.render_as_string(hide_password=True)


def mask_password(text: str) -> str:
    """Best-effort masking of a URL string that could not be parsed."""
    head, sep, tail = text.partition("://")
    if sep and "@" in tail:
        creds, _, rest = tail.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{head}://{user}:***@{rest}" if ":" in creds else text
    return text


def sqlite_file(url: sa.URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory databases and other
    dialects."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    return Path(database)


def _json_serializer(value: Any) -> str:
    return json.dumps(encode_non_finite(value), allow_nan=False)


def create_engine(url: sa.URL, busy_timeout_s: float = 30.0) -> sa.Engine:
    """Create the engine for ``url`` with honed's per-dialect settings applied."""
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(url, pool_pre_ping=True, json_serializer=_json_serializer)

    in_memory = sqlite_file(url) is None
    engine = sa.create_engine(
        url,
        json_serializer=_json_serializer,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
        # An in-memory database lives and dies with its one connection.
        **({"poolclass": StaticPool} if in_memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite store %s is not in WAL mode (%s)", display(url), mode)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        writer = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
