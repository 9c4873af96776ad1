"""Fixtures for the store tests: every ``store`` test runs on a SQLite file and on
PostgreSQL.

PostgreSQL comes from ``HONED_TEST_PG_URL`` (default: the local trust-auth server). When
it cannot be reached the PostgreSQL cases are skipped, naming the URL, unless
``HONED_REQUIRE_POSTGRES=1`` (CI) turns that into a failure. Each PostgreSQL test gets
a schema of its own (search_path set through the connection options, so Alembic's
version table lands there too), dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from honed.store import Store

PG_URL = os.environ.get("HONED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("HONED_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An engine on the test PostgreSQL server; skips (or fails in CI) without one."""
    url = sa.make_url(PG_URL)
    shown = url.render_as_string(hide_password=True)
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = f"PostgreSQL not reachable at {shown}: {str(exc.orig).strip()}"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (HONED_REQUIRE_POSTGRES=1)")
        pytest.skip(f"{reason} (set HONED_TEST_PG_URL to test PostgreSQL)")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_url(pg_admin: sa.Engine) -> Iterator[str]:
    """A store URL whose search_path is a fresh, empty schema."""
    schema = f"honed_test_{secrets.token_hex(6)}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


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
