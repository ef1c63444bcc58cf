"""Several verdicts per decision: QA tiers, review items, reviewers scored against their reference."""

from __future__ import annotations

import itertools
import random

from services.contracts.batches import WireEvent, decode_batch, encode_batch
from services.contracts.facts import AppealFact, Fact, ReviewItem
from services.domain.join import (
    REVIEWER,
    DecisionState,
    Deltas,
    ScoredRating,
    decode_state,
    encode_state,
    score_batch,
    slice_key,
    touched_ms,
)
from services.domain.rates import Counts
from tests.support import factories
from tests.support.factories import wire

KEY = ("SCAMS_AND_FRAUD", "V01", "DE")


def run(
    events: list[WireEvent], batch_size: int = 2, audit_replaces: bool = False
) -> tuple[dict[tuple[str, str, str], Counts], dict[tuple[str, str], Fact], list[ScoredRating]]:
    """Totals per (label, vendor, market or slice), the last fact per key, the scored ratings."""
    store: dict[bytes, bytes] = {}
    totals: dict[tuple[str, str, str], Counts] = {}
    facts: dict[tuple[str, str], Fact] = {}
    scored: list[ScoredRating] = []
    for i in range(0, len(events), batch_size):
        deltas = Deltas(audit_replaces=audit_replaces)
        writes, _ = score_batch(decode_batch(encode_batch(events[i : i + batch_size])), store.get, into=deltas)
        store.update(writes)
        for (label, vendor, market, _), delta in deltas.rows().items():
            totals.setdefault((label, vendor, market), Counts()).add(delta)
        facts.update(deltas.facts)
        scored.extend(deltas.scored)
    return totals, facts, scored


def tiered(decision_id: str, verdict_id: str, tier: str, reviewer: str, error: bool, at: float = 60) -> WireEvent:
    return wire(
        "verdict",
        factories.verdict(
            decision_id,
            error=error,
            verdict_id=verdict_id,
            event_id=f"e-{verdict_id}",
            qa_tier=tier,
            reviewer_id=reviewer,
            event_time=factories.ts(at),
        ),
    )


def test_a_calibration_verdict_leaves_the_rates_and_makes_a_review_item() -> None:
    events = [
        wire("decision", factories.decision("d1")),
        tiered("d1", "v-qa", "QA", "qa-1", error=True),
        tiered("d1", "v-cal", "CALIBRATION", "qa-2", error=False, at=90),
    ]
    totals, facts, scored = run(events)
    assert (totals[KEY].verdicts, totals[KEY].errors) == (1, 1)  # the QA verdict only
    item = facts[("review", "d1")]
    assert isinstance(item, ReviewItem)
    assert [(r.reviewer_id, r.tier, r.category) for r in item.ratings] == [("qa-2", 1, 0), ("qa-1", 0, 1)]
    assert scored == []  # no reference: a calibration is a peer, not an audit
    # Every reviewer's ratings are counted per hour in the reviewer slice.
    qa1 = totals[("SCAMS_AND_FRAUD", "V01", slice_key(REVIEWER, "qa-1"))]
    assert (qa1.verdicts, qa1.errors) == (1, 1)


def test_an_audit_is_the_reference_and_replaces_the_primary_verdict_only_when_configured() -> None:
    events = [
        wire("decision", factories.decision("d1")),
        tiered("d1", "v-qa", "QA", "qa-1", error=True),
        tiered("d1", "v-audit", "AUDIT", "lead-1", error=False, at=300),
    ]
    totals, facts, scored = run(events)
    assert (totals[KEY].verdicts, totals[KEY].errors) == (1, 1)
    assert scored == [ScoredRating("qa-1", factories_ms(300), True)]  # the QA reviewer disagreed with the audit
    assert isinstance(facts[("review", "d1")], ReviewItem)
    replaced, _, _ = run(events, audit_replaces=True)
    assert (replaced[KEY].verdicts, replaced[KEY].errors) == (1, 0)  # the audit is the decision's verdict now


