"""From alert to action: alert scope, parent link and baseline source, attribution and impact kept at
resolve; slice_buckets (verdict counts per decision dimension, for attribution); remediations (one
row per finding, from quality.remediations); decision_samples (a hash sample of decisions, for
re-review queues)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
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
WEIGHTED = ("weighted_verdicts", "weighted_errors")
DIMENSIONS = ("content_language", "queue_id", "model_version", "actor_type", "policy_version")
LABEL = 128


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="pair"))
        batch.add_column(sa.Column("parent_alert_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("baseline_source", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("attribution", sa.Text, nullable=True))
        batch.add_column(sa.Column("impact", sa.Text, nullable=True))
    op.create_table(
        "slice_buckets",
        sa.Column("policy_label", sa.String(LABEL), nullable=False),
        sa.Column("vendor_id", sa.String(LABEL), nullable=False),
        sa.Column("dimension", sa.String(32), nullable=False),
        sa.Column("value", sa.String(LABEL), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        *[sa.Column(c, sa.BigInteger, nullable=False, server_default="0") for c in COUNTS],
        *[sa.Column(c, sa.Float, nullable=False, server_default="0") for c in WEIGHTED],
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("policy_label", "vendor_id", "dimension", "value", "bucket_start"),
    )
    op.create_index("ix_slice_buckets_bucket_start", "slice_buckets", ["bucket_start"])
    op.create_table(
        "remediations",
        sa.Column("remediation_id", sa.String(36), primary_key=True),
        sa.Column("decision_id", sa.String(128), nullable=False),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("policy_label", sa.String(LABEL), nullable=False),
        sa.Column("vendor_id", sa.String(LABEL), nullable=False),
        sa.Column("market", sa.String(LABEL), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(32), nullable=False),
        sa.Column("recommendation", sa.String(32), nullable=False),
        sa.Column("finding", sa.String(8), nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_remediations_scope", "remediations", ["policy_label", "vendor_id", "decided_at"])
    op.create_index("ix_remediations_vendor", "remediations", ["vendor_id", "decided_at"])
    op.create_index("ix_remediations_decision", "remediations", ["decision_id"])
    op.create_table(
        "decision_samples",
        sa.Column("decision_id", sa.String(128), primary_key=True),
        sa.Column("policy_label", sa.String(LABEL), nullable=False),
        sa.Column("vendor_id", sa.String(LABEL), nullable=False),
        sa.Column("market", sa.String(LABEL), nullable=False),
        *[sa.Column(c, sa.String(LABEL), nullable=False, server_default="") for c in DIMENSIONS],
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("entity_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("judged", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_decision_samples_scope", "decision_samples", ["policy_label", "vendor_id", "decided_at"])
    op.create_index("ix_decision_samples_vendor", "decision_samples", ["vendor_id", "decided_at"])


def downgrade() -> None:
    op.drop_table("decision_samples")
    op.drop_table("remediations")
    op.drop_index("ix_slice_buckets_bucket_start", table_name="slice_buckets")
    op.drop_table("slice_buckets")
    with op.batch_alter_table("alerts") as batch:
        for column in ("impact", "attribution", "baseline_source", "parent_alert_id", "scope"):
            batch.drop_column(column)
