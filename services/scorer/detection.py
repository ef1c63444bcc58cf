"""Stage 2 of the scorer: modq.pair-outcomes -> each pair's monitors -> alert changes on quality.alerts.

A plain aiokafka consumer group (``<app id>-pairs``), as the first stage, so that the order of
records and writes is modq's own: a partition's records are applied in offset order, a batch at a
time; the batch's alert changes are acknowledged by the broker, then the changed pair states
(changelogged to ``<app id>-monitors-changelog``, key the pair key, value the ``PairState``),
then the offsets are committed. A crash replays from the committed offset; the pair states say
which source offsets they applied, so a replayed outcome is not fed twice (``detect``), and an
alert change sent again carries the same alert id (the history collapses it).

On assignment a partition's states are read back from the changelog before any record is
applied: from the start for a partition new here or written by another worker since, from where
this worker's writes ended for one it kept. If the broker refuses a write, the batch's partitions
are read back and consumed again from their committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from services.common.config import ScorerSettings
from services.common.kafka import RebalanceListener, make_consumer, make_producer, seek_to_committed
from services.common.unreadable import ConsumerHealth
from services.contracts.alerts import AlertEvent, encode_alert
from services.domain.detect import Detection, detect_many
from services.domain.monitor import MonitorPolicy
from services.scorer.changelog import Sends, check_partitions, read_to_end, send_records
from services.scorer.stores import PartitionStates, PartitionStores, remove_stores_of_dead_processes

log = logging.getLogger("modq.scorer.detection")

MAX_RECORDS = 2_000  # per batch: applied, then made durable and committed, as one unit


def monitors_changelog(settings: ScorerSettings) -> str:
    """The pair states' changelog (compacted; key the pair key, value the msgpack ``PairState``)."""
    return f"{settings.scorer_app_id}-monitors-changelog"


