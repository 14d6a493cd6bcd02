"""Artifacts found by key (a dataset logged once and used by every job that trained on
it), and the answers of base vs fine-tuned samples kept one by one.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_artifacts_key", "artifacts", ["key"])
    op.create_table(
        "sample_answers",
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("prompt", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(16), primary_key=True),
        sa.Column("answer_json", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sample_answers")
    op.drop_index("ix_artifacts_key", table_name="artifacts")
