"""Stage 1 of the scorer: modq.events -> decision state, rate book, detector outcomes.

This stage runs on a plain aiokafka consumer group inside the Faust worker rather than as a
Faust agent, because it is where both correctness and speed are decided, and both need control
over the order of writes, commits and recovery that Faust's agent and table machinery hides:

- Per round of records: apply the events to decision state (pure, ``score_batch``); send the
  detector outcomes and the round's book record (its bucket changes, per partition) and wait for
  both, then send the changed state records to the changelog and wait for them, then commit the
  source offsets. A crash anywhere leaves the changelog at or ahead of the committed offset;
  replaying from the committed offset is harmless because every state update is idempotent, a
  record below the partition's counted offset adds no bucket change (``services.domain.book``),
  and an outcome is either durable before the state that says it was fed, or it is fed again
  (the detectors drop it by source offset: ``OutcomeBatch``).
- On assignment, the state and the book records of each partition are read back from the
  changelog before any record is processed: from the start for a partition that is new here (or
  that another worker wrote since), from where this worker's own writes ended for one it kept;
  then the partitions are claimed in the database, which says how far their counts go. No
  in-flight write can be overtaken by recovery, because the rebalance callbacks take the same
  lock as a round.
- If the broker refuses a write, the owned partitions are rolled back to what the changelog
  holds and consumed again from their committed offsets; nothing is acknowledged that is not
  durable.
- Decision state expires on event time (``expiry.py``); it lives in memory or in RocksDB
  (``stores.py``), either way refilled from the changelog on assignment. Fetching pauses for a
  partition whose buffer is full, so a backlog is never read far ahead of what is applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from services.common.config import ScorerSettings
from services.common.kafka import BrokerWatch, RebalanceListener, make_consumer, make_producer, seek_to_committed
from services.common.unreadable import ConsumerHealth, GuardedConsumer
from services.contracts.pairs import group_outcomes
from services.contracts.remediations import Remediation
from services.domain.book import RateBook
from services.domain.catchup import Lane
from services.domain.join import DecisionAttrs, Deltas, JudgedVerdict, ScoredRating, score_batch
from services.scorer.checkpoint import Checkpoint
from services.scorer.expiry import Expiry
from services.scorer.heads import HeadWatch
from services.scorer.merge import EventTimeMerge, Pending
from services.scorer.recovery import Claim, Recovery
from services.scorer.remediations import RemediationLog
from services.scorer.stores import PartitionStores, remove_stores_of_dead_processes

log = logging.getLogger("modq.scorer.stage")

MAX_EVENTS_PER_ROUND = 20_000  # applied, then made durable and committed, as one unit
MAX_ROUNDS_IN_FLIGHT = 2  # a round is applied while the one before it becomes durable
MAX_BUFFERED_EVENTS = MAX_EVENTS_PER_ROUND  # per partition: fetching pauses above it


def changelog_topic(settings: ScorerSettings) -> str:
    """The decision-state changelog (compacted; key decision_id, value msgpack state)."""
    return f"{settings.scorer_app_id}-decisions-changelog"


class DecisionStage:
    """Owns the events-topic consumer group, the decision state of its partitions, and the book."""

    def __init__(
        self,
        settings: ScorerSettings,
        book: RateBook,
        metrics: Any,
        on_batch: Callable[[int, int, int, int], None] | None = None,
        health: ConsumerHealth | None = None,
        claim: Claim | None = None,
        book_lock: asyncio.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.book = book
        self.claim = claim
        # Held by every database write of the book and by recovery's claim: a recovered book never
        # misses (or repeats) a write of this process that was in flight.
        self.book_lock = book_lock or asyncio.Lock()
        self.metrics = metrics
        self.on_batch = on_batch
        self.topic = settings.topic_events
        self.changelog = changelog_topic(settings)
        self.group_id = f"{settings.scorer_app_id}-events"
        # RocksDB stores under a directory of this process: two workers sharing a data directory
        # never open (or wipe) each other's store for a partition moving between them.
        self._rocks_dir = (
            Path(settings.scorer_data_dir or f"{settings.scorer_app_id}-data") / "decisions" / str(os.getpid())
        )
        self.states = PartitionStores(settings.scorer_store, self._rocks_dir)
        self.expiry = Expiry(int(settings.scorer_state_retention_s * 1000), metrics.expired_decisions)
        # How far the input goes (for ``lanes`` and the alerts' horizon).
        self.head_watch = HeadWatch(settings, self.topic, lambda: self.owned)
        self.checkpoint = Checkpoint(
            self.topic,
            settings.topic_outcomes,
            self.changelog,
            self._producer,
            lambda: self.consumer,
            lambda: self.owned,
        )
        self.merge = EventTimeMerge(MAX_BUFFERED_EVENTS)
        self.remediations = RemediationLog(settings)
        # The re-review sample's new decisions and newly judged ones, until the next database write.
        self.samples: dict[str, tuple[DecisionAttrs, bool]] = {}
        self.judged: set[str] = set()
        self.recovery = Recovery(
            settings,
            self.changelog,
            self.topic,
            self.states,
            self.expiry,
            self.checkpoint.changelog_end,
            book,
            self.book_lock,
            claim,
        )
        self.owned: set[int] = set()
        # events partition -> (next offset to process, monotonic time it last advanced)
        self.progress: dict[int, tuple[int, float]] = {}
        self.ready = False
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.db_wait_since: float | None = None  # see ``waiting_for_database``
        self._generation = 0
        # Rounds applied in memory and still becoming durable, oldest first, with their partitions.
        self._rounds: deque[tuple[asyncio.Task[None], set[int]]] = deque()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.broker: BrokerWatch | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        remove_stores_of_dead_processes(self._rocks_dir.parent)
        self.producer = make_producer(s, linger_ms=0, max_batch_size=1_048_576)
        await self.producer.start()
        self.consumer = make_consumer(
            s,
            guard=self.health,
            group_id=self.group_id,
            session_timeout_ms=int(s.faust_session_timeout_s * 1000),
            rebalance_timeout_ms=int(s.faust_rebalance_timeout_s * 1000),
            heartbeat_interval_ms=3000,
            group_instance_id=s.scorer_instance_id or None,
            # Small per-partition fetches keep the partitions of a backlog in step, so the
            # detectors see verdicts close to event-time order after a catch-up.
            max_partition_fetch_bytes=s.scorer_partition_fetch_bytes,
            fetch_max_bytes=16_777_216,
        )
        self.consumer.subscribe([self.topic], listener=RebalanceListener(self))
        await self.consumer.start()
        self.broker = BrokerWatch(self.producer, "scorer")
        self._tasks = [
            asyncio.create_task(self._run(), name="modq-decision-stage"),
            asyncio.create_task(self.broker.run(), name="modq-scorer-broker-watch"),
            asyncio.create_task(self.head_watch.run(self._stopping), name="modq-scorer-head-watch"),
        ]

    async def stop(self) -> None:
        """Finish the batch in flight, commit it, leave the group."""
        self._stopping.set()
        if self.broker is not None:
            self.broker.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
            for task in self._tasks:
                task.cancel()
        async with self._lock:
            await self._settle(rebalancing=True)
            await self.checkpoint.commit()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    @property
    def serving(self) -> bool:
        """State recovered for the current assignment and the broker answering."""
        return self.ready and (self.broker is None or self.broker.ok)

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        delay = 0.2
        while not self._stopping.is_set():
            try:
                fetched = await self._fetch(consumer)
            except KafkaError:
                log.exception("fetch failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            # Buffered even while the assignment callback is still recovering state: the fetcher
            # starts as soon as partitions are assigned. Applying waits for the lock.
            for tp, messages in fetched.items():
                if messages:
                    self.merge.add(tp.partition, messages)
            if self.waiting_for_database():
                await asyncio.sleep(0.05)
                continue
            generation = self._generation
            ready = self.merge.take(self.owned, self._lagging, MAX_EVENTS_PER_ROUND)
            if not ready and not self._round_due():
                continue
            async with self._lock:
                if generation != self._generation:
                    continue  # a rebalance came in between: consumption restarts from the commits
                if await self._settle(keep=MAX_ROUNDS_IN_FLIGHT - 1):
                    delay = 0.2
                else:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue  # rolled back: the records are fetched again
                self._apply(ready)

    def _round_due(self) -> bool:
        """With nothing to apply, a round can still be due: to expire state, or to tombstone book
        records the database has now."""
        return any(self.book.tombstones.get(p) or self.expiry.cutoff(p) is not None for p in self.owned)

    def head_ms(self) -> int:
        """The event time of the newest event on the input this worker knows of (0: not known yet)."""
        owned = self.owned
        heads, watermark = self.head_watch.heads, self.expiry.watermark
        return max((max(heads.get(p, 0), watermark.get(p, 0)) for p in owned), default=0)

    def lanes(self) -> dict[int, Lane]:
        """Per owned partition, how far it is and how much is left (see ``CatchUp``)."""
        out = {}
        for p in self.owned:
            applied = self.expiry.watermark.get(p, 0)
            done = self.progress.get(p, (-1, 0.0))[0]
            end = self.head_watch.ends.get(p)
            left = max(0, end - done) if end is not None and done >= 0 else 0
            head = max(applied, self.head_watch.heads.get(p, 0))
            out[p] = Lane(applied, head, int(left * self.merge.events_per_record))
        return out

    def waiting_for_database(self) -> bool:
        """True while the rate book holds more unwritten rows than allowed: applying waits (the
        buffers fill and fetching pauses), so a slow or unavailable database bounds memory
        instead of growing it. The stall check does not count the wait as a stall."""
        now, backlog = time.monotonic(), self.book.pending_rows()
        if backlog >= self.settings.scorer_max_pending_buckets:
            if self.db_wait_since is None:
                self.db_wait_since = now
                log.warning("waiting for database writes to catch up", extra={"buckets": backlog})
            return True
        if self.db_wait_since is not None:
            self.metrics.database_wait.inc(now - self.db_wait_since)
            self.progress = {p: (done, now) for p, (done, _) in self.progress.items()}
            self.db_wait_since = None
        return False

    async def _settle(self, keep: int = 0, rebalancing: bool = False) -> bool:
        """Wait until at most ``keep`` rounds are still becoming durable (under the lock).

        False if a round failed: then the state of every partition with rounds not known durable
        is dropped. While consuming, every owned partition is also re-read from its changelog and
        consumed again from its committed offset (records already taken from the buffers are
        dropped with them); during a rebalance, dropping is enough, as assignment re-reads.
        """
        while len(self._rounds) > keep:
            try:
                await self._rounds[0][0]
            except Exception:
                touched = set().union(*(p for _, p in self._rounds))
                for later, _ in self._rounds:
                    later.cancel()
                await asyncio.gather(*(t for t, _ in self._rounds), return_exceptions=True)
                self._rounds.clear()
                log.exception("writing a round failed; rolling back", extra={"partitions": sorted(touched)})
                if rebalancing:
                    for p in touched:
                        self.states.drop(p)
                        self.checkpoint.changelog_end.pop(p, None)
                else:
                    await self._roll_back(touched | self.owned)
                return False
            self._rounds.popleft()
        return True

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Fetch more records, only for partitions whose buffer is not full.

        Without the bound a backlog would be read (and decoded) into memory as fast as the broker
        sends it, far ahead of what is applied. A paused partition's prefetched records are
        dropped by aiokafka and fetched again after it resumes, from the position it had.
        """
        full = self.merge.full(self.owned)
        if full:
            consumer.pause(*(TopicPartition(self.topic, p) for p in full))
        resumable = [TopicPartition(self.topic, p) for p in self.owned - full - self.unreadable()]
        if resumable:
            consumer.resume(*resumable)
        if self.owned and full == self.owned:
            await asyncio.sleep(0)  # everything owned is buffered: apply before fetching more
            return {}
        records = self.merge.records_to_fetch()
        got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
            timeout_ms=100 if self.merge.holds_data() else 500, max_records=records
        )
        return got

    def unreadable(self) -> set[int]:
        """Owned partitions waiting at a record batch that cannot be read (see ``ConsumerHealth``)."""
        if not isinstance(self.consumer, GuardedConsumer):
            return set()
        return {tp.partition for tp in self.consumer.waiting() if tp.topic == self.topic}

    def _lagging(self, p: int) -> bool:
        assert self.consumer is not None
        if p in self.unreadable():
            return False  # records wait on the broker, but none can be read: the merge does not wait for them
        highwater = self.consumer.highwater(TopicPartition(self.topic, p))
        fetched_to = self.merge.fetched_to.get(p)
        return highwater is not None and fetched_to is not None and fetched_to < highwater

    def _apply(self, ready: list[Pending]) -> None:
        """Apply records in the given order (under the lock); a task then makes the round durable,
        while the next round is applied."""
        chunks: list[tuple[int, int, list[JudgedVerdict]]] = []
        scored: list[tuple[int, int, list[ScoredRating]]] = []
        written: dict[int, dict[bytes, bytes | None]] = {}
        offsets: dict[TopicPartition, int] = {}
        round_deltas: dict[int, Deltas] = {}  # a partition's bucket changes summed over the round
        findings: list[tuple[int, int, list[tuple[int, Remediation]]]] = []
        rate = self.settings.rereview_sample_rate
        newest_ms = events = 0
        for _, p, offset, batch in ready:
            states = self.states.open(p)
            # A record replayed below the partition's counted offset changes state only: its bucket
            # changes are in the database or in the book already.
            counted = offset < self.book.counted_to(p)
            audit = self.settings.audit_replaces_qa
            deltas = Deltas(rate, audit) if counted else round_deltas.setdefault(p, Deltas(rate, audit))
            fed_before, found_before, scored_before = len(deltas.outcomes), len(deltas.findings), len(deltas.scored)
            sampled_before, judged_before = len(deltas.samples), len(deltas.judged)
            writes, _ = score_batch(batch, states.get, into=deltas)
            states.write(writes)
            written.setdefault(p, {}).update(writes)
            chunks.append((p, offset, deltas.outcomes[fed_before:]))
            scored.append((p, offset, deltas.scored[scored_before:]))
            for did, attrs, judged in deltas.samples[sampled_before:]:
                self.samples[did] = (attrs, judged or self.samples.get(did, (attrs, False))[1])
            self.judged.update(deltas.judged[judged_before:])
            if len(deltas.findings) > found_before:
                new = self.remediations.select(p, offset, deltas.findings[found_before:])
                if new:
                    findings.append((p, offset, new))
            offsets[TopicPartition(self.topic, p)] = offset + 1
            self.progress[p] = (offset + 1, time.monotonic())
            events += len(batch)
            if batch:
                newest_ms = max(newest_ms, max(ev.t_ms for ev in batch))
        books: dict[int, bytes] = {}
        for p, deltas in round_deltas.items():
            through = offsets[TopicPartition(self.topic, p)]
            if (record := self.book.apply(p, deltas, through)) is not None:
                books[p] = record
        for p in self.owned:
            changes = written.setdefault(p, {})
            self.expiry.sweep(p, self.states.open(p), changes)
            changes.update(dict.fromkeys(self.book.take_tombstones(p)))
        written = {p: writes for p, writes in written.items() if writes}
        outcomes = group_outcomes(chunks, head_ms=self.head_ms(), scored=scored)
        if self.on_batch is not None and ready:
            self.on_batch(len(ready), events, sum(len(fed) for *_, fed in chunks), newest_ms)
        previous = self._rounds[-1][0] if self._rounds else None
        task = asyncio.create_task(
            self.checkpoint.make_durable(previous, outcomes, books, written, offsets, self._sender(findings))
        )
        self._rounds.append((task, set(written) | set(books)))

    # -- rebalancing and recovery -----------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            await self._settle(rebalancing=True)  # no write of ours may land after the new owner recovered
            await self.checkpoint.commit()
            # Fetched but unapplied records are dropped: after the rebalance consumption restarts
            # from the committed offsets.
            self._generation += 1
            self.merge.clear()
            lost = {tp.partition for tp in revoked if tp.topic == self.topic}
            self.owned -= lost
            self.ready = False

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        async with self._lock:
            leaving = (set(self.states) | set(self.book.parts)) - parts
            for p in leaving:  # another worker owns it now; re-read if it returns
                self.states.drop(p)
                self.checkpoint.changelog_end.pop(p, None)
                self.expiry.forget(p)
                self.head_watch.heads.pop(p, None)
            async with self.book_lock:
                self.book.drop(leaving)
            started = time.monotonic()
            records = await self._recover_forever(parts)
            self.owned = parts
            await self.head_watch.refresh()  # before any record: what is history is known from the first alert on
            now = time.monotonic()
            self.progress = {p: (-1, now) for p in parts}
            self.ready = True
            log.info(
                "decision state recovered",
                extra={
                    "partitions": sorted(parts),
                    "records_read": records,
                    "decisions": sum(self.states[p].count() for p in parts if p in self.states),
                    "rows_to_write": self.book.pending_rows(),
                    "seconds": round(now - started, 3),
                },
            )

    async def _recover_forever(self, parts: set[int]) -> int:
        """Recover, retrying for as long as it takes: a worker must not go on without its state
        (not ready meanwhile; each failure is logged)."""
        delay = 1.0
        while True:
            try:
                return await self._recover(parts)
            except Exception:
                log.exception("decision state recovery failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _recover(self, parts: set[int]) -> int:
        """``Recovery.recover``: state and book of ``parts`` from the changelog, then claimed; and how
        far their remediations went out (``RemediationLog``)."""
        records = await self.recovery.recover(parts)
        await self.remediations.recover(parts)
        return records

    def take_samples(self) -> tuple[dict[str, tuple[DecisionAttrs, bool]], set[str]]:
        samples, judged, self.samples, self.judged = self.samples, self.judged, {}, set()
        return samples, judged

    def return_samples(self, samples: dict[str, tuple[DecisionAttrs, bool]], judged: set[str]) -> None:
        """A failed write's samples, kept for the next one."""
        for did, row in samples.items():
            self.samples.setdefault(did, row)
        self.judged |= judged

    def _sender(
        self, findings: list[tuple[int, int, list[tuple[int, Remediation]]]]
    ) -> Callable[[], Awaitable[list[asyncio.Future[Any]]]] | None:
        """Sends a round's remediation events (with its outcomes, before its state)."""
        if not findings:
            return None

        async def send() -> list[asyncio.Future[Any]]:
            producer = self._producer()
            out: list[asyncio.Future[Any]] = []
            for p, offset, items in findings:
                out.extend(await self.remediations.send(producer, p, offset, items))
            return out

        return send

    async def _roll_back(self, parts: set[int]) -> None:
        """After a failed write: state and book from the changelog, consumption from the committed
        offsets."""
        consumer = self.consumer
        assert consumer is not None
        parts &= self.owned
        for p in parts:
            self.states.drop(p)
            self.checkpoint.forget(p)
            self.merge.drop(p)
        while True:
            try:
                await self._recover(parts)
                for p in parts:
                    tp = TopicPartition(self.topic, p)
                    await seek_to_committed(consumer, tp)
                break
            except Exception:
                log.exception("roll back failed; retrying")
                await asyncio.sleep(1.0)

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("stage not started")
        return self.producer
