"""model_runs: evaluations and batch predictions of finished jobs (docs/design.md, "Evaluations and batch
predictions")

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("checkpoint", sa.String(length=64), nullable=True),
        sa.Column("text_column", sa.String(length=255), nullable=True),
        sa.Column("label_column", sa.String(length=255), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("output_path", sa.String(length=512), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_runs_owner", "model_runs", ["owner"], unique=False)
    op.create_index("ix_model_runs_dataset_id", "model_runs", ["dataset_id"], unique=False)
    op.create_index("ix_model_runs_job_kind", "model_runs", ["job_id", "kind"], unique=False)


def downgrade() -> None:
    op.drop_table("model_runs")
