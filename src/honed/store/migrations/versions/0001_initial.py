"""Initial tables: bases, tracks, datasets, records, runs, checkpoints, metrics,
trained_records.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Plain SQLAlchemy types only (no imports from honed): a revision must keep creating the
same tables however ``schema.py`` evolves later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the first tables of the store."""
    op.create_table(
        "bases",
        sa.Column("version", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("lineage", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_bases"),
        sa.ForeignKeyConstraint(
            ["parent_version"], ["bases.version"], name="fk_bases_parent_version_bases"
        ),
    )
    op.create_table(
        "tracks",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tracks"),
        sa.ForeignKeyConstraint(
            ["base_version"], ["bases.version"], name="fk_tracks_base_version_bases"
        ),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("file_hash", sa.String(128), nullable=False),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("stored_path", sa.Text, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("n_records", sa.Integer, nullable=False),
        sa.Column("n_rejected", sa.Integer, nullable=False),
        sa.Column("reject_path", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("track", "file_hash", name="uq_datasets_track_file_hash"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_datasets_track_tracks"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "records",
        sa.Column("dataset_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("line_no", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("record_hash", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "line_no", name="pk_records"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_records_dataset_id_datasets"
        ),
    )
    op.create_index("ix_records_record_hash", "records", ["record_hash"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("dataset_ids", _json(), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("final_metrics", _json(), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("adapter_path", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["track"], ["tracks.name"], name="fk_runs_track_tracks"),
        sa.ForeignKeyConstraint(
            ["base_version"], ["bases.version"], name="fk_runs_base_version_bases"
        ),
    )
    op.create_index("ix_runs_track_started_at", "runs", ["track", "started_at"])
    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("complete", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", name="pk_checkpoints"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_checkpoints_run_id_runs"),
    )
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("attempt", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("values", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "kind", "step", "attempt", name="pk_metrics"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_metrics_run_id_runs"),
    )
    op.create_index("ix_metrics_run_id_step", "metrics", ["run_id", "step"])
    op.create_table(
        "trained_records",
        sa.Column("track", sa.String(200), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("record_hash", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("track", "base_version", "record_hash", name="pk_trained_records"),
    )


def downgrade() -> None:
    """Drop every table of the first revision (children before parents)."""
    for table in (
        "trained_records", "metrics", "checkpoints", "runs", "records", "datasets",
        "tracks", "bases",
    ):
        op.drop_table(table)
