"""Opening a store: migrations from empty, reopening, URLs and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from honed.store import Store, StoreError, StoreUnavailableError
from honed.store.migrate import head_revision
from honed.store.schema import metadata

TABLES = {
    "bases", "tracks", "datasets", "records", "runs", "checkpoints", "metrics",
    "trained_records", "jobs", "job_events", "job_commands", "workers", "adapters", "deployments", "experiences",
    "teacher_answers", "learning_batches",
    "alembic_version",
}


def test_open_migrates_an_empty_database_to_head(store_url: str) -> None:
    with Store.open(store_url) as store:
        assert store.schema_revision() == head_revision()
        engine = sa.create_engine(store.url)
        try:
            # Default schema only: on PostgreSQL this is the test's own schema, so the
            # version table must have landed there too.
            assert set(sa.inspect(engine).get_table_names()) == TABLES
        finally:
            engine.dispose()


def test_migrations_create_exactly_the_declared_tables(store: Store) -> None:
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_reopening_keeps_data_and_does_not_migrate_again(store_url: str) -> None:
    with Store.open(store_url) as store:
        version = store.add_base("tiny")
        store.ensure_track("main", version)
    with Store.open(store_url) as store:
        assert store.get_base(0) is not None
        assert [t.name for t in store.list_tracks()] == ["main"]
        assert store.schema_revision() == head_revision()


def test_a_store_from_a_newer_honed_is_refused_untouched(store_url: str) -> None:
    Store.open(store_url).close()
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
        with pytest.raises(StoreError, match="9999_future"):
            Store.open(store_url)
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == "9999_future"
    finally:
        engine.dispose()


def test_sqlite_store_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a" / "b" / "honed.db") as store:
        assert store.dialect == "sqlite"
        assert (tmp_path / "a" / "b" / "honed.db").exists()
        engine = sa.create_engine(store.url)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            engine.dispose()
        with pytest.raises(StoreError, match="unknown base version 7"):
            store.ensure_track("main", 7)


def test_display_url_masks_the_password() -> None:
    store = Store(sa.create_engine("sqlite://"), sa.make_url("postgresql+psycopg://u:s3cr3t@db/x"))
    assert store.display_url == "postgresql+psycopg://u:***@db/x"
    assert "s3cr3t" not in repr(store)
    assert "s3cr3t" in store.url


def test_unreachable_postgres_names_the_masked_url_and_the_reason() -> None:
    # Port 1 on localhost refuses at once: no waiting for a timeout.
    with pytest.raises(StoreUnavailableError) as raised:
        Store.open("postgresql://honed:s3cr3t@127.0.0.1:1/honed")
    message = str(raised.value)
    assert "postgresql+psycopg://honed:***@127.0.0.1:1/honed" in message
    assert "s3cr3t" not in message
    assert "refused" in message.lower()


@pytest.mark.parametrize("url", ["", "mysql://u@h/db"])
def test_unsupported_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite"):
        Store.open(url)
