"""Reading the events stage's changelog back: decision state, expiry cutoffs and book records of
the partitions a worker is assigned, before it applies any of their records."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

from services.common.config import ScorerSettings
from services.common.kafka import make_consumer
from services.domain.book import Facts, PartitionBook, RateBook, book_offset, decode_record
from services.domain.rates import BucketKey, Counts
from services.scorer.expiry import SWEPT_KEY, Expiry
from services.scorer.stores import PartitionStores

BookRecords = dict[int, tuple[dict[BucketKey, Counts], Facts]]
"""A partition's live book records: the offset each one counts to -> its rows and facts."""


async def read_changelog(
    settings: ScorerSettings,
    changelog: str,
    topic: str,
    parts: set[int],
    full: set[int],
    stores: PartitionStores,
    expiry: Expiry,
    changelog_end: dict[int, int],
) -> tuple[dict[int, int], dict[int, BookRecords]]:
    """Read ``parts`` to the end of their changelog partitions into ``stores`` and ``expiry``,
    those in ``full`` from the start (their state and book records), the others from
    ``changelog_end`` (where this worker's writes ended: state only, and records found there mean
    another worker wrote). Advances ``changelog_end``. Returns the records read per partition and,
    per fully read partition, its live book records."""
    reader = make_consumer(settings, max_partition_fetch_bytes=4_194_304, fetch_max_bytes=16_777_216)
    await reader.start()
    read: dict[int, int] = dict.fromkeys(parts, 0)
    books: dict[int, BookRecords] = {p: {} for p in full}
    try:
        await reader.topics()  # metadata, to check the changelog matches the events topic
        available = reader.partitions_for_topic(changelog) or set()
        if not parts <= available:
            raise RuntimeError(
                f"{changelog} has partitions {sorted(available)}, {topic} needs {sorted(parts)}:"
                " the changelog must have as many partitions as the events topic"
            )
        tps = [TopicPartition(changelog, p) for p in sorted(parts)]
        reader.assign(tps)
        # Read until a fetch comes back empty at or past the end offset. The end offset alone
        # is not enough: Tansu 0.6 reports it as the base offset of the last record batch
        # plus one, short of the real end when that batch holds many records.
        ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            p = tp.partition
            start = 0 if p in full else changelog_end.get(p, 0)
            if p in full:
                stores.drop(p)
                stores.open(p)
                expiry.swept.pop(p, None)
            reader.seek(tp, start)
            todo[tp] = ends[tp]
        while todo:
            batches = await reader.getmany(*todo, timeout_ms=300, max_records=50_000)
            for tp, messages in batches.items():
                p = tp.partition
                changes: dict[bytes, bytes | None] = {}
                book = books.get(p)
                for m in messages:
                    key = m.key
                    if key is None:
                        continue
                    if key == SWEPT_KEY:
                        expiry.swept[p] = int.from_bytes(m.value or bytes(8), "big")
                    elif (through := book_offset(key)) is not None:
                        if book is not None:
                            if m.value is None:
                                book.pop(through, None)
                            else:
                                book[through] = decode_record(m.value)
                    else:
                        changes[key] = m.value
                stores[p].write(changes)
                expiry.see(p, changes.values())
                read[p] += len(messages)
            for tp in list(todo):
                position = await reader.position(tp)
                changelog_end[tp.partition] = position
                if not batches.get(tp) and position >= todo[tp]:
                    del todo[tp]
    finally:
        await reader.stop()
    return read, books


Claim = Callable[[list[int]], Awaitable[dict[int, int]]]
"""Claims partitions in the database; returns how far each one's counts there go."""


class Recovery:
    """Brings the state and book of assigned partitions up to the end of their changelog
    partitions, then claims them in the database (under ``book_lock``, so that no write of this
    process in flight is missed or repeated by the recovered book)."""

    def __init__(
        self,
        settings: ScorerSettings,
        changelog: str,
        topic: str,
        stores: PartitionStores,
        expiry: Expiry,
        changelog_end: dict[int, int],
        book: RateBook,
        book_lock: asyncio.Lock,
        claim: Claim | None,
    ) -> None:
        self.settings, self.changelog, self.topic = settings, changelog, topic
        self.stores, self.expiry, self.changelog_end = stores, expiry, changelog_end
        self.book, self.book_lock, self.claim = book, book_lock, claim

    async def read(self, parts: set[int], full: set[int]) -> tuple[dict[int, int], dict[int, BookRecords]]:
        return await read_changelog(
            self.settings, self.changelog, self.topic, parts, full, self.stores, self.expiry, self.changelog_end
        )

    async def recover(self, parts: set[int]) -> int:
        """Recover ``parts``; returns the changelog records read.

        A partition kept from before is read from where this worker's writes ended; if another
        worker wrote to it since (it moved away and back), it is read again from the start, since
        its book here may hold changes that worker wrote to the database meanwhile."""
        if not parts:
            return 0
        read, books = await self.read(parts, full={p for p in parts if p not in self.stores})
        moved = {p for p, n in read.items() if n and p not in books}
        if moved:
            for p in moved:
                self.stores.drop(p)
            again, more = await self.read(moved, full=moved)
            read.update(again)
            books.update(more)
        async with self.book_lock:
            claim = self.claim
            applied = await claim(sorted(parts)) if claim is not None else dict.fromkeys(parts, 0)
            for p, records in books.items():
                self.book.install(p, PartitionBook.recover(records, applied.get(p, 0)))
            for p in parts - set(books):
                if p not in self.book.parts:
                    self.book.install(p, PartitionBook(applied.get(p, 0)))
        return sum(read.values())
