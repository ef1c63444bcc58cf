"""Alert lifecycle: one alert per episode, resolution by a downward test (hysteresis)."""

from __future__ import annotations

import random

from services.scorer.alerts import PairMonitor


def monitor() -> PairMonitor:
    return PairMonitor("error_rate", "SCAMS_AND_FRAUD", "V01", 0.03, 100_000, 4.0)


def feed(m: PairMonitor, rng: random.Random, p: float, n: int, t0: int) -> list[tuple[int, str]]:
    out = []
    for i in range(n):
        ev = m.update(rng.random() < p, t0 + i * 1000)
        if ev is not None:
            out.append((i, ev.status))
    return out


def test_fires_once_during_a_persisting_shift_and_resolves_after_recovery() -> None:
    m, rng = monitor(), random.Random(5)
    assert feed(m, rng, 0.03, 5000, 0) == []
    fired = feed(m, rng, 0.12, 3000, 5_000_000)
    assert [s for _, s in fired] == ["firing"]  # re-alarms of the detector do not re-page
    resolved = feed(m, rng, 0.03, 3000, 9_000_000)
    assert [s for _, s in resolved] == ["resolved"]
    assert resolved[0][0] > 50  # not on the first good verdict


def test_alert_carries_onset_rate_interval_and_a_stable_id() -> None:
    m, rng = monitor(), random.Random(9)
    feed(m, rng, 0.03, 3000, 0)
    events = []
    for i in range(3000):
        ev = m.update(rng.random() < 0.15, 10_000_000 + i * 1000)
        if ev:
            events.append(ev)
    first = events[0]
    assert first.status == "firing" and first.verdicts > 0
    assert first.ci_low <= first.observed_rate <= first.ci_high
    assert first.observed_rate > first.baseline_rate
    assert first.onset_at <= first.started_at
    assert "SCAMS_AND_FRAUD / V01" in first.summary and "verdicts" in first.summary
    assert first.alert_id == m.alert_id()


def test_state_survives_a_round_trip() -> None:
    m, rng = monitor(), random.Random(1)
    feed(m, rng, 0.2, 200, 0)
    snap = m.snapshot()
    clone = PairMonitor("error_rate", "SCAMS_AND_FRAUD", "V01", 0.03, 100_000, 4.0, state=snap)
    xs = [rng.random() < 0.1 for _ in range(500)]
    a = [m.update(x, i) for i, x in enumerate(xs)]
    b = [clone.update(x, i) for i, x in enumerate(xs)]
    assert a == b
