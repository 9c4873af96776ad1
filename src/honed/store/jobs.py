"""Queries on the queue: jobs, their events, control commands, and the workers (daemons)
that run them. The job state machine lives here; every change of a job's state is one
transaction that also appends the event saying why.

Several daemons may share one store. A daemon *claims* a job: the claim increments the
job's ``fence`` (its fencing token) and leases the job to the daemon until
``lease_until``, which the daemon keeps renewing. A job whose lease ran out is taken
over by the next daemon that claims (its old daemon is presumed dead). Every write made
on behalf of a claim (progress, evaluation, events, commands taken, the end of the
attempt) may carry its fence, and is refused with :class:`StaleClaimError` once the
job no longer belongs to that claim, so a daemon that was only asleep cannot undo what
the new owner did. Writes by people (control commands) carry no fence. Leases are
measured on the database's clock (see :func:`store_now`).

Each function takes a connection that is already in a transaction; none commits.

Long because the job state machine is kept in one module: every transition and the
fencing that guards it can be read together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from honed.store.catalog import get_dataset, require_track
from honed.store.errors import JobStateError, NotFoundError, StaleClaimError, StoreError
from honed.store.info import CommandInfo, JobEvent, JobInfo, WorkerInfo
from honed.store.runs import supersede_attempt
from honed.store.schema import (
    JOB_COMMANDS,
    JOB_FINAL_STATES,
    JOB_PRIORITIES,
    JOB_STATES,
    encode_non_finite,
    job_commands,
    job_events,
    jobs,
    runs,
    storable_id,
    utc_now,
    workers,
)

# States a job may be put into by a control command while no trainer holds it.
_DIRECT = {
    "pause": ({"queued"}, "paused"),
    "skip": ({"queued", "paused"}, "skipped"),
    "cancel": ({"queued", "paused", "skipped"}, "cancelled"),
}


def priority_value(priority: str) -> int:
    """The sort key of a priority name; StoreError naming the allowed ones otherwise."""
    if priority not in JOB_PRIORITIES:
        raise StoreError(f"priority {priority!r} is not one of {', '.join(JOB_PRIORITIES)}")
    return JOB_PRIORITIES[priority]


# --- claims: leases and fencing tokens ------------------------------------------------


def store_now(conn: sa.Connection) -> datetime:
    """The time leases are measured by: the database server's clock on PostgreSQL, which
    every daemon sharing the store reads alike whatever its own machine's clock says;
    this machine's clock on SQLite (one machine)."""
    if conn.dialect.name == "postgresql":
        return conn.scalar(sa.select(sa.func.clock_timestamp())).astimezone(UTC)
    return utc_now()


def _held_by(job_id: int, fence: int) -> sa.ColumnElement[bool]:
    """The job is still held by the claim with ``fence``: no later claim took it, and
    its attempt was not settled (settling clears the worker)."""
    return sa.and_(jobs.c.id == job_id, jobs.c.fence == fence, jobs.c.worker.is_not(None))


def _stale(conn: sa.Connection, job_id: int, fence: int) -> StaleClaimError:
    """The error for a write of claim ``fence`` that no longer holds the job (NotFoundError
    propagates for a job that does not exist)."""
    job = get_job(conn, job_id)
    if job.fence != fence and job.worker is not None:
        now_held = f"{job.worker} holds it with fence {job.fence}"
    elif job.fence != fence:
        now_held = f"a later claim, fence {job.fence}, took it; it is {job.state} now"
    else:
        now_held = f"its attempt was settled; it is {job.state}"
    return StaleClaimError(f"job {job_id}: the claim with fence {fence} no longer holds it ({now_held}); "
                           "the write was refused")


def check_claim(conn: sa.Connection, job_id: int, fence: int | None, lock: bool = True) -> JobInfo:
    """The job (row-locked on PostgreSQL with ``lock``, so no claim can slip in before
    the caller's write commits); StaleClaimError unless the claim with ``fence`` still
    holds it. ``fence`` None checks nothing (a write by a person, or an unfenced caller)."""
    job = get_job(conn, job_id, lock=lock)
    if fence is not None and (job.fence != fence or job.worker is None):
        raise _stale(conn, job_id, fence)
    return job


