"""Rate-book writes on real PostgreSQL (and SQLite, the dev database): each numbered write adds
once, a retried number changes nothing, a reset replaces one partition's open buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import make_engine, rate_buckets
from services.common.migrate import ensure_schema
from services.scorer.pipeline import BookKey, BookWrite
from services.scorer.rates import COUNT_FIELDS, Counts
from services.scorer.sink import DbSink

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_790_000_040_000 - 1_790_000_040_000 % MINUTE


def row(p: int, vendor: str, minute: int, verdicts: int, weighted: float = 0.0) -> tuple[BookKey, Counts]:
    counts: Counts = [0] * len(COUNT_FIELDS)
    counts[0] = verdicts
    counts[COUNT_FIELDS.index("weighted_verdicts")] = weighted
    return (p, "SCAMS_AND_FRAUD", vendor, "DE", T0 + minute * MINUTE), counts


async def table(engine: AsyncEngine) -> dict[tuple[int, str, int], tuple[int, float]]:
    """(partition, vendor, minute) -> (verdicts, weighted_verdicts) as stored."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(rate_buckets))).mappings().all()
    return {
        (r["partition"], r["vendor_id"], (int(r["bucket_start"].timestamp() * 1000) - T0) // MINUTE): (
            r["verdicts"],
            r["weighted_verdicts"],
        )
        for r in rows
    }


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = database_url if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'modq.db'}"
    engine = make_engine(url)
    await ensure_schema(engine, auto_migrate=True)
    yield engine
    await engine.dispose()


async def test_numbered_writes_add_once_and_a_reset_replaces_a_partition(engine: AsyncEngine) -> None:
    sink = DbSink(engine)
    first = BookWrite(
        1,
        dict(
            [row(0, "V01", 0, 3, 1.5), row(0, "V01", 1, 2), row(1, "V02", 0, 7)],
        ),
        {},
        0,
    )
    assert await sink.write_book(first)
    assert not await sink.write_book(first)  # applied already (its acknowledgement lost): skipped
    assert await sink.write_book(
        BookWrite(
            2,
            dict(
                [row(0, "V01", 0, 1, 0.25), row(0, "V01", 1, -2)],
            ),
            {},
            0,
        )
    )
    assert await table(engine) == {(0, "V01", 0): (4, 1.75), (0, "V01", 1): (0, 0.0), (1, "V02", 0): (7, 0.0)}

    # Another process numbers its own writes.
    other = DbSink(engine)
    assert await other.write_book(
        BookWrite(
            1,
            dict(
                [row(1, "V02", 0, 1)],
            ),
            {},
            0,
        )
    )
    assert not await sink.write_book(
        BookWrite(
            2,
            dict(
                [row(1, "V02", 0, 100)],
            ),
            {},
            0,
        )
    )

    # A rebuild of partition 0 with buckets from minute 1 open: minute 0 keeps what it had,
    # minute 1 and later hold the rebuilt counts only, partition 1 is untouched.
    rebuilt = BookWrite(
        3,
        dict(
            [row(0, "V01", 1, 5), row(0, "V01", 2, 6)],
        ),
        {0: T0 + MINUTE},
        0,
    )
    assert await sink.write_book(rebuilt)
    assert await table(engine) == {
        (0, "V01", 0): (4, 1.75),
        (0, "V01", 1): (5, 0.0),
        (0, "V01", 2): (6, 0.0),
        (1, "V02", 0): (8, 0.0),
    }
    assert await sink.forget_writers(idle_s=3600) == 0
    assert await sink.forget_writers(idle_s=-60) == 2  # both writers' numbers


