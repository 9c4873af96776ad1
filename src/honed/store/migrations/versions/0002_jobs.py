"""The daemon's tables: jobs, job_events, job_commands, workers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the queue, its events and control commands, and the workers table."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("dataset_ids", _json(), nullable=False),
        sa.Column("overrides", _json(), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("failures", sa.Integer, nullable=False),
        _time("not_before", True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("trainer_pid", sa.Integer, nullable=True),
        _time("heartbeat_at", True),
        sa.Column("progress", _json(), nullable=True),
        _time("created_at", False),
        _time("updated_at", False),
        _time("started_at", True),
        _time("ended_at", True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_jobs_track_tracks"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_state_priority_id", "jobs", ["state", "priority", "id"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        _time("at", False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_events_job_id_jobs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])
    op.create_table(
        "job_commands",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("command", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _time("requested_at", False),
        _time("taken_at", True),
        sa.Column("taken_step", sa.Integer, nullable=True),
        _time("done_at", True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_commands"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_commands_job_id_jobs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_commands_job_id_state", "job_commands", ["job_id", "state"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("workspace", sa.Text, nullable=False),
        _time("started_at", False),
        _time("heartbeat_at", False),
        _time("stopped_at", True),
        sa.Column("state", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )


def downgrade() -> None:
    """Drop the daemon's tables."""
    for table in ("job_commands", "job_events", "jobs", "workers"):
        op.drop_table(table)
