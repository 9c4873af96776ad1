"""The learning loop over HTTP: where each track stands, its batches and the teacher's
answers, and ``run-now`` (the same calls as ``honed learn``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from honed.server.deps import StoreDep, WorkspaceDep
from honed.store import LearningBatchInfo, TeacherAnswerInfo

router = APIRouter(tags=["learning"])


class RunNowAnswer(BaseModel):
    """The batch assembled and queued now, and what the teacher did first (None: not asked)."""

    batch: LearningBatchInfo
    job: int
    dataset: int
    objective: str  # what the batch trains: sft, dpo or kto
    counts: dict[str, Any]
    teacher: dict[str, Any] | None


@router.get("/api/learn")
def learn_status(workspace: WorkspaceDep, store: StoreDep, track: str | None = None) -> list[dict]:
    """Each track's loop: experiences by judgement, corrections, the teacher's budget, those
    excluded from training (``set_aside``: by a batch, the latest in ``set_aside_recent``
    with their reasons), the objective a batch would train (``objective``, ``objective_why``)
    with the ``pairs`` and ``unpaired`` judgements it could use, and whether the trigger would fire now (or why not)."""
    from honed.learning.trigger import learning_state

    names = [track] if track else [t.name for t in store.list_tracks()]
    return [learning_state(workspace, store, name).summary() for name in names]


@router.get("/api/learn/{track}/batches")
def learn_batches(track: str, store: StoreDep,
                  limit: int = Query(20, ge=1, le=500)) -> list[LearningBatchInfo]:
    """The batches the loop assembled for ``track``, newest first."""
    store.require_track(track)
    return store.list_learning_batches(track, limit)


@router.get("/api/learn/{track}/teacher-answers")
def teacher_answers(track: str, store: StoreDep,
                    status: str | None = Query(None, description="accepted, invalid or failed"),
                    limit: int = Query(50, ge=1, le=1000)) -> list[TeacherAnswerInfo]:
    """What the teacher answered for ``track``'s experiences, newest first, with the
    reason for each one that was not used."""
    store.require_track(track)
    return store.list_teacher_answers(track, status=status, limit=limit)


@router.post("/api/learn/{track}/run-now", status_code=201)
async def run_now(track: str, workspace: WorkspaceDep, store: StoreDep,
                  teacher: bool = Query(True, description="Ask the teacher first.")) -> RunNowAnswer:
    """Assemble a batch from what is ready and queue its job now, whatever the threshold,
    cooldown and window say (409 when nothing is ready or a batch is still queued)."""
    from honed.learning.trigger import run_now as assemble_now

    done, report = await run_in_threadpool(assemble_now, workspace, store, track, teacher=teacher)
    return RunNowAnswer(batch=done.batch, job=done.job_id, dataset=done.dataset_id, objective=done.objective,
                        counts=done.counts, teacher=report.summary() if report else None)
