"""Bring a store's schema to the newest revision, from code, without an alembic.ini.

The revisions ship inside the package (``migrations/``). Upgrading runs in one write
transaction on a connection the caller provides: on SQLite that transaction begins
with ``BEGIN IMMEDIATE`` and on PostgreSQL it takes an advisory lock first, so several
processes opening the same store at once migrate it exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from honed.store.errors import StoreError

if TYPE_CHECKING:  # Alembic (with the template engine it brings) is imported where it is used
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Any constant shared by every honed process; it only has to differ from other
# applications' advisory locks on the same PostgreSQL database.
_PG_MIGRATION_LOCK = 0x686F6E6564  # "honed"
_VERSION_TABLE = "alembic_version"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations; with ``connection`` the
    migrations run on it (inside its transaction)."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%', which may appear in an install path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of honed knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "honed ships without migrations"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database is at, or None for an empty database."""
    # Read the version table directly: MigrationContext would log at INFO on every open.
    if not sa.inspect(connection).has_table(_VERSION_TABLE):
        return None
    heads = connection.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars()
    revisions = list(heads)
    if len(revisions) > 1:
        raise StoreError(f"the store has several schema heads {revisions}; it needs repair")
    return revisions[0] if revisions else None


def upgrade_to_head(connection: sa.Connection) -> None:
    """Upgrade the database behind ``connection`` to the head revision.

    ``connection`` must already be in a write transaction; the caller commits. Nothing
    is done when the database is at head already, and a database written by a newer
    honed (a revision this one does not know) is refused rather than touched.
    """
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    head = head_revision()
    current = current_revision(connection)
    if current == head:
        return
    script = ScriptDirectory.from_config(alembic_config())
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            raise StoreError(
                f"the store is at schema revision {current!r}, which this honed does not "
                f"know (newest known: {head!r}); upgrade honed to open it"
            ) from None
    log.info("migrating store schema from %s to %s", current or "empty", head)
    command.upgrade(alembic_config(connection), "head")
