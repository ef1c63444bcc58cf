"""How far behind its input a worker is, how fast it catches up, and when it will be there. Pure.

A backfill (modq deployed onto topics that already hold days of history) and a recovery from an
outage both start far behind. The operator needs to see the event time reached, the speed and the
time left; the notifier needs to know what is history (see ``historical``).

>>> c = CatchUp(behind_threshold_s=60)
>>> c.observe(0.0, 0, {0: Lane(applied_ms=0, head_ms=3_600_000, remaining_events=9_000)}).catching_up
True
>>> r = c.observe(10.0, 1_000, {0: Lane(applied_ms=400_000, head_ms=3_600_000, remaining_events=8_000)})
>>> r.events_per_s, r.eta_s
(100.0, 80.0)
>>> c.observe(90.0, 9_000, {0: Lane(applied_ms=3_600_000, head_ms=3_600_000, remaining_events=0)}).catching_up
False
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lane:
    """One partition: the event time applied (newest event time in its state), the event time of
    the newest record on the broker, and the events still to read."""

    applied_ms: int
    head_ms: int
    remaining_events: int


@dataclass(frozen=True, slots=True)
class CatchUpReport:
    catching_up: bool
    event_time_ms: int  # reached: the slowest partition that still has records to read
    head_ms: int  # the newest event time on the broker
    behind_s: float  # event time between the two
    events_per_s: float  # over the last ``window_s``
    remaining_events: int
    eta_s: float | None  # None: not moving

    def describe(self) -> dict[str, object]:
        return {
            "catching_up": self.catching_up,
            "event_time_ms": self.event_time_ms,
            "head_event_time_ms": self.head_ms,
            "behind_s": round(self.behind_s, 1),
            "events_per_s": round(self.events_per_s),
            "remaining_events": self.remaining_events,
            "eta_s": None if self.eta_s is None else round(self.eta_s),
        }


def historical(t_ms: int, head_ms: int, horizon_ms: int) -> bool:
    """An event time further behind the newest event than the horizon: history, not news.

    >>> historical(0, 7_200_000, 3_600_000), historical(5_000_000, 7_200_000, 3_600_000), historical(0, 0, 1)
    (True, False, False)
    """
    return head_ms > 0 and t_ms < head_ms - horizon_ms


class CatchUp:
    """Samples of a worker's progress turned into a report (``observe``)."""

    def __init__(self, behind_threshold_s: float = 300.0, window_s: float = 30.0) -> None:
        self.behind_threshold_ms = behind_threshold_s * 1000
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, now_s: float, events_total: int, lanes: Mapping[int, Lane]) -> CatchUpReport:
        self._samples.append((now_s, events_total))
        while len(self._samples) > 2 and now_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        then_s, then_events = self._samples[0]
        rate = (events_total - then_events) / (now_s - then_s) if now_s > then_s else 0.0
        behind = {p: lane.head_ms - lane.applied_ms for p, lane in lanes.items() if lane.remaining_events > 0}
        head = max((lane.head_ms for lane in lanes.values()), default=0)
        if behind:
            reached = min(lanes[p].applied_ms for p in behind)
        else:
            reached = max((lane.applied_ms for lane in lanes.values()), default=0)
        remaining = sum(lane.remaining_events for lane in lanes.values())
        behind_ms = max(0, head - reached) if behind else 0
        return CatchUpReport(
            catching_up=behind_ms > self.behind_threshold_ms,
            event_time_ms=reached,
            head_ms=head,
            behind_s=behind_ms / 1000,
            events_per_s=rate,
            remaining_events=remaining,
            eta_s=remaining / rate if rate > 0 else (0.0 if remaining == 0 else None),
        )
