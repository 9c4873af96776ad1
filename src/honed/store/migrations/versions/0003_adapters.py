"""Adapters and deployments.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create adapters (one deployed per track, by a partial unique index) and deployments."""
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("evaluation", _json(), nullable=True),
        sa.Column("verdict", _json(), nullable=True),
        _time("created_at", False),
        _time("updated_at", False),
        sa.PrimaryKeyConstraint("id", name="pk_adapters"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_adapters_track_tracks"),
        sa.ForeignKeyConstraint(["base_version"], ["bases.version"], name="fk_adapters_base_version_bases"),
        sqlite_autoincrement=True,
    )
    op.create_index("uq_adapters_one_deployed_per_track", "adapters", ["track"], unique=True,
                    sqlite_where=sa.text("state = 'deployed'"), postgresql_where=sa.text("state = 'deployed'"))
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("adapter_id", sa.Integer, nullable=True),
        sa.Column("previous_adapter_id", sa.Integer, nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        _time("at", False),
        sa.Column("hooks", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_deployments_track_tracks"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name="fk_deployments_adapter_id_adapters"),
        sa.ForeignKeyConstraint(["previous_adapter_id"], ["adapters.id"],
                                name="fk_deployments_previous_adapter_id_adapters"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_deployments_track_id", "deployments", ["track", "id"])


def downgrade() -> None:
    """Drop adapters and deployments."""
    op.drop_table("deployments")
    op.drop_table("adapters")
