"""Alert events on ``quality.alerts`` (schemas/alert.v1.json): the struct, its codec, the rule names
and the dedup key, for the detection stage that publishes them and the notifier and history that
read them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

AlertStatus = Literal["firing", "resolved"]
"""The statuses an alert event carries; ``acknowledged`` is a state of the record, set by people."""

RULE_ERROR_RATE = "error_rate"
RULE_OVER = "over_enforcement"
RULE_UNDER = "under_enforcement"
RULE_ERROR_TYPES: dict[str, str] = {
    RULE_ERROR_RATE: "ANY",
    RULE_OVER: "OVER_ENFORCEMENT",
    RULE_UNDER: "UNDER_ENFORCEMENT",
}
"""Each rule and the error type it watches (``ANY``: every error)."""
RULES = tuple(RULE_ERROR_TYPES)
"""The rules of a pair and of a wider scope."""
RULE_REVIEWER = "reviewer_disagreement"
"""A reviewer's rule: the share of their ratings that disagree with the reference (an audit by another
reviewer, or a golden item's answer); its alerts go to the QA lead, not to vendor on-call."""
REVIEWER_RULES = (RULE_REVIEWER,)


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
    historical: bool = False
    """Raised while catching up on history older than the paging horizon: recorded, not paged."""
    scope: str = "pair"
    """``pair``, ``policy_label`` (vendor_id ``*``: the label across its vendors) or ``vendor``
    (policy_label ``*``: the vendor across its labels)."""
    parent_alert_id: str | None = None
    """The firing wider-scope alert this one is linked to (and not paged on its own), or None."""
    baseline_source: str = ""
    """operator, learned, sla, or learning:<prior> (the prior a learning pair is held to)."""
    reviewer_id: str | None = None
    """The (pseudonymous) reviewer of a ``reviewer`` scope alert (policy_label and vendor_id ``*``)."""


def iso(t_ms: int) -> str:
    """Epoch milliseconds as the alert's RFC 3339 timestamp."""
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def dedup_key(rule: str, policy_label: str, vendor_id: str, *more: str) -> str:
    """``rule|policy_label|vendor_id``, each part with ``%`` and ``|`` percent-encoded, so a label that
    holds a ``|`` cannot make two pairs share a key (labels without them read as written). A
    reviewer's alert adds the reviewer: ``reviewer_disagreement|*|*|qa-07``.

    >>> dedup_key("error_rate", "SCAMS_AND_FRAUD", "V01")
    'error_rate|SCAMS_AND_FRAUD|V01'
    >>> dedup_key("error_rate", "a|b", "c"), dedup_key("error_rate", "a", "b|c")
    ('error_rate|a%7Cb|c', 'error_rate|a|b%7Cc')
    """
    return "|".join(part.replace("%", "%25").replace("|", "%7C") for part in (rule, policy_label, vendor_id, *more))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AlertEvent)


def encode_alert(change: AlertEvent) -> bytes:
    """An alert change as published on quality.alerts."""
    return _encoder.encode(change)


def decode_alert(payload: bytes) -> AlertEvent:
    return _decoder.decode(payload)
