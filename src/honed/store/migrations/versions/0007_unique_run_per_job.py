"""A run belongs to one job: a unique index on jobs.run_id.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

Daemons sharing a store propose run ids on their own (a timestamp and a few random
hex digits); two of them may propose the same one in the same second. The claim gives
such a job another id, and this index makes the store refuse what a check alone cannot
rule out: two claims committing the same id at the same instant.

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ix_jobs_run_id (unique; jobs not yet claimed have none, and NULLs differ)."""
    op.create_index("ix_jobs_run_id", "jobs", ["run_id"], unique=True)


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_jobs_run_id", table_name="jobs")
