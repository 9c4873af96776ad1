"""A dataset knows its kind: datasets.kind (sft, preference or unpaired).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28

Every record of one dataset is of one kind: SFT conversations or text, preference pairs
(DPO), or unpaired judgements with a true/false label (KTO). A job checks the kind
against its objective before it trains. Datasets from before this revision hold SFT
records only, which the server default gives them.

Plain SQLAlchemy types only (no imports from honed), as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add datasets.kind, 'sft' for every existing row."""
    op.add_column("datasets", sa.Column("kind", sa.String(16), nullable=False, server_default="sft"))


def downgrade() -> None:
    """Drop datasets.kind."""
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("kind")
