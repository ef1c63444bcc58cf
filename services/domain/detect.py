"""The detection stage's work on one pair: its monitors over a group of judged verdicts (or an
operator's re-baseline request), giving the pair's new state and its alert changes. Pure, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from services.contracts.alerts import RULES, AlertEvent
from services.contracts.pairs import Rebaseline, decode_pair_key, decode_pair_message
from services.domain.catchup import historical
from services.domain.join import Load
from services.domain.monitor import MonitorPolicy, MonitorState, PairMonitor, rule_hit

_msgpack = msgspec.msgpack.Encoder()


class PairState(msgspec.Struct, array_like=True):
    """A pair's detector state: its monitors by rule, and per events partition the highest
    source offset already applied (see OutcomeBatch)."""

    monitors: dict[str, MonitorState]
    applied: dict[int, int] = {}


_pair_state_decoder = msgspec.msgpack.Decoder(PairState)


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
    label, vendor = decode_pair_key(pair_key)
    raw = load(pair_key)
    stored = _pair_state_decoder.decode(raw) if raw is not None else PairState({})
    monitors = {
        rule: PairMonitor(rule, label, vendor, policy, state=stored.monitors.get(rule, MonitorState()))
        for rule in RULES
    }
    events: list[AlertEvent] = []
    message = decode_pair_message(payload)
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
