"""Queries on runs and what they leave behind: attempts, checkpoints, metrics.

The attempt number doubles as the fencing token: a trainer that was given up for dead
(and replaced by a newer attempt) may still wake up and write; where a writer passes
its attempt, a mismatch is refused with :class:`StaleAttemptError`.

Each function takes a connection that is already in a transaction; none commits.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from honed.store.bulk import chunked, dialect_insert
from honed.store.catalog import get_base, require_track
from honed.store.errors import NotFoundError, StaleAttemptError, StoreError
from honed.store.info import CheckpointInfo, RunInfo
from honed.store.schema import (
    METRIC_KINDS,
    RUN_STATUSES,
    checkpoints,
    decode_non_finite,
    metrics,
    runs,
    utc_now,
)

FINAL_STATUSES = tuple(s for s in RUN_STATUSES if s != "running")


def get_run(conn: sa.Connection, run_id: str) -> RunInfo | None:
    """The run with ``run_id``, if any."""
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
    return RunInfo.model_validate(row) if row else None


def current_attempt(conn: sa.Connection, run_id: str, fence: int | None = None) -> int:
    """The run's attempt number, row-locked on PostgreSQL for the rest of the
    transaction; with ``fence``, a StaleAttemptError unless it is that attempt."""
    query = sa.select(runs.c.attempt).where(runs.c.id == run_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    attempt = conn.scalar(query)
    if attempt is None:
        raise NotFoundError(f"unknown run id {run_id!r}")
    if fence is not None and fence != attempt:
        raise StaleAttemptError(
            f"run {run_id!r} is at attempt {attempt}; a writer of attempt {fence} was refused"
        )
    return attempt


def create_run(
    conn: sa.Connection,
    *,
    run_id: str,
    track: str,
    base_version: int,
    config: dict[str, Any],
    dataset_ids: list[int],
) -> RunInfo:
    """Insert a run in status ``running`` at attempt 0 (no trainer started yet)."""
    if get_run(conn, run_id) is not None:
        raise StoreError(f"run id {run_id!r} already exists")
    require_track(conn, track)
    if get_base(conn, base_version) is None:
        raise StoreError(f"unknown base version {base_version} for run {run_id!r}")
    conn.execute(
        runs.insert().values(
            id=run_id,
            track=track,
            base_version=base_version,
            status="running",
            config=config,
            dataset_ids=list(dataset_ids),
            attempt=0,
            started_at=utc_now(),
        )
    )
    run = get_run(conn, run_id)
    assert run is not None
    return run


def list_runs(conn: sa.Connection, track: str | None = None, limit: int = 50) -> list[RunInfo]:
    """The newest runs first, of one track or of all."""
    if limit < 0:  # SQLite would take it as no limit, PostgreSQL refuses it
        raise StoreError(f"limit {limit}: give a positive number of runs")
    query = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(limit)
    if track is not None:
        query = query.where(runs.c.track == track)
    return [RunInfo.model_validate(r) for r in conn.execute(query)]


def start_attempt(conn: sa.Connection, run_id: str) -> int:
    """Begin the next attempt of a run: bump the counter, mark it running again."""
    attempt = conn.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(attempt=runs.c.attempt + 1, status="running", ended_at=None, error=None)
        .returning(runs.c.attempt)
    ).scalar()
    if attempt is None:
        raise NotFoundError(f"unknown run id {run_id!r}")
    return attempt


def supersede_attempt(conn: sa.Connection, run_id: str) -> int | None:
    """Move a run whose attempt was lost (its job was taken over) on to the next attempt
    number, so that everything the lost attempt's trainer may still write is refused;
    the new trainer's :func:`start_attempt` takes the number after. Returns the number,
    or None when the run does not exist yet (a trainer that has not created it yet will
    find it created by the new one, and stop)."""
    return conn.execute(
        runs.update().where(runs.c.id == run_id).values(attempt=runs.c.attempt + 1).returning(runs.c.attempt)
    ).scalar()


def finish_run(
    conn: sa.Connection,
    run_id: str,
    *,
    status: str,
    final_metrics: dict[str, Any] | None = None,
    error: str | None = None,
    adapter_path: str | None = None,
    attempt: int | None = None,
) -> None:
    """Record how the current attempt of a run ended."""
    if status not in FINAL_STATUSES:
        raise StoreError(
            f"run {run_id!r} cannot finish with status {status!r}; "
            f"allowed: {', '.join(FINAL_STATUSES)}"
        )
    current_attempt(conn, run_id, fence=attempt)
    conn.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(
            status=status,
            final_metrics=final_metrics,
            error=error,
            adapter_path=adapter_path,
            ended_at=utc_now(),
        )
    )


# --- checkpoints -------------------------------------------------------------------


def record_checkpoint(
    conn: sa.Connection, run_id: str, step: int, path: str, attempt: int | None
) -> None:
    """Record a checkpoint as complete (its files are already in place); recording the
    same step again replaces the path."""
    current_attempt(conn, run_id, fence=attempt)
    statement = dialect_insert(conn, checkpoints).values(
        run_id=run_id, step=step, path=path, complete=True, created_at=utc_now()
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["run_id", "step"],
            set_={"path": path, "complete": True, "created_at": statement.excluded.created_at},
        )
    )


def forget_checkpoint(conn: sa.Connection, run_id: str, step: int) -> None:
    """Drop a checkpoint's record (before its files are pruned)."""
    current_attempt(conn, run_id)
    conn.execute(
        checkpoints.delete().where(checkpoints.c.run_id == run_id, checkpoints.c.step == step)
    )


