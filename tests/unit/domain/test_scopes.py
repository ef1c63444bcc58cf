"""Wider scopes: a label across its vendors, a vendor across its labels; pair alerts linked under them."""

from __future__ import annotations

import random

from services.contracts.alerts import AlertEvent
from services.devtools.fleet import Fleet
from services.domain.join import JudgedVerdict
from services.domain.monitor import MonitorPolicy

VENDORS = [f"V{i}" for i in range(5)]
LABELS = ["SCAMS", "WEAPONS", "DRUGS"]


def stream(
    fleet: Fleet, rng: random.Random, rate: dict[tuple[str, str], float], rounds: int, t0: int
) -> list[AlertEvent]:
    """``rounds`` verdicts per pair, one each in turn, fed ten rounds to a record."""
    out: list[AlertEvent] = []
    t = t0
    for r in range(rounds):
        if r % 10 == 0:
            batch: list[JudgedVerdict] = []
        for (label, vendor), p in rate.items():
            t += 1_000
            e = rng.random() < p
            u = rng.random()  # error types in the configured proportions (over 1.5%, under 1% of 3%)
            batch.append(JudgedVerdict(label, vendor, t, e, (1 if u < 0.5 else 2 if u < 0.833 else 3) if e else 0))
        if r % 10 == 9 or r == rounds - 1:
            out.extend(fleet.feed(batch))
    return out


def firing(events: list[AlertEvent], rule: str = "error_rate") -> list[AlertEvent]:
    return [e for e in events if e.status == "firing" and e.rule == rule]


def test_a_label_wide_shift_raises_one_label_alert_and_links_the_pairs_under_it() -> None:
    fleet, rng = Fleet(MonitorPolicy(baseline_mode="sla", arl0=1_000_000)), random.Random(3)
    base = {(label, v): 0.03 for label in LABELS for v in VENDORS}
    assert stream(fleet, rng, base, 2_000, 0) == []
    shifted = {**base, **{("SCAMS", v): 0.09 for v in VENDORS}}
    events = firing(stream(fleet, rng, shifted, 3_000, 10**9))
    label_wide = [e for e in events if e.scope == "policy_label"]
    assert len(label_wide) == 1
    parent = label_wide[0]
    assert (parent.policy_label, parent.vendor_id, parent.dedup_key) == ("SCAMS", "*", "error_rate|SCAMS|*")
    pairs = [e for e in events if e.scope == "pair"]
    assert pairs, "the pairs' own monitors fire too, later"
    assert all(e.parent_alert_id == parent.alert_id for e in pairs)
    assert events.index(parent) < min(events.index(e) for e in pairs)  # pooled evidence: sooner
    assert "(every vendor)" in parent.summary
    # The vendors' own wider alerts (a third of each vendor's verdicts moved) are the label's too.
    assert all(e.parent_alert_id == parent.alert_id for e in events if e.scope == "vendor")
    assert not [e for e in events if e.parent_alert_id is None and e is not parent and e.rule == "error_rate"]


def test_a_vendor_wide_shift_is_the_vendors_alert() -> None:
    fleet, rng = Fleet(MonitorPolicy(baseline_mode="sla", arl0=100_000)), random.Random(4)
    base = {(label, v): 0.03 for label in LABELS for v in VENDORS}
    stream(fleet, rng, base, 1_000, 0)
    shifted = {**base, **{(label, "V2"): 0.10 for label in LABELS}}
    events = firing(stream(fleet, rng, shifted, 3_000, 10**9))
    paged = [e for e in events if e.parent_alert_id is None]
    assert {(e.scope, e.policy_label, e.vendor_id) for e in paged} == {("vendor", "*", "V2")}
    wide = [e for e in paged if e.rule == "error_rate"]
    assert len(wide) == 1
    # Its pairs, and a label-wide alert its excess raised on a label, are linked under it.
    assert all(e.parent_alert_id == wide[0].alert_id for e in events if e.rule == "error_rate" and e is not wide[0])