async def test_a_rebuild_is_written_in_chunks_in_one_transaction(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild's rows, summed a few records at a time (keys repeating across chunks), add up to
    the incremental book's; one abandoned half-way leaves the database as it was."""
    from services.common.wire import decode_batch, encode_batch
    from services.scorer import pipeline
    from services.scorer.pipeline import RateBook, RebuildSuperseded, score_batch
    from tests import factories
    from tests.unit.test_join import wire

    monkeypatch.setattr(pipeline, "REBUILD_STEP_RECORDS", 7)
    monkeypatch.setattr(pipeline, "REBUILD_CHUNK_ROWS", 4)
    events = []
    for n in range(60):
        vendor = f"V0{n % 3}"
        events.append(wire("decision", factories.decision(f"d{n}", vendor_id=vendor, event_time=factories.ts(n * 9))))
        events.append(wire("verdict", factories.verdict(f"d{n}", error=n % 4 == 0, event_time=factories.ts(n * 9))))
    store: dict[bytes, bytes] = {}
    live = RateBook()
    writes, deltas = score_batch(decode_batch(encode_batch(events)), store.get)
    store.update(writes)
    live.apply(0, deltas)
    sink = DbSink(engine)
    incremental = live.take()
    assert incremental is not None and await sink.write_book(incremental)
    expected = await table(engine)

    book, sink = RateBook(), DbSink(engine)  # a restarted process: a new writer
    book.rebuild([0], lambda _: iter([(0, raw) for raw in store.values()]))
    abandoned = book.take()
    assert abandoned is not None and abandoned.rebuild is not None
    steps = abandoned.rebuild.steps

    def cancel_after_first_rows() -> pipeline.Iterator[dict[BookKey, Counts] | None]:
        for step in steps:
            yield step
            if step:
                book.hold()  # the partition is revoked while its rows are being written

    abandoned.rebuild.steps = cancel_after_first_rows()
    with pytest.raises(RebuildSuperseded):
        await sink.write_book(abandoned)
    book.failed(abandoned)
    assert await table(engine) == expected  # rolled back: nothing deleted, nothing added

    book.rebuild([0], lambda _: iter([(0, raw) for raw in store.values()]))
    rebuilt = book.take()
    assert rebuilt is not None and rebuilt.rebuild is not None
    assert await sink.write_book(rebuilt)
    assert rebuilt.rebuild.rows > len(expected)  # chunks repeated keys: they were added up
    assert await table(engine) == expected


async def test_a_partition_moved_to_another_writer_takes_no_more_writes_from_the_old_one(engine: AsyncEngine) -> None:
    """The new owner's rebuild claims the partition; the old owner's later changes to it are
    dropped (its other partitions' still land)."""
    old, new = DbSink(engine), DbSink(engine)
    assert await old.write_book(BookWrite(1, dict([row(0, "V01", 0, 3), row(1, "V01", 0, 1)]), {0: T0, 1: T0}, 0))
    assert await new.write_book(BookWrite(1, dict([row(0, "V01", 0, 4)]), {0: T0}, 0))  # p0 moved: rebuilt
    assert await old.write_book(BookWrite(2, dict([row(0, "V01", 0, 100), row(1, "V01", 0, 2)]), {}, 0))
    assert await table(engine) == {(0, "V01", 0): (4, 0.0), (1, "V01", 0): (3, 0.0)}
    assert await new.write_book(BookWrite(2, dict([row(0, "V01", 0, 1)]), {}, 0))
    assert await table(engine) == {(0, "V01", 0): (5, 0.0), (1, "V01", 0): (3, 0.0)}


async def test_a_new_owners_rebuild_waits_for_the_old_owners_write_in_progress(database_url: str) -> None:
    """On PostgreSQL the claim waits for the share lock of a write still in its transaction, so
    that write cannot land after the rebuild it would corrupt."""
    import asyncio

    import asyncpg

    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    try:
        old, new = DbSink(engine), DbSink(engine)
        assert await old.write_book(BookWrite(1, dict([row(0, "V01", 0, 3)]), {0: T0}, 0))
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        holder = await asyncpg.connect(dsn)
        watcher = await asyncpg.connect(dsn)
        try:
            tx = holder.transaction()
            await tx.start()  # the old owner's write, between its check and its commit
            assert (
                await holder.fetchval("SELECT writer_id FROM bucket_owners WHERE partition = 0 FOR SHARE")
                == old.writer_id
            )
            await holder.execute(
                "UPDATE rate_buckets SET verdicts = verdicts + 100 WHERE partition = 0"
            )  # its change, not yet committed
            rebuild = asyncio.create_task(new.write_book(BookWrite(1, dict([row(0, "V01", 0, 4)]), {0: T0}, 0)))
            for _ in range(200):
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting == 1 and not rebuild.done()
            await tx.commit()
            assert await rebuild
        finally:
            await holder.close()
            await watcher.close()
        assert await table(engine) == {(0, "V01", 0): (4, 0.0)}  # the rebuild came after, whole
    finally:
        await engine.dispose()
