"""The detection stage in memory: pair and wider-scope monitors over a stream of judged verdicts,
with the scope updates routed back as the topic would. For tests and benchmarks (no broker)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from services.contracts.alerts import AlertEvent
from services.contracts.pairs import PairVerdict, ScoredItem, group_outcomes
from services.domain.detect import detect_many
from services.domain.monitor import MonitorPolicy


class Fleet:
    def __init__(self, policy: MonitorPolicy, horizon_ms: int = 10**15) -> None:
        self.policy, self.horizon_ms = policy, horizon_ms
        self.states: dict[bytes, bytes] = {}
        self.offset = 0
        self.alerts: list[AlertEvent] = []

    def feed(
        self, verdicts: Iterable[PairVerdict], head_ms: int = 0, scored: Iterable[ScoredItem] = ()
    ) -> list[AlertEvent]:
        """One events record's verdicts (and reviewers' scored ratings): their pairs', wider scopes'
        and reviewers' monitors, then what the wider scopes tell their members. Returns the alert
        changes, in order."""
        self.offset += 1
        grouped = group_outcomes([(0, self.offset, verdicts)], head_ms, [(0, self.offset, scored)])
        queue: deque[tuple[bytes, bytes]] = deque(grouped.items())
        changes: list[AlertEvent] = []
        while queue:  # one detection batch, then the scope updates it sent, as the next
            batch = [(0, key, payload) for key, payload in queue]
            queue.clear()
            for _, key, found in detect_many(batch, lambda _, k: self.states.get(k), self.policy, self.horizon_ms):
                self.states[key] = found.state
                changes.extend(found.changes)
                queue.extend(found.notices)
        self.alerts.extend(changes)
        return changes
