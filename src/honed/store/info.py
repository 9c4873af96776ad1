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


@dataclass(frozen=True)
class JobInfo:
    """A request to train a track, and where it stands. ``failures`` counts the
    attempts whose trainer crashed; ``progress`` is the running trainer's last report
    (step, total_steps, loss, tokens_per_s, eta_s). ``fence`` is the number of the
    latest claim (the token its writes carry) and ``lease_until`` when that claim runs
    out unless its daemon renews it."""

    id: int
    track: str
    dataset_ids: list[int]
    overrides: dict[str, Any]
    priority: str
    state: str
    source: str
    run_id: str | None
    failures: int
    not_before: datetime | None
    error: str | None
    worker: str | None
    trainer_pid: int | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    fence: int
    lease_until: datetime | None


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log."""

    id: int
    job_id: int
    at: datetime
    kind: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class CommandInfo:
    """A control command and how far it got: pending, taken (by a trainer, at
    ``taken_step``) or done (with its ``outcome``)."""

    id: int
    job_id: int
    command: str
    state: str
    requested_at: datetime
    taken_at: datetime | None
    taken_step: int | None
    done_at: datetime | None
    outcome: str | None


@dataclass(frozen=True)
class WorkerInfo:
    """A daemon that runs, or ran, on this store."""

    id: str
    host: str
    pid: int
    workspace: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    state: dict[str, Any] | None


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter a run produced: where it is, its state, evaluation and gate verdict.
    ``name`` is what a serving engine loads it as (new for every version)."""

    id: int
    name: str
    track: str
    run_id: str | None
    job_id: int | None
    base_version: int
    path: str
    state: str
    evaluation: dict[str, Any] | None
    verdict: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeploymentInfo:
    """One change of a track's deployment pointer; ``adapter_id`` None is the bare base,
    ``previous_adapter_id`` is where a rollback from here goes."""

    id: int
    track: str
    adapter_id: int | None
    previous_adapter_id: int | None
    action: str
    reason: str
    at: datetime
    hooks: list[dict[str, Any]] | None


@dataclass(frozen=True)
class ExperienceInfo:
    """One interaction with a track's model and what was said of it afterwards.
    ``adapter_id`` None means the bare base answered; ``source`` is ``served`` (by
    honed) or ``logged`` (served elsewhere, reported by the application)."""

    id: int
    track: str
    base_version: int
    adapter_id: int | None
    source: str
    messages: list[dict[str, Any]]
    output: str
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    meta: dict[str, Any] | None
    score: float | None
    thumbs: str | None
    corrected_output: str | None
    feedback_at: datetime | None
    trained_run_id: str | None
    created_at: datetime
    auto_score: float | None = None  # what the track's scorer said, when there was no feedback
    batch_id: int | None = None  # the learning batch it last went into


@dataclass(frozen=True)
class TeacherAnswerInfo:
    """One call to the teacher about an experience: ``accepted`` (its output may be
    trained on), ``invalid`` (it failed validation) or ``failed`` (no usable answer)."""

    id: int
    experience_id: int
    track: str
    model: str
    status: str
    output: str | None
    reason: str | None
    score: float | None
    latency_ms: float | None
    created_at: datetime


@dataclass(frozen=True)
class LearningBatchInfo:
    """A dataset the learning loop assembled and the job it queued."""

    id: int
    track: str
    base_version: int
    dataset_id: int | None
    job_id: int | None
    trigger: str
    experience_ids: list[int]
    counts: dict[str, Any]
    provenance_path: str
    trained_run_id: str | None
    created_at: datetime
