"""The store: every table and query of honed, behind one door, :class:`Store`.

SQLite (WAL) by default, PostgreSQL by URL; the schema is migrated with the Alembic
revisions shipped in ``migrations/`` whenever a store is opened.
"""

from honed.store.errors import (
    DuplicateDatasetError,
    JobStateError,
    NotFoundError,
    StaleAttemptError,
    StaleClaimError,
    StoreError,
    StoreUnavailableError,
)
from honed.store.info import (
    AdapterInfo,
    BaseInfo,
    CheckpointInfo,
    CommandInfo,
    DatasetInfo,
    DeploymentInfo,
    ExperienceInfo,
    JobEvent,
    JobInfo,
    LearningBatchInfo,
    RunInfo,
    TeacherAnswerInfo,
    TrackInfo,
    WorkerInfo,
)
from honed.store.store import Store

__all__ = [
    "ExperienceInfo",
    "LearningBatchInfo",
    "TeacherAnswerInfo",
    "NotFoundError",
    "AdapterInfo",
    "DeploymentInfo",
    "BaseInfo",
    "CheckpointInfo",
    "DatasetInfo",
    "CommandInfo",
    "DuplicateDatasetError",
    "JobEvent",
    "JobInfo",
    "JobStateError",
    "RunInfo",
    "StaleAttemptError",
    "StaleClaimError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "TrackInfo",
    "WorkerInfo",
]
