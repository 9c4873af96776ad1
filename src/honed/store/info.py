"""Plain, immutable views of store rows. Nothing from SQLAlchemy leaks out of the store:
callers get these dataclasses, which are safe to keep after the connection is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class BaseInfo:
    """One version of the base model (v0 is what the user configured)."""

    version: int
    source: str
    description: str
    parent_version: int | None
    lineage: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class TrackInfo:
    """A named line of adapters and the base version it trains on."""

    name: str
    base_version: int
    created_at: datetime


@dataclass(frozen=True)
class DatasetInfo:
    """One ingested JSONL source."""

    id: int
    name: str
    track: str
    file_hash: str
    source_path: str
    stored_path: str
    mode: str
    n_records: int
    n_rejected: int
    reject_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class RunInfo:
    """One run of a job; ``attempt`` counts the trainer processes started for it and is
    the fencing token a writer carries."""

    id: str
    track: str
    base_version: int
    status: str
    config: dict[str, Any]
    dataset_ids: list[int]
    attempt: int
    started_at: datetime
    ended_at: datetime | None
    final_metrics: dict[str, Any] | None
    error: str | None
    adapter_path: str | None


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory of a run, recorded once its files were renamed into place."""

    run_id: str
    step: int
    path: str
    complete: bool
    created_at: datetime
