"""Scorer results to the database: rate-book writes applied once each, alert states as idempotent upserts."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sqlalchemy import and_, case, delete, not_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import alert_history, alerts, book_writes, bucket_owners, insert_for, rate_buckets
from services.common.history import parse_ts
from services.scorer.alerts import AlertEvent
from services.scorer.pipeline import BookKey, BookWrite
from services.scorer.rates import COUNT_FIELDS, Counts

log = logging.getLogger("modq.scorer.sink")

UPSERT_CHUNK_ROWS = 5_000
_BUCKET_KEY = ("policy_label", "vendor_id", "market", "bucket_start", "partition")
_BUCKET_COLUMNS = (*_BUCKET_KEY, *COUNT_FIELDS, "updated_at")


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


PG_ADD_BUCKETS = (
    f"INSERT INTO rate_buckets ({_quoted(_BUCKET_COLUMNS)})"
    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_BUCKET_COLUMNS)))})"
    f" ON CONFLICT ({_quoted(_BUCKET_KEY)}) DO UPDATE SET "
    + ", ".join(f'"{c}" = rate_buckets."{c}" + EXCLUDED."{c}"' for c in COUNT_FIELDS)
    + ', "updated_at" = EXCLUDED."updated_at"'
)
"""Adds a row of counts, for asyncpg's executemany: parameters encoded in C, not by SQLAlchemy."""
PG_RESET_PARTITION = 'DELETE FROM rate_buckets WHERE "partition" = $1 AND bucket_start >= $2'
PG_CLAIM_WRITE = (
    "INSERT INTO book_writes (writer_id, seq, updated_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (writer_id) DO UPDATE SET seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at"
    " WHERE book_writes.seq < EXCLUDED.seq RETURNING seq"
)
"""Records a write's number; returns no row if the writer already applied it."""
PG_CLAIM_PARTITION = (
    "INSERT INTO bucket_owners (partition, writer_id, updated_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (partition) DO UPDATE SET writer_id = EXCLUDED.writer_id, updated_at = EXCLUDED.updated_at"
)
PG_PARTITION_OWNER = "SELECT writer_id FROM bucket_owners WHERE partition = $1 FOR SHARE"


async def _fence(
    write: BookWrite,
    writer_id: str,
    claim: Callable[[int], Awaitable[Any]],
    owner: Callable[[int], Awaitable[str | None]],
) -> set[int]:
    """Claim the partitions the write rebuilds; return the others of its rows that another writer
    has claimed since (their rows are skipped: the partition moved, and its new owner's rebuild
    replaced them). A claim locks the partition's owner row and a check share-locks it until the
    transaction ends, so a new owner's rebuild waits for a write of the old owner still in
    progress, and both go in ascending partition order (two writers never wait on each other)."""
    lost: set[int] = set()
    for p in sorted(set(write.resets) | {key[0] for key in write.rows}):
        if p in write.resets:
            await claim(p)
        elif (holder := await owner(p)) is not None and holder != writer_id:
            lost.add(p)
    if lost:
        log.warning("changes of partitions another scorer writes now dropped", extra={"partitions": sorted(lost)})
    return lost


