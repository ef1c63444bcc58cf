"""Alert lifecycle for one (rule, policy_label, vendor_id): fire on drift, resolve with hysteresis.

Pure and deterministic: time comes in with each verdict (its event time), nothing is read from
a clock. An alert fires on the detector's alarm and resolves only when a downward CUSUM finds
enough evidence that the rate is back at baseline, not on the first good verdict.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import msgspec

from services.scorer.drift import BernoulliCusum, llr_steps, make_detector
from services.scorer.rates import wilson_interval

AlertStatus = Literal["firing", "resolved"]
RULE_ERROR_RATE = "error_rate"
ALERT_NAMESPACE = uuid.UUID("5b0f7d8e-3c1e-4a51-9d7a-6f3f0f6a2a11")


class AlertEvent(msgspec.Struct, kw_only=True):
    """A state change of an alert, as published on quality.alerts (schemas/alert.v1.json)."""

    schema_version: int = 1
    alert_id: str
    dedup_key: str
    rule: str
    status: AlertStatus
    policy_label: str
    vendor_id: str
    error_type: str
    started_at: str
    onset_at: str
    resolved_at: str | None
    baseline_rate: float
    observed_rate: float
    ci_low: float
    ci_high: float
    verdicts: int
    errors: int
    statistic: float
    threshold: float
    summary: str


def iso(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class MonitorState(msgspec.Struct, array_like=True):
    """Persisted state of one PairMonitor."""

    episode: int = 0
    firing: bool = False
    started_ms: int = 0
    onset_ms: int = 0
    candidate_onset_ms: int = 0
    since_onset_n: int = 0
    since_onset_errors: int = 0
    recovery: float = 0.0
    cusum: tuple[float, int, int] = (0.0, 0, 0)


@dataclass(slots=True)
class PairMonitor:
    """Detector plus alert state for one rule on one (policy_label, vendor_id) pair."""

    rule: str
    policy_label: str
    vendor_id: str
    baseline_rate: float
    arl0: float
    resolve_threshold: float
    state: MonitorState = field(default_factory=MonitorState)
    detector: BernoulliCusum = field(init=False)

    def __post_init__(self) -> None:
        self.detector = make_detector(self.baseline_rate, self.arl0)
        self.detector.s, self.detector.n, self.detector.errors = self.state.cusum

    @property
    def dedup_key(self) -> str:
        return f"{self.rule}|{self.policy_label}|{self.vendor_id}"

    def alert_id(self) -> str:
        return str(uuid.uuid5(ALERT_NAMESPACE, f"{self.dedup_key}|{self.state.episode}"))

    def snapshot(self) -> MonitorState:
        d = self.detector
        self.state.cusum = (d.s, d.n, d.errors)
        return self.state

    def update(self, is_error: bool, t_ms: int) -> AlertEvent | None:
        """Feed one judged verdict; returns an AlertEvent when the alert changes state."""
        d, st = self.detector, self.state
        d.update(is_error)
        if d.n == 1:
            st.candidate_onset_ms = t_ms  # the statistic just left zero: a possible change point
        if st.firing:
            st.since_onset_n += 1
            st.since_onset_errors += is_error
            up, down = llr_steps(d.p0, d.p1)
            # Downward CUSUM: evidence that the rate is back at p0 rather than at p1.
            st.recovery = max(0.0, st.recovery + (-up if is_error else -down))
            if st.recovery > self.resolve_threshold:
                st.firing = False
                return self._event("resolved", t_ms)
            return None
        if d.drift_detected:
            change = d.last_change
            assert change is not None
            st.episode += 1
            st.firing = True
            st.started_ms = t_ms
            st.onset_ms = t_ms if change.verdicts == 1 else st.candidate_onset_ms
            st.since_onset_n, st.since_onset_errors = change.verdicts, change.errors
            st.recovery = 0.0
            return self._event("firing", t_ms)
        return None

    def _event(self, status: AlertStatus, t_ms: int) -> AlertEvent:
        st = self.state
        n, e = st.since_onset_n, st.since_onset_errors
        rate = e / n if n else 0.0
        low, high = wilson_interval(e, n)
        moved = "rose" if status == "firing" else "recovered"
        summary = (
            f"{self.policy_label} / {self.vendor_id}: error rate {moved} to {rate:.1%} "
            f"(95% CI {low:.1%}-{high:.1%}) on {n} verdicts since {iso(st.onset_ms)}, "
            f"baseline {self.baseline_rate:.1%}"
        )
        return AlertEvent(
            alert_id=self.alert_id(),
            dedup_key=self.dedup_key,
            rule=self.rule,
            status=status,
            policy_label=self.policy_label,
            vendor_id=self.vendor_id,
            error_type="ANY",
            started_at=iso(st.started_ms),
            onset_at=iso(st.onset_ms),
            resolved_at=iso(t_ms) if status == "resolved" else None,
            baseline_rate=self.baseline_rate,
            observed_rate=rate,
            ci_low=low,
            ci_high=high,
            verdicts=n,
            errors=e,
            statistic=self.detector.h if status == "firing" else st.recovery,
            threshold=self.detector.h if status == "firing" else self.resolve_threshold,
            summary=summary,
        )
