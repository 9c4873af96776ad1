"""Experiences: interactions served by honed or logged by applications, with feedback.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create experiences."""
    op.create_table(
        "experiences",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("adapter_id", sa.Integer, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("messages", _json(), nullable=False),
        sa.Column("output", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("meta", _json(), nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("thumbs", sa.String(8), nullable=True),
        sa.Column("corrected_output", sa.Text, nullable=True),
        _time("feedback_at", True),
        sa.Column("trained_run_id", sa.String(64), nullable=True),
        _time("created_at", False),
        sa.PrimaryKeyConstraint("id", name="pk_experiences"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_experiences_track_tracks"),
        sa.ForeignKeyConstraint(["base_version"], ["bases.version"], name="fk_experiences_base_version_bases"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name="fk_experiences_adapter_id_adapters"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_experiences_track_id", "experiences", ["track", "id"])


def downgrade() -> None:
    """Drop experiences."""
    op.drop_table("experiences")
