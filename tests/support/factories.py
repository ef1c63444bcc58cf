"""Event factories shared by the tests: valid upstream events as dicts, overridable per field."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import msgspec
import orjson

from services.contracts.alerts import AlertEvent
from services.contracts.batches import WireEvent, encode_event
from services.contracts.events import EVENT_TYPES

_seq = itertools.count()
BASE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def ts(seconds: float = 0) -> str:
    return (BASE + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def decision(decision_id: str | None = None, **over: object) -> dict[str, object]:
    n = next(_seq)
    decision_id = decision_id or f"dec-{n}"
    doc: dict[str, object] = {
        "schema_version": 1,
        "event_id": f"ev-d-{decision_id}",
        "event_time": ts(0),
        "decision_id": decision_id,
        "policy_label": "SCAMS_AND_FRAUD",
        "vendor_id": "V01",
        "market": "DE",
        "action": "REMOVE",
        "actor_type": "HUMAN",
        "entity_type": "LISTING",
        "entity_id": f"listing-{n}",
    }
    doc.update(over)
    return doc


def verdict(decision_id: str, error: bool = False, **over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema_version": 1,
        "event_id": f"ev-v-{decision_id}",
        "event_time": ts(60),
        "verdict_id": f"ver-{decision_id}",
        "decision_id": decision_id,
        "reviewer_id": "qa-1",
        "verdict": "INCORRECT" if error else "CORRECT",
        "error_type": "OVER_ENFORCEMENT" if error else "NONE",
    }
    doc.update(over)
    return doc


def appeal(decision_id: str, outcome: str = "OVERTURNED", **over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schema_version": 1,
        "event_id": f"ev-a-{decision_id}",
        "event_time": ts(120),
        "appeal_id": f"app-{decision_id}",
        "decision_id": decision_id,
        "outcome": outcome,
    }
    doc.update(over)
    return doc


def alert_event(alert_id: str, status: str, vendor: str = "V01") -> AlertEvent:
    return AlertEvent(
        alert_id=alert_id,
        dedup_key=f"error_rate|SCAMS_AND_FRAUD|{vendor}",
        rule="error_rate",
        status=status,  # type: ignore[arg-type]
        policy_label="SCAMS_AND_FRAUD",
        vendor_id=vendor,
        error_type="ANY",
        started_at="2026-11-24T10:00:00Z",
        onset_at="2026-11-24T09:40:00Z",
        resolved_at="2026-11-24T11:00:00Z" if status == "resolved" else None,
        baseline_rate=0.03,
        observed_rate=0.09,
        ci_low=0.06,
        ci_high=0.13,
        verdicts=420,
        errors=38,
        statistic=7.1,
        threshold=6.6,
        summary="error rate rose",
    )


def wire(kind: str, doc: dict[str, object]) -> WireEvent:
    """An upstream event doc as the scorer's wire event (validated as ingest would)."""
    return encode_event(msgspec.json.decode(orjson.dumps(doc), type=EVENT_TYPES[kind]))
