"""Stage 1 of the scorer: modq.events -> decision state, rate book, detector outcomes.

This stage runs on a plain aiokafka consumer group inside the Faust worker rather than as a
Faust agent, because it is where both correctness and speed are decided, and both need control
over the order of writes, commits and recovery that Faust's agent and table machinery hides:

- Per round of records: apply the events to decision state (pure, ``score_batch``); send the
  detector outcomes and the round's book record (its bucket changes, per partition) and wait for
  both, then send the changed state records to the changelog and wait for them, then commit the
  source offsets. A crash anywhere leaves the changelog at or ahead of the committed offset;
  replaying from the committed offset is harmless because every state update is idempotent, a
  record below the partition's counted offset adds no bucket change (``services.scorer.book``),
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
- Decision state expires on event time (``_expire``); it lives in memory or in RocksDB
  (``states.py``), either way refilled from the changelog on assignment. Fetching pauses for a
  partition whose buffer is full, so a backlog is never read far ahead of what is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from services.common.config import ScorerSettings
from services.common.kafka import BrokerWatch, make_consumer, make_producer
from services.common.unreadable import ConsumerHealth, GuardedConsumer
from services.common.wire import WireEvent, decode_batch
from services.scorer.book import PartitionBook, RateBook, book_key, book_offset, decode_rows, encode_rows
from services.scorer.catchup import Lane
from services.scorer.join import Deltas, Outcome, expired, touched_ms
from services.scorer.pipeline import group_outcomes, score_batch
from services.scorer.rates import BucketKey, Counts
from services.scorer.states import PartitionStates, open_states

log = logging.getLogger("modq.scorer.stage")

Pending = tuple[int, int, int, list[WireEvent]]
"""A fetched record waiting to be applied: (first event time ms, partition, offset, events)."""

MERGE_WAIT_S = 1.0
MAX_EVENTS_PER_ROUND = 20_000  # applied, then made durable and committed, as one unit
MAX_ROUNDS_IN_FLIGHT = 2  # a round is applied while the one before it becomes durable
MAX_BUFFERED_EVENTS = MAX_EVENTS_PER_ROUND  # per partition: fetching pauses above it
SWEPT_KEY = b"\x00modq:swept"  # changelog record: the partition's state-expiry cutoff (not a decision)
Claim = Callable[[list[int]], Awaitable[dict[int, int]]]
"""Claims partitions in the database; returns how far each one's counts there go."""


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
        self.states: dict[int, PartitionStates] = {}
        self.changelog_end: dict[int, int] = {}  # partition -> changelog offset the state reflects
        # Per partition: event time of the newest event in its state, and the expiry cutoff of its
        # last sweep (see ``_expire``).
        self.watermark: dict[int, int] = {}
        self._swept: dict[int, int] = {}
        # Per partition: event time of the newest record on the broker, and its end offset
        # (``_watch_heads``): how far behind this worker is, for ``lanes`` and the alerts' horizon.
        self.heads: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._head_reader: AIOKafkaConsumer | None = None
        self.retention_ms = int(settings.scorer_state_retention_s * 1000)
        # RocksDB stores under a directory of this process: two workers sharing a data directory
        # never open (or wipe) each other's store for a partition moving between them.
        self._rocks_dir = (
            Path(settings.scorer_data_dir or f"{settings.scorer_app_id}-data") / "decisions" / str(os.getpid())
        )
        self.owned: set[int] = set()
        # events partition -> (next offset to process, monotonic time it last advanced)
        self.progress: dict[int, tuple[int, float]] = {}
        self.ready = False
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}
        self._buffers: dict[int, deque[Pending]] = {}
        self._buffered: dict[int, int] = {}  # events waiting in each partition's buffer
        self._fetched_to: dict[int, int] = {}
        # Mean events per fetched record (a moving average); until measured, assume large batches.
        self._events_per_record = MAX_BUFFERED_EVENTS / 4
        self._blocked_since: float | None = None
        self.db_wait_since: float | None = None  # see ``_waiting_for_database``
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
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        await self.consumer.start()
        self.broker = BrokerWatch(self.producer, "scorer")
        self._tasks = [
            asyncio.create_task(self._run(), name="modq-decision-stage"),
            asyncio.create_task(self.broker.run(), name="modq-scorer-broker-watch"),
            asyncio.create_task(self._watch_heads(), name="modq-scorer-head-watch"),
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
            await self._commit()
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
                    self._buffer(tp.partition, messages)
            if self._waiting_for_database():
                await asyncio.sleep(0.05)
                continue
            generation = self._generation
            ready = self._take_in_order()
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
        return any(self.book.tombstones.get(p) or self._sweep_cutoff(p) is not None for p in self.owned)

    def head_ms(self) -> int:
        """The event time of the newest event on the input this worker knows of (0: not known yet)."""
        owned = self.owned
        return max((max(self.heads.get(p, 0), self.watermark.get(p, 0)) for p in owned), default=0)

    def lanes(self) -> dict[int, Lane]:
        """Per owned partition, how far it is and how much is left (see ``CatchUp``)."""
        out = {}
        for p in self.owned:
            applied = self.watermark.get(p, 0)
            done = self.progress.get(p, (-1, 0.0))[0]
            end = self._ends.get(p)
            left = max(0, end - done) if end is not None and done >= 0 else 0
            out[p] = Lane(applied, max(applied, self.heads.get(p, 0)), int(left * self._events_per_record))
        return out

    async def _watch_heads(self) -> None:
        """Every ``scorer_progress_interval_s``: ``refresh_heads``."""
        while not self._stopping.is_set():
            await self.refresh_heads()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.scorer_progress_interval_s)
        if self._head_reader is not None:
            await self._head_reader.stop()

    async def refresh_heads(self) -> None:
        """The event time of each owned partition's newest record, read off the broker (its last
        record batch), and the partition's end offset. Best effort: the main loop reports the
        broker's health."""
        try:
            if self._head_reader is None:
                reader = make_consumer(self.settings, max_partition_fetch_bytes=4_194_304)
                await reader.start()
                self._head_reader = reader
            await self._read_heads(self._head_reader)
        except Exception as exc:
            log.debug("reading the newest records failed", extra={"error": repr(exc)})

    async def _read_heads(self, reader: AIOKafkaConsumer) -> None:
        tps = [TopicPartition(self.topic, p) for p in sorted(self.owned)]
        if not tps:
            return
        reader.assign(tps)
        ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
        self._ends = {tp.partition: end for tp, end in ends.items()}
        wanted = [tp for tp in tps if ends[tp] > 0]
        for tp in wanted:
            reader.seek(tp, ends[tp] - 1)
        if not wanted:
            return
        got = await reader.getmany(*wanted, timeout_ms=2_000)
        for tp, messages in got.items():
            newest = 0
            for m in messages:
                with contextlib.suppress(Exception):  # an undecodable batch is reported by the main consumer
                    newest = max([newest, *(ev.t_ms for ev in decode_batch(m.value or b""))])
            if newest:
                self.heads[tp.partition] = max(newest, self.heads.get(tp.partition, 0))

    def _waiting_for_database(self) -> bool:
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
                        self._drop_states(p)
                        self.changelog_end.pop(p, None)
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
        full = {p for p in self.owned if self._buffered.get(p, 0) >= MAX_BUFFERED_EVENTS}
        if full:
            consumer.pause(*(TopicPartition(self.topic, p) for p in full))
        resumable = [TopicPartition(self.topic, p) for p in self.owned - full - self.unreadable()]
        if resumable:
            consumer.resume(*resumable)
        if self.owned and full == self.owned:
            await asyncio.sleep(0)  # everything owned is buffered: apply before fetching more
            return {}
        # Records are batches of events, so a record count alone does not bound what one call
        # decodes (500 records of 2,000 events each held 750 MB of decoded events in a profile):
        # ask for about as many records as fill one partition's buffer, by the mean batch size.
        records = min(500, max(4, int(MAX_BUFFERED_EVENTS / max(1.0, self._events_per_record))))
        got: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
            timeout_ms=100 if self._buffers_hold_data() else 500, max_records=records
        )
        return got

    def _buffer(self, p: int, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        buf = self._buffers.setdefault(p, deque())
        events = 0
        for message in messages:
            try:
                batch = decode_batch(message.value or b"")
            except Exception:  # written by ingest, so never expected; skipping beats a crash loop
                log.error("undecodable batch skipped", extra={"partition": p, "offset": message.offset})
                batch = []
            buf.append((batch[0].t_ms if batch else 0, p, message.offset, batch))
            events += len(batch)
        self._buffered[p] = self._buffered.get(p, 0) + events
        self._fetched_to[p] = messages[-1].offset + 1
        self._events_per_record = 0.8 * self._events_per_record + 0.2 * events / len(messages)

    def _buffers_hold_data(self) -> bool:
        return any(self._buffers.values())

    def _take_in_order(self, max_events: int = MAX_EVENTS_PER_ROUND) -> list[Pending]:
        """Records to apply next, merged across partitions by the event time of their batches.

        A backlog then reaches the detectors close to event-time order rather than one partition
        after another. While a partition that has records waiting on the broker has none fetched
        yet, the merge waits for it (up to ``MERGE_WAIT_S``, so a slow partition cannot stop the
        others).
        """
        waiting = [p for p in self.owned if not self._buffers.get(p) and self._lagging(p)]
        now = time.monotonic()
        if waiting:
            if self._blocked_since is None:
                self._blocked_since = now
            if now - self._blocked_since < MERGE_WAIT_S:
                return []
        else:
            self._blocked_since = None
        ready: list[Pending] = []
        heads = [(buf[0][0], p) for p, buf in self._buffers.items() if buf and p in self.owned]
        heapq.heapify(heads)
        events = 0
        while heads and events < max_events:
            _, p = heapq.heappop(heads)
            buf = self._buffers[p]
            ready.append(buf.popleft())
            events += len(ready[-1][3])
            self._buffered[p] -= len(ready[-1][3])
            if buf:
                heapq.heappush(heads, (buf[0][0], p))
            elif p not in waiting and self._lagging(p):
                break  # its next records are still on the broker
        return ready

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
        fetched_to = self._fetched_to.get(p)
        return highwater is not None and fetched_to is not None and fetched_to < highwater

    def _apply(self, ready: list[Pending]) -> None:
        """Apply records in the given order (under the lock); a task then makes the round durable,
        while the next round is applied."""
        chunks: list[tuple[int, int, list[Outcome]]] = []
        written: dict[int, dict[bytes, bytes | None]] = {}
        offsets: dict[TopicPartition, int] = {}
        round_deltas: dict[int, Deltas] = {}  # a partition's bucket changes summed over the round
        newest_ms = events = 0
        for _, p, offset, batch in ready:
            states = self._states(p)
            # A record replayed below the partition's counted offset changes state only: its bucket
            # changes are in the database or in the book already.
            counted = offset < self.book.counted_to(p)
            deltas = Deltas() if counted else round_deltas.setdefault(p, Deltas())
            fed_before = len(deltas.outcomes)
            writes, _ = score_batch(batch, states.get, into=deltas)
            states.write(writes)
            written.setdefault(p, {}).update(writes)
            chunks.append((p, offset, deltas.outcomes[fed_before:]))
            offsets[TopicPartition(self.topic, p)] = offset + 1
            self.progress[p] = (offset + 1, time.monotonic())
            events += len(batch)
            if batch:
                newest_ms = max(newest_ms, max(ev.t_ms for ev in batch))
        books: dict[int, bytes] = {}
        for p, deltas in round_deltas.items():
            through = offsets[TopicPartition(self.topic, p)]
            if rows := self.book.apply(p, deltas, through):
                books[p] = encode_rows(rows)
        for p in self.owned:
            changes = written.setdefault(p, {})
            self._expire(p, changes)
            changes.update(dict.fromkeys(self.book.take_tombstones(p)))
        written = {p: writes for p, writes in written.items() if writes}
        outcomes = group_outcomes(chunks, head_ms=self.head_ms())
        if self.on_batch is not None and ready:
            self.on_batch(len(ready), events, sum(len(fed) for *_, fed in chunks), newest_ms)
        previous = self._rounds[-1][0] if self._rounds else None
        task = asyncio.create_task(self._make_durable(previous, outcomes, books, written, offsets))
        self._rounds.append((task, set(written) | set(books)))

    def _expire(self, p: int, writes: dict[bytes, bytes | None]) -> None:
        """Advance the partition's watermark and, now and then, expire old decision state.

        A decision's state expires ``retention`` (event time) after its newest event, measured
        against the partition's watermark (the newest ``touched_ms`` in its state): tombstones for
        the expired keys go out in this round, with the cutoff (``SWEPT_KEY``), so that a recovery
        does not sweep again at once. The rate buckets it counted in keep their counts (they are in
        the database or in the book). A sweep scans the whole partition, so it runs only once the
        cutoff can move by a twentieth of the retention.
        """
        newest = max((touched_ms(raw) for raw in writes.values() if raw is not None), default=0)
        self.watermark[p] = max(newest, self.watermark.get(p, 0))
        cutoff = self._sweep_cutoff(p)
        if cutoff is None:
            return
        self._swept[p] = cutoff
        states = self._states(p)
        gone = expired(states.items(), cutoff)
        tombstones = dict.fromkeys(gone)
        states.write(tombstones)
        writes.update(tombstones)
        writes[SWEPT_KEY] = cutoff.to_bytes(8, "big")
        self.metrics.expired_decisions.inc(len(gone))
        log.info("state expired", extra={"partition": p, "decisions": len(gone), "cutoff_ms": cutoff})

    def _sweep_cutoff(self, p: int) -> int | None:
        """The cutoff a sweep of the partition would use now; None when none is due."""
        watermark = self.watermark.get(p)
        if watermark is None:
            return None
        cutoff = watermark - self.retention_ms
        last = self._swept.get(p)
        if last is not None and cutoff - last < max(self.retention_ms // 20, 60_000):
            return None
        if cutoff <= 0 or (last is not None and cutoff <= last):
            return None
        return cutoff

    async def _make_durable(
        self,
        previous: asyncio.Task[None] | None,
        outcomes: dict[bytes, bytes],
        books: dict[int, bytes],
        written: dict[int, dict[bytes, bytes | None]],
        offsets: dict[TopicPartition, int],
    ) -> None:
        """Outcomes and book records durable, then the state that marks them fed and counted, then
        the offsets: rounds in order. A round's book record is durable before any of its state
        records is sent, so a state that holds the round's changes always comes with its book."""
        if previous is not None:
            await previous  # changelog records of a key must reach the log in the order written
        producer = self._producer()
        topic = self.settings.topic_outcomes
        # Sent here, after the round before: a pair's outcomes must stay in source-offset order.
        first = [await producer.send(topic, payload, key=key) for key, payload in outcomes.items()]
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
            self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, 0))
        await self._commit()

    async def _send_changelog(
        self, p: int, writes: dict[bytes, bytes | None]
    ) -> list[tuple[int, int, asyncio.Future[Any]]]:
        """State records as whole record batches (a C-level append per record, not a send)."""
        producer = self._producer()
        sends: list[tuple[int, int, asyncio.Future[Any]]] = []
        batch, count = producer.create_batch(), 0
        for key, value in writes.items():
            if batch.append(key=key, value=value, timestamp=None) is None:
                sends.append((p, count, await producer.send_batch(batch, self.changelog, partition=p)))
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        if count:
            sends.append((p, count, await producer.send_batch(batch, self.changelog, partition=p)))
        return sends

    # -- offsets ----------------------------------------------------------------------------

    async def _commit(self) -> None:
        """Commit the offsets of durable rounds. A failed commit only means a harmless replay."""
        if not self._uncommitted or self.consumer is None:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed; the records will be replayed", extra={"error": repr(exc)})
            for tp, offset in offsets.items():
                if tp.partition in self.owned:
                    self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, 0))

    # -- rebalancing and recovery -----------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            await self._settle(rebalancing=True)  # no write of ours may land after the new owner recovered
            await self._commit()
            # Fetched but unapplied records are dropped: after the rebalance consumption restarts
            # from the committed offsets.
            self._generation += 1
            self._buffers.clear()
            self._buffered.clear()
            self._fetched_to.clear()
            lost = {tp.partition for tp in revoked if tp.topic == self.topic}
            self.owned -= lost
            self.ready = False

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned if tp.topic == self.topic}
        async with self._lock:
            leaving = (set(self.states) | set(self.book.parts)) - parts
            for p in leaving:  # another worker owns it now; re-read if it returns
                self._drop_states(p)
                self.changelog_end.pop(p, None)
                self._swept.pop(p, None)
                self.heads.pop(p, None)
                self.watermark.pop(p, None)
            async with self.book_lock:
                self.book.drop(leaving)
            started = time.monotonic()
            records = await self._recover_forever(parts)
            self.owned = parts
            await self.refresh_heads()  # before any record: what is history is known from the first alert on
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
        """Bring the state and book of ``parts`` up to the end of their changelog partitions, then
        claim them in the database.

        A partition kept from before is read from where this worker's writes ended; if another
        worker wrote to it since (it moved away and back), it is read again from the start, since
        its book here may hold changes that worker wrote to the database meanwhile."""
        if not parts:
            return 0
        read, books = await self._read_changelog(parts, full={p for p in parts if p not in self.states})
        moved = {p for p, n in read.items() if n and p not in books}
        if moved:
            for p in moved:
                self._drop_states(p)
            again, more = await self._read_changelog(moved, full=moved)
            read.update(again)
            books.update(more)
        claim = self.claim
        async with self.book_lock:
            applied = await claim(sorted(parts)) if claim is not None else dict.fromkeys(parts, 0)
            for p, records in books.items():
                self.book.install(p, PartitionBook.recover(records, applied.get(p, 0)))
            for p in parts - set(books):
                if p not in self.book.parts:
                    self.book.install(p, PartitionBook(applied.get(p, 0)))
        return sum(read.values())

    async def _read_changelog(
        self, parts: set[int], full: set[int]
    ) -> tuple[dict[int, int], dict[int, dict[int, dict[BucketKey, Counts]]]]:
        """Read ``parts`` to the end of their changelog partitions, those in ``full`` from the start
        (their state and book records), the others from where this worker's writes ended (state
        only: records found there mean another worker wrote, see ``_recover``). Returns the
        records read per partition and, per fully read partition, its live book records."""
        s = self.settings
        reader = make_consumer(s, max_partition_fetch_bytes=4_194_304, fetch_max_bytes=16_777_216)
        await reader.start()
        read: dict[int, int] = dict.fromkeys(parts, 0)
        books: dict[int, dict[int, dict[BucketKey, Counts]]] = {p: {} for p in full}
        try:
            await reader.topics()  # metadata, to check the changelog matches the events topic
            available = reader.partitions_for_topic(self.changelog) or set()
            if not parts <= available:
                raise RuntimeError(
                    f"{self.changelog} has partitions {sorted(available)}, {self.topic} needs {sorted(parts)}:"
                    " the changelog must have as many partitions as the events topic"
                )
            tps = [TopicPartition(self.changelog, p) for p in sorted(parts)]
            reader.assign(tps)
            # Read until a fetch comes back empty at or past the end offset. The end offset alone
            # is not enough: Tansu 0.6 reports it as the base offset of the last record batch
            # plus one, short of the real end when that batch holds many records.
            ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
            todo: dict[TopicPartition, int] = {}
            for tp in tps:
                p = tp.partition
                start = 0 if p in full else self.changelog_end.get(p, 0)
                if p in full:
                    self._drop_states(p)
                    self._states(p)
                    self._swept.pop(p, None)
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
                            self._swept[p] = int.from_bytes(m.value or bytes(8), "big")
                        elif (through := book_offset(key)) is not None:
                            if book is not None:
                                if m.value is None:
                                    book.pop(through, None)
                                else:
                                    book[through] = decode_rows(m.value)
                        else:
                            changes[key] = m.value
                    self.states[p].write(changes)
                    newest = max((touched_ms(v) for v in changes.values() if v is not None), default=0)
                    self.watermark[p] = max(newest, self.watermark.get(p, 0))
                    read[p] += len(messages)
                for tp in list(todo):
                    position = await reader.position(tp)
                    self.changelog_end[tp.partition] = position
                    if not batches.get(tp) and position >= todo[tp]:
                        del todo[tp]
        finally:
            await reader.stop()
        return read, books

    async def _roll_back(self, parts: set[int]) -> None:
        """After a failed write: state and book from the changelog, consumption from the committed
        offsets."""
        consumer = self.consumer
        assert consumer is not None
        parts &= self.owned
        for p in parts:
            self._drop_states(p)
            self.changelog_end.pop(p, None)
            self._buffers.pop(p, None)
            self._buffered.pop(p, None)
            self._fetched_to.pop(p, None)
            self._uncommitted.pop(TopicPartition(self.topic, p), None)
        while True:
            try:
                await self._recover(parts)
                for p in parts:
                    tp = TopicPartition(self.topic, p)
                    committed = await consumer.committed(tp)
                    if committed is None:
                        await consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek(tp, committed)
                break
            except Exception:
                log.exception("roll back failed; retrying")
                await asyncio.sleep(1.0)

    def _states(self, p: int) -> PartitionStates:
        """The partition's state store, opened (empty) if there is none yet."""
        states = self.states.get(p)
        if states is None:
            states = self.states[p] = open_states(self.settings.scorer_store, self._rocks_dir, p)
        return states

    def _drop_states(self, p: int) -> None:
        states = self.states.pop(p, None)
        if states is not None:
            states.close()

    def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise RuntimeError("stage not started")
        return self.producer


def remove_stores_of_dead_processes(root: Path) -> None:
    """Delete the state stores left by scorer processes that are gone (they are refilled anyway)."""
    for path in root.glob("*") if root.is_dir() else []:
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            os.kill(int(path.name), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: DecisionStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.stage.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.stage.on_assigned(assigned)
