"""Fixtures for the store tests: every ``store`` test runs on a SQLite file and on
PostgreSQL (a fresh schema per test: ``pg_schema_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from honed.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of an empty store: a SQLite file in a directory that does not exist yet, or
    a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'workspace' / 'honed.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An opened (migrated) store on each database."""
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def main_track(store: Store) -> str:
    """A store with base v0 and the track ``main`` on it; returns the track name."""
    version = store.add_base("tiny-qwen", description="built-in tiny model")
    store.ensure_track("main", version)
    return "main"
