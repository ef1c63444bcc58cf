"""modq ingest: upstream topics and an HTTP batch endpoint in, compact co-partitioned batches out.

Delivery: at least once. Offsets are committed only after every batch and dead letter produced
from them is acknowledged by the broker; the scorer's idempotent state absorbs redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.config import IngestSettings
from services.common.kafka import BrokerWatch, ensure_topics, make_consumer, make_producer
from services.common.unreadable import ConsumerHealth
from services.contracts.batches import WireEvent, encode_batch, encode_event, partition_for
from services.contracts.events import Appeal, Decision, Verdict
from services.ingest.dedup import RecentIds
from services.ingest.validate import Rejected, Watermarks, validate_timed

log = logging.getLogger("modq.ingest")


@dataclass
class IngestMetrics:
    registry: CollectorRegistry
    events: Counter = field(init=False)
    deadletters: Counter = field(init=False)
    batches: Counter = field(init=False)
    last_processed: Gauge = field(init=False)
    consumer_lag: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter(
            "modq_ingest_events", "Upstream events by type and outcome", ["type", "outcome"], registry=r
        )
        self.deadletters = Counter(
            "modq_ingest_deadletters", "Events refused and dead-lettered, by reason", ["type", "reason"], registry=r
        )
        self.batches = Counter("modq_ingest_batches", "Batch records produced to the scorer topic", registry=r)
        self.last_processed = Gauge(
            "modq_ingest_last_processed_timestamp_seconds", "Wall time of the last processed poll", registry=r
        )
        self.consumer_lag = Gauge(
            "modq_ingest_consumer_lag_records",
            "Records on an upstream topic partition not yet processed",
            ["topic", "partition"],
            registry=r,
        )


@dataclass(slots=True)
class Routed:
    """Result of routing one poll's worth of records."""

    batches: dict[int, list[WireEvent]]
    deadletters: list[tuple[ConsumerRecord[bytes, bytes], str, Rejected]]
    duplicates: int = 0


