"""The events stage's buffers: records fetched per partition, waiting to be applied, taken in
event-time order across partitions, with a bound that pauses fetching."""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable

from aiokafka import ConsumerRecord

from services.contracts.batches import WireEvent, decode_batch

log = logging.getLogger("modq.scorer.stage")

Pending = tuple[int, int, int, list[WireEvent]]
"""A fetched record waiting to be applied: (first event time ms, partition, offset, events)."""

MERGE_WAIT_S = 1.0


class EventTimeMerge:
    """Per partition, the fetched records not applied yet (at most about ``max_buffered`` events)."""

    def __init__(self, max_buffered: int) -> None:
        self.max_buffered = max_buffered
        self.buffers: dict[int, deque[Pending]] = {}
        self.buffered: dict[int, int] = {}  # events waiting in each partition's buffer
        self.fetched_to: dict[int, int] = {}
        # Mean events per fetched record (a moving average); until measured, assume large batches.
        self.events_per_record = max_buffered / 4
        self._blocked_since: float | None = None

    def full(self, partitions: set[int]) -> set[int]:
        """The partitions whose buffer is full: fetching pauses for them."""
        return {p for p in partitions if self.buffered.get(p, 0) >= self.max_buffered}

    def records_to_fetch(self) -> int:
        """How many records one fetch may return. Records are batches of events, so a record count
        alone does not bound what one call decodes (500 records of 2,000 events each held 750 MB
        of decoded events in a profile): about as many records as fill one partition's buffer."""
        return min(500, max(4, int(self.max_buffered / max(1.0, self.events_per_record))))

    def add(self, p: int, messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        buf = self.buffers.setdefault(p, deque())
        events = 0
        for message in messages:
            try:
                batch = decode_batch(message.value or b"")
            except Exception:  # written by ingest, so never expected; skipping beats a crash loop
                log.error("undecodable batch skipped", extra={"partition": p, "offset": message.offset})
                batch = []
            buf.append((batch[0].t_ms if batch else 0, p, message.offset, batch))
            events += len(batch)
        self.buffered[p] = self.buffered.get(p, 0) + events
        self.fetched_to[p] = messages[-1].offset + 1
        self.events_per_record = 0.8 * self.events_per_record + 0.2 * events / len(messages)

    def holds_data(self) -> bool:
        return any(self.buffers.values())

    def take(self, owned: set[int], lagging: Callable[[int], bool], max_events: int) -> list[Pending]:
        """Records to apply next, merged across partitions by the event time of their batches.

        A backlog then reaches the detectors close to event-time order rather than one partition
        after another. While a partition that has records waiting on the broker (``lagging``) has
        none fetched yet, the merge waits for it (up to ``MERGE_WAIT_S``, so a slow partition
        cannot stop the others).
        """
        waiting = [p for p in owned if not self.buffers.get(p) and lagging(p)]
        now = time.monotonic()
        if waiting:
            if self._blocked_since is None:
                self._blocked_since = now
            if now - self._blocked_since < MERGE_WAIT_S:
                return []
        else:
            self._blocked_since = None
        ready: list[Pending] = []
        heads = [(buf[0][0], p) for p, buf in self.buffers.items() if buf and p in owned]
        heapq.heapify(heads)
        events = 0
        while heads and events < max_events:
            _, p = heapq.heappop(heads)
            buf = self.buffers[p]
            ready.append(buf.popleft())
            events += len(ready[-1][3])
            self.buffered[p] -= len(ready[-1][3])
            if buf:
                heapq.heappush(heads, (buf[0][0], p))
            elif p not in waiting and lagging(p):
                break  # its next records are still on the broker
        return ready

    def drop(self, p: int) -> None:
        """Forget what was fetched of a partition (it is consumed again from its committed offset)."""
        self.buffers.pop(p, None)
        self.buffered.pop(p, None)
        self.fetched_to.pop(p, None)

    def clear(self) -> None:
        self.buffers.clear()
        self.buffered.clear()
        self.fetched_to.clear()
