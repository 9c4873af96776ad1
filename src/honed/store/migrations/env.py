"""Alembic environment of honed's store.

honed drives Alembic from code (:mod:`honed.store.migrate`), handing over a connection
that is already inside a write transaction; the migrations run in that transaction, so
concurrent openers serialize and a failed migration leaves the schema untouched.
Running ``alembic`` by hand (to write a new revision) works too: give the database
with ``-x url=...`` and ``script_location`` pointing at this directory.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from honed.store.schema import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters tables by copying them; batch mode does that for later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()