def renew_lease(conn: sa.Connection, job_id: int, fence: int, lease_s: float,
                now: datetime | None = None) -> datetime:
    """Extend the lease of claim ``fence`` to ``lease_s`` from now and return its new
    end; StaleClaimError when the job was taken over or settled. A lease that ran out
    while nobody took the job over is simply renewed: the claim still holds."""
    until = (now or store_now(conn)) + timedelta(seconds=lease_s)
    if conn.execute(jobs.update().where(_held_by(job_id, fence)).values(lease_until=until)).rowcount == 0:
        raise _stale(conn, job_id, fence)
    return until


# --- jobs --------------------------------------------------------------------------


def add_event(conn: sa.Connection, job_id: int, kind: str, message: str,
              data: dict[str, Any] | None = None, fence: int | None = None) -> None:
    """Append one entry to a job's event log; with ``fence``, only while that claim
    holds the job (StaleClaimError otherwise)."""
    if fence is not None:
        check_claim(conn, job_id, fence)
    conn.execute(job_events.insert().values(
        job_id=job_id, at=utc_now(), kind=kind, message=message,
        data=encode_non_finite(data) if data else None,
    ))


def create_job(conn: sa.Connection, *, track: str, dataset_ids: list[int], overrides: dict[str, Any],
               priority: str, source: str) -> JobInfo:
    """Queue a job to train ``track`` on ``dataset_ids``."""
    require_track(conn, track)
    if not dataset_ids:
        raise StoreError("a job needs at least one dataset")
    for dataset_id in dataset_ids:
        if get_dataset(conn, dataset_id) is None:
            raise StoreError(f"unknown dataset id {dataset_id}")
    now = utc_now()
    job_id = conn.execute(jobs.insert().values(
        track=track, dataset_ids=list(dataset_ids), overrides=dict(overrides),
        priority=priority_value(priority), state="queued", source=source, failures=0, fence=0,
        created_at=now, updated_at=now,
    ).returning(jobs.c.id)).scalar_one()
    add_event(conn, job_id, "queued", f"queued by {source} with priority {priority} "
              f"on dataset{'s' if len(dataset_ids) > 1 else ''} {', '.join(map(str, dataset_ids))}",
              {"track": track, "dataset_ids": list(dataset_ids), "overrides": overrides})
    return get_job(conn, job_id)


def get_job(conn: sa.Connection, job_id: int, lock: bool = False) -> JobInfo:
    """The job with ``job_id`` (row-locked on PostgreSQL with ``lock``); StoreError if none."""
    if not storable_id(job_id):
        raise NotFoundError(f"no job {job_id}")
    query = sa.select(jobs).where(jobs.c.id == job_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"no job {job_id}")
    return JobInfo.model_validate(row)


