"""Remediation events to ``quality.remediations``, each finding once even across a crash.

The events stage finds them while applying records (``Deltas.findings``); they are sent with the
round's outcomes, before the state that says the records were applied, each with headers naming
its source: events partition, offset, and its index among the findings of that record. A record
replayed after a crash whose state was durable finds nothing again (its events change nothing);
one whose state was lost finds the same findings again, and those already on the topic are known
by their source: on assignment (and after a rollback) the tail of the partition each source
partition writes to is read back for the last source position published, and findings at or below
it are not sent again. Partition p of modq.events writes to partition p (mod the topic's count) of
quality.remediations, keyed by decision_id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.common.config import ScorerSettings
from services.common.kafka import log_end, make_consumer
from services.contracts.remediations import Remediation, encode_remediation

log = logging.getLogger("modq.scorer.remediations")

SOURCE_HEADER = "modq-source"  # b"<events partition>:<offset>:<index>"
TAIL_CHUNK = 2_000
READ_BACK_TIMEOUT_S = 60.0  # a read-back that cannot finish fails (recovery retries it)


def _source(headers: Iterable[tuple[str, bytes]]) -> tuple[int, int, int] | None:
    for name, value in headers:
        if name == SOURCE_HEADER:
            p, offset, index = value.decode().split(":")
            return int(p), int(offset), int(index)
    return None


class RemediationLog:
    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.topic = settings.topic_remediations
        self.partitions = settings.partitions
        self.published: dict[int, tuple[int, int]] = {}  # source partition -> last (offset, index) on the topic

    def target(self, p: int) -> int:
        return p % self.partitions

    async def recover(self, parts: set[int]) -> None:
        """Read back, for each source partition in ``parts``, the last source position on the topic."""
        reader = make_consumer(self.settings)
        await reader.start()
        try:
            await reader.topics()  # metadata, for the partition count
            found = reader.partitions_for_topic(self.topic)
            if found:
                self.partitions = len(found)
            for p in parts:
                self.published.pop(p, None)
            targets: dict[int, set[int]] = {}
            for p in parts:
                targets.setdefault(self.target(p), set()).add(p)
            for t, sources in targets.items():
                await self._scan(reader, t, sources)
        finally:
            await reader.stop()

    async def _scan(self, reader: AIOKafkaConsumer, t: int, sources: set[int]) -> None:
        """Read partition ``t`` backwards in growing chunks until every source has been seen (or the
        start is reached): the last record of a source is its highest position."""
        tp = TopicPartition(self.topic, t)
        reader.assign([tp])
        end = await log_end(reader, tp)
        first = (await reader.beginning_offsets([tp]))[tp]
        stop, chunk, left = end, TAIL_CHUNK, set(sources)
        while left and stop > first:
            start = max(first, stop - chunk)
            reader.seek(tp, start)
            best: dict[int, tuple[int, int]] = {}
            position = start
            deadline = asyncio.get_running_loop().time() + READ_BACK_TIMEOUT_S
            while position < stop:
                batch = await reader.getmany(tp, timeout_ms=1_000, max_records=5_000)
                records = batch.get(tp, [])
                if not records:  # a slow fetch is not the end: what is there must all be read
                    if asyncio.get_running_loop().time() > deadline:
                        raise TimeoutError(f"reading back {self.topic} partition {t}: at {position} of {stop}")
                    continue
                for r in records:
                    if r.offset >= stop:
                        break
                    src = _source(r.headers or ())
                    if src is not None and src[0] in left:
                        best[src[0]] = max(best.get(src[0], (-1, -1)), src[1:])
                position = records[-1].offset + 1
            for p, pos in best.items():
                self.published[p] = pos
                left.discard(p)
            stop, chunk = start, chunk * 4
        log.info(
            "remediations read back",
            extra={"partition": t, "published": {str(p): self.published.get(p) for p in sources}},
        )

    def select(self, p: int, offset: int, findings: list[Remediation]) -> list[tuple[int, Remediation]]:
        """The findings of the record at (p, offset) not on the topic yet, with their index."""
        last = self.published.get(p)
        out = [(i, f) for i, f in enumerate(findings) if last is None or (offset, i) > last]
        if out:
            self.published[p] = (offset, out[-1][0])
        return out

    async def send(
        self, producer: AIOKafkaProducer, p: int, offset: int, items: list[tuple[int, Remediation]]
    ) -> list[asyncio.Future[Any]]:
        futures = []
        for i, r in items:
            futures.append(
                await producer.send(
                    self.topic,
                    encode_remediation(r),
                    key=r.decision_id.encode(),
                    partition=self.target(p),
                    headers=[(SOURCE_HEADER, f"{p}:{offset}:{i}".encode())],
                )
            )
        return futures
