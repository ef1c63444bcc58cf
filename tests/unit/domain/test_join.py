"""Join order, redelivery and superseding on the pure decision-state core."""

from __future__ import annotations

import random

from services.contracts.batches import WireEvent, decode_batch, encode_batch
from services.domain.join import ANY_LABEL, SLICE_DIMENSIONS, expand_combined, score_batch, split_slice
from services.domain.rates import Counts
from tests.support import factories
from tests.support.factories import wire


def run(events: list[WireEvent], batch_size: int = 3) -> tuple[dict[tuple[str, str, str], Counts], list[bool]]:
    """Feed events in batches through the pipeline; totals per (label, vendor, market) and detector feed."""
    store: dict[bytes, bytes] = {}
    totals: dict[tuple[str, str, str], Counts] = {}
    fed: list[bool] = []
    for i in range(0, len(events), batch_size):
        batch = decode_batch(encode_batch(events[i : i + batch_size]))
        writes, deltas = score_batch(batch, store.get)
        store.update(writes)
        for (label, vendor, market, _), delta in deltas.rows().items():
            totals.setdefault((label, vendor, market), Counts()).add(delta)
        fed.extend(o.is_error for o in deltas.outcomes)
    return totals, fed


KEY = ("SCAMS_AND_FRAUD", "V01", "DE")


def test_verdict_before_decision_is_joined_when_the_decision_arrives() -> None:
    totals, fed = run(
        [wire("verdict", factories.verdict("d1", error=True)), wire("decision", factories.decision("d1"))], 1
    )
    row = totals[KEY]
    assert (row.decisions, row.verdicts, row.errors, row.over_enforcement) == (1, 1, 1, 1)
    assert fed == [True]


def test_verdict_after_decision_counts_once() -> None:
    totals, fed = run([wire("decision", factories.decision("d1")), wire("verdict", factories.verdict("d1"))])
    assert (totals[KEY].verdicts, totals[KEY].errors) == (1, 0)
    assert fed == [False]


def test_redelivered_events_count_once() -> None:
    d, v, a = factories.decision("d1"), factories.verdict("d1", error=True), factories.appeal("d1")
    events = [wire("decision", d), wire("verdict", v), wire("appeal", a)] * 3
    totals, fed = run(events, 2)
    row = totals[KEY]
    assert (row.decisions, row.verdicts, row.errors, row.appeals, row.overturned) == (1, 1, 1, 1, 1)
    assert fed == [True]


def test_superseding_verdict_replaces_the_earlier_one_in_either_order() -> None:
    first = factories.verdict("d1", error=True, verdict_id="v1", event_id="e1")
    second = factories.verdict(
        "d1", error=False, verdict_id="v2", event_id="e2", supersedes_verdict_id="v1", event_time=factories.ts(30)
    )
    for order in ([first, second], [second, first]):
        totals, _ = run([wire("decision", factories.decision("d1"))] + [wire("verdict", v) for v in order], 1)
        assert (totals[KEY].verdicts, totals[KEY].errors) == (1, 0), order


def test_appeal_before_decision_is_counted_on_join() -> None:
    totals, _ = run([wire("appeal", factories.appeal("d1", "UPHELD")), wire("decision", factories.decision("d1"))], 1)
    assert (totals[KEY].appeals, totals[KEY].overturned) == (1, 0)


def test_shuffled_and_duplicated_stream_gives_the_same_counts() -> None:
    rng = random.Random(3)
    events: list[WireEvent] = []
    for n in range(300):
        did = f"d{n}"
        events.append(wire("decision", factories.decision(did, vendor_id=f"V0{n % 3}")))
        if n % 2:
            events.append(wire("verdict", factories.verdict(did, error=n % 7 == 0)))
        if n % 11 == 0:
            events.append(
                wire(
                    "verdict",
                    factories.verdict(
                        did, error=True, verdict_id=f"late-{did}", event_id=f"le-{did}", event_time=factories.ts(600)
                    ),
                )
            )
        if n % 5 == 0:
            events.append(wire("appeal", factories.appeal(did)))
    clean, _ = run(events, 50)
    noisy = events * 2
    rng.shuffle(noisy)
    shuffled, _ = run(noisy, 37)
    assert shuffled == clean


def test_touched_ms_read_off_the_end_equals_the_decoded_field() -> None:
    from services.domain.join import CurrentVerdict, DecisionAttrs, DecisionState, encode_state, touched_ms

    for t in (0, 1, 127, 70_000, 2**32 + 5, 1_795_000_000_000):
        for state in (
            DecisionState(touched_ms=t),
            DecisionState(DecisionAttrs("L", "V", "DE", t), None, None, t),
            DecisionState(None, CurrentVerdict("v", 1, 2, t, 1.0, ""), {"a": (1, t)}, t),
        ):
            assert touched_ms(encode_state(state)) == t


def test_a_verdict_writes_one_slice_row_for_every_dimension_and_the_dsa_row_on_every_label() -> None:
    decision = factories.decision("d1", content_language="de", queue_id="q7", model_version="", policy_version="p3")
    events = [wire("decision", decision), wire("verdict", factories.verdict("d1", error=True))]
    _, deltas = score_batch(decode_batch(encode_batch(events)), {}.get)
    kinds = {split_slice(market): counts for (_, _, market, _), counts in deltas.rows().items()}
    (combined,) = [(d, c) for d, c in kinds.items() if d and d[0] == "slices"]
    (_, value), counts = combined
    assert (counts.verdicts, counts.errors) == (1, 1)
    # Each dimension given, summed by the evidence query; an empty one (model_version) names nothing.
    assert expand_combined(value) == [
        ("content_language", "de"),
        ("queue_id", "q7"),
        ("actor_type", "HUMAN"),
        ("policy_version", "p3"),
    ]
    # The DSA counts are per vendor on the label ANY_LABEL, decisions and verdicts in one hourly row.
    (automation,) = [(k, c) for k, c in deltas.rows().items() if (split_slice(k[2]) or ("",))[0] == "automation"]
    assert automation[0][:2] == (ANY_LABEL, "V01") and (automation[1].decisions, automation[1].verdicts) == (1, 1)
    # No row per dimension alone (what earlier versions wrote).
    assert not {d[0] for d in kinds if d} & set(SLICE_DIMENSIONS)
