"""The scorer's per-batch work, free of Faust and Kafka so it can be tested and benchmarked alone.

Stage 1 (partitioned by decision_id): join events to decision state, produce bucket deltas and
detector outcomes. Stage 2 (partitioned by (policy_label, vendor_id)): run the pair's monitors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
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
from services.scorer.rates import F_DECISIONS, BucketKey, Counts, add_into, zero_counts

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


REBUILD_STEP_RECORDS = 20_000
"""Records a rebuild decodes between two turns of the event loop."""
REBUILD_CHUNK_ROWS = 100_000
"""Rows a rebuild sums before handing them to the database (about 25 MB)."""

BookKey = tuple[int, str, str, str, int]
"""(partition, policy_label, vendor_id, market, bucket_start_ms)."""

Records = Iterator[tuple[int, bytes]]
"""(partition, encoded decision state) records."""
RecordSource = Callable[[frozenset[int]], Records]
"""Opens a consistent view of the decision state of the given partitions, as of the call: its
records are read later, while processing goes on (see ``RateBook.rebuild``)."""


class RebuildSuperseded(Exception):
    """A rebuild was abandoned (its partitions were revoked or re-read) while being written."""


class Rebuild:
    """The recomputation of some partitions' open buckets, streamed into the first write after it.

    ``steps`` decodes the records of the view taken when the rebuild started and yields summed
    rows (at most ``REBUILD_CHUNK_ROWS`` at a time, to be added to the database in the write's
    transaction after its resets), or None every ``REBUILD_STEP_RECORDS`` records, for the writer
    to let other work run. A chunk's rows may repeat keys of an earlier chunk: they add up.
    """

    __slots__ = ("cancelled", "partitions", "rows", "source", "steps")

    def __init__(self, partitions: frozenset[int], source: RecordSource, steps: Iterator[dict[BookKey, Counts] | None]):
        self.partitions = partitions
        self.source = source
        self.steps = steps
        self.cancelled = False
        self.rows = 0  # rows handed to the database so far


@dataclass(slots=True)
class BookWrite:
    """One write of the rate book to the database, applied whole and at most once.

    ``rows`` are counts to add to the database's rows (ints, but the weighted sums: passed to the
    database as they are). ``resets`` (partition -> bucket start) are done first: that
    partition's rows from that start on are deleted, and ``rebuild`` (if any) then adds their
    whole counts back, recomputed from the decision state. ``seq`` numbers the writes of one
    process: a write retried after a failure keeps its number, and the database skips a number
    it has applied.
    """

    seq: int
    rows: dict[BookKey, Counts]
    resets: dict[int, int]
    generation: int  # the book's rebuild count when taken: a rebuild supersedes older writes
    rebuild: Rebuild | None = None


class RateBook:
    """Rate-bucket changes of the partitions this worker owns, waiting to be added to the database.

    The book is a view derived from the decision table, and holds only what the database does not
    have yet: the changes since the last write (a few thousand rows), not every bucket (which
    grows with the decisions retained: over a gigabyte at ten million). Only the decision table
    is changelogged. After a recovery the book is rebuilt from the recovered records, and its
    first write replaces the partitions' open buckets in the database (``BookWrite.resets``), so
    counts written ahead of, or lost behind, the changelog never survive a crash. A rebuild's rows
    (millions after a restart with ten million decisions) are never all in memory: they are
    summed and written a chunk at a time, inside that first write's transaction.
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
        self._rebuild: Rebuild | None = None  # started, not yet taken into a write
        self._held = False  # see ``hold``: nothing is written until the next rebuild
        self._starts: dict[int, int] = {}

    def apply(self, partition: int, deltas: Deltas) -> None:
        self._add(partition, deltas, self.pending)

    def _add(self, partition: int, deltas: Deltas, into: dict[BookKey, Counts]) -> int:
        """Add deltas to rows; returns how many changes fell on closed buckets (dropped)."""
        closed = 0
        for bucket, delta in deltas.buckets.items():
            if (row := self._row(partition, bucket, into)) is not None:
                add_into(row, delta)
            else:
                closed += 1
        for bucket, n in deltas.decisions.items():
            if (row := self._row(partition, bucket, into)) is not None:
                row[F_DECISIONS] += n
            else:
                closed += 1
        if into is self.pending:
            self.ignored += closed
        return closed

    def _row(self, partition: int, bucket: BucketKey, into: dict[BookKey, Counts]) -> Counts | None:
        """The row of a bucket in ``into``; None if the bucket is closed."""
        key = (partition, *bucket)
        if self._closed(key):
            return None
        row = into.get(key)
        if row is None:
            # The key's strings come from one decoded event; interned, the rows share a few
            # hundred strings instead of keeping three each.
            _, label, vendor, market, start = key
            start = self._starts.setdefault(start, start)  # one int object per minute, not per row
            key = (partition, sys.intern(label), sys.intern(vendor), sys.intern(market), start)
            row = into[key] = zero_counts()  # ints but the weighted sums: written as they are
        return row

    def close_before(self, partition: int, horizon_ms: int) -> None:
        """Close a partition's buckets that start before ``horizon_ms`` (it only moves forward).

        Decision state older than the horizon may expire, so such a bucket could no longer be
        recomputed whole: it is never rebuilt nor changed again (the database keeps what was
        written). Close only what is written (``unwritten_from``).
        """
        self.horizon[partition] = max(horizon_ms, self.horizon.get(partition, horizon_ms))

    def rebuild(self, partitions: Iterable[int], source: RecordSource) -> None:
        """Recompute the open buckets of ``partitions`` from their decision state, to replace
        theirs in the database in the next write. ``source`` is called now, for a view of the
        state as it is now: changes applied from here on are pending changes on top of it.
        Pending changes are dropped (the view holds them; other partitions' new owner rebuilds
        them), as is any write not yet confirmed (this one replaces its effect)."""
        self.hold()  # everything before this view is superseded
        self._held = False
        parts = frozenset(partitions)
        self.resets = {p: self.horizon.get(p, 0) for p in parts}
        if parts:
            rebuild = Rebuild(parts, source, iter(()))
            rebuild.steps = self._rebuild_steps(rebuild, source(parts))
            self._rebuild = rebuild

    def hold(self) -> None:
        """Write nothing until the next ``rebuild`` (the state is about to move, be closed or be
        re-read): a rebuild being written stops at its next step, pending changes are dropped
        (the next rebuild's view holds them) and a failed write is not retried."""
        self._cancel()
        self._generation += 1
        self._failed = None
        self._rebuild = None
        self.pending, self.resets = {}, {}
        self._held = True

    def _cancel(self) -> None:
        for rebuild in (self._rebuild, *(w.rebuild for w in self._unwritten())):
            if rebuild is not None:
                rebuild.cancelled = True

    def _rebuild_steps(self, rebuild: Rebuild, records: Records) -> Iterator[dict[BookKey, Counts] | None]:
        rows: dict[BookKey, Counts] = {}
        chunk, chunk_partition, in_chunk = Deltas(), -1, 0
        for partition, raw in records:
            if partition != chunk_partition or in_chunk >= REBUILD_STEP_RECORDS:
                self._add(chunk_partition, chunk, rows)
                if in_chunk >= REBUILD_STEP_RECORDS:
                    if len(rows) >= REBUILD_CHUNK_ROWS:
                        rebuild.rows += len(rows)
                        yield rows
                        rows = {}
                    else:
                        yield None
                if rebuild.cancelled:
                    raise RebuildSuperseded
                chunk, chunk_partition, in_chunk = Deltas(), partition, 0
            add_contribution(decode_state(raw), chunk)
            in_chunk += 1
        self._add(chunk_partition, chunk, rows)
        if rows:
            rebuild.rows += len(rows)
            yield rows

    def _closed(self, key: BookKey) -> bool:
        return key[4] < self.horizon.get(key[0], -1)

    def take(self) -> BookWrite | None:
        """The next write: a failed one again as it was, else the pending changes (None: nothing).
        Its rows count as unwritten until ``written`` is called with it."""
        if self._held:
            return None
        write = self._failed
        self._failed = None
        if write is None:
            if not self.pending and not self.resets and self._rebuild is None:
                return None
            self._seq += 1
            if len(self._starts) > 100_000:
                self._starts = {}  # minutes seen (a few hundred a day): forgotten now and then
            write = BookWrite(self._seq, self.pending, self.resets, self._generation, self._rebuild)
            self.pending, self.resets, self._rebuild = {}, {}, None
        self._in_flight = write
        return write

    def written(self, write: BookWrite) -> None:
        """The write is in the database."""
        if self._in_flight is write:
            self._in_flight = None

    def failed(self, write: BookWrite) -> None:
        """The write may or may not be in the database: it goes again, whole, under its number,
        unless a rebuild has replaced it since. A write carrying a rebuild has consumed its view
        of the state: the rebuild starts again from a new view (which holds the changes since)."""
        if self._in_flight is write:
            self._in_flight = None
        if write.generation != self._generation:
            return
        if write.rebuild is not None:
            self.rebuild(write.rebuild.partitions, write.rebuild.source)
        else:
            self._failed = write

    def _unwritten(self) -> list[BookWrite]:
        return [w for w in (self._in_flight, self._failed) if w is not None]

    def unwritten_from(self, partition: int) -> int | None:
        """Start of the partition's oldest bucket with changes not yet in the database (None: all
        written); a rebuild not yet written counts from its reset."""
        starts = [k[4] for k in self.pending if k[0] == partition]
        for write in self._unwritten():
            starts.extend(k[4] for k in write.rows if k[0] == partition)
        for resets in (self.resets, *(w.resets for w in self._unwritten())):
            if partition in resets:
                starts.append(resets[partition])
        if self._held:
            starts.append(self.horizon.get(partition, 0))
        return min(starts, default=None)

    def pending_rows(self) -> int:
        """Changed rows not yet in the database (a rebuild's are never held: see ``Rebuild``)."""
        return len(self.pending) + sum(len(w.rows) for w in self._unwritten())


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
    statistics: dict[str, tuple[float, bool]]  # rule -> (detector statistic, firing)


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
        statistics={rule: (m.statistic(), m.state.firing) for rule, m in monitors.items()},
    )


def decode_pair_key(raw: bytes) -> tuple[str, str]:
    return _pair_key_decoder.decode(raw)
