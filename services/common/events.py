"""Upstream event types as msgspec structs; schemas/*.json is the contract they must match."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Id = Annotated[str, Meta(min_length=1, max_length=128)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern="^[A-Z0-9_]+$")]
Short = Annotated[str, Meta(min_length=1, max_length=64)]
Market = Annotated[str, Meta(min_length=1, max_length=16)]
EventTime = Annotated[datetime, Meta(tz=True)]
SchemaVersion = Literal[1]

Action = Literal[
    "APPROVE",
    "REMOVE",
    "DISABLE",
    "DEMOTE",
    "AGE_RESTRICT",
    "LABEL",
    "RESTRICT_INTERACTION",
    "SUSPEND_SELLER",
    "OTHER",
]
ActorType = Literal["HUMAN", "MODEL", "HUMAN_ON_MODEL_SUGGESTION"]
EntityType = Literal["LISTING", "SELLER", "VIDEO", "LIVESTREAM", "COMMENT", "REVIEW", "AD"]
AutomatedDecision = Literal["FULLY", "PARTIALLY", "NOT_AUTOMATED"]
VerdictValue = Literal["CORRECT", "INCORRECT", "UNABLE_TO_JUDGE"]
ErrorType = Literal["NONE", "OVER_ENFORCEMENT", "UNDER_ENFORCEMENT", "WRONG_LABEL", "WRONG_ACTION"]
QaTier = Literal["QA", "AUDIT", "GOLDEN", "CALIBRATION"]
Severity = Literal["CRITICAL", "MAJOR", "MINOR"]
AppealOutcomeValue = Literal["UPHELD", "OVERTURNED", "PARTIALLY_OVERTURNED", "WITHDRAWN"]
ReversalAction = Literal["REINSTATED", "PENALTY_REVOKED", "WHITELISTED", "OTHER"]
Probability = Annotated[float, Meta(gt=0.0, le=1.0)]


class Decision(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """A moderation decision (topic moderation.decisions)."""

    schema_version: SchemaVersion
    event_id: Id
    event_time: EventTime
    decision_id: Id
    policy_label: Label
    vendor_id: Short
    market: Market
    action: Action
    actor_type: ActorType
    entity_type: EntityType
    entity_id: Id
    content_language: Annotated[str, Meta(max_length=16)] | None = None
    policy_version: Annotated[str, Meta(max_length=64)] | None = None
    category: Annotated[str, Meta(max_length=96)] | None = None
    queue_id: Annotated[str, Meta(max_length=64)] | None = None
    moderator_id: Annotated[str, Meta(max_length=128)] | None = None
    model_id: Annotated[str, Meta(max_length=64)] | None = None
    model_version: Annotated[str, Meta(max_length=64)] | None = None
    automated_decision: AutomatedDecision | None = None


class Verdict(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """A QA verdict on a sampled decision (topic qa.verdicts)."""

    schema_version: SchemaVersion
    event_id: Id
    event_time: EventTime
    verdict_id: Id
    decision_id: Id
    reviewer_id: Id
    verdict: VerdictValue
    error_type: ErrorType
    qa_tier: QaTier | None = None
    sampling_strategy: Annotated[str, Meta(max_length=64)] | None = None
    inclusion_probability: Probability | None = None
    expected_policy_label: Annotated[str, Meta(max_length=64)] | None = None
    error_severity: Severity | None = None
    supersedes_verdict_id: Annotated[str, Meta(max_length=128)] | None = None


class Appeal(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """An appeal outcome (topic appeal.outcomes)."""

    schema_version: SchemaVersion
    event_id: Id
    event_time: EventTime
    appeal_id: Id
    decision_id: Id
    outcome: AppealOutcomeValue
    filed_at: EventTime | None = None
    resolved_at: EventTime | None = None
    channel: Annotated[str, Meta(max_length=64)] | None = None
    reversal_action: ReversalAction | None = None


UpstreamEvent = Decision | Verdict | Appeal

EVENT_TYPES: dict[str, type[Decision] | type[Verdict] | type[Appeal]] = {
    "decision": Decision,
    "verdict": Verdict,
    "appeal": Appeal,
}