class Router:
    """Validates and deduplicates records, grouping accepted ones by scorer partition."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.recent = RecentIds(settings.ingest_dedup_cache_size)
        self.watermarks = Watermarks(settings.late_grace_s * 1000)

    def route(self, records: list[tuple[str, ConsumerRecord[bytes, bytes]]], now_ms: int) -> Routed:
        s = self.settings
        out = Routed(defaultdict(list), [])
        counts: dict[tuple[str, str], int] = defaultdict(int)  # (type, outcome): one metric update per poll
        seen, batches = self.recent.seen, out.batches
        for kind, rec in records:
            raw = rec.value if rec.value is not None else b""
            timed = validate_timed(
                kind, raw, now_ms=now_ms, max_bytes=s.max_record_bytes, max_future_skew_ms=s.max_future_skew_s * 1000
            )
            if isinstance(timed, Rejected):
                result: Decision | Verdict | Appeal | Rejected = timed
            else:
                result, t_ms = timed
                if late := self.watermarks.observe(kind, t_ms):
                    result = late
            if isinstance(result, Rejected):
                out.deadletters.append((rec, kind, result))
                counts[(kind, "dead_lettered")] += 1
                self.metrics.deadletters.labels(kind, result.reason).inc()
                log.info(
                    "dead-lettered",
                    extra={
                        "reason": result.reason,
                        "topic": rec.topic,
                        "partition": rec.partition,
                        "offset": rec.offset,
                    },
                )
                continue
            if seen(result.event_id):
                out.duplicates += 1
                counts[(kind, "duplicate")] += 1
                continue
            counts[(kind, "accepted")] += 1
            batches[partition_for(result.decision_id, s.partitions)].append(encode_event(result, t_ms))
        for (kind, outcome), n in counts.items():
            self.metrics.events.labels(kind, outcome).inc(n)
        return out

    def batch(self, kind: str, accepted: list[tuple[Decision | Verdict | Appeal, int]]) -> tuple[Routed, list[str]]:
        """Validated events (with their event time in ms) grouped into batches by scorer partition,
        recently seen event ids dropped; also the ids newly remembered (``RecentIds.forget`` them
        if the batches are not delivered)."""
        out = Routed(defaultdict(list), [])
        seen, fresh = self.recent.seen, []
        for event, t_ms in accepted:
            if seen(event.event_id):
                out.duplicates += 1
                continue
            fresh.append(event.event_id)
            out.batches[partition_for(event.decision_id, self.settings.partitions)].append(encode_event(event, t_ms))
        if fresh:
            self.metrics.events.labels(kind, "accepted").inc(len(fresh))
        if out.duplicates:
            self.metrics.events.labels(kind, "duplicate").inc(out.duplicates)
        return out, fresh


def deadletter_headers(rec: ConsumerRecord[bytes, bytes], kind: str, rejected: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("modq.reason", rejected.reason.encode()),
        ("modq.detail", rejected.detail.encode()[:2000]),
        ("modq.event_type", kind.encode()),
        ("modq.source_topic", rec.topic.encode()),
        ("modq.source_partition", str(rec.partition).encode()),
        ("modq.source_offset", str(rec.offset).encode()),
    ]


class IngestService:
    """The Kafka side of ingest: consume, route, produce, commit."""

    def __init__(self, settings: IngestSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = IngestMetrics(registry or CollectorRegistry())
        self.health = ConsumerHealth(self.metrics.registry, retry_s=settings.consumer_retry_s)
        self.router = Router(settings, self.metrics)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = False
        self._stopping = asyncio.Event()
        self._running, self._stopped = asyncio.Event(), asyncio.Event()
        self.broker: BrokerWatch | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(
            s,
            {
                s.topic_decisions: s.partitions,
                s.topic_verdicts: s.partitions,
                s.topic_appeals: s.partitions,
                s.topic_deadletter: 1,
                s.topic_events: s.partitions,
                s.topic_alerts: s.partitions,
            },
        )
        self.producer = make_producer(s)
        await self.producer.start()
        self.consumer = make_consumer(
            s,
            *s.input_topics,
            group_id=s.ingest_group_id,
            max_partition_fetch_bytes=4_194_304,
            guard=self.health,
        )
        await self.consumer.start()
        self.ready = True
        self.broker = BrokerWatch(self.producer, "ingest")
        self._watcher = asyncio.create_task(self.broker.run(), name="ingest-broker-watch")
        log.info("ingest consuming", extra={"topics": list(s.input_topics)})

    @property
    def serving(self) -> bool:
        """Ready for traffic: started, last produce fine, and the broker answering metadata requests."""
        return self.ready and (self.broker is None or self.broker.ok)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful: the poll in flight is produced and committed before the clients close."""
        self._stopping.set()
        self.ready = False
        if self.broker is not None:
            self.broker.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        if self._running.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout_s)
            except TimeoutError:
                log.error("the in-flight poll did not finish in time; it will be read again after a restart")
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def run(self) -> None:
        self._running.set()
        try:
            await self._run()
        finally:
            self._stopped.set()

    async def _run(self) -> None:
        assert self.consumer is not None
        kinds = self.settings.input_topics
        while not self._stopping.is_set():
            polled = await self.consumer.getmany(timeout_ms=500, max_records=self.settings.ingest_batch_max_events)
            if not polled:
                self.metrics.last_processed.set(time.time())
                continue
            await self.process([(kinds[tp.topic], rec) for tp, recs in polled.items() for rec in recs])
            for tp, recs in polled.items():
                highwater = self.consumer.highwater(tp)
                if highwater is not None and recs:
                    lag = max(0, highwater - recs[-1].offset - 1)
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            try:
                await self.consumer.commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took the partitions away: their new owner re-reads from the last
                # commit, and the scorer's idempotent state absorbs the repeat.
                log.warning("commit skipped after rebalance", extra={"error": str(exc)})
            self.metrics.last_processed.set(time.time())

    async def process(self, records: list[tuple[str, ConsumerRecord[bytes, bytes]]]) -> None:
        """Route records and wait until every resulting message is acknowledged by the broker.

        Sending is retried with backoff for as long as the broker refuses it (the service reports
        not ready meanwhile); nothing is committed before it succeeds, so nothing is lost.
        """
        out = self.router.route(records, int(time.time() * 1000))
        delay = 0.2
        while True:
            try:
                await self._send(out)
                self.ready = True
                return
            except KafkaError as exc:
                if self._stopping.is_set():
                    raise
                self.ready = False
                log.warning("produce failed; retrying", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _send(self, out: Routed) -> None:
        assert self.producer is not None
        s = self.settings
        futures = []
        for partition, events in out.batches.items():
            futures.append(await self.producer.send(s.topic_events, encode_batch(events), partition=partition))
            self.metrics.batches.inc()
        for rec, kind, rejected in out.deadletters:
            futures.append(
                await self.producer.send(
                    s.topic_deadletter, rec.value, key=rec.key, headers=deadletter_headers(rec, kind, rejected)
                )
            )
        if futures:
            await asyncio.gather(*futures)

    async def publish_events(self, kind: str, accepted: list[tuple[Decision | Verdict | Appeal, int]]) -> None:
        """Validated HTTP events straight onto the scorer's topic, as the consumer would send them
        (deduplicated, in batches by partition): no second trip through the upstream topic and a
        second validation. Returns once the broker has them; raises ``KafkaError`` if it does not
        (the events then count as not seen, so the client's retry is not dropped as a duplicate)."""
        out, fresh = self.router.batch(kind, accepted)
        try:
            await self._send(out)
        except BaseException:
            self.router.recent.forget(fresh)
            raise
