"""Alert lifecycle for one (rule, policy_label, vendor_id): fire on drift, resolve with hysteresis.

Pure and deterministic: time comes in with each verdict (its event time), nothing is read from
a clock. An alert fires on the detector's alarm and resolves only when a downward CUSUM finds
enough evidence that the rate is back at baseline, not on the first good verdict.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from services.contracts.alerts import (
    RULE_ERROR_RATE,
    RULE_ERROR_TYPES,
    RULE_OVER,
    RULE_REVIEWER,
    RULE_UNDER,
    AlertEvent,
    AlertStatus,
    dedup_key,
    iso,
)
from services.contracts.codes import OVER_ENFORCEMENT, UNDER_ENFORCEMENT
from services.contracts.events import WILDCARD
from services.contracts.pairs import SCOPE_LABEL, SCOPE_PAIR, SCOPE_REVIEWER, SCOPE_VENDOR, scope_of
from services.domain.detectors import (
    MIXTURE,
    BernoulliRecovery,
    MixtureShiryaevRoberts,
    arl0_for_budget,
    mixture_design,
)
from services.domain.rates import wilson_interval

ALERT_NAMESPACE = uuid.UUID("5b0f7d8e-3c1e-4a51-9d7a-6f3f0f6a2a11")

LEARNING_Z = 1.2816  # one-sided 90% (two-sided 80%) normal quantile
RESOLVE_Z = 1.0
"""The downward test asks whether the rate is back at baseline rather than still at the rate observed
since onset plus this many standard errors (see ``PairMonitor.still_rate``)."""
SMALLEST_SHIFT = min(k for k, _ in MIXTURE)
RESOLVE_BOOST = 2.0
"""A wider scope of k members resolves on the downward test's threshold plus RESOLVE_BOOST * ln(k)
(see ``PairMonitor.resolve_threshold``)."""


def rule_hit(rule: str, is_error: bool, error_type: int) -> bool:
    """Whether a judged verdict counts as a hit for a rule's Bernoulli stream (for a reviewer's rule,
    ``is_error`` is a disagreement with the reference)."""
    if rule in (RULE_ERROR_RATE, RULE_REVIEWER):
        return is_error
    return is_error and error_type == (OVER_ENFORCEMENT if rule == RULE_OVER else UNDER_ENFORCEMENT)


@dataclass(frozen=True, slots=True)
class MonitorPolicy:
    """How monitors pick their baseline and false-alarm rate (from ScorerSettings)."""

    baseline_mode: Literal["learned", "sla"] = "learned"
    sla_rates: tuple[tuple[str, float], ...] = (
        (RULE_ERROR_RATE, 0.03),
        (RULE_OVER, 0.015),
        (RULE_UNDER, 0.01),
        (RULE_REVIEWER, 0.05),
    )
    baseline_verdicts: int = 10_000
    min_verdicts_to_detect: int = 0
    prior_strength: float = 200.0
    arl0: float | None = 100_000.0
    false_alerts_per_day: float = 1.0
    monitors_in_fleet: int = 960
    min_arl0: float = 5_000.0
    resolve_threshold: float = 6.0
    hold_ms: int = 3 * 3_600_000
    """How long (event time) a pair's alarm waits, unpaged, while a wider scope of it is watching
    (``PairMonitor.settle``); 0: never."""

    def sla(self, rule: str) -> float:
        return dict(self.sla_rates)[rule]


class MonitorState(msgspec.Struct, array_like=True):
    """Persisted state of one PairMonitor."""

    episode: int = 0
    firing: bool = False
    started_ms: int = 0
    onset_ms: int = 0
    candidate_onset_ms: int = 0  # before the mixture detector: the doubling CUSUM's (read once)
    since_onset_n: int = 0
    since_onset_errors: int = 0
    recovery: float = 0.0
    cusum: tuple[float, int, int] = (0.0, 0, 0)  # the doubling's onset CUSUM (older releases read this)
    base_n: int = 0
    base_errors: int = 0
    baseline: float = 0.0  # frozen baseline; 0 while still learning
    baseline_source: str = "learning"
    first_ms: int = 0
    total_n: int = 0
    detector: tuple[float, ...] = ()  # MixtureShiryaevRoberts.to_state(); empty: from cusum
    candidate_onsets_ms: tuple[int, ...] = ()  # per shift: when its onset CUSUM last left zero
    announced: bool = True  # the firing alert went out as current (not history): see ``announce``
    parent_alert_id: str = ""  # the firing alert is linked to this wider alert (and not paged on its own)
    held_ms: int = 0  # the firing alert is held (not sent yet) since then: see ``PairMonitor.settle``


PRIOR_WORDS = {
    SCOPE_LABEL: "its label's rate across vendors",
    SCOPE_VENDOR: "its vendor's rate across labels",
    "sla": "the configured rate",
}


@dataclass(slots=True)
class PairMonitor:
    """Detector plus alert state for one rule on one (policy_label, vendor_id) pair."""

    rule: str
    policy_label: str
    vendor_id: str
    policy: MonitorPolicy = field(default_factory=MonitorPolicy)
    state: MonitorState = field(default_factory=MonitorState)
    prior: tuple[float, str] | None = None
    """(rate, scope) a pair is held to while it learns its own baseline: a wider scope's frozen
    baseline (``policy_label``: its label across vendors; ``vendor``: its vendor across labels);
    None: the configured rate."""
    members: int = 1
    """Pairs a wider scope pools (1 for a pair): its resolution threshold is raised by ln(members)
    (see ``resolve_threshold``)."""
    scope: str = field(init=False, default=SCOPE_PAIR)
    detector: MixtureShiryaevRoberts | None = field(init=False, default=None)
    _design: tuple[float, float] = field(init=False, default=(0.0, 0.0))
    _recovery: BernoulliRecovery | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.scope = scope_of(self.policy_label, self.vendor_id)
        st = self.state
        if len(st.candidate_onsets_ms) != 3:
            st.candidate_onsets_ms = (st.candidate_onset_ms,) * 3
        self._refresh()

    @property
    def dedup_key(self) -> str:
        if self.scope == SCOPE_REVIEWER:
            return dedup_key(self.rule, WILDCARD, WILDCARD, self.vendor_id)
        return dedup_key(self.rule, self.policy_label, self.vendor_id)

    def alert_id(self) -> str:
        return str(uuid.uuid5(ALERT_NAMESPACE, f"{self.dedup_key}|{self.state.episode}"))

    # -- baseline and false-alarm rate ----------------------------------------------------

    def baseline_rate(self) -> float:
        st, pol = self.state, self.policy
        if st.baseline > 0:
            return st.baseline
        if pol.baseline_mode == "sla":
            return pol.sla(self.rule)
        # Learning: the pair's own rate shrunk toward its prior (a wider scope's baseline, or the
        # configured rate), and taken at its upper 80% confidence bound so an under-estimate from
        # little data does not page anyone. From the first verdict this is mostly the prior.
        k = pol.prior_strength
        _, high = wilson_interval(st.base_errors + k * self.prior_rate(), st.base_n + k, z=LEARNING_Z)
        return high

    def prior_rate(self) -> float:
        return self.prior[0] if self.prior is not None else self.policy.sla(self.rule)

    def baseline_source(self) -> str:
        """Where the baseline comes from: operator, learned (frozen), sla, or ``learning`` with the
        prior it leans on while its own data are few (``learning:policy_label``, ``learning:vendor``,
        ``learning:sla``)."""
        if self.state.baseline > 0:
            return self.state.baseline_source
        if self.policy.baseline_mode == "sla":
            return "sla"
        return "learning:" + (self.prior[1] if self.prior is not None else "sla")

    def detecting(self) -> bool:
        st, pol = self.state, self.policy
        return pol.baseline_mode == "sla" or st.baseline > 0 or st.base_n >= pol.min_verdicts_to_detect

    def arl0(self, t_ms: int) -> float:
        pol, st = self.policy, self.state
        if pol.arl0 is not None:
            return pol.arl0
        span_days = max(t_ms - st.first_ms, 3_600_000) / 86_400_000
        return arl0_for_budget(st.total_n / span_days, pol.monitors_in_fleet, pol.false_alerts_per_day, pol.min_arl0)

    def _refresh(self, t_ms: int = 0) -> None:
        """(Re)build the detector when its baseline or ARL0 moved; its statistics carry over."""
        p0, arl0 = self.baseline_rate(), self.arl0(t_ms)
        old_p0, old_arl = self._design
        if self.detector is not None and abs(p0 - old_p0) <= 0.02 * old_p0 and abs(arl0 - old_arl) <= 0.1 * old_arl:
            return
        self._design = (p0, arl0)
        if self.detector is not None:
            carried = self.detector.to_state()
        else:
            carried = list(self.state.detector) if self.state.detector else list(self.state.cusum)
        self.detector = MixtureShiryaevRoberts(*mixture_design(p0, arl0))
        self.detector.load_state(carried)
        self._recovery = BernoulliRecovery(self.detector.p0, self.detector.p1, self.resolve_threshold())

    def resolve_threshold(self) -> float:
        """The downward test's threshold: the configured one, raised by ``RESOLVE_BOOST`` * ln(k) for
        a wider scope of k members.

        Under a persisting shift the downward CUSUM crosses a threshold h by chance at a rate per
        verdict of about exp(-h); a wider scope sees its members' verdicts together, k times a pair's,
        so on the same threshold it would resolve during the shift (and fire again, announcing its
        linked pairs on their own) k times as often per day as a pair. 2 ln(k) more makes it k times
        rarer per day than a pair's instead (one false resolution of it re-pages k pairs), and costs
        a real recovery about 2 ln(k) / KL verdicts, which the scope collects k times as fast.
        Measured in docs/alert-to-action.md (scenario 2)."""
        return self.policy.resolve_threshold + RESOLVE_BOOST * math.log(max(self.members, 1))

    def still_rate(self) -> float:
        """The alternative of the downward test that resolves an alert: the rate observed since onset
        (the verdicts since the recovery began included, so the test adapts as they come) plus
        ``RESOLVE_Z`` standard errors, no lower than the smallest shift the detector pages for and no
        higher than a doubling. Against a fixed doubling, a persisting 1.5x shift, which lies between
        the two rates, resolved and fired again about once per 5,000 verdicts; the observed rate keeps
        the alert firing while the shift persists, at the cost of a slower resolution after a real
        recovery from a small shift (docs/benchmarks.md, resolution).
        """
        d, st = self.detector, self.state
        assert d is not None
        n = max(st.since_onset_n, 1)
        rate = st.since_onset_errors / n
        rate += RESOLVE_Z * math.sqrt(max(rate, d.p0) * (1 - rate) / n)
        return min(max(rate, SMALLEST_SHIFT * d.p0), d.p1)

    def snapshot(self) -> MonitorState:
        assert self.detector is not None
        d = self.detector
        self.state.detector = tuple(d.to_state())
        self.state.cusum = (d.s[1], d.n[1], d.errors[1])
        return self.state

    def statistic(self) -> float:
        """The detector's statistic (log of its Shiryaev-Roberts sum), for the metrics."""
        assert self.detector is not None
        return self.detector.statistic

    # -- lifecycle ------------------------------------------------------------------------

    def announce(self, t_ms: int) -> AlertEvent | None:
        """A firing alert raised as history, announced again as current, once (the verdict at
        ``t_ms`` is recent enough to page for)."""
        st = self.state
        if not st.firing or st.announced:
            return None
        st.announced = True
        return self._event("firing", t_ms)

    def unlink(self, parent_alert_id: str, t_ms: int) -> AlertEvent | None:
        """The wider alert ``parent_alert_id`` resolved: an alert linked to it and still firing is
        on its own now, and announced (paged) as such."""
        st = self.state
        if not st.firing or st.parent_alert_id != parent_alert_id:
            return None
        st.parent_alert_id = ""
        note = f"its wider alert {parent_alert_id} resolved, this one persists"
        # Raised as history and not announced yet: recorded so; ``announce`` pages it once current.
        return self._event("firing", t_ms, note=note, historical=not st.announced)

    def settle(self, parents: Sequence[tuple[str, int]], hold: bool, t_ms: int) -> AlertEvent | None:
        """A held alert (raised while a wider scope of the pair was *watching* for it: that scope's
        statistic near its threshold and its other members' errors up too, ``detect.WATCH_DROP``) is
        sent once that is settled: linked under the first of ``parents`` when the wider alert fires
        (the pair's alarm was part of a wider shift, and the wider alert is the page), or on its own
        (paged) when no wider scope is watching any more (``hold`` false) or it has waited
        ``MonitorPolicy.hold_ms`` of event time.

        Without the hold, a pair of a label-wide shift that alarms an hour or two before its label
        (the label pools the evidence, but one pair can be lucky) was paged on its own, and the label
        alert that followed was a second page for the same incident (docs/alert-to-action.md)."""
        st = self.state
        if not (st.firing and st.held_ms):
            return None
        waited = max(t_ms - st.held_ms, 0)
        if parents:
            st.parent_alert_id = parents[0][0]
        elif hold and waited < self.policy.hold_ms:
            return None
        st.held_ms = 0
        why = "its wider alert fired" if parents else "no wider alert fired"
        note = f"held {waited / 3_600_000:.1f} h for a wider scope near its threshold; {why}"
        return self._event("firing", t_ms, note=note)

    def update(
        self,
        hit: bool,
        t_ms: int,
        historical: bool = False,
        parents: Sequence[tuple[str, int]] = (),
        hold: bool = False,
    ) -> AlertEvent | None:
        """Feed one judged verdict (hit: it is an error of this rule's kind; ``historical``: its
        event time is older than the paging horizon; ``parents``: firing wider alerts this scope
        belongs to, (alert id, raised at), in order of preference: an alert raised now is linked to
        the first; ``hold``: a wider scope is watching, an alert raised now with no parent waits for
        it, see ``settle``)."""
        st, pol = self.state, self.policy
        if st.first_ms == 0:
            st.first_ms = t_ms
        st.total_n += 1
        if not st.firing and st.baseline == 0:
            st.base_n += 1
            st.base_errors += hit
            if pol.baseline_mode == "learned" and st.base_n >= pol.baseline_verdicts:
                st.baseline, st.baseline_source = st.base_errors / st.base_n, "learned"
        if st.total_n % 256 == 1 or st.base_n == pol.min_verdicts_to_detect:
            self._refresh(t_ms)
        if not self.detecting():
            return None
        d = self.detector
        assert d is not None
        d.update(hit)
        if 1 in d.n:  # an onset CUSUM just left zero: a possible change point for its shift
            started = d.started()
            st.candidate_onsets_ms = tuple(t_ms if k in started else v for k, v in enumerate(st.candidate_onsets_ms))
        if st.firing:
            if t_ms < st.onset_ms:
                # A verdict from before the change, arriving late (a partition that lagged behind,
                # a worker that died and whose partitions are replayed): it says nothing of whether
                # the rate has come back, and a burst of them would resolve a shift still going on.
                return None
            st.since_onset_n += 1
            st.since_onset_errors += hit
            if st.held_ms:
                return self.settle(parents, hold, t_ms)  # (no recovery before it is sent)
            recovery = self._recovery
            assert recovery is not None
            recovery.against(d.p0, self.still_rate())
            recovery.r = st.recovery
            resolved = recovery.update(hit)
            st.recovery = recovery.r
            if resolved:
                st.firing = False
                return self._event("resolved", t_ms, historical=historical)
            return None
        if d.drift_detected:
            change = d.last_change
            assert change is not None
            st.episode += 1
            st.firing = True
            st.started_ms = t_ms
            st.onset_ms = t_ms if change.verdicts == 1 else st.candidate_onsets_ms[change.component]
            st.since_onset_n, st.since_onset_errors = change.verdicts, change.errors
            st.recovery = 0.0
            st.announced = not historical
            st.parent_alert_id = next((a for a, _ in parents), "")
            if hold and not parents and not historical and pol.hold_ms > 0:
                st.held_ms = t_ms
                return None
            return self._event("firing", t_ms, historical=historical)
        return None

    def rebaseline(self, rate: float | None, t_ms: int) -> AlertEvent | None:
        """Operator request: set the baseline (rate) or learn it again from now (None)."""
        st = self.state
        if rate is None:
            st.base_n, st.base_errors, st.baseline, st.baseline_source = 0, 0, 0.0, "learning"
        else:
            st.baseline, st.baseline_source = rate, "operator"
        assert self.detector is not None
        self.detector.reset()
        self._design = (0.0, 0.0)
        self._refresh(t_ms)
        if st.firing:
            st.firing, held = False, st.held_ms
            st.held_ms = 0
            return None if held else self._event("resolved", t_ms, note="re-baselined by an operator")
        return None

    def _event(self, status: AlertStatus, t_ms: int, note: str = "", historical: bool = False) -> AlertEvent:
        st, d = self.state, self.detector
        assert d is not None
        n, e = st.since_onset_n, st.since_onset_errors
        rate = e / n if n else 0.0
        low, high = wilson_interval(e, n)
        what = {RULE_ERROR_RATE: "error rate", RULE_REVIEWER: "disagreement with the reference"}.get(
            self.rule, self.rule.replace("_", "-") + " rate"
        )
        judged = "scored ratings" if self.scope == SCOPE_REVIEWER else "verdicts"
        moved = "rose" if status == "firing" else "recovered"
        source = self.baseline_source()
        held = f"learning; held to {PRIOR_WORDS[source[9:]]}" if source.startswith("learning:") else source
        summary = (
            f"{self.who()}: {what} {moved}: {rate:.1%} "
            f"(95% CI {low:.1%}-{high:.1%}) on {n} {judged} since {iso(st.onset_ms)}, "
            f"baseline {d.p0:.1%} ({held})" + (f"; {note}" if note else "")
        )
        reviewer = self.scope == SCOPE_REVIEWER
        return AlertEvent(
            alert_id=self.alert_id(),
            dedup_key=self.dedup_key,
            rule=self.rule,
            status=status,
            policy_label=WILDCARD if reviewer else self.policy_label,
            vendor_id=WILDCARD if reviewer else self.vendor_id,
            error_type=RULE_ERROR_TYPES.get(self.rule, "DISAGREEMENT"),
            started_at=iso(st.started_ms),
            onset_at=iso(st.onset_ms),
            resolved_at=iso(t_ms) if status == "resolved" else None,
            baseline_rate=d.p0,
            observed_rate=rate,
            ci_low=low,
            ci_high=high,
            verdicts=n,
            errors=e,
            statistic=(d.last_change.statistic if d.last_change else d.h) if status == "firing" else st.recovery,
            threshold=d.h if status == "firing" else self.resolve_threshold(),
            summary=summary,
            historical=historical,
            scope=self.scope,
            parent_alert_id=st.parent_alert_id or None,
            baseline_source=source,
            reviewer_id=self.vendor_id if reviewer else None,
        )

    def who(self) -> str:
        if self.scope == SCOPE_REVIEWER:
            return f"reviewer {self.vendor_id}"
        if self.scope == SCOPE_LABEL:
            return f"{self.policy_label} (every vendor)"
        if self.scope == SCOPE_VENDOR:
            return f"{self.vendor_id} (every label)"
        return f"{self.policy_label} / {self.vendor_id}"
