"""Plain, immutable views of store rows. Nothing from SQLAlchemy leaks out of the store:
callers get these frozen pydantic models, built from a row by ``XInfo.model_validate(row)``
and safe to keep after the connection is gone.

Their JSON form (``model_dump(mode="json")``, what the HTTP API sends and what
:func:`honed.store.serialize.plain` returns) has times in ISO 8601 to the millisecond and
non-finite floats as "nan", "inf" and "-inf", since JSON has no NaN.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from honed.data.kinds import Kind
from honed.states import (
    AdapterState,
    Command,
    CommandState,
    DeployAction,
    JobState,
    Priority,
    RunStatus,
)
from honed.store.schema import decode_non_finite
from honed.store.serialize import plain

_VIEW = ConfigDict(from_attributes=True, frozen=True)


def _as_plain(kind: Any) -> PlainSerializer:
    """In JSON, a value goes out as :func:`plain` writes it (the schema says ``kind``)."""
    return PlainSerializer(plain, return_type=kind, when_used="json")


Time = Annotated[datetime, _as_plain(str), WithJsonSchema({"type": "string", "format": "date-time"})]
Number = Annotated[float, _as_plain(float | str)]
# JSON columns. A NOT NULL one may still hold JSON null; a nullable one reads empty as None.
JSONObject = Annotated[dict[str, Any], BeforeValidator(lambda v: v or {}), _as_plain(dict[str, Any])]
JSONObjectOrNone = Annotated[dict[str, Any] | None, BeforeValidator(lambda v: v or None),
                             _as_plain(dict[str, Any] | None)]
JSONList = Annotated[list[dict[str, Any]], _as_plain(list[dict[str, Any]])]
JSONListOrNone = Annotated[list[dict[str, Any]] | None, BeforeValidator(lambda v: v or None),
                           _as_plain(list[dict[str, Any]] | None)]
Ids = Annotated[list[int], BeforeValidator(lambda v: v or [])]


def adapter_name(track: str, adapter_id: int) -> str:
    """The name a serving engine loads an adapter under: new for every version, so a
    server never reuses cached prefixes of an older one (e.g. ``main-a7``)."""
    return f"{track}-a{adapter_id}"


class BaseInfo(BaseModel):
    """One version of the base model (v0 is what the user configured)."""

    model_config = _VIEW

    version: int
    source: str
    description: str
    parent_version: int | None
    lineage: JSONObject
    created_at: Time


class TrackInfo(BaseModel):
    """A named line of adapters and the base version it trains on."""

    model_config = _VIEW

    name: str
    base_version: int
    created_at: Time


class DatasetInfo(BaseModel):
    """One ingested JSONL source; ``kind`` is what every record of it holds."""

    model_config = _VIEW

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
    created_at: Time
    kind: Kind  # what every record holds: sft, preference (pairs) or unpaired (labelled)


class RunInfo(BaseModel):
    """One run of a job; ``attempt`` counts the trainer processes started for it and is
    the fencing token a writer carries."""

    model_config = _VIEW

    id: str
    track: str
    base_version: int
    status: RunStatus
    config: JSONObject
    dataset_ids: Ids
    attempt: int
    started_at: Time
    ended_at: Time | None
    final_metrics: JSONObjectOrNone
    error: str | None
    adapter_path: str | None

    @field_validator("final_metrics", mode="before")
    @classmethod
    def _non_finite(cls, value: Any) -> Any:
        """The store keeps a diverged loss as "NaN"; the view gives the float back."""
        return decode_non_finite(value)


class CheckpointInfo(BaseModel):
    """A checkpoint directory of a run, recorded once its files were renamed into place."""

    model_config = _VIEW

    run_id: str
    step: int
    path: str
    complete: bool
    created_at: Time


class JobInfo(BaseModel):
    """A request to train a track, and where it stands. ``failures`` counts the
    attempts whose trainer crashed; ``progress`` is the running trainer's last report
    (step, total_steps, loss, tokens_per_s, eta_s). ``fence`` is the number of the
    latest claim (the token its writes carry) and ``lease_until`` when that claim runs
    out unless its daemon renews it."""

    model_config = _VIEW

    id: int
    track: str
    dataset_ids: Ids
    overrides: JSONObject
    priority: Priority
    state: JobState
    source: str
    run_id: str | None
    failures: int
    not_before: Time | None
    error: str | None
    worker: str | None
    trainer_pid: int | None
    heartbeat_at: Time | None
    progress: JSONObjectOrNone
    created_at: Time
    updated_at: Time
    started_at: Time | None
    ended_at: Time | None
    fence: int
    lease_until: Time | None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_name(cls, value: Any) -> Any:
        """The column keeps the queue's sort key (``Priority.rank``), the view the name."""
        return list(Priority)[value] if isinstance(value, int) else value


