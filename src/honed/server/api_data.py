"""Data in and figures out: dataset uploads and listings, runs and their metrics, and the
machine's live system figures."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from honed.daemon.control import ControlError, queue_job
from honed.server.deps import INT64_MAX, Id, StoreDep, WorkspaceDep
from honed.server.security import check_file_name
from honed.store import DatasetInfo, NotFoundError, RunInfo, Store
from honed.store.info import Time
from honed.store.schema import METRIC_KINDS
from honed.store.serialize import plain

router = APIRouter(prefix="/api", tags=["data"])

# Where files lie on the server is not the client's business.
_ServerPath = SkipJsonSchema[str | None]


# --- datasets --------------------------------------------------------------------------


class Dataset(DatasetInfo):
    """A dataset as the API shows it."""

    source_path: _ServerPath = Field(None, exclude=True)
    stored_path: _ServerPath = Field(None, exclude=True)
    reject_path: _ServerPath = Field(None, exclude=True)


class DatasetDetail(Dataset):
    """A dataset with its ingest report (every bad line with its number and reason)."""

    report: dict[str, Any] | None


@router.get("/datasets", response_model=list[Dataset])
def list_datasets(store: StoreDep, track: str | None = None) -> list[DatasetInfo]:
    """Ingested datasets, newest first."""
    return sorted(store.list_datasets(track), key=lambda d: d.id, reverse=True)


class RejectedFile(BaseModel):
    """A file the inbox rejected: its name, when (ISO 8601, to the second) and why."""

    file: str
    at: str
    errors: str


@router.get("/datasets/rejected", response_model=list[RejectedFile])
def rejected_files(workspace: WorkspaceDep) -> list[dict]:
    """Files the inbox rejected, with their error reports (inbox/rejected/)."""
    out = []
    folder = workspace.inbox / "rejected"
    for report in sorted(folder.glob("*.errors.txt"), key=lambda p: p.stat().st_mtime, reverse=True):
        out.append({"file": report.name.removesuffix(".errors.txt"),
                    "at": datetime.fromtimestamp(report.stat().st_mtime, UTC).isoformat(timespec="seconds"),
                    "errors": report.read_text(errors="replace")[:20_000]})
    return out


@router.get("/datasets/{dataset_id}")
def get_dataset(dataset_id: Id, store: StoreDep) -> DatasetDetail:
    """One dataset with its ingest report (every bad line with its number and reason)."""
    dataset = store.get_dataset(dataset_id)
    if dataset is None:
        raise NotFoundError(f"no dataset {dataset_id}")
    report = Path(dataset.stored_path).with_suffix(".report.json")
    return DatasetDetail(**dict(dataset), report=json.loads(report.read_text()) if report.is_file() else None)


@router.post("/datasets", status_code=201)
async def upload_dataset(
    request: Request, workspace: WorkspaceDep, store: StoreDep,
    name: str = Query(description="File name of the upload, e.g. support.jsonl."),
    track: str | None = Query(None, description="Track (default: the workspace's track)."),
    queue: bool = Query(False, description="Also queue a job on it."),
    priority: str = Query("normal", pattern="^(high|normal|low)$"),
) -> dict:
    """Upload a JSONL file as the request body (``curl --data-binary @f.jsonl``). It is
    streamed to disk, kept under datasets/uploads/TRACK/, and added exactly as
    ``honed add`` would: the answer carries the ingest report; a rejected file gets 422."""
    check_file_name(name, "dataset name")
    track = store.require_track(track or workspace.settings.track).name
    limit = int(workspace.settings.server.upload_max_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, _too_big(declared, limit))
    path = await _receive(request, workspace.datasets_dir / "uploads" / track, name, limit)
    try:
        added = await run_in_threadpool(_add, workspace, store, path, track)
    except ValueError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None
    out = added.summary()
    for key in ("source", "report", "rejected_lines_file"):  # server paths stay on the server
        out.pop(key, None)
    out["message"] = added.describe().replace(str(path), name)
    if not added.accepted:
        return JSONResponse({"error": out["message"], **out}, status_code=422)
    out["dataset"] = Dataset.model_validate(added.dataset).model_dump(mode="json")
    if queue:
        try:
            job, _ = await run_in_threadpool(queue_job, workspace, store, [str(added.dataset.id)],
                                             track=track, priority=priority, source="upload")
        except ControlError as exc:
            raise HTTPException(400, str(exc)) from None
        out["job"] = plain(job)
    return out


def _too_big(size, limit: int) -> str:
    return (f"upload of {int(size):,} bytes is over the limit of {limit:,} bytes (server.upload_max_mb); "
            "split the file or raise the limit")


async def _receive(request: Request, folder: Path, name: str, limit: int) -> Path:
    """Stream the body into ``folder/<time>-<random>/name``; nothing stays behind when the
    body is too big or the client goes away."""
    target_dir = folder / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    target_dir.mkdir(parents=True)
    partial = target_dir / f".{name}.part"
    size = 0
    try:
        with open(partial, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, _too_big(size, limit) + " (the upload was stopped there)")
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if size == 0:
            raise HTTPException(400, f"{name}: the request body is empty; send the file's bytes as the body")
        final = target_dir / name
        partial.rename(final)
        return final
    except BaseException:
        shutil.rmtree(target_dir, ignore_errors=True)
        raise


def _add(workspace, store: Store, path: Path, track: str):
    from honed.data.datasets import add_dataset_file

    return add_dataset_file(workspace, store, path, track=track, mode=workspace.settings.ingest.mode)


# --- runs and metrics -------------------------------------------------------------------


class Run(RunInfo):
    """A run as the API shows it."""

    adapter_path: _ServerPath = Field(None, exclude=True)


class RunCheckpoint(BaseModel):
    step: int
    complete: bool
    created_at: Time


class RunDetail(Run):
    """A run with its checkpoints and, once written, its manifest."""

    checkpoints: list[RunCheckpoint]
    manifest: dict[str, Any] | None


class MetricsPage(BaseModel):
    """Metric rows by step (``{"step": n, "loss": ..., ...}``, non-finite values as
    "nan", "inf", "-inf"); ``next_after_step`` is null on the last page."""

    run: str
    kind: str
    rows: list[dict[str, Any]]
    next_after_step: int | None


@router.get("/runs", response_model=list[Run])
def list_runs(store: StoreDep, track: str | None = None,
              limit: int = Query(50, ge=1, le=1000)) -> list[RunInfo]:
    """Runs, newest first."""
    return store.list_runs(track, limit=limit)


@router.get("/runs/{run_id}")
def get_run(run_id: str, workspace: WorkspaceDep, store: StoreDep) -> RunDetail:
    """One run with its checkpoints and, once written, its manifest."""
    run = store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run {run_id!r}")
    manifest = workspace.runs_dir / run_id / "manifest.json"
    return RunDetail(
        **dict(run), checkpoints=[dict(c) for c in store.list_checkpoints(run_id)],
        manifest=json.loads(manifest.read_text()) if run_id.isidentifier() and manifest.is_file() else None)


@router.get("/runs/{run_id}/metrics", response_model=MetricsPage)
def run_metrics(run_id: str, store: StoreDep,
                kind: str = Query("train", description=f"One of {', '.join(METRIC_KINDS)}."),
                after_step: int = Query(-1, ge=-1, le=INT64_MAX,
                                        description="Only steps above this one (page with next_after_step)."),
                limit: int = Query(5000, ge=1, le=50_000)) -> dict:
    """A run's metrics by step (the curve after resumes: each step from its latest
    attempt), in pages: ``next_after_step`` is null on the last page."""
    if kind not in METRIC_KINDS:
        raise HTTPException(400, f"kind {kind!r}: allowed: {', '.join(METRIC_KINDS)}")
    rows = store.get_metrics(run_id, kind, after_step=after_step, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"run": run_id, "kind": kind, "rows": plain(rows),
            "next_after_step": rows[-1]["step"] if more else None}


# --- system -------------------------------------------------------------------------


class SystemFigures(BaseModel):
    """CPU and memory of the machine and this process, and one entry per GPU."""

    system: dict[str, Any]
    accelerators: list[dict[str, Any]]


@router.get("/system", response_model=SystemFigures)
def system() -> dict:
    """This machine now: CPU, RAM, and each GPU where NVML sees one."""
    from honed.telemetry.system import accelerator_stats, system_stats

    return {"system": system_stats(), "accelerators": accelerator_stats()}
