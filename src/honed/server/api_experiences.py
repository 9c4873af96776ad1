"""Experiences over HTTP: applications that serve the model elsewhere log what it was
asked and answered (``POST /v1/experiences``), and anyone adds feedback later by the
experience's id (``POST /v1/experiences/{id}/feedback``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from honed.data.formats import text_problem
from honed.server.deps import INT64_MAX, Id, Int64, RowId, StoreDep, WorkspaceDep
from honed.store import ExperienceInfo

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
                     limit: int = Query(100, ge=1, le=1000)) -> list[ExperienceInfo]:
    """Experiences, newest first."""
    return store.list_experiences(track, untrained_only=untrained, limit=limit, before_id=before_id)
