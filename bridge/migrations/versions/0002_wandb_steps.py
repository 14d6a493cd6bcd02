"""The W&B step of each event's row.

``events.wandb_step`` is the W&B step a row was handed to W&B at, written before the row is
logged, so that after a crash the rows a server or file lacks are sent again at the very same
steps (a replay overwrites, never duplicates).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("wandb_step", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("wandb_step")
