"""Idempotent writes of scorer results to the database (absolute values, upserts keyed by id)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, not_
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import alert_history, alerts, insert_for, rate_buckets
from services.common.history import parse_ts
from services.scorer.alerts import AlertEvent
from services.scorer.rates import COUNT_FIELDS, Counts

BucketRow = tuple[int, str, str, str, int, Counts]
"""(partition, policy_label, vendor_id, market, bucket_start_ms, counts)."""

UPSERT_CHUNK_ROWS = 5_000
_BUCKET_KEY = ("policy_label", "vendor_id", "market", "bucket_start", "partition")
_BUCKET_COLUMNS = (*_BUCKET_KEY, *COUNT_FIELDS, "updated_at")


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


PG_UPSERT_BUCKETS = (
    f"INSERT INTO rate_buckets ({_quoted(_BUCKET_COLUMNS)})"
    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_BUCKET_COLUMNS)))})"
    f" ON CONFLICT ({_quoted(_BUCKET_KEY)}) DO UPDATE SET "
    + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in (*COUNT_FIELDS, "updated_at"))
)
"""The bucket upsert for asyncpg's executemany: parameters encoded in C, not by SQLAlchemy."""


def _bucket_values(rows: list[BucketRow], now: datetime) -> list[dict[str, object]]:
    return [
        {
            "partition": p,
            "policy_label": label,
            "vendor_id": vendor,
            "market": market,
            "bucket_start": datetime.fromtimestamp(start_ms / 1000, tz=UTC),
            "updated_at": now,
            **{
                name: (counts[i] if name.startswith("weighted") else int(counts[i]))
                for i, name in enumerate(COUNT_FIELDS)
            },
        }
        for p, label, vendor, market, start_ms, counts in rows
    ]


def _bucket_records(rows: list[BucketRow], now: datetime) -> list[tuple[object, ...]]:
    return [
        (
            label,
            vendor,
            market,
            datetime.fromtimestamp(start_ms / 1000, tz=UTC),
            p,
            *(c if name.startswith("weighted") else int(c) for name, c in zip(COUNT_FIELDS, counts, strict=True)),
            now,
        )
        for p, label, vendor, market, start_ms, counts in rows
    ]


class DbSink:
    """Writes rate buckets and alert states; every write can be repeated without changing the result."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def upsert_buckets(self, rows: Iterable[BucketRow]) -> int:
        """Write rows in one transaction, a chunk of parameter sets at a time: the parameters of a
        flush after a backlog (hundreds of thousands of rows) built at once took a gigabyte."""
        rows = list(rows)
        if not rows:
            return 0
        if self.engine.dialect.name == "postgresql":
            await self._pg_upsert_buckets(rows)
            return len(rows)
        # One statement, executed for many parameter sets: compiled once and cached (a multi-row
        # VALUES clause is compiled anew for every flush, which cost half the scorer's time).
        stmt = insert_for(self.engine, rate_buckets)
        stmt = stmt.on_conflict_do_update(
            index_elements=["policy_label", "vendor_id", "market", "bucket_start", "partition"],
            set_={name: stmt.excluded[name] for name in (*COUNT_FIELDS, "updated_at")},
        )
        now = datetime.now(tz=UTC)
        async with self.engine.begin() as conn:
            for i in range(0, len(rows), UPSERT_CHUNK_ROWS):
                await conn.execute(stmt, _bucket_values(rows[i : i + UPSERT_CHUNK_ROWS], now))
        return len(rows)

    async def _pg_upsert_buckets(self, rows: list[BucketRow]) -> None:
        """On PostgreSQL, straight through asyncpg, in one transaction: SQLAlchemy's per-row
        parameter processing cost more CPU than the database's own work."""
        now = datetime.now(tz=UTC)
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg: Any = raw.driver_connection
            async with pg.transaction():
                for i in range(0, len(rows), UPSERT_CHUNK_ROWS):
                    await pg.executemany(PG_UPSERT_BUCKETS, _bucket_records(rows[i : i + UPSERT_CHUNK_ROWS], now))

    async def upsert_alert(self, event: AlertEvent) -> None:
        row = {
            "alert_id": event.alert_id,
            "dedup_key": event.dedup_key,
            "rule": event.rule,
            "policy_label": event.policy_label,
            "vendor_id": event.vendor_id,
            "error_type": event.error_type,
            "status": event.status,
            "started_at": parse_ts(event.started_at),
            "onset_at": parse_ts(event.onset_at),
            "resolved_at": parse_ts(event.resolved_at),
            "baseline_rate": event.baseline_rate,
            "observed_rate": event.observed_rate,
            "ci_low": event.ci_low,
            "ci_high": event.ci_high,
            "verdicts": event.verdicts,
            "errors": event.errors,
            "statistic": event.statistic,
            "threshold": event.threshold,
            "summary": event.summary,
            "updated_at": datetime.now(tz=UTC),
        }
        stmt = insert_for(self.engine, alerts).values(row)
        ex = stmt.excluded
        # A replayed "firing" never reopens a resolved alert; an acknowledgement survives updates.
        stale = and_(alerts.c.status == "resolved", ex.status != "resolved")
        stmt = stmt.on_conflict_do_update(
            index_elements=["alert_id"],
            set_={
                **{k: ex[k] for k in row if k not in ("alert_id", "status", "started_at", "onset_at")},
                "status": case(
                    (ex.status == "resolved", "resolved"),
                    (alerts.c.status == "acknowledged", "acknowledged"),
                    else_=ex.status,
                ),
            },
            where=not_(stale),
        )
        fired = event.status != "resolved"
        history = (
            insert_for(self.engine, alert_history)
            .values(
                event_id=f"{event.alert_id}:{'fired' if fired else 'resolved'}",
                alert_id=event.alert_id,
                policy_label=event.policy_label,
                vendor_id=event.vendor_id,
                rule=event.rule,
                action="fired" if fired else "resolved",
                actor="modq-scorer",
                at=parse_ts(event.started_at if fired else (event.resolved_at or event.started_at)),
                detail=event.summary,
                recorded_at=datetime.now(tz=UTC),
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
            await conn.execute(history)
