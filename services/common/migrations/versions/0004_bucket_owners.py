"""bucket_owners: which scorer process writes each partition's rate buckets (fences moved partitions)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bucket_owners",
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("writer_id", sa.String(80), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bucket_owners")