class JobEvent(BaseModel):
    """One entry of a job's event log."""

    model_config = _VIEW

    id: int
    job_id: int
    at: Time
    kind: str
    message: str
    data: JSONObjectOrNone


class CommandInfo(BaseModel):
    """A control command and how far it got: pending, taken (by a trainer, at
    ``taken_step``) or done (with its ``outcome``)."""

    model_config = _VIEW

    id: int
    job_id: int
    command: Command
    state: CommandState
    requested_at: Time
    taken_at: Time | None
    taken_step: int | None
    done_at: Time | None
    outcome: str | None


class WorkerInfo(BaseModel):
    """A daemon that runs, or ran, on this store."""

    model_config = _VIEW

    id: str
    host: str
    pid: int
    workspace: str
    started_at: Time
    heartbeat_at: Time
    stopped_at: Time | None
    state: JSONObjectOrNone


class AdapterInfo(BaseModel):
    """An adapter a run produced: where it is, its state, evaluation and gate verdict.
    ``name`` is what a serving engine loads it as (new for every version)."""

    model_config = _VIEW

    id: int
    name: str
    track: str
    run_id: str | None
    job_id: int | None
    base_version: int
    path: str
    state: AdapterState
    evaluation: JSONObjectOrNone
    verdict: JSONObjectOrNone
    created_at: Time
    updated_at: Time

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """A row has no name column: the name follows from the track and the id."""
        if isinstance(data, sa.Row):
            return {**data._mapping, "name": adapter_name(data.track, data.id)}
        return data


class DeploymentInfo(BaseModel):
    """One change of a track's deployment pointer; ``adapter_id`` None is the bare base,
    ``previous_adapter_id`` is where a rollback from here goes."""

    model_config = _VIEW

    id: int
    track: str
    adapter_id: int | None
    previous_adapter_id: int | None
    action: DeployAction
    reason: str
    at: Time
    hooks: JSONListOrNone


class ExperienceInfo(BaseModel):
    """One interaction with a track's model and what was said of it afterwards.
    ``adapter_id`` None means the bare base answered; ``source`` is ``served`` (by
    honed) or ``logged`` (served elsewhere, reported by the application)."""

    model_config = _VIEW

    id: int
    track: str
    base_version: int
    adapter_id: int | None
    source: str
    messages: JSONList
    output: str
    latency_ms: Number | None
    prompt_tokens: int | None
    completion_tokens: int | None
    meta: JSONObjectOrNone
    score: Number | None
    thumbs: str | None
    corrected_output: str | None
    feedback_at: Time | None
    trained_run_id: str | None
    created_at: Time
    auto_score: Number | None = None  # what the track's scorer said, when there was no feedback
    batch_id: int | None = None  # the learning batch it last went into
    # Set: never put into a training batch (by hand, or "set aside: ..." by a batch).
    excluded_reason: str | None = None
    excluded_at: Time | None = None


class TeacherAnswerInfo(BaseModel):
    """One call to the teacher about an experience: ``accepted`` (its output may be
    trained on), ``invalid`` (it failed validation) or ``failed`` (no usable answer)."""

    model_config = _VIEW

    id: int
    experience_id: int
    track: str
    model: str
    status: str
    output: str | None
    reason: str | None
    score: Number | None
    latency_ms: Number | None
    created_at: Time


class LearningBatchInfo(BaseModel):
    """A dataset the learning loop assembled and the job it queued."""

    model_config = _VIEW

    id: int
    track: str
    base_version: int
    dataset_id: int | None
    job_id: int | None
    trigger: str
    experience_ids: list[int]
    counts: JSONObject
    provenance_path: str
    trained_run_id: str | None
    created_at: Time
