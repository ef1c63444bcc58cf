"""Upstream event types as msgspec structs; schemas/*.json is the contract they must match."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# Not printable: C0 and C1 controls, DEL, zero-width and bidirectional formatting characters, line
# and paragraph separators, the byte-order mark. Kept out of every id and label: they break logs,
# terminals, CSV files and PostgreSQL (NUL), and make two labels that look alike differ.
NOT_PRINTABLE = "\\u0000-\\u001f\\u007f-\\u009f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff"
# The end of the text: "$" would also match before a final newline (Python's re, which msgspec and
# jsonschema use); a lookahead for any character means the same in Python and in JSON Schema's ECMA.
_END = "(?![\\s\\S])"
_LABEL = f"[^\\s{NOT_PRINTABLE}](?:[^{NOT_PRINTABLE}]*[^\\s{NOT_PRINTABLE}])?"
ID_PATTERN = f"^[^{NOT_PRINTABLE}]+{_END}"
OPTIONAL_ID_PATTERN = f"^[^{NOT_PRINTABLE}]*{_END}"
LABEL_PATTERN = f"^{_LABEL}{_END}"
"""A label in the platform's own spelling (``counterfeit_goods``, ``ip.trademark/counterfeit``,
``Hassrede (DE)``): any printable text, kept as written, without surrounding whitespace."""
OPTIONAL_LABEL_PATTERN = f"^(?:{_LABEL})?{_END}"
OWNER_PATTERN = f"^(?!\\*{_END}){_LABEL}{_END}"
"""A policy label or vendor id: a label other than ``*``, which stands for "every vendor" (or every
label) in the key of a wider-scope alert (``error_rate|SCAMS_AND_FRAUD|*``)."""
WILDCARD = "*"
LABEL_MAX = 128

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=ID_PATTERN)]
OptionalId = Annotated[str, Meta(max_length=128, pattern=OPTIONAL_ID_PATTERN)]
Label = Annotated[str, Meta(min_length=1, max_length=LABEL_MAX, pattern=LABEL_PATTERN)]
Owner = Annotated[str, Meta(min_length=1, max_length=LABEL_MAX, pattern=OWNER_PATTERN)]
OptionalLabel = Annotated[str, Meta(max_length=LABEL_MAX, pattern=OPTIONAL_LABEL_PATTERN)]
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
    policy_label: Owner
    vendor_id: Owner
    market: Label
    action: Action
    actor_type: ActorType
    entity_type: EntityType
    entity_id: Id
    content_language: OptionalLabel | None = None
    policy_version: OptionalLabel | None = None
    category: OptionalLabel | None = None
    queue_id: OptionalLabel | None = None
    moderator_id: OptionalId | None = None
    model_id: OptionalLabel | None = None
    model_version: OptionalLabel | None = None
    automated_decision: AutomatedDecision | None = None
    automated_detection: bool | None = None
    golden_answer: ErrorType | None = None


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
    sampling_strategy: OptionalLabel | None = None
    inclusion_probability: Probability | None = None
    expected_policy_label: OptionalLabel | None = None
    error_severity: Severity | None = None
    supersedes_verdict_id: OptionalId | None = None


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
    channel: OptionalLabel | None = None
    reversal_action: ReversalAction | None = None


UpstreamEvent = Decision | Verdict | Appeal

LABEL_FIELDS = frozenset(
    name
    for tp in (Decision, Verdict, Appeal)
    for name, hint in tp.__annotations__.items()
    if hint in ("Label", "Owner", "OptionalLabel | None")
)
"""Fields in the platform's own vocabulary (policy_label, vendor_id, market, queue_id, ...)."""

EVENT_TYPES: dict[str, type[Decision] | type[Verdict] | type[Appeal]] = {
    "decision": Decision,
    "verdict": Verdict,
    "appeal": Appeal,
}
