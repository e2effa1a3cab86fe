"""sweeps.test_dataset_id: the test set every trial is evaluated on (docs/design.md, "Sweeps")

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("test_dataset_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("test_dataset_id")