class DetectionStage:
    """Owns the pair-outcomes consumer group and the states of its partitions' pairs."""

    def __init__(
        self,
        settings: ScorerSettings,
        policy: MonitorPolicy,
        horizon_ms: int,
        observe: Callable[[Detection], None],
        on_change: Callable[[AlertEvent], None],
        health: ConsumerHealth | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.horizon_ms = horizon_ms
        self.observe = observe
        self.on_change = on_change
        self.health = health
        self.topic = settings.topic_outcomes
        self.changelog = monitors_changelog(settings)
        self.group_id = f"{settings.scorer_app_id}-pairs"
        self.changelog_end: dict[int, int] = {}
        self.owned: set[int] = set()
        self.ready = False
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._rocks_dir = (
            Path(settings.scorer_data_dir or f"{settings.scorer_app_id}-data") / "monitors" / str(os.getpid())
        )
        self.states = PartitionStores(settings.scorer_store, self._rocks_dir)
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        remove_stores_of_dead_processes(self._rocks_dir.parent)
        self.producer = make_producer(s, linger_ms=0)
        await self.producer.start()
        self.consumer = make_consumer(
            s,
            guard=self.health,
            group_id=self.group_id,
            session_timeout_ms=int(s.faust_session_timeout_s * 1000),
            rebalance_timeout_ms=int(s.faust_rebalance_timeout_s * 1000),
            heartbeat_interval_ms=3000,
            group_instance_id=f"{s.scorer_instance_id}-pairs" if s.scorer_instance_id else None,
        )
        self.consumer.subscribe([self.topic], listener=RebalanceListener(self))
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="modq-detection-stage")

    async def stop(self) -> None:
        """Finish the batch in flight (it commits), leave the group."""
        self._stopping.set()
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        delay = 0.2
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            except KafkaError:
                log.exception("fetch failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if not batch:
                continue
            async with self._lock:
                # aiokafka hands out a new assignment's records before the assignment callback has
                # recovered its states: those go back, to be fetched again once it has.
                early = {tp: records for tp, records in batch.items() if tp.partition not in self.owned}
                for tp, records in early.items():
                    with contextlib.suppress(IllegalStateError):  # revoked meanwhile: its next owner reads them
                        consumer.seek(tp, records[0].offset)
                batch = {tp: records for tp, records in batch.items() if tp not in early}
                if not batch:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    await self._apply(batch)
                    delay = 0.2
                except Exception:  # a write refused, or anything else: nothing of the batch is committed
                    log.exception("a batch failed; rolling back", extra={"retry_in_s": delay})
                    await self._roll_back({tp.partition for tp in batch})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

    async def _apply(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Apply a batch (each partition's records in offset order), then make it durable: its alert
        changes, then its pairs' new states, then the offsets."""
        producer = self._producer()
        changes: list[AlertEvent] = []
        notices: list[tuple[bytes, bytes]] = []
        written: dict[int, dict[bytes, bytes]] = {}
        stores = {tp.partition: self.states[tp.partition] for tp in batch}
        items = [
            (tp.partition, r.key, r.value)
            for tp, records in batch.items()
            for r in records
            if r.key is not None and r.value is not None
        ]
        for p, key, found in detect_many(items, lambda p, k: stores[p].get(k), self.policy, self.horizon_ms):
            written.setdefault(p, {})[key] = found.state
            self.observe(found)
            changes.extend(found.changes)
            notices.extend(found.notices)
        for tp in batch:
            written.setdefault(tp.partition, {})
        alerts = self.settings.topic_alerts
        sent = []
        for change in changes:
            self.on_change(change)
            sent.append(await producer.send(alerts, encode_alert(change), key=change.dedup_key.encode()))
        for key, update in notices:  # a wider scope's news for its member pairs (ScopeUpdate)
            sent.append(await producer.send(self.topic, update, key=key))
        # Alerts (and scope updates) are durable before the states that say they were raised (and
        # which source offsets were applied), and those before the offsets are committed.
        await asyncio.gather(*sent)
        sends = []
        for p, writes in written.items():
            if writes:
                self.states[p].write(dict(writes))
                sends.extend(await self._send_changelog(p, writes))
        for p, count, fut in sends:
            meta = await fut
            self.changelog_end[p] = max(self.changelog_end.get(p, 0), meta.offset + count)
        assert self.consumer is not None
        await self.consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items() if records})

    async def _send_changelog(self, p: int, writes: Mapping[bytes, bytes | None]) -> Sends:
        return await send_records(self._producer(), self.changelog, p, writes)

    # -- rebalancing and recovery -----------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:  # the batch in flight is durable and committed first
            self.owned -= {tp.partition for tp in revoked if tp.topic == self.topic}
            self.ready = False

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        async with self._lock:
            for p in set(self.states) - parts:
                self._drop(p)
            await self._recover_forever(parts)
            self.owned = parts
            self.ready = True
            log.info("pair states recovered", extra={"partitions": sorted(parts)})

    async def _recover_forever(self, parts: set[int]) -> None:
        delay = 1.0
        while True:
            try:
                await self._recover(parts)
                return
            except Exception:
                log.exception("pair state recovery failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _recover(self, parts: set[int]) -> None:
        """Bring the states of ``parts`` to the end of their changelog partitions: a partition kept
        from before from where this worker's writes ended (read again from the start if another
        worker wrote to it since), any other from the start."""
        reader = make_consumer(self.settings, max_partition_fetch_bytes=4_194_304, fetch_max_bytes=16_777_216)
        await reader.start()
        try:
            await check_partitions(reader, self.changelog, parts, self.topic)
            kept = {p for p in parts if p in self.states}
            read: dict[int, int] = dict.fromkeys(parts, 0)

            def apply(p: int, records: list[ConsumerRecord[bytes, bytes]]) -> None:
                self._store(p).write({r.key: r.value for r in records if r.key is not None})
                read[p] += len(records)

            starts = {p: self.changelog_end.get(p, 0) if p in kept else 0 for p in parts}
            for p in parts - kept:
                self._drop(p)
                self._store(p)  # (a partition whose changelog is empty has a store too)
            self.changelog_end.update(await read_to_end(reader, self.changelog, starts, apply))
            moved = {p for p in kept if read[p]}
            if moved:  # another worker wrote them: whatever this one held may be behind
                for p in moved:
                    self._drop(p)
                    self._store(p)
                self.changelog_end.update(await read_to_end(reader, self.changelog, dict.fromkeys(moved, 0), apply))
        finally:
            await reader.stop()

    async def _roll_back(self, parts: set[int]) -> None:
        """After a failed write: states from the changelog, consumption from the committed offsets."""
        consumer = self.consumer
        assert consumer is not None
        parts &= self.owned
        for p in parts:
            self._drop(p)
        await self._recover_forever(parts)
        for p in parts:
            tp = TopicPartition(self.topic, p)
            try:
                await seek_to_committed(consumer, tp)
            except KafkaError:
                log.exception("reading the committed offset failed")

    def _store(self, p: int) -> PartitionStates:
        return self.states.open(p)

    def _drop(self, p: int) -> None:
        self.states.drop(p)
        self.changelog_end.pop(p, None)

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("stage not started")
        return self.producer
