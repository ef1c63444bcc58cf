"""How a round of the events stage becomes durable: outcomes and book records, then the state
records that mark them fed and counted, then the source offsets; rounds in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.domain.book import book_key
from services.scorer.changelog import Sends, send_records

log = logging.getLogger("modq.scorer.stage")


class Checkpoint:
    """Writes rounds to the pair topic and the changelog and commits their offsets; knows how far
    each changelog partition holds this worker's writes (``changelog_end``)."""

    def __init__(
        self,
        topic: str,
        outcomes_topic: str,
        changelog: str,
        producer: Callable[[], AIOKafkaProducer],
        consumer: Callable[[], AIOKafkaConsumer | None],
        owned: Callable[[], set[int]],
    ) -> None:
        self.topic, self.outcomes_topic, self.changelog = topic, outcomes_topic, changelog
        self._producer, self._consumer, self._owned = producer, consumer, owned
        self.changelog_end: dict[int, int] = {}  # partition -> changelog offset the state reflects
        self.uncommitted: dict[TopicPartition, int] = {}

    async def make_durable(
        self,
        previous: asyncio.Task[None] | None,
        outcomes: dict[bytes, bytes],
        books: dict[int, bytes],
        written: dict[int, dict[bytes, bytes | None]],
        offsets: dict[TopicPartition, int],
        also: Callable[[], Awaitable[list[asyncio.Future[Any]]]] | None = None,
    ) -> None:
        """Outcomes and book records durable, then the state that marks them fed and counted, then
        the offsets: rounds in order. A round's book record is durable before any of its state
        records is sent, so a state that holds the round's changes always comes with its book."""
        if previous is not None:
            await previous  # changelog records of a key must reach the log in the order written
        producer = self._producer()
        # Sent here, after the round before: a pair's outcomes must stay in source-offset order.
        first = [await producer.send(self.outcomes_topic, payload, key=key) for key, payload in outcomes.items()]
        if also is not None:  # the round's remediation events: durable, like its outcomes, before its state
            first.extend(await also())
        book_sends = {
            p: await producer.send(
                self.changelog, rows, key=book_key(offsets[TopicPartition(self.topic, p)]), partition=p
            )
            for p, rows in books.items()
        }
        await asyncio.gather(*first)
        for p, fut in book_sends.items():
            meta = await fut
            self.changelog_end[p] = max(self.changelog_end.get(p, 0), meta.offset + 1)
        changelog_sends: list[tuple[int, int, asyncio.Future[Any]]] = []
        for p, writes in written.items():
            changelog_sends.extend(await self._send_changelog(p, writes))
        for p, count, fut in changelog_sends:
            meta = await fut
            self.changelog_end[p] = max(self.changelog_end.get(p, 0), meta.offset + count)
        for tp, offset in offsets.items():
            self.uncommitted[tp] = max(offset, self.uncommitted.get(tp, 0))
        await self.commit()

    async def _send_changelog(self, p: int, writes: Mapping[bytes, bytes | None]) -> Sends:
        return await send_records(self._producer(), self.changelog, p, writes)

    async def commit(self) -> None:
        """Commit the offsets of durable rounds. A failed commit only means a harmless replay."""
        consumer = self._consumer()
        if not self.uncommitted or consumer is None:
            return
        offsets, self.uncommitted = self.uncommitted, {}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed; the records will be replayed", extra={"error": repr(exc)})
            owned = self._owned()
            for tp, offset in offsets.items():
                if tp.partition in owned:
                    self.uncommitted[tp] = max(offset, self.uncommitted.get(tp, 0))

    def forget(self, p: int) -> None:
        """Forget a partition's changelog position and uncommitted offset (it is read again)."""
        self.changelog_end.pop(p, None)
        self.uncommitted.pop(TopicPartition(self.topic, p), None)
