"""Compact wire format between ingest and scorer: one Kafka record carries a batch of events.

Events are msgpack arrays (msgspec ``array_like`` structs tagged by kind) so decoding a batch is
cheap and typed. Batches are co-partitioned by decision_id, so a decision and its verdicts and
appeals meet in one scorer partition.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import msgspec

from services.contracts.codes import ACTOR_INDEX, ERROR_INDEX, OUTCOME_INDEX, QA, TIER_INDEX, VERDICT_INDEX
from services.contracts.events import Appeal, Decision, Verdict


class WireDecision(msgspec.Struct, array_like=True, tag=0, frozen=True, gc=False):
    event_id: str
    decision_id: str
    t_ms: int
    policy_label: str
    vendor_id: str
    market: str
    queue_id: str
    model_version: str
    actor_type: int
    # Added for attribution and remediation (batches written before decode with the defaults).
    content_language: str = ""
    policy_version: str = ""
    entity_type: str = ""
    entity_id: str = ""
    action: str = ""
    # Added for the QA of QA and the DSA figures (batches written before decode with the defaults).
    model_id: str = ""
    category: str = ""
    automated_decision: str = ""
    automated_detection: int = -1  # -1 not given, 0 no, 1 yes
    golden_answer: int = -1  # an error-type code: the decision is a golden item; -1: it is not


class WireVerdict(msgspec.Struct, array_like=True, tag=1, frozen=True, gc=False):
    event_id: str
    decision_id: str
    t_ms: int
    verdict_id: str
    code: int
    error_type: int
    supersedes: str
    weight: float
    reviewer_id: str = ""
    tier: int = 0  # codes.QA_TIERS


class WireAppeal(msgspec.Struct, array_like=True, tag=2, frozen=True, gc=False):
    event_id: str
    decision_id: str
    t_ms: int
    appeal_id: str
    outcome: int
    filed_ms: int = 0  # 0: not given
    resolved_ms: int = 0
    channel: str = ""


WireEvent = WireDecision | WireVerdict | WireAppeal

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[WireEvent])


def to_ms(event: Decision | Verdict | Appeal) -> int:
    """Event time as integer epoch milliseconds."""
    return int(event.event_time.timestamp() * 1000)


def encode_event(event: Decision | Verdict | Appeal, t_ms: int | None = None) -> WireEvent:
    """Normalise a validated upstream event into its compact wire form (``t_ms``: its event time
    in epoch milliseconds, when the caller has it already)."""
    if t_ms is None:
        t_ms = to_ms(event)
    if isinstance(event, Decision):
        return WireDecision(
            event.event_id,
            event.decision_id,
            t_ms,
            event.policy_label,
            event.vendor_id,
            event.market,
            event.queue_id or "",
            event.model_version or "",
            ACTOR_INDEX[event.actor_type],
            event.content_language or "",
            event.policy_version or "",
            event.entity_type,
            event.entity_id,
            event.action,
            event.model_id or "",
            event.category or "",
            event.automated_decision or "",
            -1 if event.automated_detection is None else int(event.automated_detection),
            -1 if event.golden_answer is None else ERROR_INDEX[event.golden_answer],
        )
    if isinstance(event, Verdict):
        weight = 1.0 / event.inclusion_probability if event.inclusion_probability else 1.0
        return WireVerdict(
            event.event_id,
            event.decision_id,
            t_ms,
            event.verdict_id,
            VERDICT_INDEX[event.verdict],
            ERROR_INDEX[event.error_type],
            event.supersedes_verdict_id or "",
            weight,
            event.reviewer_id,
            TIER_INDEX[event.qa_tier] if event.qa_tier is not None else QA,
        )
    return WireAppeal(
        event.event_id,
        event.decision_id,
        t_ms,
        event.appeal_id,
        OUTCOME_INDEX[event.outcome],
        _ms(event.filed_at),
        _ms(event.resolved_at),
        event.channel or "",
    )


def _ms(t: datetime | None) -> int:
    return 0 if t is None else int(t.timestamp() * 1000)


def encode_batch(events: list[WireEvent]) -> bytes:
    return _encoder.encode(events)


def decode_batch(payload: bytes) -> list[WireEvent]:
    return _decoder.decode(payload)


def partition_for(decision_id: str, partitions: int) -> int:
    """Stable partition for a decision id, the same in every process and language (CRC-32)."""
    return zlib.crc32(decision_id.encode()) % partitions
