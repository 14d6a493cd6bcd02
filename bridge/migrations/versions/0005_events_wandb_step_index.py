"""An index on each job's W&B steps: the last step a job's rows went to is looked up before
every batch of rows is placed, and reads two ends of this index instead of every event.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_job_wandb_step", "events", ["job_id", "wandb_step"])


def downgrade() -> None:
    op.drop_index("ix_events_job_wandb_step", table_name="events")
