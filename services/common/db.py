"""Database tables (SQLAlchemy Core) and engine helpers shared by the scorer and the API."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.scorer.rates import COUNT_FIELDS

metadata = MetaData()

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("policy_label", String(64), nullable=False),
    Column("vendor_id", String(64), nullable=False),
    Column("market", String(16), nullable=False),
    Column("bucket_start", DateTime(timezone=True), nullable=False),
    Column("partition", Integer, nullable=False),
    *[
        Column(name, Float if name.startswith("weighted") else BigInteger, nullable=False, server_default="0")
        for name in COUNT_FIELDS
    ],
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("policy_label", "vendor_id", "market", "bucket_start", "partition"),
    Index("ix_rate_buckets_bucket_start", "bucket_start"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(36), primary_key=True),
    Column("dedup_key", String(200), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("policy_label", String(64), nullable=False),
    Column("vendor_id", String(64), nullable=False),
    Column("error_type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("onset_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Column("baseline_rate", Float, nullable=False),
    Column("observed_rate", Float, nullable=False),
    Column("ci_low", Float, nullable=False),
    Column("ci_high", Float, nullable=False),
    Column("verdicts", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("statistic", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_alerts_status_started", "status", "started_at"),
    Index("ix_alerts_pair", "policy_label", "vendor_id", "started_at"),
    Index("ix_alerts_started", "started_at", "alert_id"),
)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
