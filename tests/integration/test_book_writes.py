"""Rate-book writes on real PostgreSQL (and SQLite, the dev database): each partition's changes add
once, by the offset they go up to; a partition another writer has claimed takes no more writes;
a claim waits for a write still in its transaction; writers sharing rows never deadlock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import bucket_owners, make_engine, rate_buckets
from services.common.migrate import ensure_schema
from services.domain.book import BookWrite
from services.domain.rates import BucketKey, Counts
from services.scorer.sink import DbSink

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_790_000_040_000 - 1_790_000_040_000 % MINUTE


def rows(*cells: tuple[str, int, int] | tuple[str, int, int, float]) -> dict[BucketKey, Counts]:
    """{(vendor, minute): counts} with the verdicts (and weighted verdicts) given."""
    out: dict[BucketKey, Counts] = {}
    for vendor, minute, verdicts, *weighted in cells:
        counts = Counts(verdicts=verdicts, weighted_verdicts=weighted[0] if weighted else 0.0)
        out[("ip.trademark/counterfeit", vendor, "DE", T0 + minute * MINUTE)] = counts
    return out


async def table(engine: AsyncEngine) -> dict[tuple[str, int], tuple[int, float]]:
    """(vendor, minute) -> (verdicts, weighted_verdicts) as stored."""
    async with engine.connect() as conn:
        found = (await conn.execute(select(rate_buckets))).mappings().all()
    return {
        (r["vendor_id"], (int(r["bucket_start"].timestamp() * 1000) - T0) // MINUTE): (
            r["verdicts"],
            r["weighted_verdicts"],
        )
        for r in found
    }


async def applied_to(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        return {r.partition: r.applied_to for r in await conn.execute(select(bucket_owners))}


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = database_url if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'modq.db'}"
    engine = make_engine(url)
    await ensure_schema(engine, auto_migrate=True)
    yield engine
    await engine.dispose()


async def test_a_partitions_changes_add_once_by_the_offset_they_go_up_to(engine: AsyncEngine) -> None:
    sink = DbSink(engine)
    assert await sink.claim([0, 1]) == {0: 0, 1: 0}
    first = BookWrite({0: (rows(("V01", 0, 3, 1.5), ("V02", 0, 1)), 10), 1: (rows(("V01", 0, 2)), 4)})
    result = await sink.write_book(first)
    assert result.applied == {0, 1} and not result.already
    assert await table(engine) == {("V01", 0): (5, 1.5), ("V02", 0): (1, 0.0)}  # partitions summed in a row
    retried = await sink.write_book(first)  # its acknowledgement was lost: sent again
    assert retried.already == {0, 1} and not retried.applied
    assert await table(engine) == {("V01", 0): (5, 1.5), ("V02", 0): (1, 0.0)}
    later = await sink.write_book(BookWrite({0: (rows(("V01", 0, -1, 0.25), ("V01", 1, 4)), 20)}))
    assert later.applied == {0}
    assert await table(engine) == {("V01", 0): (4, 1.75), ("V02", 0): (1, 0.0), ("V01", 1): (4, 0.0)}
    assert await applied_to(engine) == {0: 20, 1: 4}
    assert await DbSink(engine).claim([0, 1, 2]) == {0: 20, 1: 4, 2: 0}  # a new owner learns how far they go


async def test_a_partition_claimed_by_another_writer_takes_no_more_writes_from_the_old_one(
    engine: AsyncEngine,
) -> None:
    old, new = DbSink(engine), DbSink(engine)
    await old.claim([0, 1])
    await old.write_book(BookWrite({0: (rows(("V01", 0, 3)), 5), 1: (rows(("V01", 0, 1)), 5)}))
    assert await new.claim([0]) == {0: 5}
    late = await old.write_book(BookWrite({0: (rows(("V01", 0, 100)), 9), 1: (rows(("V01", 0, 2)), 9)}))
    assert late.lost == {0} and late.applied == {1}
    assert await table(engine) == {("V01", 0): (6, 0.0)}
    await new.write_book(BookWrite({0: (rows(("V01", 0, 4)), 9)}))
    assert await table(engine) == {("V01", 0): (10, 0.0)}
    assert await applied_to(engine) == {0: 9, 1: 9}


async def test_a_claim_waits_for_the_old_owners_write_in_progress(database_url: str) -> None:
    """On PostgreSQL a write locks its partitions' owner rows until it commits, and a claim waits
    for that lock: the new owner reads ``applied_to`` after the old owner's last write, never
    before (which would count that write's changes a second time)."""
    import asyncpg

    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    try:
        old, new = DbSink(engine), DbSink(engine)
        await old.claim([0])
        await old.write_book(BookWrite({0: (rows(("V01", 0, 3)), 5)}))
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        holder, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            tx = holder.transaction()
            await tx.start()  # the old owner's write, between its check and its commit
            owner = await holder.fetchval("SELECT writer_id FROM bucket_owners WHERE partition = 0 FOR UPDATE")
            assert owner == old.writer_id
            await holder.execute("UPDATE rate_buckets SET verdicts = verdicts + 100")
            await holder.execute("UPDATE bucket_owners SET applied_to = 9 WHERE partition = 0")
            claim = asyncio.create_task(new.claim([0]))
            waiting = 0
            for _ in range(200):
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 1 and not claim.done()
            await tx.commit()
            assert await claim == {0: 9}  # after the old owner's write: its offset, not the one before
        finally:
            await holder.close()
            await watcher.close()
        assert await table(engine) == {("V01", 0): (103, 0.0)}
    finally:
        await engine.dispose()


async def test_writers_of_different_partitions_add_to_shared_rows_without_deadlock(database_url: str) -> None:
    """Two processes write the same rows (a series' minute holds decisions of every partition) at the
    same time, in opposite orders: every write lands, the sums are exact."""
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    try:
        a, b = DbSink(engine), DbSink(engine)
        await a.claim([0])
        await b.claim([1])
        cells = [(f"V{v:02d}", m, 1) for v in range(20) for m in range(10)]

        async def writer(sink: DbSink, partition: int, order: list[tuple[str, int, int]]) -> None:
            for n in range(1, 16):
                await sink.write_book(BookWrite({partition: (rows(*order), n)}))

        await asyncio.gather(writer(a, 0, cells), writer(b, 1, list(reversed(cells))))
        assert await table(engine) == {(v, m): (30, 0.0) for v, m, _ in cells}
    finally:
        await engine.dispose()