def list_jobs(conn: sa.Connection, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[JobInfo]:
    """Jobs in claim order (priority, then first in first out), of some states or all."""
    for state in states or ():
        if state not in JOB_STATES:
            raise StoreError(f"job state {state!r} is not one of {', '.join(JOB_STATES)}")
    query = sa.select(jobs).order_by(jobs.c.priority, jobs.c.id)
    if states:
        query = query.where(jobs.c.state.in_(states))
    if limit:
        query = query.limit(limit)
    return [JobInfo.model_validate(r) for r in conn.execute(query)]


def _update(conn: sa.Connection, job_id: int, **values: Any) -> None:
    conn.execute(jobs.update().where(jobs.c.id == job_id).values(updated_at=utc_now(), **values))


def claim_next_job(conn: sa.Connection, worker: str, run_id: str, lease_s: float = 60.0,
                   now: datetime | None = None) -> JobInfo | None:
    """Claim the next job for ``worker`` and lease it for ``lease_s`` seconds; None when
    nothing is ready.

    Ready is a queued job whose backoff has passed, or a running or evaluating job whose
    lease ran out (its daemon is presumed dead: the job is *taken over*, which is not a
    failed attempt). Either way, in priority order then first in first out, the job
    becomes running with the next fence, the lease, and ``run_id`` if it has no run yet
    (a job taken over while evaluating is evaluated again by its new trainer). A taken-over
    job's run moves on to a new attempt number at once, so that whatever the lost
    attempt's trainer still writes to the run is refused (StaleAttemptError) even
    before the new trainer starts. ``SKIP LOCKED`` on PostgreSQL lets daemons claim side
    by side without waiting for each other's rows; on SQLite claims queue for the write
    lock (``BEGIN IMMEDIATE``)."""
    now = now or store_now(conn)
    ready = sa.and_(jobs.c.state == "queued", sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now))
    lapsed = sa.and_(jobs.c.state.in_(("running", "evaluating")), jobs.c.lease_until < now)
    query = sa.select(jobs.c.id).where(sa.or_(ready, lapsed)).order_by(jobs.c.priority, jobs.c.id).limit(1)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job_id = conn.execute(query).scalar()
    if job_id is None:
        return None
    job = get_job(conn, job_id)
    fence = job.fence + 1
    run_id = job.run_id or _unused_run_id(conn, run_id, job_id)
    # The trainer's heartbeat is read against this machine's clock (Supervisor.heartbeat_age);
    # only the lease is on the store's.
    _update(conn, job_id, state="running", worker=worker, run_id=run_id, fence=fence,
            lease_until=now + timedelta(seconds=lease_s), trainer_pid=None, heartbeat_at=utc_now(),
            not_before=None, started_at=job.started_at or utc_now())
    attempt = job.failures + 1
    data = {"worker": worker, "run_id": run_id, "attempt": attempt, "fence": fence}
    if job.state == "queued":
        add_event(conn, job_id, "started", f"claimed by {worker}" + (
            f" (retry after {job.failures} failed attempt{'s' if job.failures > 1 else ''})" if job.failures else ""),
            data)
    else:
        superseded = supersede_attempt(conn, run_id)
        # A command the lost trainer took but never saw through waits for the new one.
        conn.execute(job_commands.update().where(job_commands.c.job_id == job_id, job_commands.c.state == "taken")
                     .values(state="pending", taken_at=None, taken_step=None))
        add_event(conn, job_id, "taken_over", f"taken over by {worker}: {job.worker} held it while {job.state} "
                  f"until its lease ran out at {job.lease_until:%H:%M:%S} UTC; its writes are refused from now on",
                  {**data, "previous_worker": job.worker, "previous_fence": job.fence,
                   "lease_until": job.lease_until.isoformat(), "run_attempt": superseded})
    return get_job(conn, job_id)


def _unused_run_id(conn: sa.Connection, run_id: str, job_id: int) -> str:
    """``run_id``, unless a job or a run has it already (another daemon proposed the same
    id in the same second): then that id made unique with the job's. Two claims that
    commit the same id at the same instant are refused by the unique index on run_id."""
    taken = conn.scalar(sa.select(sa.literal(1)).where(sa.or_(
        sa.exists().where(jobs.c.run_id == run_id), sa.exists().where(runs.c.id == run_id))))
    return f"{run_id}-job{job_id}" if taken else run_id


def report_progress(conn: sa.Connection, job_id: int, progress: dict[str, Any] | None = None,
                    trainer_pid: int | None = None, fence: int | None = None) -> None:
    """A trainer's heartbeat: its pid and where it is (step, loss, tokens/s, ETA); with
    ``fence``, only while that claim holds the job (StaleClaimError otherwise)."""
    values: dict[str, Any] = {"heartbeat_at": utc_now()}
    if progress is not None:
        values["progress"] = encode_non_finite(progress)
    if trainer_pid is not None:
        values["trainer_pid"] = trainer_pid
    where = jobs.c.id == job_id if fence is None else _held_by(job_id, fence)
    if conn.execute(jobs.update().where(where).values(**values)).rowcount == 0 and fence is not None:
        raise _stale(conn, job_id, fence)