async def _chunks(write: BookWrite, lost: set[int]) -> AsyncIterator[list[tuple[BookKey, Counts]]]:
    """The write's rows, ``UPSERT_CHUNK_ROWS`` at a time (parameters built for one chunk only):
    first its rebuild's, summed a chunk at a time as they are read (the event loop gets a turn
    between steps), then its changes, but those of ``lost`` partitions."""
    if write.rebuild is not None:
        for rows in write.rebuild.steps:
            if rows is None:
                await asyncio.sleep(0)
                continue
            items = iter(rows.items())
            while chunk := list(islice(items, UPSERT_CHUNK_ROWS)):
                yield chunk
    items = iter(write.rows.items())
    while chunk := list(islice(items, UPSERT_CHUNK_ROWS)):
        yield [row for row in chunk if row[0][0] not in lost] if lost else chunk


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class DbSink:
    """Writes rate buckets and alert states; every write can be repeated without changing the result."""

    def __init__(self, engine: AsyncEngine, writer_id: str | None = None) -> None:
        self.engine = engine
        self.writer_id = writer_id or f"scorer-{uuid.uuid4().hex}"

    async def write_book(self, write: BookWrite) -> bool:
        """Apply a rate-book write in one transaction; False if it had been applied already."""
        if self.engine.dialect.name == "postgresql":
            return await self._pg_write_book(write)
        # One statement, executed for many parameter sets: compiled once and cached (a multi-row
        # VALUES clause is compiled anew for every flush, which cost half the scorer's time).
        add = insert_for(self.engine, rate_buckets)
        add = add.on_conflict_do_update(
            index_elements=list(_BUCKET_KEY),
            set_={
                **{name: rate_buckets.c[name] + add.excluded[name] for name in COUNT_FIELDS},
                "updated_at": add.excluded.updated_at,
            },
        )
        claim = insert_for(self.engine, book_writes).values(
            writer_id=self.writer_id, seq=write.seq, updated_at=datetime.now(tz=UTC)
        )
        claim = claim.on_conflict_do_update(
            index_elements=["writer_id"],
            set_={"seq": claim.excluded.seq, "updated_at": claim.excluded.updated_at},
            where=book_writes.c.seq < claim.excluded.seq,
        ).returning(book_writes.c.seq)
        now = datetime.now(tz=UTC)
        async with self.engine.begin() as conn:
            if (await conn.execute(claim)).first() is None:
                return False

            async def claim_partition(p: int) -> None:
                row = {"partition": p, "writer_id": self.writer_id, "updated_at": now}
                stmt = insert_for(self.engine, bucket_owners).values(row)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["partition"],
                        set_={"writer_id": stmt.excluded.writer_id, "updated_at": stmt.excluded.updated_at},
                    )
                )

            async def owner(p: int) -> str | None:
                found = await conn.execute(select(bucket_owners.c.writer_id).where(bucket_owners.c.partition == p))
                return found.scalar()

            lost = await _fence(write, self.writer_id, claim_partition, owner)
            for p, start_ms in write.resets.items():
                await conn.execute(
                    delete(rate_buckets).where(
                        rate_buckets.c.partition == p, rate_buckets.c.bucket_start >= _ts(start_ms)
                    )
                )
            async for chunk in _chunks(write, lost):
                values = [
                    {
                        "partition": p,
                        "policy_label": label,
                        "vendor_id": vendor,
                        "market": market,
                        "bucket_start": _ts(start_ms),
                        "updated_at": now,
                        **dict(zip(COUNT_FIELDS, counts, strict=True)),
                    }
                    for (p, label, vendor, market, start_ms), counts in chunk
                ]
                await conn.execute(add, values)
        return True

    async def forget_writers(self, idle_s: float = 7 * 86_400) -> int:
        """Drop the write numbers of writers idle that long (processes long gone); returns how many."""
        cutoff = datetime.now(tz=UTC).timestamp() - idle_s
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(book_writes).where(book_writes.c.updated_at < _ts(int(cutoff * 1000))))
        return int(done.rowcount or 0)

    async def _pg_write_book(self, write: BookWrite) -> bool:
        """On PostgreSQL, straight through asyncpg: SQLAlchemy's per-row parameter processing cost
        more CPU than the database's own work. Rows go a chunk of parameter sets at a time: the
        parameters of a rebuild (millions of rows) built at once took gigabytes."""
        now = datetime.now(tz=UTC)
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg: Any = raw.driver_connection
            async with pg.transaction():
                if await pg.fetchval(PG_CLAIM_WRITE, self.writer_id, write.seq, now) is None:
                    return False
                lost = await _fence(
                    write,
                    self.writer_id,
                    lambda p: pg.execute(PG_CLAIM_PARTITION, p, self.writer_id, now),
                    lambda p: pg.fetchval(PG_PARTITION_OWNER, p),
                )
                for p, start_ms in write.resets.items():
                    await pg.execute(PG_RESET_PARTITION, p, _ts(start_ms))
                starts: dict[int, datetime] = {}  # rows of a write share few minutes
                async for chunk in _chunks(write, lost):
                    records = [
                        (
                            label,
                            vendor,
                            market,
                            starts.get(start_ms) or starts.setdefault(start_ms, _ts(start_ms)),
                            p,
                            *c,
                            now,
                        )
                        for (p, label, vendor, market, start_ms), c in chunk
                    ]
                    await pg.executemany(PG_ADD_BUCKETS, records)
        return True

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
