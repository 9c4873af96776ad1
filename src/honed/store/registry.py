"""Queries on adapters and deployments: the adapter state machine and the deployment
pointer of each track, with its history.

A switch of the deployed adapter is one transaction: the old one is retired, the new
one deployed and the history row written together, so any crash leaves exactly the
old or the new deployment (and a partial unique index refuses two at once).

Each function takes a connection that is already in a transaction; none commits.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from honed.store.catalog import require_track
from honed.store.errors import JobStateError, NotFoundError, StoreError
from honed.store.info import AdapterInfo, DeploymentInfo
from honed.store.schema import adapters, deployments, encode_non_finite, storable_id, tracks, utc_now


def add_adapter(conn: sa.Connection, *, track: str, run_id: str | None, job_id: int | None,
                base_version: int, path: str) -> AdapterInfo:
    """Register a run's adapter as a candidate."""
    require_track(conn, track)
    now = utc_now()
    adapter_id = conn.execute(adapters.insert().values(
        track=track, run_id=run_id, job_id=job_id, base_version=base_version, path=path, state="candidate",
        created_at=now, updated_at=now,
    ).returning(adapters.c.id)).scalar_one()
    return get_adapter(conn, adapter_id)


def get_adapter(conn: sa.Connection, adapter_id: int) -> AdapterInfo:
    """The adapter with this id; StoreError naming it otherwise."""
    if not storable_id(adapter_id):
        raise NotFoundError(f"no adapter {adapter_id}")
    row = conn.execute(sa.select(adapters).where(adapters.c.id == adapter_id)).first()
    if row is None:
        raise NotFoundError(f"no adapter {adapter_id}")
    return AdapterInfo.model_validate(row)


def list_adapters(conn: sa.Connection, track: str | None = None) -> list[AdapterInfo]:
    """Adapters, newest first."""
    query = sa.select(adapters).order_by(adapters.c.id.desc())
    if track is not None:
        query = query.where(adapters.c.track == track)
    return [AdapterInfo.model_validate(r) for r in conn.execute(query)]


def adapter_for_run(conn: sa.Connection, run_id: str) -> AdapterInfo | None:
    """The adapter a run produced (the newest, should there be several), or None."""
    row = conn.execute(sa.select(adapters).where(adapters.c.run_id == run_id)
                       .order_by(adapters.c.id.desc()).limit(1)).first()
    return AdapterInfo.model_validate(row) if row else None


def deployed_adapter(conn: sa.Connection, track: str) -> AdapterInfo | None:
    """The adapter deployed on ``track`` now, or None (the bare base)."""
    row = conn.execute(sa.select(adapters).where(adapters.c.track == track, adapters.c.state == "deployed")).first()
    return AdapterInfo.model_validate(row) if row else None


def record_evaluation(conn: sa.Connection, adapter_id: int, evaluation: dict[str, Any], verdict: dict[str, Any],
                      state: str) -> AdapterInfo:
    """Store a candidate's evaluation and verdict, and move it to ``state``
    (candidate when it is to be deployed now, awaiting_approval, or rejected)."""
    adapter = get_adapter(conn, adapter_id)
    if adapter.state != "candidate":
        raise JobStateError(f"adapter {adapter_id} is {adapter.state}; only a candidate is evaluated")
    if state not in ("candidate", "awaiting_approval", "rejected"):
        raise StoreError(f"an evaluated candidate becomes candidate, awaiting_approval or rejected, not {state!r}")
    conn.execute(adapters.update().where(adapters.c.id == adapter_id).values(
        evaluation=encode_non_finite(evaluation), verdict=encode_non_finite(verdict), state=state,
        updated_at=utc_now()))
    return get_adapter(conn, adapter_id)


def reject_adapter(conn: sa.Connection, adapter_id: int) -> AdapterInfo:
    """A person's no to an adapter awaiting approval (or to any candidate)."""
    adapter = get_adapter(conn, adapter_id)
    if adapter.state not in ("candidate", "awaiting_approval"):
        raise JobStateError(f"adapter {adapter_id} is {adapter.state}; only a candidate or one awaiting "
                            "approval can be rejected")
    conn.execute(adapters.update().where(adapters.c.id == adapter_id).values(state="rejected", updated_at=utc_now()))
    return get_adapter(conn, adapter_id)