def test_a_pair_alone_is_paged_as_a_pair() -> None:
    fleet, rng = Fleet(MonitorPolicy(baseline_mode="sla", arl0=100_000)), random.Random(5)
    base = {(label, v): 0.03 for label in LABELS for v in VENDORS}
    stream(fleet, rng, base, 1_000, 0)
    one = {**base, ("WEAPONS", "V1"): 0.25}
    events = firing(stream(fleet, rng, one, 400, 10**9))
    pair = [e for e in events if e.scope == "pair"]
    assert [(e.policy_label, e.vendor_id, e.parent_alert_id) for e in pair] == [("WEAPONS", "V1", None)]


def test_a_linked_alert_is_announced_on_its_own_when_its_parent_resolves() -> None:
    fleet, rng = Fleet(MonitorPolicy(baseline_mode="sla", arl0=100_000)), random.Random(11)
    base = {(label, v): 0.03 for label in LABELS for v in VENDORS}
    stream(fleet, rng, base, 500, 0)
    drift = {**base, **{("SCAMS", v): 0.12 for v in VENDORS}}
    events = stream(fleet, rng, drift, 1_200, 10**9)
    parent = next(e for e in events if e.scope == "policy_label" and e.rule == "error_rate")
    linked = [
        e for e in events if e.parent_alert_id == parent.alert_id and e.scope == "pair" and e.rule == "error_rate"
    ]
    assert linked
    # The label recovers except for one vendor, whose alert goes on firing: once the label-wide alert
    # resolves, that pair is announced with no parent.
    stays = linked[0].vendor_id
    after = {**base, ("SCAMS", stays): 0.12}
    later = stream(fleet, rng, after, 6_000, 2 * 10**9)
    resolved = [e for e in later if e.alert_id == parent.alert_id and e.status == "resolved"]
    assert resolved
    announced = [e for e in later if e.alert_id == linked[0].alert_id and e.status == "firing"]
    assert announced and announced[0].parent_alert_id is None
    assert "resolved, this one persists" in announced[0].summary


def test_a_learning_pair_is_held_to_its_labels_baseline() -> None:
    """Once a label's baseline is learned across its vendors, a new vendor of it is held to that
    rate while it learns its own (and the alert says so)."""
    policy = MonitorPolicy(baseline_mode="learned", arl0=100_000, baseline_verdicts=2_000)
    fleet, rng = Fleet(policy), random.Random(6)
    base = {("SCAMS", v): 0.10 for v in VENDORS[:4]}
    stream(fleet, rng, base, 1_500, 0)  # 6,000 label verdicts: the label learns 10%, each pair not yet
    newcomer = {**base, ("SCAMS", "V9"): 0.30}
    events = firing(stream(fleet, rng, newcomer, 600, 10**9))
    new = [e for e in events if e.vendor_id == "V9"]
    assert new and new[0].baseline_source == "learning:policy_label"
    assert new[0].baseline_rate > 0.09  # the label's 10%, not the configured 3%


def test_one_member_explains_a_rise_only_when_the_others_stayed() -> None:
    from services.domain.detect import PairState, explains

    def scope(rates: dict[str, float]) -> PairState:
        return PairState({}, member_counts={m: (600.0, 600.0 * r, 0) for m, r in rates.items()})

    one = scope({"V0": 0.20, "V1": 0.03, "V2": 0.03, "V3": 0.03, "V4": 0.03})
    assert explains(one, "V0", 0.03) and not explains(one, "V1", 0.03)
    spread = scope({v: 0.06 for v in VENDORS})
    assert not any(explains(spread, v, 0.03) for v in VENDORS)
    # A shift of every member with one member's noise on top is still the scope's: log-likelihoods
    # 600 x 0.09 errors alone (and the rest at 3%, against their 6%) lose to all five at the pooled rate.
    noisy = scope({"V0": 0.09, "V1": 0.06, "V2": 0.05, "V3": 0.06, "V4": 0.055})
    assert not explains(noisy, "V0", 0.03)
    assert not explains(scope({"V0": 0.02, "V1": 0.03}), "V0", 0.03)  # no rise, nothing to explain


