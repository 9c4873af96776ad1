"""Queries on what honed trains from and on: base versions, tracks, datasets with
their record hashes, and which records a track has already trained on.

Each function takes a connection that is already in a transaction (the Store opens
it); none of them commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from honed.store import schema
from honed.store.bulk import dialect_insert, insert_records, insert_trained
from honed.store.errors import DuplicateDatasetError, NotFoundError, StoreError
from honed.store.info import BaseInfo, DatasetInfo, TrackInfo
from honed.store.schema import (
    DATASET_KINDS,
    DATASET_MODES,
    bases,
    datasets,
    storable_id,
    tracks,
    utc_now,
)

log = logging.getLogger(__name__)

# --- bases -------------------------------------------------------------------------


def add_base(
    conn: sa.Connection,
    source: str,
    description: str = '',
    parent_version: int | None = None,
    lineage: dict[str, Any] | None = None,
) -> int:
    """Insert the next base version (0 for the first) and return it."""
    if conn.dialect.name == "postgresql":
        # Two writers must not both read the same max(version); SQLite's BEGIN IMMEDIATE
        # already serializes them.
        conn.execute(sa.text("LOCK TABLE bases IN SHARE ROW EXCLUSIVE MODE"))
    if parent_version is not None and get_base(conn, parent_version) is None:
        raise StoreError(f"unknown parent base version {parent_version}")
    latest = conn.scalar(sa.select(sa.func.max(bases.c.version)))
    version = 0 if latest is None else latest + 1
    conn.execute(
        bases.insert().values(
            version=version,
            source=source,
            description=description,
            parent_version=parent_version,
            lineage=lineage or {},
            created_at=utc_now(),
        )
    )
    return version


def get_base(conn: sa.Connection, version: int | None = None) -> BaseInfo | None:
    """The base with ``version``, or the latest one when ``version`` is None."""
    query = sa.select(bases)
    if version is None:
        query = query.order_by(bases.c.version.desc()).limit(1)
    else:
        query = query.where(bases.c.version == version)
    row = conn.execute(query).first()
    return BaseInfo.model_validate(row) if row else None


def list_bases(conn: sa.Connection) -> list[BaseInfo]:
    """All base versions, oldest first."""
    rows = conn.execute(sa.select(bases).order_by(bases.c.version))
    return [BaseInfo.model_validate(r) for r in rows]


# --- tracks ------------------------------------------------------------------------


def get_track(conn: sa.Connection, name: str) -> TrackInfo | None:
    """The track called ``name``, if any."""
    row = conn.execute(sa.select(tracks).where(tracks.c.name == name)).first()
    return TrackInfo.model_validate(row) if row else None


def require_track(conn: sa.Connection, name: str) -> TrackInfo:
    """The track called ``name``; a NotFoundError naming it, and the tracks there are,
    when there is none."""
    track = get_track(conn, name)
    if track is None:
        known = ", ".join(t.name for t in list_tracks(conn))
        raise NotFoundError(f"unknown track {name!r}; tracks: {known}")
    return track


def ensure_track(conn: sa.Connection, name: str, base_version: int) -> TrackInfo:
    """Create the track if it does not exist; return it as stored."""
    if not name:
        raise StoreError("a track needs a name")
    if get_base(conn, base_version) is None:
        raise StoreError(f"unknown base version {base_version} for track {name!r}")
    conn.execute(
        dialect_insert(conn, tracks)
        .values(name=name, base_version=base_version, created_at=utc_now())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return require_track(conn, name)


def set_track_base(conn: sa.Connection, name: str, base_version: int) -> TrackInfo:
    """Point an existing track at another base version (after a consolidation)."""
    require_track(conn, name)
    if get_base(conn, base_version) is None:
        raise StoreError(f"unknown base version {base_version} for track {name!r}")
    conn.execute(tracks.update().where(tracks.c.name == name).values(base_version=base_version))
    return require_track(conn, name)


def list_tracks(conn: sa.Connection) -> list[TrackInfo]:
    """All tracks by name."""
    rows = conn.execute(sa.select(tracks).order_by(tracks.c.name))
    return [TrackInfo.model_validate(r) for r in rows]


# --- datasets and records ----------------------------------------------------------


def find_dataset(conn: sa.Connection, track: str, file_hash: str) -> DatasetInfo | None:
    """The dataset of ``track`` ingested from a file with ``file_hash``, if any."""
    row = conn.execute(
        sa.select(datasets).where(datasets.c.track == track, datasets.c.file_hash == file_hash)
    ).first()
    return DatasetInfo.model_validate(row) if row else None


def get_dataset(conn: sa.Connection, dataset_id: int) -> DatasetInfo | None:
    """The dataset with ``dataset_id``, if any."""
    if not storable_id(dataset_id):
        return None
    row = conn.execute(sa.select(datasets).where(datasets.c.id == dataset_id)).first()
    return DatasetInfo.model_validate(row) if row else None


def _duplicate(existing: DatasetInfo) -> DuplicateDatasetError:
    return DuplicateDatasetError(
        f"file {existing.file_hash} was already ingested into track {existing.track!r} "
        f"as dataset {existing.id} ({existing.name!r})",
        existing_id=existing.id,
    )


def add_dataset(
    conn: sa.Connection,
    *,
    name: str,
    track: str,
    file_hash: str,
    source_path: str,
    stored_path: str,
    mode: str,
    n_records: int,
    n_rejected: int,
    reject_path: str | None,
    records_: Iterable[tuple[int, str]],
    kind: str = "sft",
) -> DatasetInfo:
    """Insert a dataset and stream its ``(line_no, record_hash)`` pairs in chunks."""
    if mode not in DATASET_MODES:
        raise StoreError(f"dataset mode {mode!r} is not one of {', '.join(DATASET_MODES)}")
    if kind not in DATASET_KINDS:
        raise StoreError(f"dataset kind {kind!r} is not one of {', '.join(DATASET_KINDS)}")
    require_track(conn, track)
    if (existing := find_dataset(conn, track, file_hash)) is not None:
        raise _duplicate(existing)
    row = dict(
        name=name,
        track=track,
        file_hash=file_hash,
        source_path=source_path,
        stored_path=stored_path,
        mode=mode,
        n_records=n_records,
        n_rejected=n_rejected,
        reject_path=reject_path,
        created_at=utc_now(),
        kind=kind,
    )
    try:
        # A savepoint, so that losing a race to a concurrent ingest of the same file
        # (possible on PostgreSQL) still lets us look up the winner and say so.
        with conn.begin_nested():
            dataset_id = conn.execute(
                datasets.insert().values(**row).returning(datasets.c.id)
            ).scalar_one()
    except sa.exc.IntegrityError:
        if (existing := find_dataset(conn, track, file_hash)) is None:
            raise
        raise _duplicate(existing) from None
    inserted = insert_records(conn, dataset_id, records_)
    if inserted != n_records:
        log.warning(
            "dataset %s (%r): %d record hashes stored but n_records says %d",
            dataset_id, name, inserted, n_records,
        )
    dataset = get_dataset(conn, dataset_id)
    assert dataset is not None
    return dataset


def list_datasets(conn: sa.Connection, track: str | None = None, kind: str | None = None) -> list[DatasetInfo]:
    """Datasets of ``track`` (all tracks when None) and of ``kind`` (all kinds when
    None), oldest first."""
    query = sa.select(datasets).order_by(datasets.c.id)
    if track is not None:
        query = query.where(datasets.c.track == track)
    if kind is not None:
        query = query.where(datasets.c.kind == kind)
    return [DatasetInfo.model_validate(r) for r in conn.execute(query)]


def count_datasets(conn: sa.Connection) -> int:
    """How many datasets the store holds."""
    return conn.execute(sa.select(sa.func.count()).select_from(datasets)).scalar_one()


def dataset_record_hashes(conn: sa.Connection, dataset_id: int) -> list[tuple[int, str]]:
    """``(line_no, record_hash)`` of every record of a dataset, in line order."""
    if get_dataset(conn, dataset_id) is None:
        raise StoreError(f"unknown dataset id {dataset_id}")
    rows = conn.execute(
        sa.select(schema.records.c.line_no, schema.records.c.record_hash)
        .where(schema.records.c.dataset_id == dataset_id)
        .order_by(schema.records.c.line_no)
    )
    return [(line_no, record_hash) for line_no, record_hash in rows]


# --- trained records ---------------------------------------------------------------


def mark_records_trained(
    conn: sa.Connection, run_id: str, track: str, base_version: int, hashes: Iterable[str]
) -> None:
    """Remember that ``run_id`` trained ``track`` on these records; repeats are ignored
    (the first run that trained on a record stays recorded)."""
    require_track(conn, track)
    if get_base(conn, base_version) is None:
        raise StoreError(f"unknown base version {base_version}")
    if conn.scalar(sa.select(schema.runs.c.id).where(schema.runs.c.id == run_id)) is None:
        raise StoreError(f"unknown run id {run_id!r}")
    insert_trained(conn, run_id, track, base_version, hashes)


def trained_record_hashes(conn: sa.Connection, track: str, base_version: int) -> set[str]:
    """Hashes of the records ``track`` has trained on with ``base_version``."""
    rows = conn.execute(
        sa.select(schema.trained_records.c.record_hash).where(
            schema.trained_records.c.track == track,
            schema.trained_records.c.base_version == base_version,
        )
    )
    return set(rows.scalars())
