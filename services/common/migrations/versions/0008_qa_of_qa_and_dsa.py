"""The QA of QA and the DSA figures: squared weights in the bucket tables (design-based intervals);
slice values wide enough for the ``automation`` slices; review_items (decisions rated by several
reviewers, audited or golden); appeal_facts (one row per appeal); alerts.reviewer_id

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQUARED = ("weighted_sq_verdicts", "weighted_sq_errors")
LABEL = 128


def upgrade() -> None:
    for table in ("rate_buckets", "slice_buckets"):
        with op.batch_alter_table(table) as batch:
            for column in SQUARED:
                batch.add_column(sa.Column(column, sa.Float, nullable=False, server_default="0"))
    if op.get_bind().dialect.name == "postgresql":  # (SQLite does not enforce widths)
        op.alter_column("slice_buckets", "value", type_=sa.String(700), existing_nullable=False)
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("reviewer_id", sa.String(LABEL), nullable=True))
    op.create_table(
        "review_items",
        sa.Column("decision_id", sa.String(128), primary_key=True),
        sa.Column("policy_label", sa.String(LABEL), nullable=False),
        sa.Column("vendor_id", sa.String(LABEL), nullable=False),
        sa.Column("market", sa.String(LABEL), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("golden_answer", sa.String(32), nullable=True),
        sa.Column("raters", sa.Integer, nullable=False),
        sa.Column("ratings", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_review_items_reviewed", "review_items", ["reviewed_at"])
    op.create_index("ix_review_items_pair", "review_items", ["policy_label", "vendor_id", "reviewed_at"])
    op.create_table(
        "appeal_facts",
        sa.Column("appeal_id", sa.String(128), primary_key=True),
        sa.Column("decision_id", sa.String(128), nullable=False),
        sa.Column("policy_label", sa.String(LABEL), nullable=False),
        sa.Column("vendor_id", sa.String(LABEL), nullable=False),
        sa.Column("market", sa.String(LABEL), nullable=False),
        sa.Column("category", sa.String(LABEL), nullable=False),
        sa.Column("channel", sa.String(LABEL), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_appeal_facts_received", "appeal_facts", ["received_at"])


def downgrade() -> None:
    op.drop_table("appeal_facts")
    op.drop_index("ix_review_items_pair", table_name="review_items")
    op.drop_index("ix_review_items_reviewed", table_name="review_items")
    op.drop_table("review_items")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("reviewer_id")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("slice_buckets", "value", type_=sa.String(LABEL), existing_nullable=False)
    for table in ("rate_buckets", "slice_buckets"):
        with op.batch_alter_table(table) as batch:
            for column in SQUARED:
                batch.drop_column(column)
