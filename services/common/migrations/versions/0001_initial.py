"""rate buckets and alerts

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

COUNTS = (
    "verdicts",
    "errors",
    "over_enforcement",
    "under_enforcement",
    "wrong_label",
    "wrong_action",
    "unable_to_judge",
    "decisions",
    "appeals",
    "overturned",
)


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("policy_label", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(64), nullable=False),
        sa.Column("market", sa.String(16), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        *[sa.Column(c, sa.BigInteger, nullable=False, server_default="0") for c in COUNTS],
        sa.Column("weighted_verdicts", sa.Float, nullable=False, server_default="0"),
        sa.Column("weighted_errors", sa.Float, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("policy_label", "vendor_id", "market", "bucket_start", "partition"),
    )
    op.create_index("ix_rate_buckets_bucket_start", "rate_buckets", ["bucket_start"])
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(36), primary_key=True),
        sa.Column("dedup_key", sa.String(200), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("policy_label", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(64), nullable=False),
        sa.Column("error_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("onset_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("baseline_rate", sa.Float, nullable=False),
        sa.Column("observed_rate", sa.Float, nullable=False),
        sa.Column("ci_low", sa.Float, nullable=False),
        sa.Column("ci_high", sa.Float, nullable=False),
        sa.Column("verdicts", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("statistic", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alerts_status_started", "alerts", ["status", "started_at"])
    op.create_index("ix_alerts_pair", "alerts", ["policy_label", "vendor_id", "started_at"])
    op.create_index("ix_alerts_started", "alerts", ["started_at", "alert_id"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("rate_buckets")
