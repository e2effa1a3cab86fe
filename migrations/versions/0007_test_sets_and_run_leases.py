"""jobs.test_dataset_id (a test set evaluated when training succeeds); model_runs.is_test, attempts and
heartbeat_at (the reaper requeues or fails a run whose worker died) (docs/design.md, "Evaluations and batch
predictions")

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("test_dataset_id", sa.String(length=32), nullable=True))
    op.add_column("model_runs", sa.Column("is_test", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("model_runs", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
    op.add_column("model_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_runs") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("heartbeat_at")
        batch.drop_column("attempts")
        batch.drop_column("is_test")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("test_dataset_id")
