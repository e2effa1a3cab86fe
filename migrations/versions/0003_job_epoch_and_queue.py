"""jobs.epoch (the lease epoch of the claim) and jobs.queue (the Celery queue the job belongs to)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing jobs: their epoch is their attempt count (claims so far, minus hand-offs), which is at most
    # the number of claims; new claims go above it. Their queue is the default one.
    op.add_column("jobs", sa.Column("epoch", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("queue", sa.String(length=64), server_default="default", nullable=False))
    op.execute("UPDATE jobs SET epoch = attempts")
    op.create_index("ix_jobs_queue_status", "jobs", ["queue", "status"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_status", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("queue")
        batch.drop_column("epoch")
