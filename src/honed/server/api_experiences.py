"""Experiences over HTTP: applications that serve the model elsewhere log what it was
asked and answered (``POST /v1/experiences``), and anyone adds feedback later by the
experience's id (``POST /v1/experiences/{id}/feedback``), keeps one out of training
(``.../exclude``, ``.../include``) or deletes it (``DELETE /v1/experiences/{id}``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from honed.data.formats import text_problem
from honed.server.deps import INT64_MAX, Id, Int64, RowId, StoreDep, WorkspaceDep
from honed.store import ExperienceInfo
from honed.store.experiences import MAX_REASON_CHARS
from honed.store.serialize import deleted_experience

router = APIRouter(tags=["experiences"])


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str

    @field_validator("content")
    @classmethod
    def _keepable(cls, content: str) -> str:
        """Refused before anything is generated or stored: text no training file can hold."""
        problem = text_problem(content)
        if problem:
            raise ValueError(problem)
        return content


class LoggedExperience(BaseModel):
    """An interaction served elsewhere."""

    track: str | None = Field(None, description="Track whose model answered (default: the workspace's track).")
    messages: list[ChatMessage] = Field(min_length=1, description="What the model was given.")
    output: str = Field(description="What it answered.")
    adapter_id: RowId | None = Field(None, description="The adapter that answered, if known (default: the bare base).")
    latency_ms: float | None = Field(None, ge=0)
    prompt_tokens: Int64 | None = Field(None, ge=0)
    completion_tokens: Int64 | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = Field(None, description="Anything the application wants kept with it.")


class Feedback(BaseModel):
    """What was said of an answer; give at least one."""

    score: float | None = Field(None, ge=0, le=1, description="0 (bad) to 1 (good).")
    thumbs: Literal["up", "down"] | None = None
    corrected_output: str | None = Field(None, description="What the answer should have been.")


@router.post("/v1/experiences", status_code=201)
def log_experience(body: LoggedExperience, workspace: WorkspaceDep, store: StoreDep) -> ExperienceInfo:
    """Log an interaction served elsewhere; answers with its id (for feedback later)."""
    experience = store.add_experience(
        track=body.track or workspace.settings.track, messages=[m.model_dump() for m in body.messages],
        output=body.output, adapter_id=body.adapter_id, source="logged", latency_ms=body.latency_ms,
        prompt_tokens=body.prompt_tokens, completion_tokens=body.completion_tokens, meta=body.metadata,
        max_chars=workspace.settings.ingest.max_record_chars)
    return experience


@router.get("/v1/experiences/{experience_id}")
def get_experience(experience_id: Id, store: StoreDep) -> ExperienceInfo:
    """One experience with its feedback."""
    return store.get_experience(experience_id)


@router.post("/v1/experiences/{experience_id}/feedback")
def give_feedback(experience_id: Id, body: Feedback, workspace: WorkspaceDep, store: StoreDep) -> ExperienceInfo:
    """Attach a score, thumbs up/down and/or a corrected output to an experience."""
    return store.add_feedback(experience_id, score=body.score, thumbs=body.thumbs,
                              corrected_output=body.corrected_output,
                              max_chars=workspace.settings.ingest.max_record_chars)


@router.get("/api/experiences")
def list_experiences(store: StoreDep, track: str | None = None,
                     untrained: bool = Query(False, description="Only those no successful run trained on."),
                     before_id: int | None = Query(None, ge=1, le=INT64_MAX,
                                                   description="Page back: only ids below this one."),
                     limit: int = Query(100, ge=1, le=1000),
                     excluded: bool | None = Query(None, description="true: only those excluded from training "
                                                   "(with their reason); false: only the others."),
                     set_aside: bool = Query(False, description="Only those a batch set aside (they cannot "
                                             "be a training line).")) -> list[ExperienceInfo]:
    """Experiences, newest first; ``excluded_reason`` says why one is kept out of training."""
    return store.list_experiences(track, untrained_only=untrained, limit=limit, before_id=before_id,
                                  excluded=excluded, set_aside=set_aside)


class Exclusion(BaseModel):
    """Why an experience must not be trained on."""

    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS,
                        description="Kept and listed with the experience.")


class DeletedExperience(BaseModel):
    """An experience deleted: the run that had trained on it and the batch that held it
    keep their records."""

    deleted: int
    track: str
    trained_run_id: str | None
    batch_id: int | None


@router.post("/v1/experiences/{experience_id}/exclude")
def exclude_experience(experience_id: Id, body: Exclusion, store: StoreDep) -> ExperienceInfo:
    """Keep an experience out of every training batch from now on (one already assembled
    keeps it); it stays listed with the reason. 404 for an unknown id."""
    return store.exclude_experience(experience_id, body.reason)


@router.post("/v1/experiences/{experience_id}/include")
def include_experience(experience_id: Id, store: StoreDep) -> ExperienceInfo:
    """Offer an excluded or set-aside experience to training again. 404 for an unknown id."""
    return store.include_experience(experience_id)


@router.delete("/v1/experiences/{experience_id}")
def delete_experience(experience_id: Id, store: StoreDep) -> DeletedExperience:
    """Delete an experience with its feedback and the teacher's answers about it. Allowed
    whatever its state: batches already assembled keep their record of it, and an adapter
    trained on it keeps what it learned. 404 for an unknown id (nothing is deleted)."""
    return DeletedExperience(**deleted_experience(store.delete_experience(experience_id)))
