"""A Kafka consumer that survives a record batch it cannot decode: only that partition waits.

aiokafka decodes (and decompresses) record batches inside ``getmany``. A batch it cannot read (a
compression codec it lacks, a CRC mismatch, a corrupt payload) raises out of ``getmany`` for the
whole consumer, every time it is fetched again: one bad batch stops every topic and partition, and
an exception that escapes crashes the service at the same offset on every restart. Worse, records
already taken from other partitions in that call are lost to the caller while their positions have
moved on.

``GuardedConsumer`` decodes partition by partition instead. A partition whose next batch cannot
be read is paused at that batch (its position stays there: nothing after it is read, nothing of it
is skipped, no offset past it is committed) and reported to ``ConsumerHealth``: the service is not
ready, the partition, offset and cause are logged once, and the metrics count it. Every other
partition goes on. The partition is tried again every ``retry_s`` seconds and flows again as soon
as its batch can be read (a transient corruption, a codec that became available); the health
report clears then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("modq.kafka")

RETRY_S = 30.0


@dataclass(slots=True)
class StuckPartition:
    """A partition waiting at a record batch that cannot be read."""

    group: str
    topic: str
    partition: int
    offset: int  # the position it waits at: the first record not yet read
    cause: str
    since: float  # time.time() of the first failure
    retry_at: float  # time.monotonic() of the next attempt

    def describe(self) -> dict[str, object]:
        return {
            "group": self.group,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "cause": self.cause,
            "stuck_s": round(time.time() - self.since, 1),
        }


class ConsumerHealth:
    """The unreadable partitions of one process's consumers, for readiness, logs and metrics."""

    def __init__(self, registry: CollectorRegistry, retry_s: float = RETRY_S) -> None:
        self.retry_s = retry_s
        self.stuck: dict[tuple[str, TopicPartition], StuckPartition] = {}
        self.unreadable = Counter(
            "modq_consumer_unreadable_batches",
            "Times a partition stopped at a record batch this process cannot decode (codec, CRC, corruption)",
            ["topic"],
            registry=registry,
        )
        self.stuck_gauge = Gauge(
            "modq_consumer_stuck_partitions",
            "Partitions waiting at a record batch this process cannot decode; the others go on",
            ["topic"],
            registry=registry,
        )

    @property
    def ok(self) -> bool:
        return not self.stuck

    def report(self) -> list[dict[str, object]]:
        return [s.describe() for s in self.stuck.values()]

    def found(self, group: str, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        """A batch of ``tp`` at ``offset`` could not be read: logged and counted the first time."""
        key = (group, tp)
        now = time.monotonic()
        known = self.stuck.get(key)
        if known is not None:
            known.retry_at = now + self.retry_s
            return
        text = str(exc)
        cause = text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"
        self.stuck[key] = StuckPartition(group, tp.topic, tp.partition, offset, cause, time.time(), now + self.retry_s)
        self.unreadable.labels(tp.topic).inc()
        self._update(tp.topic)
        log.error(
            "a record batch cannot be read: this partition waits at it, the others go on",
            extra={
                "group": group,
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": offset,
                "cause": cause,
                "retry_s": self.retry_s,
            },
        )

    def readable(self, group: str, tp: TopicPartition) -> None:
        stuck = self.stuck.pop((group, tp), None)
        if stuck is not None:
            self._update(tp.topic)
            log.warning(
                "partition readable again",
                extra={**stuck.describe(), "cause": stuck.cause},
            )

    def forget(self, group: str, keep: set[TopicPartition]) -> None:
        """Drop the group's stuck partitions that it no longer owns (another consumer has them)."""
        for key in [k for k in self.stuck if k[0] == group and k[1] not in keep]:
            del self.stuck[key]
            self._update(key[1].topic)

    def due(self, group: str) -> list[TopicPartition]:
        now = time.monotonic()
        return [tp for (g, tp), s in self.stuck.items() if g == group and s.retry_at <= now]

    def waiting(self, group: str) -> set[TopicPartition]:
        """The group's partitions held at an unreadable batch (callers that pause and resume
        partitions themselves must leave these paused)."""
        return {tp for (g, tp) in self.stuck if g == group}

    def _update(self, topic: str) -> None:
        self.stuck_gauge.labels(topic).set(sum(1 for (_, tp) in self.stuck if tp.topic == topic))


def _take(result: FetchResult, tp: TopicPartition, max_records: int | None) -> tuple[list[Any], Exception | None]:
    """``FetchResult.getall`` that keeps the records read before a batch that fails to decode, and
    moves the position to just after them (the first offset of that batch) instead of raising."""
    if not result.check_assignment(tp) or not result.has_more():
        return [], None
    records: list[Any] = []
    try:
        for msg in result._partition_records:
            records.append(msg)
            if max_records is not None and len(records) >= max_records:
                result._update_position()
                return records, None
    except Exception as exc:
        result._update_position()
        return records, exc
    result._update_position()
    result._partition_records = None
    return records, None


class _GuardedFetcher(Fetcher):  # type: ignore[misc]
    """aiokafka's Fetcher with ``fetched_records`` reading each partition on its own.

    The loop is aiokafka 0.14's (consumer/fetcher.py), with the decoding of one partition's
    records guarded; the version is pinned, and tests/integration/test_unreadable.py breaks if the
    loop stops matching what the consumer expects.
    """

    _modq_health: ConsumerHealth
    _modq_group: str

    async def fetched_records(self, partitions: Any, wait_s: float = 0, max_records: int | None = None) -> Any:
        timeout = wait_s  # (aiokafka calls it positionally, as ``timeout``)
        health, group = self._modq_health, self._modq_group
        assigned = self._subscriptions.subscription.assignment if self._subscriptions.subscription else None
        owned = set(assigned.tps) if assigned is not None else set()
        health.forget(group, owned)
        for tp in health.due(group):
            if self._subscriptions.is_assigned(tp):
                self._subscriptions.resume(tp)  # one more try; paused again if it still fails
        while True:
            if self._subscriptions.reassignment_in_progress:
                await self._subscriptions.wait_for_assignment()

            start_time = time.monotonic()
            drained: dict[TopicPartition, list[Any]] = {}
            for tp in list(self._records.keys()):
                if partitions and tp not in partitions:
                    if not self._subscriptions.is_assigned(tp):
                        del self._records[tp]
                    continue
                res_or_error = self._records[tp]
                if type(res_or_error) is FetchResult:
                    records, error = _take(res_or_error, tp, max_records)
                    if error is not None:
                        self._unreadable(tp, error)
                    elif not res_or_error.has_more():
                        del self._records[tp]
                        self._notify(self._wait_consume_future)
                    if not records:
                        continue
                    if error is None and (group, tp) in health.stuck:
                        health.readable(group, tp)
                    drained[tp] = records
                    if max_records is not None:
                        max_records -= len(drained[tp])
                        if max_records == 0:
                            break
                elif drained:
                    return drained
                else:
                    del self._records[tp]
                    self._notify(self._wait_consume_future)
                    res_or_error.check_raise()

            if drained or not timeout:
                return drained

            waiter = self._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=timeout)
            if not done or self._closed:
                if pending:
                    pending.pop().cancel()
                return {}
            if waiter.done():
                waiter.result()
            timeout = max(0, timeout - (time.monotonic() - start_time))

    def _unreadable(self, tp: TopicPartition, exc: BaseException) -> None:
        """Drop what was fetched for ``tp`` (it is fetched again from its position) and pause it."""
        del self._records[tp]
        self._notify(self._wait_consume_future)
        offset = -1
        if self._subscriptions.is_assigned(tp):
            state = self._subscriptions.subscription.assignment.state_value(tp)
            offset = state.position if state.has_valid_position else -1
            self._subscriptions.pause(tp)
        self._modq_health.found(self._modq_group, tp, offset, exc)


class GuardedConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """An AIOKafkaConsumer on which one partition's unreadable batch never raises out of
    ``getmany``: that partition waits (see the module docstring), the others go on."""

    def __init__(self, *topics: str, health: ConsumerHealth, **options: Any) -> None:
        super().__init__(*topics, **options)
        self._modq_health = health
        self._modq_group_name = str(options.get("group_id") or f"consumer-{id(self):x}")

    async def start(self) -> None:
        await super().start()
        fetcher = self._fetcher
        fetcher.__class__ = _GuardedFetcher
        fetcher._modq_health = self._modq_health
        fetcher._modq_group = self._modq_group_name
        if not isinstance(fetcher._records, OrderedDict):  # pragma: no cover - aiokafka changed
            raise RuntimeError("aiokafka's Fetcher is not the one GuardedConsumer was written for")

    def waiting(self) -> set[TopicPartition]:
        """Partitions held at an unreadable batch: leave them paused."""
        return self._modq_health.waiting(self._modq_group_name)
