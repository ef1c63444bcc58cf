"""Remediation findings from the join: one open per finding whatever the order, retracted once."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema

from services.contracts.batches import WireAppeal, WireDecision, WireEvent, WireVerdict
from services.contracts.codes import CORRECT, INCORRECT, NO_ERROR, OVER_ENFORCEMENT, OVERTURNED, UNDER_ENFORCEMENT
from services.contracts.remediations import encode_remediation
from services.domain.join import Deltas, score_batch

SCHEMA = json.loads((Path(__file__).parents[3] / "schemas" / "remediation.v1.json").read_text())


def decision(did: str = "d1", action: str = "REMOVE") -> WireDecision:
    return WireDecision(
        f"e-{did}", did, 1_000, "SCAMS", "V1", "DE", "Q7", "m-3", 0, "de", "v2", "LISTING", "L-9", action
    )


def verdict(vid: str, code: int, error: int, t: int, supersedes: str = "") -> WireVerdict:
    return WireVerdict(f"e-{vid}", "d1", t, vid, code, error, supersedes, 1.0)


def run(events: list[WireEvent]) -> list[tuple[str, str, str]]:
    """Feed events one batch each (state carried), return (remediation_id, status, recommendation)."""
    store: dict[bytes, bytes] = {}
    out = []
    for ev in events:
        d = Deltas()
        writes, _ = score_batch([ev], store.get, into=d)
        store.update(writes)
        out.extend((f.remediation_id, f.status, f.recommendation) for f in d.findings)
    return out


def test_an_incorrect_verdict_and_an_overturned_appeal_are_two_findings_in_every_order() -> None:
    events: list[WireEvent] = [
        decision(),
        verdict("v1", INCORRECT, OVER_ENFORCEMENT, 2_000),
        WireAppeal("e-a1", "d1", 3_000, "a1", OVERTURNED),
    ]
    outcomes = set()
    for order in itertools.permutations(events):
        found = run(list(order) + list(order))  # and everything delivered twice
        opened = [f for f in found if f[1] == "open"]
        assert len(opened) == 2 and len({f[0] for f in opened}) == 2
        outcomes.add(frozenset(found))
    assert len(outcomes) == 1  # the same ids and recommendations whatever the order
    assert {r for _, _, r in next(iter(outcomes))} == {"REINSTATE"}


def test_a_superseding_verdict_retracts_the_finding_it_replaces() -> None:
    v1 = verdict("v1", INCORRECT, OVER_ENFORCEMENT, 2_000)
    v2 = verdict("v2", CORRECT, NO_ERROR, 3_000, supersedes="v1")
    found = run([decision(), v1, v2])
    assert [s for _, s, _ in found] == ["open", "retracted"] and found[0][0] == found[1][0]
    # Superseded before it was ever seen: nothing to retract, nothing opened.
    assert run([decision(), v2, v1]) == []
    # Replaced by another INCORRECT verdict: the old finding retracted, the new one opened.
    v3 = verdict("v3", INCORRECT, UNDER_ENFORCEMENT, 4_000, supersedes="v1")
    found = run([decision("d1", "APPROVE"), v1, v3])
    assert [(s, r) for _, s, r in found] == [
        ("open", "ADJUST_ACTION"),
        ("retracted", "ADJUST_ACTION"),
        ("open", "ENFORCE"),
    ]


def test_remediation_events_validate_against_the_published_schema() -> None:
    store: dict[bytes, bytes] = {}
    d = Deltas()
    score_batch([decision(), verdict("v1", INCORRECT, OVER_ENFORCEMENT, 2_000)], store.get, into=d)
    (finding,) = d.findings
    doc = json.loads(encode_remediation(finding))
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)
    assert (doc["entity_type"], doc["entity_id"], doc["action"], doc["market"]) == ("LISTING", "L-9", "REMOVE", "DE")
    assert doc["evidence"] == {"verdict_ids": ["v1"], "appeal_ids": []}
