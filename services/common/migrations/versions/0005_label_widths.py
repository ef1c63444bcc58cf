"""Labels as platforms write them: policy_label, vendor_id and market columns hold 128 characters

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (table, column, old width, new width). SQLite does not enforce VARCHAR widths, so only
# PostgreSQL's columns change (widening a varchar rewrites nothing there).
WIDENED = [
    *[
        (t, c, 64, 128)
        for t in ("rate_buckets", "alerts", "alert_history", "silences")
        for c in ("policy_label", "vendor_id")
    ],
    ("rate_buckets", "market", 16, 128),
    ("alerts", "dedup_key", 200, 400),
]


def _alter(narrow: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, old, new in WIDENED:
        op.alter_column(table, column, type_=sa.String(old if narrow else new), existing_nullable=False)


def upgrade() -> None:
    _alter(narrow=False)


def downgrade() -> None:
    _alter(narrow=True)
