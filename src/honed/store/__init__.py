"""The store: every table and query of honed, behind one door, :class:`Store`.

SQLite (WAL) by default, PostgreSQL by URL; the schema is migrated with the Alembic
revisions shipped in ``migrations/`` whenever a store is opened.
"""

from honed.store.errors import (
    DuplicateDatasetError,
    StaleAttemptError,
    StoreError,
    StoreUnavailableError,
)
from honed.store.info import BaseInfo, CheckpointInfo, DatasetInfo, RunInfo, TrackInfo
from honed.store.store import Store

__all__ = [
    "BaseInfo",
    "CheckpointInfo",
    "DatasetInfo",
    "DuplicateDatasetError",
    "RunInfo",
    "StaleAttemptError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "TrackInfo",
]
