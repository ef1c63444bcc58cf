"""alert history, silences, notification ledger, API keys

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_history",
        sa.Column("event_id", sa.String(80), primary_key=True),
        sa.Column("alert_id", sa.String(36), nullable=True),
        sa.Column("policy_label", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("until", TS, nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("recorded_at", TS, nullable=False),
    )
    op.create_index("ix_alert_history_recorded", "alert_history", ["recorded_at", "event_id"])
    op.create_index("ix_alert_history_alert", "alert_history", ["alert_id", "recorded_at"])
    op.create_index("ix_alert_history_pair", "alert_history", ["policy_label", "vendor_id", "recorded_at"])
    op.create_table(
        "silences",
        sa.Column("policy_label", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(64), nullable=False),
        sa.Column("until", TS, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("policy_label", "vendor_id"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("receiver", sa.String(32), nullable=False),
        sa.Column("delivery_key", sa.String(120), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("delivered_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("receiver", "delivery_key"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.add_column("alerts", sa.Column("resolved_by", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("alerts", "resolved_by")
    op.drop_table("api_keys")
    op.drop_table("notification_deliveries")
    op.drop_table("silences")
    op.drop_index("ix_alert_history_pair", "alert_history")
    op.drop_index("ix_alert_history_alert", "alert_history")
    op.drop_index("ix_alert_history_recorded", "alert_history")
    op.drop_table("alert_history")
