"""The learning loop: teacher answers, assembled batches, and two columns on experiences
(the scorer's score, the batch an experience went into).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create teacher_answers and learning_batches; add experiences.auto_score and batch_id."""
    op.add_column("experiences", sa.Column("auto_score", sa.Float, nullable=True))
    op.add_column("experiences", sa.Column("batch_id", sa.Integer, nullable=True))
    op.create_table(
        "teacher_answers",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("experience_id", sa.Integer, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        _time("created_at", False),
        sa.PrimaryKeyConstraint("id", name="pk_teacher_answers"),
        sa.ForeignKeyConstraint(["experience_id"], ["experiences.id"],
                                name="fk_teacher_answers_experience_id_experiences"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_teacher_answers_track_tracks"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_teacher_answers_experience_id", "teacher_answers", ["experience_id"])
    op.create_index("ix_teacher_answers_track_created_at", "teacher_answers", ["track", "created_at"])
    op.create_table(
        "learning_batches",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("dataset_id", sa.Integer, nullable=True),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("experience_ids", _json(), nullable=False),
        sa.Column("counts", _json(), nullable=False),
        sa.Column("provenance_path", sa.Text, nullable=False),
        sa.Column("trained_run_id", sa.String(64), nullable=True),
        _time("created_at", False),
        sa.PrimaryKeyConstraint("id", name="pk_learning_batches"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_learning_batches_track_tracks"),
        sa.ForeignKeyConstraint(["base_version"], ["bases.version"], name="fk_learning_batches_base_version_bases"),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name="fk_learning_batches_dataset_id_datasets"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_learning_batches_job_id_jobs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_learning_batches_track_id", "learning_batches", ["track", "id"])


def downgrade() -> None:
    """Drop what upgrade made."""
    op.drop_table("learning_batches")
    op.drop_table("teacher_answers")
    with op.batch_alter_table("experiences") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("auto_score")