def _lock_track(conn: sa.Connection, track: str) -> None:
    require_track(conn, track)
    if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already serializes writers
        conn.execute(sa.select(tracks.c.name).where(tracks.c.name == track).with_for_update())


_CURRENT = object()


def switch_deployment(conn: sa.Connection, track: str, adapter_id: int | None, *, action: str, reason: str,
                      allowed: tuple[str, ...] = (), previous: Any = _CURRENT) -> DeploymentInfo:
    """Make ``adapter_id`` (None: the bare base) the track's deployment, in one
    transaction. ``allowed`` lists the states the target may be in. The history row
    remembers ``previous`` as where a rollback from here goes (default: the adapter
    deployed until now)."""
    _lock_track(conn, track)
    current = deployed_adapter(conn, track)
    if adapter_id is not None:
        target = get_adapter(conn, adapter_id)
        if target.track != track:
            raise StoreError(f"adapter {adapter_id} belongs to track {target.track!r}, not {track!r}")
        base_version = conn.scalar(sa.select(tracks.c.base_version).where(tracks.c.name == track))
        if target.base_version != base_version:
            raise JobStateError(f"adapter {adapter_id} was trained on base v{target.base_version}, but track "
                                f"{track!r} is on base v{base_version} now (consolidated); it cannot be live there")
        if target.state not in allowed:
            raise JobStateError(f"adapter {adapter_id} is {target.state}; {action} takes one that is "
                                f"{' or '.join(allowed)}")
    if current is not None and current.id == adapter_id:
        raise JobStateError(f"adapter {adapter_id} is already deployed on track {track!r}")
    now = utc_now()
    if current is not None:
        conn.execute(adapters.update().where(adapters.c.id == current.id).values(state="retired", updated_at=now))
    if adapter_id is not None:
        conn.execute(adapters.update().where(adapters.c.id == adapter_id).values(state="deployed", updated_at=now))
    if previous is _CURRENT:
        previous = current.id if current is not None else None
    deployment_id = conn.execute(deployments.insert().values(
        track=track, adapter_id=adapter_id, previous_adapter_id=previous, action=action, reason=reason, at=now,
    ).returning(deployments.c.id)).scalar_one()
    return get_deployment(conn, deployment_id)


def rollback_target(conn: sa.Connection, track: str) -> tuple[int | None, int | None]:
    """Where a rollback of ``track`` goes: (the adapter deployed before the current one,
    or None for the bare base; what was before *that*, so that a second rollback walks
    further back)."""
    history = list_deployments(conn, track)
    if not history:
        raise JobStateError(f"track {track!r} has never been deployed; there is nothing to roll back")
    latest = history[0]
    if latest.adapter_id is None and latest.previous_adapter_id is None:
        raise JobStateError(f"track {track!r} is on its bare base with no earlier deployment to go back to")
    target = latest.previous_adapter_id
    before = None
    if target is not None:
        for row in history[1:]:
            if row.adapter_id == target:
                before = row.previous_adapter_id
                break
    return target, before


def get_deployment(conn: sa.Connection, deployment_id: int) -> DeploymentInfo:
    row = conn.execute(sa.select(deployments).where(deployments.c.id == deployment_id)).first()
    if row is None:
        raise NotFoundError(f"no deployment {deployment_id}")
    return DeploymentInfo.model_validate(row)


def list_deployments(conn: sa.Connection, track: str, limit: int | None = None) -> list[DeploymentInfo]:
    """A track's deployment history, newest first."""
    query = sa.select(deployments).where(deployments.c.track == track).order_by(deployments.c.id.desc())
    if limit is not None and limit < 0:  # SQLite would take it as no limit, PostgreSQL refuses it
        raise StoreError(f"limit {limit}: give a positive number of deployments")
    if limit:
        query = query.limit(limit)
    return [DeploymentInfo.model_validate(r) for r in conn.execute(query)]


def deployment_counts(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """How many switches of each action (deploy, approve, rollback, ...) per track."""
    rows = conn.execute(sa.select(deployments.c.track, deployments.c.action, sa.func.count())
                        .group_by(deployments.c.track, deployments.c.action)).all()
    return {(track, action): int(n) for track, action, n in rows}


def record_hooks(conn: sa.Connection, deployment_id: int, results: list[dict[str, Any]]) -> None:
    """Keep what the deploy hooks said, for `honed adapters show` and the monitor."""
    conn.execute(deployments.update().where(deployments.c.id == deployment_id).values(hooks=results))
