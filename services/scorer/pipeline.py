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
from services.scorer.rates import COUNT_FIELDS, F_DECISIONS, BucketKey, Counts, add_into

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

BookKey = tuple[int, str, str, str, int]
"""(partition, policy_label, vendor_id, market, bucket_start_ms)."""


class RateBook:
    """Rate buckets of the partitions this worker owns: a view derived from the decision table.

    Only the decision table is changelogged. Each decision's record says exactly what it
    contributes, and is written atomically, so after a crash the book is rebuilt from the
    recovered records instead of trusting counters that may be ahead of, or behind, them.
    """

    def __init__(self) -> None:
        self.counts: dict[BookKey, Counts] = {}
        self.dirty: set[BookKey] = set()
        self.in_flight: set[BookKey] = set()  # taken for a database write not yet confirmed
        # Per partition, the event time below which buckets are closed (see ``close_before``).
        self.horizon: dict[int, int] = {}
        self.ignored = 0  # changes to closed buckets, dropped

    def apply(self, partition: int, deltas: Deltas) -> None:
        for bucket, delta in deltas.buckets.items():
            if (row := self._open_row(partition, bucket)) is not None:
                add_into(row, delta)
        for bucket, n in deltas.decisions.items():
            if (row := self._open_row(partition, bucket)) is not None:
                row[F_DECISIONS] += n

    def _open_row(self, partition: int, bucket: BucketKey) -> Counts | None:
        """The book's row for a bucket, marked dirty; None (and counted) if the bucket is closed."""
        key = (partition, *bucket)
        if self._closed(key):
            self.ignored += 1
            return None
        row = self.counts.get(key)
        if row is None:
            # The key's strings come from one decoded event; interned, the book's millions of
            # rows share a few hundred strings instead of keeping three per row (about 0.7 GB
            # at 10 million events in a memray profile).
            _, label, vendor, market, start = key
            key = (partition, sys.intern(label), sys.intern(vendor), sys.intern(market), start)
            row = self.counts[key] = [0.0] * WIDTH
        self.dirty.add(key)
        return row

    def close_before(self, partition: int, horizon_ms: int) -> None:
        """Close a partition's buckets that start before ``horizon_ms`` (it only moves forward).

        Decision state older than the horizon may expire, so such a bucket could no longer be
        recomputed whole: it is never rebuilt nor changed again (the database keeps what was
        written), and once written it leaves memory (``drop_closed``). Close only what is written
        (``unwritten_from``).
        """
        self.horizon[partition] = max(horizon_ms, self.horizon.get(partition, horizon_ms))

    def drop_closed(self) -> int:
        """Forget closed buckets already written; returns how many."""
        gone = [k for k in self.counts if self._closed(k) and k not in self.dirty and k not in self.in_flight]
        for key in gone:
            del self.counts[key]
        return len(gone)

    def rebuild(self, records: Iterable[tuple[int, bytes]]) -> dict[int, int]:
        """Recompute every open bucket from (partition, encoded decision state) records; returns
        each partition's newest ``touched_ms`` (read on the same pass)."""
        by_partition: dict[int, Deltas] = {}
        newest: dict[int, int] = {}
        for partition, raw in records:
            state = decode_state(raw)
            add_contribution(state, by_partition.setdefault(partition, Deltas()))
            newest[partition] = max(state.touched_ms, newest.get(partition, 0))
        closed_unwritten = {k: v for k, v in self.counts.items() if k in self.dirty and self._closed(k)}
        self.counts.clear()
        ignored = self.ignored
        for partition, deltas in by_partition.items():
            self.apply(partition, deltas)
        self.ignored = ignored  # closed buckets skipped by a rebuild are not dropped changes
        self.counts.update(closed_unwritten)  # complete when closed, still to be written
        self.dirty = set(self.counts)
        return newest

    def _closed(self, key: BookKey) -> bool:
        return key[4] < self.horizon.get(key[0], -1)

    def take_dirty(self) -> list[tuple[BookKey, Counts]]:
        """Rows to write; they count as unwritten until ``written()`` (or ``mark_dirty`` again)."""
        keys, self.dirty = self.dirty, set()
        self.in_flight |= keys
        return [(k, list(self.counts[k])) for k in keys if k in self.counts]

    def written(self) -> None:
        """The rows last taken are in the database."""
        self.in_flight.clear()

    def unwritten_from(self, partition: int) -> int | None:
        """Start of the partition's oldest bucket not yet in the database (None: all written)."""
        return min((k[4] for k in (*self.dirty, *self.in_flight) if k[0] == partition), default=None)

    def mark_dirty(self, keys: Iterable[BookKey]) -> None:
        self.dirty.update(keys)
        self.in_flight.clear()


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
