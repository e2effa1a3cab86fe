"""datasets.deleted_at: deleting a dataset that finished jobs refer to

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 19:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("deleted_at")
