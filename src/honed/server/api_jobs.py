"""Status, the job queue and control: ``/api/status``, ``/api/jobs...``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from honed.daemon.control import ControlError, control_job, queue_job, remove_job
from honed.server.api_registry import Adapter
from honed.server.deps import INT64_MAX, Id, RowId, StoreDep, WorkspaceDep
from honed.states import Command, CommandState, JobState, Priority, allowed
from honed.store import CheckpointInfo, JobEvent, JobInfo
from honed.store.schema import JOB_STATES
from honed.store.serialize import control_result

router = APIRouter(prefix="/api", tags=["jobs"])



class Status(BaseModel):
    """What ``honed status`` shows; ``daemon`` says ``up`` and, while it is, its pid,
    host, activity and heartbeat, else when it was last seen."""

    workspace: str
    store: str
    daemon: dict[str, Any]
    stop_file: bool
    running: list[dict[str, Any]]
    queue: list[dict[str, Any]]
    base: dict[str, Any] | None
    tracks: list[dict[str, Any]]
    datasets: int
    runs: list[dict[str, Any]]


class Checkpoint(CheckpointInfo):
    """A checkpoint as the API shows it: where its files lie on the server stays there."""

    path: SkipJsonSchema[str | None] = Field(None, exclude=True)


class JobDetail(JobInfo):
    """A job with its run's checkpoints and the adapters it produced."""

    checkpoints: list[Checkpoint]
    adapters: list[Adapter]


class ControlAnswer(BaseModel):
    """Where a control command got: ``reached`` once the job is in the state asked for."""

    job: JobInfo
    command: Command
    reached: bool
    command_state: CommandState
    taken_step: int | None
    message: str


@router.get("/status", response_model=Status)
async def get_status(request: Request) -> dict:
    """The daemon (up or down), the running job with its progress, the queue, tracks (at
    most ``server.status_cache_s`` old; a change made through this server shows at once)."""
    cache = request.app.state.status_cache
    return cache.fresh() or await run_in_threadpool(cache.get)


@router.get("/jobs")
def list_jobs(store: StoreDep, state: list[str] | None = Query(None, description="Only jobs in these states."),
              limit: int = Query(100, ge=1, le=1000)) -> list[JobInfo]:
    """Jobs, newest first."""
    for s in state or ():
        if s not in JOB_STATES:
            raise HTTPException(400, f"state {s!r}: allowed: {allowed(JobState)}")
    jobs = store.list_jobs(states=tuple(state) if state else None)
    jobs.sort(key=lambda j: j.id, reverse=True)
    return jobs[:limit]


class NewJob(BaseModel):
    """A job to queue: datasets already added (ids), the track, priority and overrides."""

    datasets: list[RowId] = Field(min_length=1, description="Dataset ids ('GET /api/datasets' lists them).")
    track: str | None = Field(None, description="Track to train (default: the workspace's track).")
    priority: Priority = Priority.NORMAL
    overrides: dict = Field(default_factory=dict, description='Settings for this job, e.g. {"train": {"lr": 1e-3}}.')


@router.post("/jobs", status_code=201)
def create_job(new: NewJob, workspace: WorkspaceDep, store: StoreDep) -> JobInfo:
    """Queue a job; the daemon picks it up by priority, then age."""
    try:
        job, _ = queue_job(workspace, store, [str(d) for d in new.datasets],
                           track=new.track or workspace.settings.track, priority=new.priority,
                           overrides=new.overrides, source="api")
    except ControlError as exc:
        raise HTTPException(400, str(exc)) from None
    return job


@router.get("/jobs/{job_id}")
def get_job(job_id: Id, store: StoreDep) -> JobDetail:
    """One job in full, with its run's checkpoints and the adapter it produced."""
    job = store.get_job(job_id)
    # The daemon names the run when it claims the job, a moment before the trainer records it.
    recorded = job.run_id is not None and store.get_run(job.run_id) is not None
    return JobDetail(**dict(job), checkpoints=[dict(c) for c in store.list_checkpoints(job.run_id)] if recorded else [],
                     adapters=[dict(a) for a in store.list_adapters(job.track) if a.job_id == job.id])


@router.get("/jobs/{job_id}/events")
def job_events(job_id: Id, store: StoreDep,
               after: int = Query(0, ge=0, le=INT64_MAX, description="Only events after this id."),
               limit: int = Query(500, ge=1, le=5000)) -> list[JobEvent]:
    """A job's event log, oldest first; page with ``after`` = the last id you have."""
    store.get_job(job_id)
    return store.job_events(job_id, after_id=after, limit=limit)


class PriorityChange(BaseModel):
    priority: Priority


@router.patch("/jobs/{job_id}")
def move_job(job_id: Id, change: PriorityChange, store: StoreDep) -> JobInfo:
    """Change a waiting job's priority."""
    return store.set_job_priority(job_id, change.priority)


@router.delete("/jobs/{job_id}")
def delete_job(job_id: Id, store: StoreDep) -> JobInfo:
    """Take a job that is not running out of the queue (it is kept as cancelled)."""
    return remove_job(store, job_id)


@router.post("/jobs/{job_id}/{command}", response_model=ControlAnswer)
async def control(job_id: Id, command: Command, workspace: WorkspaceDep, store: StoreDep, response: Response,
                  wait_s: float = Query(30.0, ge=0, le=600, description="How long to wait for the new state.")) -> dict:
    """pause, resume, stop, skip or cancel a job. Answers once the job reached its new
    state (200), or with 202 when it has not yet (the command stays recorded)."""
    result = await run_in_threadpool(control_job, workspace, store, command, job_id, wait_s=wait_s)
    if not result.reached:
        response.status_code = 202 if result.command.state != "done" else 409
    return control_result(result)