def mark_evaluating(conn: sa.Connection, job_id: int, message: str, fence: int | None = None) -> None:
    """The trainer finished training the job and now scores its candidate."""
    job = check_claim(conn, job_id, fence)
    if job.state != "running":
        raise JobStateError(f"job {job_id} is {job.state}; only a running job goes on to evaluation")
    _update(conn, job_id, state="evaluating")
    add_event(conn, job_id, "evaluating", message)


def set_priority(conn: sa.Connection, job_id: int, priority: str) -> JobInfo:
    """Move a job that is not yet running to another priority."""
    job = get_job(conn, job_id, lock=True)
    if job.state not in ("queued", "paused", "skipped"):
        raise JobStateError(f"job {job_id} is {job.state}; only a job waiting in the queue can be moved")
    _update(conn, job_id, priority=priority_value(priority))
    add_event(conn, job_id, "moved", f"priority {job.priority} -> {priority}")
    return get_job(conn, job_id)


def end_attempt(conn: sa.Connection, job_id: int, state: str, message: str, *, kind: str | None = None,
                error: str | None = None, not_before: datetime | None = None, failed: bool = False,
                data: dict[str, Any] | None = None, fence: int | None = None,
                overrides: dict[str, Any] | None = None) -> JobInfo:
    """Record how a trainer's attempt at a job ended and settle its control commands.

    ``state`` is where the job goes: ``queued`` (to continue later: an interruption,
    or a crash with attempts left, after ``not_before``), or the state a command or the
    run's outcome decided. ``failed`` counts a crashed attempt. A command the trainer
    took is done now; one still pending meets the job where it is: applied at once when
    the job went back to the queue (a stop stays pending for the next trainer, which
    ends the run from its checkpoint), or told that the job had already ended.

    With ``fence``, only the claim that still holds the job may settle it
    (StaleClaimError otherwise: the job was taken over, and its new owner settles it).
    Settling ends the claim: worker and lease are cleared. ``overrides`` replaces the
    job's settings overrides (the daemon's smaller micro-batch after running out of memory).
    """
    if state not in JOB_STATES:
        raise StoreError(f"job state {state!r} is not one of {', '.join(JOB_STATES)}")
    job = check_claim(conn, job_id, fence)
    now = utc_now()
    values: dict[str, Any] = {"state": state, "trainer_pid": None, "worker": None, "lease_until": None,
                              "not_before": not_before}
    if failed:
        values["failures"] = job.failures + 1
    if error is not None:
        values["error"] = error
    if overrides is not None:
        values["overrides"] = overrides
    if state in JOB_FINAL_STATES:
        values["ended_at"] = now
    _update(conn, job_id, **values)
    add_event(conn, job_id, kind or state, message, data)
    for command in open_commands(conn, job_id):
        if command.state == "taken":
            _finish_command(conn, command.id, f"job {job_id} is {state}")
        elif state == "queued" and command.command in _DIRECT:
            target = _DIRECT[command.command][1]
            _update(conn, job_id, state=target, **({"ended_at": now} if target in JOB_FINAL_STATES else {}))
            add_event(conn, job_id, target, f"{command.command} applied while the job waited")
            _finish_command(conn, command.id, f"job {job_id} is {target}")
            state = target
        elif state != "queued":
            _finish_command(conn, command.id, f"job {job_id} had already become {state}")
    return get_job(conn, job_id)


# --- control commands --------------------------------------------------------------


def open_commands(conn: sa.Connection, job_id: int) -> list[CommandInfo]:
    """The job's commands that are not done, oldest first."""
    rows = conn.execute(sa.select(job_commands).where(
        job_commands.c.job_id == job_id, job_commands.c.state != "done").order_by(job_commands.c.id))
    return [CommandInfo.model_validate(r) for r in rows]


def get_command(conn: sa.Connection, command_id: int) -> CommandInfo:
    """The command with ``command_id``."""
    row = conn.execute(sa.select(job_commands).where(job_commands.c.id == command_id)).first()
    if row is None:
        raise NotFoundError(f"no command {command_id}")
    return CommandInfo.model_validate(row)