def list_checkpoints(conn: sa.Connection, run_id: str) -> list[CheckpointInfo]:
    """The complete checkpoints of a run, by step."""
    current_attempt(conn, run_id)
    rows = conn.execute(
        sa.select(checkpoints)
        .where(checkpoints.c.run_id == run_id, checkpoints.c.complete.is_(True))
        .order_by(checkpoints.c.step)
    )
    return [CheckpointInfo.model_validate(r) for r in rows]


# --- metrics -----------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in METRIC_KINDS:
        raise StoreError(f"metric kind {kind!r} is not one of {', '.join(METRIC_KINDS)}")


def append_metrics(
    conn: sa.Connection, run_id: str, rows: list[dict[str, Any]], attempt: int, kind: str = 'train'
) -> None:
    """Store one row per step; a step logged twice by the same attempt keeps the last."""
    _check_kind(kind)
    current_attempt(conn, run_id)
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "step" not in row:
            raise StoreError(f"metrics row for run {run_id!r} has no 'step': {row!r}")
        by_step[int(row["step"])] = {k: v for k, v in row.items() if k != "step"}
    if not by_step:
        return
    now = utc_now()
    insert = dialect_insert(conn, metrics)
    statement = insert.on_conflict_do_update(
        index_elements=["run_id", "kind", "step", "attempt"],
        set_={"values": insert.excluded["values"], "created_at": insert.excluded.created_at},
    )
    values = [
        {"run_id": run_id, "kind": kind, "step": step, "attempt": attempt,
         "values": data, "created_at": now}
        for step, data in by_step.items()
    ]
    for chunk in chunked(values):
        conn.execute(statement, chunk)


def get_metrics(
    conn: sa.Connection, run_id: str, kind: str = 'train', latest_attempt_only: bool = True,
    after_step: int | None = None, limit: int | None = None,
) -> list[dict[str, Any]]:
    """Metrics rows of a run as ``{"step", "attempt", **values}``, by step.

    With ``latest_attempt_only``, the curve a reader expects after resumes: an attempt
    resumed from a checkpoint supersedes every row an earlier attempt logged at or
    after the resumed attempt's first step (of any kind). So a step logged by several
    attempts keeps the row of the highest one, and an earlier attempt's steps past the
    resume point (redone, or about to be) disappear too. ``after_step`` and ``limit``
    page through the curve (rows with a step above ``after_step``, at most ``limit``).
    """
    _check_kind(kind)
    current_attempt(conn, run_id)
    rows = conn.execute(
        sa.select(metrics.c.step, metrics.c.attempt, metrics.c["values"])
        .where(metrics.c.run_id == run_id, metrics.c.kind == kind,
               metrics.c.step > (after_step if after_step is not None else -1))
        .order_by(metrics.c.step, metrics.c.attempt)
    ).all()
    if latest_attempt_only and rows:
        # Where each attempt started, judged from all kinds: an eval row an earlier
        # attempt logged past the resume point is stale before the new attempt evals.
        first_step = dict(
            conn.execute(
                sa.select(metrics.c.attempt, sa.func.min(metrics.c.step))
                .where(metrics.c.run_id == run_id)
                .group_by(metrics.c.attempt)
            ).all()
        )
        # cutoff[a]: the first step any later attempt logged; a's rows from there on are stale.
        cutoff: dict[int, float] = {}
        later_min = float("inf")
        for attempt in sorted(first_step, reverse=True):
            cutoff[attempt] = later_min
            later_min = min(later_min, first_step[attempt])
        rows = [r for r in rows if r.step < cutoff[r.attempt]]
    if limit is not None:
        rows = rows[:limit]
    return [
        {**decode_non_finite(values), "step": step, "attempt": attempt}
        for step, attempt, values in rows
    ]
