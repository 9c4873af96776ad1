"""What people do to the queue, as library calls: queue jobs, control them, and wait
until a command has taken effect. The CLI (and later the HTTP API and MCP tools) are
thin layers over these functions. Nothing here imports torch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from honed.config import SettingsError, load_settings
from honed.daemon.lock import daemon_running
from honed.store import CommandInfo, JobInfo, NotFoundError, StoreError


class ControlError(Exception):
    """A queue or control request that cannot be carried out; the message says why."""


@dataclass
class ControlResult:
    """The answer to a control command."""

    job: JobInfo
    command: CommandInfo
    reached: bool  # the job is in the state the command asked for
    message: str


def queue_job(workspace, store, datasets: list[str], *, track: str, priority: str = "normal",
              overrides: dict | None = None, source: str = "cli") -> tuple[JobInfo, list]:
    """Queue a job on ``datasets`` (dataset ids, or JSONL files that are added first).

    Overrides are checked now, against the workspace's settings, so a wrong value is
    refused at the door rather than failing the job later. Returns the job and the
    outcome of adding each file (AddedDataset), for reporting."""
    from honed.data.datasets import add_dataset_file
    from honed.data.kinds import datasets_problem

    try:
        settings = load_settings(workspace.root, overrides or {})
    except SettingsError as exc:
        raise ControlError(str(exc)) from None
    if store.get_track(track) is None:
        raise ControlError(f"unknown track '{track}'; tracks: {', '.join(t.name for t in store.list_tracks())}")
    ids, added = [], []
    for item in datasets:
        if item.isdigit() and not Path(item).exists():
            dataset = store.get_dataset(int(item))
            if dataset is None:
                raise ControlError(f"no dataset {item}; 'honed datasets' lists them")
            ids.append(dataset.id)
            continue
        try:
            result = add_dataset_file(workspace, store, Path(item), track=track,
                                      mode=workspace.settings.ingest.mode)
        except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
            raise ControlError(f"{item}: {exc}") from None
        added.append(result)
        if not result.accepted:
            raise ControlError(result.describe())
        ids.append(result.dataset.id)
    # Refused at the door: an objective that cannot learn from a dataset's kind (pairs under SFT, ...).
    problem = datasets_problem(settings.train.objective, [store.get_dataset(i) for i in ids])
    if problem:
        raise ControlError(problem)
    try:
        job = store.create_job(track=track, dataset_ids=ids, overrides=overrides or {}, priority=priority,
                               source=source)
    except StoreError as exc:
        raise ControlError(str(exc)) from None
    return job, added


def remove_job(store, job_id: int) -> JobInfo:
    """Take a job that is not running out of the queue; it is kept as cancelled."""
    info = store.get_job(job_id)
    if info.state in ("running", "evaluating"):
        raise ControlError(f"job {info.id} is {info.state}; cancel it instead (honed cancel {info.id})")
    try:
        store.request_command(info.id, "cancel")
    except StoreError as exc:
        raise ControlError(str(exc)) from None
    return store.get_job(info.id)


def default_job(store, command: str) -> int:
    """The job a command without a job id means: the running one; for resume, the one
    job that is paused or skipped."""
    states = ("paused", "skipped") if command == "resume" else ("running", "evaluating")
    candidates = store.list_jobs(states=states)
    what = " or ".join(states[:2])
    if not candidates:
        raise ControlError(f"no job is {what}; name one (honed queue list shows them)")
    if len(candidates) > 1:
        raise ControlError(f"{len(candidates)} jobs are {what} ({', '.join(str(j.id) for j in candidates)}); "
                           "name one")
    return candidates[0].id


def control_job(workspace, store, command: str, job_id: int | None = None, *,
                wait_s: float = 300.0, poll_s: float = 0.2) -> ControlResult:
    """Apply ``command`` (pause, resume, stop, skip, cancel) to a job and wait up to
    ``wait_s`` until the job has reached its new state. A running job's trainer acts at
    its next step boundary; when no daemon runs, the command waits for the next one."""
    job_id = default_job(store, command) if job_id is None else job_id
    try:
        command_info = store.request_command(job_id, command)
    except NotFoundError:
        raise
    except StoreError as exc:
        raise ControlError(str(exc)) from None
    deadline = time.monotonic() + wait_s
    while command_info.state != "done":
        if not daemon_running(workspace.root):
            job = store.get_job(job_id)
            return ControlResult(job, command_info, False,
                                 f"{command} recorded for job {job_id} ({job.state}); no daemon runs this "
                                 "workspace, so it takes effect when one starts ('honed daemon')")
        if time.monotonic() > deadline:
            job = store.get_job(job_id)
            return ControlResult(job, command_info, False,
                                 f"{command} recorded for job {job_id}; after {wait_s:g}s it is still {job.state} "
                                 f"(the command is {command_info.state}; 'honed events {job_id}' shows progress)")
        time.sleep(poll_s)
        command_info = store.get_command(command_info.id)
    job = store.get_job(job_id)
    reached = job.state in _targets(command)
    message = f"job {job_id}: {job.state}"
    if command_info.taken_step is not None:
        message += f" (the trainer acted at step {command_info.taken_step})"
    if not reached and command_info.outcome:
        message = f"{command_info.outcome}"
    return ControlResult(job, command_info, reached, message)


def _targets(command: str) -> tuple[str, ...]:
    """The states that mean ``command`` took effect (a resumed job may already run)."""
    return {"pause": ("paused",), "resume": ("queued", "running"), "skip": ("skipped",),
            "cancel": ("cancelled",), "stop": ("succeeded", "evaluating")}[command]
