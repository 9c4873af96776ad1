"""Experiences can be excluded from training: experiences.excluded_reason and excluded_at.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

An excluded experience stays listed with its reason but is never put into a training
batch: excluded by hand (``honed experiences exclude``), or set aside by a batch that
could not use it as a training line (the reason then starts with "set aside: ").

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add experiences.excluded_reason and excluded_at (NULL: not excluded)."""
    op.add_column("experiences", sa.Column("excluded_reason", sa.Text, nullable=True))
    op.add_column("experiences", sa.Column("excluded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the two columns."""
    with op.batch_alter_table("experiences") as batch:
        batch.drop_column("excluded_at")
        batch.drop_column("excluded_reason")
