"""Rate buckets counted once by offset: rows without a partition, bucket_owners.applied_to, no book_writes;
alerts.historical (raised while catching up on old history: recorded, not paged)

Each scorer write raises its partitions' ``bucket_owners.applied_to`` (the events-topic offset its
counts go up to) in the same transaction as the counts, so writes apply once without per-process
sequence numbers, and rows no longer need a partition column to be rebuilt partition by partition:
the rows of all partitions are summed.

Upgrading a database written by an earlier scorer: its rows are summed over partitions and
``applied_to`` starts unknown (NULL, read as 0): a scorer then counts from its group's committed
offsets, so the changes of the last flush before the old scorer stopped can be missing. Stop the
old scorers with SIGTERM before migrating; for counts exact to the event, replay into a fresh
database under a new MODQ_SCORER_APP_ID.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
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
KEY = ("policy_label", "vendor_id", "market", "bucket_start")


def _buckets(name: str, with_partition: bool) -> None:
    op.create_table(
        name,
        sa.Column("policy_label", sa.String(128), nullable=False),
        sa.Column("vendor_id", sa.String(128), nullable=False),
        sa.Column("market", sa.String(128), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        *([sa.Column("partition", sa.Integer, nullable=False)] if with_partition else []),
        *[sa.Column(c, sa.BigInteger, nullable=False, server_default="0") for c in COUNTS],
        *[sa.Column(c, sa.Float, nullable=False, server_default="0") for c in WEIGHTED],
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*KEY, *(("partition",) if with_partition else ())),
    )


def _copy(source: str, target: str, target_partition: str | None) -> None:
    sums = ", ".join(f"sum({c})" for c in (*COUNTS, *WEIGHTED))
    columns = ", ".join((*KEY, *(("partition",) if target_partition else ()), *COUNTS, *WEIGHTED, "updated_at"))
    extra = f"{target_partition}, " if target_partition else ""
    op.execute(
        f"INSERT INTO {target} ({columns}) SELECT {', '.join(KEY)}, {extra}{sums}, max(updated_at)"
        f" FROM {source} GROUP BY {', '.join(KEY)}"
    )


def upgrade() -> None:
    _buckets("rate_buckets_summed", with_partition=False)
    _copy("rate_buckets", "rate_buckets_summed", None)
    op.drop_index("ix_rate_buckets_bucket_start", table_name="rate_buckets")
    op.drop_table("rate_buckets")
    op.rename_table("rate_buckets_summed", "rate_buckets")
    op.create_index("ix_rate_buckets_bucket_start", "rate_buckets", ["bucket_start"])
    with op.batch_alter_table("bucket_owners") as batch:
        batch.add_column(sa.Column("applied_to", sa.BigInteger, nullable=True))
    op.drop_table("book_writes")
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("historical", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("historical")
    op.create_table(
        "book_writes",
        sa.Column("writer_id", sa.String(80), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("bucket_owners") as batch:
        batch.drop_column("applied_to")
    _buckets("rate_buckets_by_partition", with_partition=True)
    _copy("rate_buckets", "rate_buckets_by_partition", "0")  # (the sums all go to partition 0)
    op.drop_index("ix_rate_buckets_bucket_start", table_name="rate_buckets")
    op.drop_table("rate_buckets")
    op.rename_table("rate_buckets_by_partition", "rate_buckets")
    op.create_index("ix_rate_buckets_bucket_start", "rate_buckets", ["bucket_start"])