def _finish_command(conn: sa.Connection, command_id: int, outcome: str) -> None:
    conn.execute(job_commands.update().where(job_commands.c.id == command_id).values(
        state="done", done_at=utc_now(), outcome=outcome))


def _insert_command(conn: sa.Connection, job_id: int, command: str, state: str,
                    outcome: str | None = None) -> int:
    now = utc_now()
    return conn.execute(job_commands.insert().values(
        job_id=job_id, command=command, state=state, requested_at=now,
        done_at=now if state == "done" else None, outcome=outcome,
    ).returning(job_commands.c.id)).scalar_one()


def request_command(conn: sa.Connection, job_id: int, command: str) -> CommandInfo:
    """Ask for ``command`` on a job. A job that no trainer holds changes state at once
    (the command comes back done); a running one gets a pending command that its
    trainer takes at the next step boundary. A command that cannot apply raises
    JobStateError saying why."""
    if command not in JOB_COMMANDS:
        raise StoreError(f"command {command!r} is not one of {', '.join(JOB_COMMANDS)}")
    job = get_job(conn, job_id, lock=True)
    if job.state in JOB_FINAL_STATES:
        reason = f": {job.error.splitlines()[0]}" if job.error and job.state == "failed" else ""
        raise JobStateError(f"job {job_id} has already {'been ' if job.state == 'cancelled' else ''}"
                            f"{job.state}{reason}; it cannot be {_past(command)}")
    waiting = open_commands(conn, job_id)
    if job.state in ("running", "evaluating"):
        if command == "resume":
            raise JobStateError(f"job {job_id} is {job.state}; there is nothing to resume")
        if waiting:
            first = waiting[0]
            raise JobStateError(f"job {job_id} already has a '{first.command}' command on its way "
                                f"(requested {first.requested_at:%H:%M:%S} UTC, {first.state})")
        command_id = _insert_command(conn, job_id, command, "pending")
        add_event(conn, job_id, "requested", f"{command} requested; the trainer acts on it at the next step")
        return get_command(conn, command_id)
    if command == "resume":
        if job.state not in ("paused", "skipped"):
            raise JobStateError(f"job {job_id} is {job.state}; only a paused or skipped job can be resumed")
        _update(conn, job_id, state="queued")
        add_event(conn, job_id, "resumed", "queued again; training continues from its last checkpoint"
                  if job.run_id else "queued again")
        return get_command(conn, _insert_command(conn, job_id, command, "done", f"job {job_id} is queued"))
    if command == "stop":
        if job.run_id is None or job.state == "skipped":
            raise JobStateError(f"job {job_id} is {job.state} and has not trained; there is nothing to stop "
                                "(cancel or skip it instead)")
        # Ending the run with its last checkpoint as result takes a trainer: queue the job
        # with the command pending, and the next trainer stops at once after restoring.
        _update(conn, job_id, state="queued")
        add_event(conn, job_id, "requested", "stop requested; the run ends from its last checkpoint "
                  "when the job is next picked up")
        return get_command(conn, _insert_command(conn, job_id, command, "pending"))
    allowed, target = _DIRECT[command]
    if job.state not in allowed:
        raise JobStateError(f"job {job_id} is {job.state}; {command} applies to a job that is "
                            f"{' or '.join(sorted(allowed | {'running'}))}")
    _update(conn, job_id, state=target, **({"ended_at": utc_now()} if target in JOB_FINAL_STATES else {}))
    add_event(conn, job_id, target, f"{_past(command)} while {job.state}")
    for other in waiting:
        _finish_command(conn, other.id, f"superseded by {command}")
    return get_command(conn, _insert_command(conn, job_id, command, "done", f"job {job_id} is {target}"))


def _past(command: str) -> str:
    return {"pause": "paused", "resume": "resumed", "stop": "stopped", "skip": "skipped",
            "cancel": "cancelled"}[command]