def test_supersession_keeps_within_its_tier() -> None:
    events = [
        wire("decision", factories.decision("d1")),
        tiered("d1", "v-qa", "QA", "qa-1", error=False),
        tiered("d1", "c1", "CALIBRATION", "qa-2", error=True, at=70),
        wire(
            "verdict",
            factories.verdict(
                "d1",
                verdict_id="c2",
                event_id="e-c2",
                qa_tier="CALIBRATION",
                reviewer_id="qa-2",
                supersedes_verdict_id="c1",
                event_time=factories.ts(80),
            ),
        ),
    ]
    totals, facts, _ = run(events)
    item = facts[("review", "d1")]
    assert isinstance(item, ReviewItem)
    assert sorted(r.verdict_id for r in item.ratings) == ["c2", "v-qa"]
    assert (totals[KEY].verdicts, totals[KEY].errors) == (1, 0)
    qa2 = totals[("SCAMS_AND_FRAUD", "V01", slice_key(REVIEWER, "qa-2"))]
    assert (qa2.verdicts, qa2.errors) == (1, 0)  # c1 counted, then taken back


def test_golden_answers_score_every_reviewer_once_in_any_order() -> None:
    decision = wire("decision", factories.decision("g1", golden_answer="OVER_ENFORCEMENT"))
    answers = [
        tiered("g1", f"g-{r}", "GOLDEN", r, error=r != "qa-3", at=60 + i)
        for i, r in enumerate(("qa-1", "qa-2", "qa-3"))
    ]
    outcomes = set()
    for order in itertools.permutations([decision, *answers]):
        _, facts, scored = run(list(order), batch_size=1)
        outcomes.add(tuple(sorted((s.reviewer_id, s.disagrees) for s in scored)))
        item = facts[("review", "g1")]
        assert isinstance(item, ReviewItem) and item.golden_answer == 1 and len(item.ratings) == 3
    assert outcomes == {(("qa-1", False), ("qa-2", False), ("qa-3", True))}


def test_shuffled_and_redelivered_multi_tier_streams_end_alike() -> None:
    events = [wire("decision", factories.decision(f"d{i}")) for i in range(20)]
    for i in range(20):
        events.append(tiered(f"d{i}", f"q{i}", "QA", "qa-1", error=i % 3 == 0))
        events.append(tiered(f"d{i}", f"c{i}", "CALIBRATION", "qa-2", error=i % 4 == 0, at=70))
        if i % 2:
            events.append(tiered(f"d{i}", f"a{i}", "AUDIT", "lead", error=i % 3 == 0, at=400))
    want = run(events)
    rng = random.Random(2)
    for _ in range(5):
        again = events * 2
        rng.shuffle(again)
        got = run(again, batch_size=7)
        assert got[0] == want[0] and got[1] == want[1]
        assert sorted(got[2], key=repr) == sorted(want[2], key=repr)


def test_appeal_fact_carries_its_channel_and_times() -> None:
    events = [
        wire(
            "appeal",
            factories.appeal("d1", filed_at=factories.ts(100), resolved_at=factories.ts(4000), channel="ARTICLE_20"),
        ),
        wire("decision", factories.decision("d1", category="SCAMS_AND_FRAUD")),
    ]
    _, facts, _ = run(events, batch_size=1)
    fact = facts[("appeal", "app-d1")]
    assert isinstance(fact, AppealFact)
    assert (fact.channel, fact.category, fact.outcome) == ("ARTICLE_20", "SCAMS_AND_FRAUD", 1)
    assert fact.resolved_ms - fact.filed_ms == 3_900_000


def test_a_state_without_other_tiers_still_ends_with_its_touch_time() -> None:
    plain = encode_state(DecisionState(None, None, None, 1_800_000_000_000))
    assert touched_ms(plain) == 1_800_000_000_000 and plain[-11] == 0xCF  # read off the end
    events = [wire("decision", factories.decision("d1")), tiered("d1", "c1", "CALIBRATION", "qa-2", error=False)]
    store: dict[bytes, bytes] = {}
    writes, _ = score_batch(decode_batch(encode_batch(events)), store.get)
    state = decode_state(writes[b"d1"])
    assert state.others is not None and state.others[0].reviewer == "qa-2"
    assert touched_ms(writes[b"d1"]) == state.touched_ms


def factories_ms(seconds: float) -> int:
    return int(factories.BASE.timestamp() * 1000) + int(seconds * 1000)


def test_the_counts_carry_the_squared_weights_of_the_design_based_variance() -> None:
    events = [wire("decision", factories.decision(f"d{i}")) for i in range(3)]
    for i, pi in enumerate((0.5, 0.25, 0.1)):
        events.append(wire("verdict", factories.verdict(f"d{i}", error=i == 1, inclusion_probability=pi)))
    totals, _, _ = run(events)
    row = totals[KEY]
    assert (row.weighted_verdicts, row.weighted_errors) == (2 + 4 + 10, 4)
    assert (row.weighted_sq_verdicts, row.weighted_sq_errors) == (4 + 16 + 100, 16)
