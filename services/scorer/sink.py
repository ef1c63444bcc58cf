"""Scorer results to the database: rate-book writes, each partition's applied once by offset."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import msgspec
import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import (
    appeal_facts,
    bucket_owners,
    decision_samples,
    insert_for,
    rate_buckets,
    review_items,
    slice_buckets,
)
from services.contracts.codes import APPEAL_OUTCOMES, ERROR_TYPES
from services.contracts.facts import Fact, ReviewItem
from services.domain.book import BookWrite
from services.domain.join import SLICE_DIMENSIONS, DecisionAttrs, split_slice
from services.domain.rates import COUNT_FIELDS, BucketKey, Counts

UPSERT_CHUNK_ROWS = 5_000

log = logging.getLogger("modq.scorer.sink")

_KEY = ("policy_label", "vendor_id", "market", "bucket_start")
_COLUMNS = (*_KEY, *COUNT_FIELDS, "updated_at")


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


PG_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS modq_book_rows (LIKE rate_buckets INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
"""Per connection, where a write's rows are copied before they are added to ``rate_buckets``."""
PG_MERGE = (
    f"INSERT INTO rate_buckets ({_quoted(_COLUMNS)}) SELECT {_quoted(_COLUMNS)} FROM modq_book_rows"
    f" ORDER BY {_quoted(_KEY)}"  # one lock order for every writer: two writers never deadlock
    f" ON CONFLICT ({_quoted(_KEY)}) DO UPDATE SET "
    + ", ".join(f'"{c}" = rate_buckets."{c}" + EXCLUDED."{c}"' for c in COUNT_FIELDS)
    + ', "updated_at" = EXCLUDED."updated_at"'
)
_SLICE_KEY = ("policy_label", "vendor_id", "dimension", "value", "bucket_start")
_SLICE_COLUMNS = (*_SLICE_KEY, *COUNT_FIELDS, "updated_at")
PG_STAGE_SLICES = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS modq_slice_rows (LIKE slice_buckets INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
PG_MERGE_SLICES = (
    f"INSERT INTO slice_buckets ({_quoted(_SLICE_COLUMNS)}) SELECT {_quoted(_SLICE_COLUMNS)} FROM modq_slice_rows"
    f" ORDER BY {_quoted(_SLICE_KEY)}"
    f" ON CONFLICT ({_quoted(_SLICE_KEY)}) DO UPDATE SET "
    + ", ".join(f'"{c}" = slice_buckets."{c}" + EXCLUDED."{c}"' for c in COUNT_FIELDS)
    + ', "updated_at" = EXCLUDED."updated_at"'
)
SliceKey = tuple[str, str, str, str, int]


def split_rows(rows: dict[BucketKey, Counts]) -> tuple[dict[BucketKey, Counts], dict[SliceKey, Counts]]:
    """A write's rows for ``rate_buckets`` and its slice rows for ``slice_buckets``."""
    rates: dict[BucketKey, Counts] = {}
    slices: dict[SliceKey, Counts] = {}
    for key, counts in rows.items():
        label, vendor, market, start = key
        dim = split_slice(market)
        if dim is None:
            rates[key] = counts
        else:
            slices[(label, vendor, dim[0], dim[1], start)] = counts
    return rates, slices


def fact_rows(facts: Iterable[Fact], now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``review_items`` and of ``appeal_facts`` for a write's facts."""
    reviews, appeals = [], []
    for f in facts:
        if isinstance(f, ReviewItem):
            reviews.append(
                {
                    "decision_id": f.decision_id,
                    "policy_label": f.policy_label,
                    "vendor_id": f.vendor_id,
                    "market": f.market,
                    "decided_at": _ts(f.decided_ms),
                    "reviewed_at": _ts(max((r.t_ms for r in f.ratings), default=f.decided_ms)),
                    "golden_answer": ERROR_TYPES[f.golden_answer] if f.golden_answer >= 0 else None,
                    "raters": len({r.reviewer_id for r in f.ratings}),
                    "ratings": orjson.dumps([list(msgspec.structs.astuple(r)) for r in f.ratings]).decode(),
                    "updated_at": now,
                }
            )
        else:
            appeals.append(
                {
                    "appeal_id": f.appeal_id,
                    "decision_id": f.decision_id,
                    "policy_label": f.policy_label,
                    "vendor_id": f.vendor_id,
                    "market": f.market,
                    "category": f.category,
                    "channel": f.channel,
                    "outcome": APPEAL_OUTCOMES[f.outcome],
                    "received_at": _ts(f.filed_ms or f.t_ms),
                    "filed_at": _ts(f.filed_ms) if f.filed_ms else None,
                    "resolved_at": _ts(f.resolved_ms) if f.resolved_ms else None,
                    "decided_at": _ts(f.decided_ms),
                    "updated_at": now,
                }
            )
    return reviews, appeals


async def upsert_facts(conn: AsyncConnection, engine: AsyncEngine, facts: Iterable[Fact], now: datetime) -> None:
    """Upsert a write's facts (in its transaction): a later fact of a key replaces the row."""
    reviews, appeals = fact_rows(facts, now)
    for table, key, rows in ((review_items, "decision_id", reviews), (appeal_facts, "appeal_id", appeals)):
        if not rows:
            continue
        stmt = insert_for(engine, table)
        stmt = stmt.on_conflict_do_update(index_elements=[key], set_={c: stmt.excluded[c] for c in rows[0] if c != key})
        for i in range(0, len(rows), UPSERT_CHUNK_ROWS):
            await conn.execute(stmt, rows[i : i + UPSERT_CHUNK_ROWS])


def written_facts(write: BookWrite, applied: Iterable[int]) -> list[Fact]:
    """The facts of the partitions a write adds (those in already, or moved, are not written)."""
    return [f for p in sorted(applied) for f in write.facts.get(p, {}).values()]


PG_LOCK_OWNERS = (
    "SELECT partition, writer_id, coalesce(applied_to, 0) AS applied_to FROM bucket_owners"
    " WHERE partition = ANY($1::int[]) ORDER BY partition FOR UPDATE"
)
PG_SET_APPLIED = (
    "UPDATE bucket_owners SET applied_to = v.t, updated_at = $3"
    " FROM unnest($1::int[], $2::bigint[]) AS v(p, t) WHERE partition = v.p"
)
PG_CLAIM = (
    "INSERT INTO bucket_owners (partition, writer_id, applied_to, updated_at)"
    " SELECT p, $2, 0, $3 FROM unnest($1::int[]) AS p ORDER BY p"
    " ON CONFLICT (partition) DO UPDATE SET writer_id = EXCLUDED.writer_id, updated_at = EXCLUDED.updated_at"
    " RETURNING partition, coalesce(applied_to, 0) AS applied_to"
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a book write did, per partition: added, in already (a retry), or moved to another writer."""

    applied: frozenset[int] = frozenset()
    already: frozenset[int] = frozenset()
    lost: frozenset[int] = frozenset()


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _sort_out(
    write: BookWrite, owners: dict[int, tuple[str, int]], writer_id: str
) -> tuple[WriteResult, dict[BucketKey, Counts], dict[int, int]]:
    """Which partitions of a write to add (owned by this writer, not in yet), their rows summed,
    and the offsets to record for them."""
    applied, already, lost = set(), set(), set()
    rows: dict[BucketKey, Counts] = {}
    through: dict[int, int] = {}
    for p, (part_rows, up_to) in sorted(write.parts.items()):
        owner = owners.get(p)
        if owner is None or owner[0] != writer_id:
            lost.add(p)
        elif owner[1] >= up_to:
            already.add(p)
        else:
            applied.add(p)
            through[p] = up_to
            for key, counts in part_rows.items():
                row = rows.get(key)
                if row is None:
                    rows[key] = counts  # shared with the write, which is never changed: copied on a sum
                else:
                    rows[key] = summed = row.copy()
                    summed.add(counts)
    if lost:
        log.warning("changes of partitions another scorer writes now dropped", extra={"partitions": sorted(lost)})
    return WriteResult(frozenset(applied), frozenset(already), frozenset(lost)), rows, through


class DbSink:
    """Writes rate buckets; every write can be repeated without changing the result."""

    def __init__(self, engine: AsyncEngine, writer_id: str | None = None) -> None:
        self.engine = engine
        self.writer_id = writer_id or f"scorer-{uuid.uuid4().hex}"

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """Become the writer of these partitions; returns each one's ``applied_to`` (the offset its
        counts in the database go up to). Waits for a write of the previous writer still in its
        transaction (it holds the partition's owner row), so none of that writer's writes can
        land after the claim."""
        parts = sorted(set(partitions))
        if not parts:
            return {}
        now = datetime.now(tz=UTC)
        if self.engine.dialect.name == "postgresql":
            async with self.engine.connect() as conn:
                pg: Any = (await conn.get_raw_connection()).driver_connection
                async with pg.transaction():
                    claimed = await pg.fetch(PG_CLAIM, parts, self.writer_id, now)
            return {r["partition"]: int(r["applied_to"]) for r in claimed}
        async with self.engine.begin() as conn:
            out = {}
            for p in parts:
                stmt = insert_for(self.engine, bucket_owners).values(
                    partition=p, writer_id=self.writer_id, applied_to=0, updated_at=now
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["partition"],
                    set_={"writer_id": stmt.excluded.writer_id, "updated_at": stmt.excluded.updated_at},
                )
                await conn.execute(stmt)
                found = await conn.execute(select(bucket_owners.c.applied_to).where(bucket_owners.c.partition == p))
                out[p] = int(found.scalar() or 0)
            return out

    async def write_book(self, write: BookWrite) -> WriteResult:
        """Add a book write's rows in one transaction: for each of its partitions only while this
        writer owns it and only if the database does not have them yet, raising its ``applied_to``."""
        if not write.parts:
            return WriteResult()
        if self.engine.dialect.name == "postgresql":
            return await self._pg_write_book(write)
        now = datetime.now(tz=UTC)
        add = insert_for(self.engine, rate_buckets)
        # One statement for many parameter sets: compiled once and cached.
        add = add.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={
                **{name: rate_buckets.c[name] + add.excluded[name] for name in COUNT_FIELDS},
                "updated_at": add.excluded.updated_at,
            },
        )
        async with self.engine.begin() as conn:
            found = await conn.execute(
                select(bucket_owners.c.partition, bucket_owners.c.writer_id, bucket_owners.c.applied_to).where(
                    bucket_owners.c.partition.in_(list(write.parts))
                )
            )
            owners = {r.partition: (r.writer_id, int(r.applied_to or 0)) for r in found}
            result, all_rows, through = _sort_out(write, owners, self.writer_id)
            rows, slices = split_rows(all_rows)
            if slices:
                add_slices = insert_for(self.engine, slice_buckets)
                add_slices = add_slices.on_conflict_do_update(
                    index_elements=list(_SLICE_KEY),
                    set_={
                        **{name: slice_buckets.c[name] + add_slices.excluded[name] for name in COUNT_FIELDS},
                        "updated_at": add_slices.excluded.updated_at,
                    },
                )
                values = [
                    {
                        **dict(zip(_SLICE_KEY, (*key[:4], _ts(key[4])), strict=True)),
                        "updated_at": now,
                        **dict(zip(COUNT_FIELDS, counts.values(), strict=True)),
                    }
                    for key, counts in slices.items()
                ]
                await conn.execute(add_slices, values)
            items = iter(rows.items())
            while chunk := list(islice(items, UPSERT_CHUNK_ROWS)):
                values = [
                    {
                        "policy_label": label,
                        "vendor_id": vendor,
                        "market": market,
                        "bucket_start": _ts(start_ms),
                        "updated_at": now,
                        **dict(zip(COUNT_FIELDS, counts.values(), strict=True)),
                    }
                    for (label, vendor, market, start_ms), counts in chunk
                ]
                await conn.execute(add, values)
            await upsert_facts(conn, self.engine, written_facts(write, result.applied), now)
            for p, up_to in through.items():
                await conn.execute(
                    update(bucket_owners).where(bucket_owners.c.partition == p).values(applied_to=up_to, updated_at=now)
                )
        return result

    async def write_samples(self, samples: dict[str, tuple[DecisionAttrs, bool]], judged: set[str]) -> None:
        await _write_samples(self.engine, samples, judged)

    async def _pg_write_book(self, write: BookWrite) -> WriteResult:
        """On PostgreSQL, straight through asyncpg: the rows are copied (binary COPY) into a
        temporary table and added from there in one statement, which costs PostgreSQL a fraction
        of a statement per row."""
        now = datetime.now(tz=UTC)
        async with self.engine.connect() as conn:
            pg: Any = (await conn.get_raw_connection()).driver_connection
            async with pg.transaction():
                locked = await pg.fetch(PG_LOCK_OWNERS, sorted(write.parts))
                owners = {r["partition"]: (r["writer_id"], int(r["applied_to"])) for r in locked}
                result, all_rows, through = _sort_out(write, owners, self.writer_id)
                rows, slices = split_rows(all_rows)
                starts: dict[int, datetime] = {}  # rows of a write share few minutes
                if slices:
                    await pg.execute(PG_STAGE_SLICES)
                    await pg.copy_records_to_table(
                        "modq_slice_rows",
                        columns=_SLICE_COLUMNS,
                        records=[
                            (*key[:4], starts.get(key[4]) or starts.setdefault(key[4], _ts(key[4])), *c.values(), now)
                            for key, c in slices.items()
                        ],
                    )
                    await pg.execute(PG_MERGE_SLICES)
                if rows:
                    await pg.execute(PG_STAGE)
                    await pg.copy_records_to_table(
                        "modq_book_rows",
                        columns=_COLUMNS,
                        records=[
                            (
                                label,
                                vendor,
                                market,
                                starts.get(start_ms) or starts.setdefault(start_ms, _ts(start_ms)),
                                *counts.values(),  # ints, but the weighted sums (asyncpg takes an int for a float)
                                now,
                            )
                            for (label, vendor, market, start_ms), counts in rows.items()
                        ],
                    )
                    await pg.execute(PG_MERGE)
                facts = written_facts(write, result.applied)
                if facts:
                    await _pg_upsert_facts(pg, facts, now)
                if through:
                    await pg.execute(PG_SET_APPLIED, list(through), list(through.values()), now)
        return result


def _pg_upsert(table: str, key: str, columns: Sequence[str]) -> str:
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in columns if c != key)
    return (
        f"INSERT INTO {table} ({_quoted(columns)}) VALUES ({placeholders}) ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


async def _pg_upsert_facts(pg: Any, facts: list[Fact], now: datetime) -> None:
    """``upsert_facts`` on asyncpg, in the write's transaction."""
    reviews, appeals = fact_rows(facts, now)
    for table, key, rows in (("review_items", "decision_id", reviews), ("appeal_facts", "appeal_id", appeals)):
        if rows:
            columns = list(rows[0])
            await pg.executemany(_pg_upsert(table, key, columns), [tuple(r[c] for c in columns) for r in rows])


async def _write_samples(engine: AsyncEngine, samples: dict[str, tuple[DecisionAttrs, bool]], judged: set[str]) -> None:
    """Upsert the re-review sample's decisions (judged only ever goes from false to true)."""
    now = datetime.now(tz=UTC)
    async with engine.begin() as conn:
        if samples:
            stmt = insert_for(engine, decision_samples)
            stmt = stmt.on_conflict_do_update(
                index_elements=["decision_id"],
                set_={
                    "judged": decision_samples.c.judged | stmt.excluded.judged,
                    "updated_at": stmt.excluded.updated_at,
                },
            )
            rows = []
            for did, (a, was_judged) in samples.items():
                slices = dict(zip(SLICE_DIMENSIONS, a.slices, strict=False))
                rows.append(
                    {
                        "decision_id": did,
                        "policy_label": a.policy_label,
                        "vendor_id": a.vendor_id,
                        "market": a.market,
                        **{d: slices.get(d, "") for d in SLICE_DIMENSIONS},
                        "entity_type": a.entity_type,
                        "entity_id": a.entity_id,
                        "action": a.action,
                        "decided_at": _ts(a.t_ms),
                        "judged": was_judged or did in judged,
                        "updated_at": now,
                    }
                )
            await conn.execute(stmt, rows)
        if judged:
            ids = sorted(judged)
            for i in range(0, len(ids), 1_000):
                await conn.execute(
                    update(decision_samples)
                    .where(decision_samples.c.decision_id.in_(ids[i : i + 1_000]))
                    .values(judged=True, updated_at=now)
                )
