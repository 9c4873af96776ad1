"""Leases and fencing tokens on jobs, for several daemons sharing one store.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

``jobs.fence`` counts the claims of a job (0 until the first); every write made on behalf
of a claim carries it, and the store refuses one whose fence is no longer the job's.
``jobs.lease_until`` is when the current claim runs out unless its daemon renews it.

A job held when this migration runs gets a lease that is already over: daemons of
earlier versions renew none, so any daemon may take such a job over (one of the same
workspace recovers it at startup, as before).

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add jobs.fence (0) and jobs.lease_until (ended, for jobs held now)."""
    op.add_column("jobs", sa.Column("fence", sa.Integer, nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET lease_until = updated_at WHERE state IN ('running', 'evaluating')")


def downgrade() -> None:
    """Drop what upgrade added."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("fence")
