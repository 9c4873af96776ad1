"""Bulk inserts of record hashes, the only tables that take hundreds of thousands of
rows at once.

SQLite: ``executemany`` in chunks, all in the caller's transaction. PostgreSQL: rows are
streamed with ``COPY`` (several times faster than batched INSERTs); where duplicates
must be ignored they are copied into a temporary table first and moved over with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. Either way the input iterable is
consumed lazily, so memory stays flat for a million records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from honed.store.schema import records, trained_records

# Rows per INSERT batch on SQLite: large enough to amortise statement overhead, small
# enough that memory does not grow with the dataset.
CHUNK_ROWS = 5000

T = TypeVar("T")


def chunked(items: Iterable[T], size: int = CHUNK_ROWS) -> Iterator[list[T]]:
    """Yield lists of at most ``size`` items, consuming ``items`` lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """An INSERT that supports ``on_conflict_do_*`` on the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _copy_rows(conn: sa.Connection, sql: str, rows: Iterable[tuple[Any, ...]]) -> int:
    # The driver connection is the one SQLAlchemy's transaction is open on, so COPY
    # commits or rolls back together with the rest of the transaction.
    count = 0
    driver = conn.connection.driver_connection
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    except dbapi_error as exc:
        # Raw driver errors bypass SQLAlchemy here; wrap them as it would (IntegrityError,
        # OperationalError, ...) so the Store reports them like any other statement's.
        raise sa.exc.DBAPIError.instance(sql, None, exc, dbapi_error, dialect=conn.dialect) from exc
    return count


def insert_records(
    conn: sa.Connection, dataset_id: int, pairs: Iterable[tuple[int, str]]
) -> int:
    """Insert ``(line_no, record_hash)`` pairs of a dataset; return how many."""
    if conn.dialect.name == "postgresql":
        return _copy_rows(
            conn,
            "COPY records (dataset_id, line_no, record_hash) FROM STDIN",
            ((dataset_id, line_no, record_hash) for line_no, record_hash in pairs),
        )
    count = 0
    for chunk in chunked(pairs):
        conn.execute(
            records.insert(),
            [{"dataset_id": dataset_id, "line_no": n, "record_hash": h} for n, h in chunk],
        )
        count += len(chunk)
    return count


def insert_trained(
    conn: sa.Connection, run_id: str, track: str, base_version: int, hashes: Iterable[str]
) -> None:
    """Insert trained-record rows, ignoring ones that exist (or repeat in ``hashes``;
    ON CONFLICT DO NOTHING also skips duplicates within one statement)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE honed_trained_in (record_hash text) ON COMMIT DROP"
        )
        _copy_rows(conn, "COPY honed_trained_in (record_hash) FROM STDIN", ((h,) for h in hashes))
        conn.execute(
            sa.text(
                "INSERT INTO trained_records (track, base_version, record_hash, run_id) "
                "SELECT :track, :base_version, record_hash, :run_id "
                "FROM honed_trained_in ON CONFLICT DO NOTHING"
            ),
            {"track": track, "base_version": base_version, "run_id": run_id},
        )
        conn.exec_driver_sql("DROP TABLE honed_trained_in")
        return
    statement = dialect_insert(conn, trained_records).on_conflict_do_nothing(
        index_elements=["track", "base_version", "record_hash"]
    )
    for chunk in chunked(hashes):
        conn.execute(
            statement,
            [
                {"record_hash": h, "base_version": base_version, "track": track,
                 "run_id": run_id}
                for h in dict.fromkeys(chunk)
            ],
        )
