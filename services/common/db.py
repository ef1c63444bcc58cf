"""Database tables (SQLAlchemy Core) and engine helpers shared by the scorer and the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.contracts.events import LABEL_MAX
from services.domain.join import SLICE_DIMENSIONS
from services.domain.rates import COUNT_FIELDS

DB_UNAVAILABLE = (OperationalError, DBAPIError, OSError)
"""What a database call raises when the database is down or unreachable (retry, or answer 503)."""

metadata = MetaData()


def count_columns() -> list[Column[Any]]:
    """The counters of a bucket table (``COUNT_FIELDS``): integers, and floats for the weighted sums."""
    return [
        Column(name, Float if name.startswith("weighted") else BigInteger, nullable=False, server_default="0")
        for name in COUNT_FIELDS
    ]


rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("market", String(LABEL_MAX), nullable=False),
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    *count_columns(),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("policy_label", "vendor_id", "market", "bucket_start"),
    Index("ix_rate_buckets_bucket_start", "bucket_start"),
)

bucket_owners = Table(
    "bucket_owners",
    metadata,
    # Per partition of the events topic: the scorer process that writes its changes (claimed when
    # the partition is assigned to it; every write locks the row and drops the changes of
    # partitions another process has claimed since) and the offset its counts in rate_buckets go up
    # to, raised in the same transaction as the counts (services.domain.book).
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("writer_id", String(80), nullable=False),
    Column("applied_to", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("dedup_key", String(400), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("error_type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("onset_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Column("resolved_by", String(128), nullable=True),
    Column("baseline_rate", Float, nullable=False),
    Column("observed_rate", Float, nullable=False),
    Column("ci_low", Float, nullable=False),
    Column("ci_high", Float, nullable=False),
    Column("verdicts", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("statistic", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Column("historical", Boolean, nullable=False, server_default=false()),
    Column("scope", String(16), nullable=False, server_default="pair"),
    Column("parent_alert_id", String(36), nullable=True),
    Column("baseline_source", String(40), nullable=False, server_default=""),
    Column("attribution", Text, nullable=True),  # JSON, stored at resolve (computed live while firing)
    Column("impact", Text, nullable=True),  # JSON, likewise
    Column("reviewer_id", String(LABEL_MAX), nullable=True),  # a reviewer's alert (scope reviewer)
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_alerts_status_started", "status", "started_at"),
    Index("ix_alerts_pair", "policy_label", "vendor_id", "started_at"),
    Index("ix_alerts_started", "started_at", "alert_id"),
)

# SLICE_DIMENSIONS (from domain.join): decision dimensions counted per slice (beside market, which
# rate_buckets has) for attribution: each primary verdict is one row of dimension ``slices`` whose
# value joins the five (domain.join.COMBINED); rows of each dimension alone are what earlier
# versions wrote. Dimensions ``reviewer_id`` and ``automation`` (policy label ``*``) hold the hourly
# QA-of-QA and DSA counts. decision_samples has a column for each.

slice_buckets = Table(
    "slice_buckets",
    metadata,
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("dimension", String(32), nullable=False),
    Column("value", String(700), nullable=False),  # (an automation slice's value joins five labels)
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    *count_columns(),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("policy_label", "vendor_id", "dimension", "value", "bucket_start"),
    Index("ix_slice_buckets_bucket_start", "bucket_start"),
)

remediations = Table(
    "remediations",
    metadata,
    Column("remediation_id", String(36), primary_key=True),
    Column("decision_id", String(128), nullable=False),
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("market", String(LABEL_MAX), nullable=False),
    Column("action", String(32), nullable=False),
    Column("error_type", String(32), nullable=False),
    Column("recommendation", String(32), nullable=False),
    Column("finding", String(8), nullable=False),  # qa | appeal
    Column("evidence", Text, nullable=False),  # JSON {"verdict_ids": [...], "appeal_ids": [...]}
    Column("status", String(16), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("found_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_remediations_scope", "policy_label", "vendor_id", "decided_at"),
    Index("ix_remediations_vendor", "vendor_id", "decided_at"),
    Index("ix_remediations_decision", "decision_id"),
)

decision_samples = Table(
    "decision_samples",
    metadata,
    Column("decision_id", String(128), primary_key=True),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("market", String(LABEL_MAX), nullable=False),
    *[Column(name, String(LABEL_MAX), nullable=False, server_default="") for name in SLICE_DIMENSIONS],
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("judged", Boolean, nullable=False, server_default=false()),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_decision_samples_scope", "policy_label", "vendor_id", "decided_at"),
    Index("ix_decision_samples_vendor", "vendor_id", "decided_at"),
)

review_items = Table(
    "review_items",
    metadata,
    # A decision rated by two or more reviewers, audited, or golden: its current ratings, as JSON
    # [[verdict_id, reviewer_id, tier, category, t_ms], ...] (codes.QA_TIERS, codes.ERROR_TYPES).
    Column("decision_id", String(128), primary_key=True),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("market", String(LABEL_MAX), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("reviewed_at", DateTime(timezone=True), nullable=False),
    Column("golden_answer", String(32), nullable=True),
    Column("raters", Integer, nullable=False),
    Column("ratings", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_review_items_reviewed", "reviewed_at"),
    Index("ix_review_items_pair", "policy_label", "vendor_id", "reviewed_at"),
)

appeal_facts = Table(
    "appeal_facts",
    metadata,
    # One row per appeal (complaint), for the DSA figures; the time to decide is resolved_at -
    # filed_at where the appeal gives both.
    Column("appeal_id", String(128), primary_key=True),
    Column("decision_id", String(128), nullable=False),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("market", String(LABEL_MAX), nullable=False),
    Column("category", String(LABEL_MAX), nullable=False),
    Column("channel", String(LABEL_MAX), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),  # filed_at, else the event time
    Column("filed_at", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_appeal_facts_received", "received_at"),
)

alert_history = Table(
    "alert_history",
    metadata,
    Column("event_id", String(80), primary_key=True),
    Column("alert_id", String(36), nullable=True),
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("rule", String(64), nullable=True),
    Column("action", String(32), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("until", DateTime(timezone=True), nullable=True),
    Column("comment", Text, nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_alert_history_recorded", "recorded_at", "event_id"),
    Index("ix_alert_history_alert", "alert_id", "recorded_at"),
    Index("ix_alert_history_pair", "policy_label", "vendor_id", "recorded_at"),
)

silences = Table(
    "silences",
    metadata,
    Column("policy_label", String(LABEL_MAX), nullable=False),
    Column("vendor_id", String(LABEL_MAX), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("comment", Text, nullable=True),
    PrimaryKeyConstraint("policy_label", "vendor_id"),
)

notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("receiver", String(32), nullable=False),
    Column("delivery_key", String(120), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("receiver", "delivery_key"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


def insert_for(engine: AsyncEngine, table: Table) -> Any:
    """An INSERT that supports ON CONFLICT on the engine's dialect (PostgreSQL or SQLite)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
