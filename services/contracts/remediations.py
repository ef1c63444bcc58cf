"""Remediation events on ``quality.remediations`` (schemas/remediation.v1.json): one per finding that a
decision was wrong, for upstream systems to revoke penalties, reinstate listings or enforce.

A finding is a QA verdict INCORRECT (the decision's current primary verdict) or an appeal
OVERTURNED or PARTIALLY_OVERTURNED. Its ``remediation_id`` is a UUID5 of the finding's kind, the
decision and the verdict or appeal, so every replay names it the same. A finding opens once (status
``open``); a QA finding is ``retracted`` when a superseding verdict replaces its verdict (the new
verdict, if INCORRECT, is a finding of its own).
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec

REMEDIATION_NAMESPACE = uuid.UUID("0c3f5a8e-52d4-4b8e-9c61-2f6a7e1d9b40")
RECOMMENDATIONS = ("REVOKE_PENALTY", "REINSTATE", "ENFORCE", "RELABEL", "ADJUST_ACTION")
REMOVING = frozenset({"REMOVE", "DISABLE"})
"""Actions that take content down: undone by reinstating it (others, such as SUSPEND_SELLER,
DEMOTE or AGE_RESTRICT, are penalties to revoke)."""

Status = Literal["open", "retracted"]
Finding = Literal["qa", "appeal"]


class Evidence(msgspec.Struct):
    verdict_ids: list[str] = []
    appeal_ids: list[str] = []


class Remediation(msgspec.Struct, kw_only=True):
    schema_version: int = 1
    remediation_id: str
    decision_id: str
    entity_type: str
    entity_id: str
    policy_label: str
    vendor_id: str
    market: str
    action: str
    error_type: str
    recommendation: str
    evidence: Evidence
    status: Status
    finding: Finding
    decided_at: str
    found_at: str


def remediation_id(finding: str, decision_id: str, evidence_id: str) -> str:
    return str(uuid.uuid5(REMEDIATION_NAMESPACE, f"{finding}|{decision_id}|{evidence_id}"))


def recommend(error_type: str, action: str) -> str:
    """What to do about a wrong decision, from the error and the original action.

    >>> recommend("OVER_ENFORCEMENT", "REMOVE"), recommend("OVER_ENFORCEMENT", "SUSPEND_SELLER")
    ('REINSTATE', 'REVOKE_PENALTY')
    >>> recommend("UNDER_ENFORCEMENT", "APPROVE"), recommend("WRONG_LABEL", "REMOVE")
    ('ENFORCE', 'RELABEL')
    """
    if error_type == "OVER_ENFORCEMENT":
        if action == "APPROVE":
            return "ADJUST_ACTION"
        return "REINSTATE" if action in REMOVING else "REVOKE_PENALTY"
    if error_type == "UNDER_ENFORCEMENT":
        return "ENFORCE"
    if error_type == "WRONG_LABEL":
        return "RELABEL"
    return "ADJUST_ACTION"


APPEAL_ERROR_TYPES = {"OVERTURNED": "OVER_ENFORCEMENT", "PARTIALLY_OVERTURNED": "WRONG_ACTION"}
"""The error an overturning appeal shows: the penalty should not have been (fully) applied."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Remediation)


def encode_remediation(r: Remediation) -> bytes:
    return _encoder.encode(r)


def decode_remediation(payload: bytes) -> Remediation:
    return _decoder.decode(payload)