def test_the_one_pass_margins_are_the_two_models_compared_member_by_member() -> None:
    """``alone_margins`` (all members at once, from summed counts) against the two models written
    out per member: the member at its own rate and each other at the baseline, against every member
    at the pooled rate."""
    import math

    from services.domain.detect import alone_margins

    def loglik(e: float, n: float, p: float) -> float:
        return e * math.log(p) + (n - e) * math.log(1 - p)

    rng = random.Random(4)
    for _ in range(50):
        recent = {f"L{i}": (n := rng.uniform(0, 300), n * rng.uniform(0, 0.12)) for i in range(rng.randrange(1, 40))}
        total_n = sum(n for n, _ in recent.values())
        pooled = max(sum(e for _, e in recent.values()) / total_n, 0.03)
        expected = {
            m: loglik(e, n, e / n)
            + sum(loglik(e2, n2, 0.03) for m2, (n2, e2) in recent.items() if m2 != m)
            - sum(loglik(e2, n2, pooled) for n2, e2 in recent.values())
            for m, (n, e) in recent.items()
            if e > n * 0.03
        }
        got = alone_margins(recent, 0.03)
        assert got.keys() == expected.keys()
        assert all(math.isclose(got[m], expected[m], rel_tol=1e-9, abs_tol=1e-7) for m in got), (got, expected)


def test_a_reviewer_who_drifts_from_the_auditors_raises_a_reviewer_alert() -> None:
    from services.domain.join import ScoredRating

    fleet, rng = Fleet(MonitorPolicy(baseline_mode="sla", arl0=10_000)), random.Random(9)
    t, events = 0, []
    for i in range(1_600):
        t += 60_000
        drifting = i >= 800
        ratings = [
            ScoredRating("qa-07", t, rng.random() < (0.30 if drifting else 0.03)),
            ScoredRating("qa-02", t, rng.random() < 0.03),
        ]
        events += fleet.feed([], scored=ratings)
    fired = firing(events, rule="reviewer_disagreement")
    assert [(e.scope, e.reviewer_id, e.policy_label, e.vendor_id) for e in fired] == [("reviewer", "qa-07", "*", "*")]
    assert fired[0].dedup_key == "reviewer_disagreement|*|*|qa-07"
    assert fired[0].started_at >= "1970-01-01T13:20"  # after the drift began (800 minutes in)
    assert "reviewer qa-07: disagreement with the reference rose" in fired[0].summary


def test_a_pair_alarm_waits_while_its_label_is_watching_and_links_when_the_label_fires() -> None:
    """Through ``detect``: the label's news that it is watching holds the pair's alarm; its alert
    firing links it; a pair whose label stops watching is paged on its own."""
    import msgspec

    from services.contracts.pairs import OutcomeBatch, ScopeUpdate, encode_scope_update, pair_key
    from services.domain.detect import PairState, detect

    policy = MonitorPolicy(baseline_mode="sla", arl0=100_000)
    key, rng = pair_key("SCAMS", "V1"), random.Random(8)

    def run(states: dict[bytes, bytes], payload: bytes) -> list[AlertEvent]:
        found = detect(key, payload, states.get, policy)
        states[key] = found.state
        return [e for e in found.changes if e.rule == "error_rate"]

    def verdicts(first: int, n: int, p: float) -> bytes:
        items = [(0, first + i, 10**9 + (first + i) * 60_000, rng.random() < p, 1) for i in range(n)]
        return msgspec.msgpack.encode(OutcomeBatch(items))

    def news(**over: object) -> bytes:
        return encode_scope_update(ScopeUpdate("policy_label", "error_rate", "SCAMS", **over))  # type: ignore[arg-type]

    outcomes: list[list[AlertEvent]] = []
    for ends in ("fires", "stops"):
        states: dict[bytes, bytes] = {}
        assert run(states, news(watching=True, t_ms=10**9)) == []
        assert run(states, verdicts(0, 3000, 0.03)) == []
        got = run(states, verdicts(3000, 150, 0.25))
        held = msgspec.msgpack.decode(states[key], type=PairState).monitors["error_rate"]
        assert got == [] and held.firing and held.held_ms > 0  # alarmed (surely, at 25%), and held
        if ends == "fires":
            outcomes.append(run(states, news(alert_id="label-alert", started_ms=10**9, t_ms=2 * 10**9)))
        else:
            outcomes.append(run(states, news(watching=False, t_ms=2 * 10**9)))
    linked, alone = outcomes
    assert [(e.status, e.parent_alert_id) for e in linked] == [("firing", "label-alert")]
    assert [(e.status, e.parent_alert_id) for e in alone] == [("firing", None)]
