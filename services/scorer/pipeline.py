"""The scorer's per-batch work, free of Faust and Kafka so it can be tested and benchmarked alone.

Stage 1 (partitioned by decision_id): join events to decision state, produce bucket deltas and
detector outcomes. Stage 2 (partitioned by (policy_label, vendor_id)): run the pair's monitors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from services.common.wire import WireDecision, WireEvent
from services.scorer.alerts import RULES, AlertEvent, MonitorPolicy, MonitorState, PairMonitor, rule_hit
from services.scorer.catchup import historical
from services.scorer.join import (
    DecisionState,
    Deltas,
    Outcome,
    apply_event,
    decode_state,
    encode_state,
    new_decision,
)

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
    head_ms: int = 0  # the event time of the newest event the sending worker knows on its input


def group_outcomes(chunks: Iterable[tuple[int, int, Iterable[Outcome]]], head_ms: int = 0) -> dict[bytes, bytes]:
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
    return {pair_key(*pair): _msgpack.encode(OutcomeBatch(items, head_ms)) for pair, items in grouped.items()}


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


def detect(
    pair_key: bytes, payload: bytes, load: Load, policy: MonitorPolicy, horizon_ms: int = 3_600_000
) -> Detection:
    """Run one pair's monitors over a group of outcomes (or a control record).

    An alert change further behind the newest event on the input than ``horizon_ms`` (event time)
    is ``historical``: recorded, never paged (a backfill of old history raises no page). An alert
    that fired as history and is still firing when the input's newest events reach it is
    announced again then, as current (``PairMonitor.announce``)."""
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
        head = message.head_ms
        for t_ms, is_error, error_type in outcomes:
            old = historical(t_ms, head, horizon_ms)
            for rule, monitor in monitors.items():
                if not old and (news := monitor.announce(t_ms)) is not None:
                    events.append(news)
                if (change := monitor.update(rule_hit(rule, is_error, error_type), t_ms, historical=old)) is not None:
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


_alert_encoder = msgspec.json.Encoder()
_alert_decoder = msgspec.json.Decoder(AlertEvent)


def encode_alert(change: AlertEvent) -> bytes:
    """An alert change as published on quality.alerts (schemas/alert.v1.json)."""
    return _alert_encoder.encode(change)


def decode_alert(payload: bytes) -> AlertEvent:
    return _alert_decoder.decode(payload)
