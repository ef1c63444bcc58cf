"""The scorer's per-batch work, free of Faust and Kafka so it can be tested and benchmarked alone.

Stage 1 (partitioned by decision_id): join events to decision state, produce bucket deltas and
detector outcomes. Stage 2 (partitioned by (policy_label, vendor_id)): run the pair's monitors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from services.common.wire import WireDecision, WireEvent
from services.scorer.alerts import RULES, AlertEvent, MonitorPolicy, MonitorState, PairMonitor, rule_hit
from services.scorer.join import (
    DecisionState,
    Deltas,
    Outcome,
    add_contribution,
    apply_event,
    decode_state,
    encode_state,
    new_decision,
)
from services.scorer.rates import COUNT_FIELDS, F_DECISIONS, BucketKey, Counts, add_into, zero_counts

_msgpack = msgspec.msgpack.Encoder()
_pair_key_decoder = msgspec.msgpack.Decoder(tuple[str, str])
_outcomes_decoder = msgspec.msgpack.Decoder(list[tuple[int, bool, int]])

Load = Callable[[bytes], bytes | None]


def score_batch(events: list[WireEvent], load: Load, into: Deltas | None = None) -> tuple[dict[bytes, bytes], Deltas]:
    """Apply a batch to decision state; returns the changed state records and the deltas.

    ``into`` accumulates the deltas of several batches (fewer, fuller bucket rows to add up);
    the outcomes of this batch are then the ones appended past its length before the call.
    """
    deltas = Deltas() if into is None else into
    states: dict[bytes, DecisionState] = {}
    changed: set[bytes] = set()
    for ev in events:
        key = ev.decision_id.encode()
        state = states.get(key)
        if state is None:
            raw = load(key)
            if raw is None and type(ev) is WireDecision:
                states[key] = new_decision(ev, deltas)
                changed.add(key)
                continue
            state = decode_state(raw) if raw is not None else None
        state, did_change = apply_event(state, ev, deltas)
        states[key] = state
        if did_change:
            changed.add(key)
    return {k: encode_state(states[k]) for k in changed}, deltas


WIDTH = len(COUNT_FIELDS)
REBUILD_CHUNK_RECORDS = 20_000

BookKey = tuple[int, str, str, str, int]
"""(partition, policy_label, vendor_id, market, bucket_start_ms)."""


@dataclass(slots=True)
class BookWrite:
    """One write of the rate book to the database, applied whole and at most once.

    ``rows`` are counts to add to the database's rows (ints, but the weighted sums: passed to the
    database as they are). ``resets`` (partition -> bucket start) are
    done first: that partition's rows from that start on are deleted, so its rows in this write
    are then its whole counts (a rebuild). ``seq`` numbers the writes of one process: a write
    retried after a failure keeps its number, and the database skips a number it has applied.
    """

    seq: int
    rows: dict[BookKey, Counts]
    resets: dict[int, int]
    generation: int  # the book's rebuild count when taken: a rebuild supersedes older writes
    rebuilt: int = 0  # how many of the rows a rebuild recomputed (see ``RateBook.backlog_rows``)


class RateBook:
    """Rate-bucket changes of the partitions this worker owns, waiting to be added to the database.

    The book is a view derived from the decision table, and holds only what the database does not
    have yet: the changes since the last write (a few thousand rows), not every bucket (which
    grows with the decisions retained: over a gigabyte at ten million). Only the decision table
    is changelogged. After a recovery the book is rebuilt from the recovered records, and its
    first write replaces the partitions' open buckets in the database (``BookWrite.resets``), so
    counts written ahead of, or lost behind, the changelog never survive a crash.
    """

    def __init__(self) -> None:
        self.pending: dict[BookKey, Counts] = {}
        self.resets: dict[int, int] = {}
        # Per partition, the event time below which buckets are closed (see ``close_before``).
        self.horizon: dict[int, int] = {}
        self.ignored = 0  # changes to closed buckets, dropped
        self._seq = 0
        self._generation = 0
        self._in_flight: BookWrite | None = None
        self._failed: BookWrite | None = None  # to be written again as it was
        self._rebuilt = 0  # rows of the last rebuild still pending
        self._starts: dict[int, int] = {}

    def apply(self, partition: int, deltas: Deltas) -> None:
        for bucket, delta in deltas.buckets.items():
            if (row := self._row(partition, bucket)) is not None:
                add_into(row, delta)
        for bucket, n in deltas.decisions.items():
            if (row := self._row(partition, bucket)) is not None:
                row[F_DECISIONS] += n

    def _row(self, partition: int, bucket: BucketKey) -> Counts | None:
        """The pending row of a bucket; None (and counted) if the bucket is closed."""
        key = (partition, *bucket)
        if self._closed(key):
            self.ignored += 1
            return None
        row = self.pending.get(key)
        if row is None:
            # The key's strings come from one decoded event; interned, the rows share a few
            # hundred strings instead of keeping three each.
            _, label, vendor, market, start = key
            start = self._starts.setdefault(start, start)  # one int object per minute, not per row
            key = (partition, sys.intern(label), sys.intern(vendor), sys.intern(market), start)
            row = self.pending[key] = zero_counts()  # ints but the weighted sums: written as they are
        return row

    def close_before(self, partition: int, horizon_ms: int) -> None:
        """Close a partition's buckets that start before ``horizon_ms`` (it only moves forward).

        Decision state older than the horizon may expire, so such a bucket could no longer be
        recomputed whole: it is never rebuilt nor changed again (the database keeps what was
        written). Close only what is written (``unwritten_from``).
        """
        self.horizon[partition] = max(horizon_ms, self.horizon.get(partition, horizon_ms))

    def rebuild(self, partitions: Iterable[int], records: Iterable[tuple[int, bytes]]) -> dict[int, int]:
        """Recompute the open buckets of ``partitions`` from (partition, encoded decision state)
        records, to replace theirs in the database; returns each partition's newest ``touched_ms``
        (read on the same pass). Pending changes of other partitions are dropped (their new owner
        rebuilds them), as is any write not yet confirmed (this one replaces its effect)."""
        self._generation += 1
        self._failed = None
        self.pending = {}
        self.resets = {p: self.horizon.get(p, 0) for p in partitions}
        ignored = self.ignored
        newest: dict[int, int] = {}
        # Straight into the pending rows, a chunk of records at a time: a rebuild recomputes
        # millions of rows, and a second full copy (per-partition deltas) doubled its peak.
        chunk, chunk_partition, in_chunk = Deltas(), -1, 0
        for partition, raw in records:
            if partition != chunk_partition or in_chunk >= REBUILD_CHUNK_RECORDS:
                self.apply(chunk_partition, chunk)
                chunk, chunk_partition, in_chunk = Deltas(), partition, 0
            state = decode_state(raw)
            add_contribution(state, chunk)
            in_chunk += 1
            newest[partition] = max(state.touched_ms, newest.get(partition, 0))
        self.apply(chunk_partition, chunk)
        self.ignored = ignored  # closed buckets skipped by a rebuild are not dropped changes
        self._rebuilt = len(self.pending)
        return newest

    def _closed(self, key: BookKey) -> bool:
        return key[4] < self.horizon.get(key[0], -1)

    def take(self) -> BookWrite | None:
        """The next write: a failed one again as it was, else the pending changes (None: nothing).
        Its rows count as unwritten until ``written`` is called with it."""
        write = self._failed
        self._failed = None
        if write is None:
            if not self.pending and not self.resets:
                return None
            self._seq += 1
            if len(self._starts) > 100_000:
                self._starts = {}  # minutes seen (a few hundred a day): forgotten now and then
            write = BookWrite(self._seq, self.pending, self.resets, self._generation, self._rebuilt)
            self.pending, self.resets, self._rebuilt = {}, {}, 0
        self._in_flight = write
        return write

    def written(self, write: BookWrite) -> None:
        """The write is in the database."""
        if self._in_flight is write:
            self._in_flight = None

    def failed(self, write: BookWrite) -> None:
        """The write may or may not be in the database: it goes again, whole, under its number,
        unless a rebuild has replaced it since."""
        if self._in_flight is write:
            self._in_flight = None
        if write.generation == self._generation:
            self._failed = write

    def unwritten_from(self, partition: int) -> int | None:
        """Start of the partition's oldest bucket with changes not yet in the database (None: all
        written)."""
        keys = [*self.pending]
        for write in (self._in_flight, self._failed):
            if write is not None:
                keys.extend(write.rows)
        return min((k[4] for k in keys if k[0] == partition), default=None)

    def pending_rows(self) -> int:
        """Rows not yet in the database."""
        return len(self.pending) + sum(len(w.rows) for w in (self._in_flight, self._failed) if w is not None)

    def backlog_rows(self) -> int:
        """Rows not yet in the database, less those a rebuild recomputed: the ones that grow when
        writes fall behind (a rebuild's are written while processing goes on)."""
        writes = (w for w in (self._in_flight, self._failed) if w is not None)
        return len(self.pending) - self._rebuilt + sum(len(w.rows) - w.rebuilt for w in writes)


def pair_key(policy_label: str, vendor_id: str) -> bytes:
    """Kafka key of a (policy_label, vendor_id) pair on the pair-outcomes topic."""
    return _msgpack.encode((policy_label, vendor_id))


class OutcomeBatch(msgspec.Struct, tag="outcomes"):
    """Judged verdicts of one pair, in the order the scorer applied them.

    Each item is (source partition, source offset, t_ms, is_error, error-type code). The detectors
    keep, per pair, the highest source offset they have applied for each events partition and
    skip items at or below it: a batch replayed after a crash (its decision state already
    written, its offset not yet committed) then feeds no verdict twice, however the replay chunks
    the records.
    """

    items: list[tuple[int, int, int, bool, int]]


def group_outcomes(chunks: Iterable[tuple[int, int, Iterable[Outcome]]]) -> dict[bytes, bytes]:
    """Detector outcomes grouped by pair: key msgpack((label, vendor)), value an OutcomeBatch.

    ``chunks`` are (source partition, source offset, outcomes of the record there), in the order
    they were applied (each partition's in offset order).
    """
    grouped: dict[tuple[str, str], list[tuple[int, int, int, bool, int]]] = {}
    for partition, offset, outcomes in chunks:
        for o in outcomes:
            grouped.setdefault((o.policy_label, o.vendor_id), []).append(
                (partition, offset, o.t_ms, o.is_error, o.error_type)
            )
    return {pair_key(*pair): _msgpack.encode(OutcomeBatch(items)) for pair, items in grouped.items()}


class Rebaseline(msgspec.Struct, tag="rebaseline"):
    """Control record on the pair-outcomes topic: an operator re-baselines a pair's monitors."""

    rule: str | None = None  # None: every rule of the pair
    rate: float | None = None  # None: learn the baseline again from now on
    t_ms: int = 0


_pair_payload_decoder = msgspec.msgpack.Decoder(OutcomeBatch | Rebaseline)


class PairState(msgspec.Struct, array_like=True):
    """A pair's detector state: its monitors by rule, and per events partition the highest
    source offset already applied (see OutcomeBatch)."""

    monitors: dict[str, MonitorState]
    applied: dict[int, int] = {}


_pair_state_decoder = msgspec.msgpack.Decoder(PairState)


def encode_rebaseline(request: Rebaseline) -> bytes:
    return _msgpack.encode(request)


@dataclass(slots=True)
class Detection:
    """What one detect() call did: the pair's new state, its alert changes, and what it saw."""

    state: bytes
    changes: list[AlertEvent]
    policy_label: str
    vendor_id: str
    outcomes: list[tuple[int, bool, int]]  # (t_ms, is_error, error-type code)
    statistics: dict[str, tuple[float, bool]]  # rule -> (CUSUM statistic, firing)


def detect(pair_key: bytes, payload: bytes, load: Load, policy: MonitorPolicy) -> Detection:
    """Run one pair's monitors over a group of outcomes (or a control record)."""
    label, vendor = _pair_key_decoder.decode(pair_key)
    raw = load(pair_key)
    stored = _pair_state_decoder.decode(raw) if raw is not None else PairState({})
    monitors = {
        rule: PairMonitor(rule, label, vendor, policy, state=stored.monitors.get(rule, MonitorState()))
        for rule in RULES
    }
    events: list[AlertEvent] = []
    message = _pair_payload_decoder.decode(payload)
    outcomes: list[tuple[int, bool, int]] = []
    if isinstance(message, Rebaseline):
        for rule, monitor in monitors.items():
            if message.rule in (None, rule) and (change := monitor.rebaseline(message.rate, message.t_ms)):
                events.append(change)
    else:
        applied, before = stored.applied, dict(stored.applied)  # a record's items share its offset
        for partition, offset, t_ms, e, code in message.items:
            if offset > before.get(partition, -1):
                applied[partition] = offset
                outcomes.append((t_ms, e, code))
        for t_ms, is_error, error_type in outcomes:
            for rule, monitor in monitors.items():
                if (change := monitor.update(rule_hit(rule, is_error, error_type), t_ms)) is not None:
                    events.append(change)
    snapshots = {rule: m.snapshot() for rule, m in monitors.items()}
    return Detection(
        state=_msgpack.encode(PairState(snapshots, stored.applied)),
        changes=events,
        policy_label=label,
        vendor_id=vendor,
        outcomes=outcomes,
        statistics={rule: (float(st.cusum[0]), st.firing) for rule, st in snapshots.items()},
    )


def decode_pair_key(raw: bytes) -> tuple[str, str]:
    return _pair_key_decoder.decode(raw)