def has_pending_command(conn: sa.Connection, job_id: int) -> bool:
    """Whether a command waits for this job's trainer (a read, for every step)."""
    return conn.scalar(sa.select(job_commands.c.id).where(
        job_commands.c.job_id == job_id, job_commands.c.state == "pending").limit(1)) is not None


def take_command(conn: sa.Connection, job_id: int, step: int, fence: int | None = None) -> str | None:
    """For the trainer at a step boundary: the oldest pending command of its job, now
    marked taken at ``step``; None when there is none. With ``fence``, only while that
    claim holds the job (StaleClaimError otherwise)."""
    if fence is not None:
        check_claim(conn, job_id, fence)
    row = conn.execute(sa.select(job_commands).where(
        job_commands.c.job_id == job_id, job_commands.c.state == "pending",
    ).order_by(job_commands.c.id).limit(1)).first()
    if row is None:
        return None
    conn.execute(job_commands.update().where(job_commands.c.id == row.id).values(
        state="taken", taken_at=utc_now(), taken_step=step))
    add_event(conn, job_id, "taken", f"trainer took '{row.command}' at step {step}", {"step": step})
    return row.command


def taken_command(conn: sa.Connection, job_id: int) -> str | None:
    """The command a trainer of this job has taken and not yet seen through, if any."""
    row = conn.execute(sa.select(job_commands.c.command).where(
        job_commands.c.job_id == job_id, job_commands.c.state == "taken",
    ).order_by(job_commands.c.id.desc()).limit(1)).first()
    return row.command if row else None


def events_after(conn: sa.Connection, after_id: int, limit: int | None,
                 job_id: int | None = None) -> list[JobEvent]:
    """Events with id above ``after_id``, oldest first: of one job, or of all (the live stream)."""
    query = sa.select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id)
    if job_id is not None:
        query = query.where(job_events.c.job_id == job_id)
    if limit:
        query = query.limit(limit)
    return [JobEvent.model_validate(r) for r in conn.execute(query)]


def last_event_id(conn: sa.Connection) -> int:
    """The id of the newest event of any job (0 when there is none)."""
    return conn.execute(sa.select(sa.func.max(job_events.c.id))).scalar() or 0


def job_counts(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """Per state: how many jobs, and how many attempts of theirs crashed."""
    rows = conn.execute(sa.select(jobs.c.state, sa.func.count(), sa.func.coalesce(sa.func.sum(jobs.c.failures), 0))
                        .group_by(jobs.c.state)).all()
    return {state: {"jobs": int(n), "failed_attempts": int(failures)} for state, n, failures in rows}


# --- workers -----------------------------------------------------------------------


def register_worker(conn: sa.Connection, worker_id: str, host: str, pid: int, workspace: str) -> WorkerInfo:
    """Record a daemon that starts now."""
    now = utc_now()
    conn.execute(workers.insert().values(id=worker_id, host=host, pid=pid, workspace=workspace,
                                         started_at=now, heartbeat_at=now))
    return get_worker(conn, worker_id)


def get_worker(conn: sa.Connection, worker_id: str) -> WorkerInfo | None:
    """The worker with this id, if any."""
    row = conn.execute(sa.select(workers).where(workers.c.id == worker_id)).first()
    return WorkerInfo.model_validate(row) if row else None


def beat_worker(conn: sa.Connection, worker_id: str, state: dict[str, Any] | None = None,
                stopped: bool = False) -> None:
    """A daemon's heartbeat (and what it is doing); with ``stopped``, its last word."""
    values: dict[str, Any] = {"heartbeat_at": utc_now(), "state": state}
    if stopped:
        values["stopped_at"] = values["heartbeat_at"]
    conn.execute(workers.update().where(workers.c.id == worker_id).values(**values))


def list_workers(conn: sa.Connection, workspace: str | None = None, limit: int = 10) -> list[WorkerInfo]:
    """Workers, most recently started first."""
    query = sa.select(workers).order_by(workers.c.started_at.desc()).limit(limit)
    if workspace is not None:
        query = query.where(workers.c.workspace == workspace)
    return [WorkerInfo.model_validate(r) for r in conn.execute(query)]
