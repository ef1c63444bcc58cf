"""What people do to alerts (acknowledge, silence, comment, resolve, re-baseline), as events.

The API publishes each action on ``modq.alert-actions`` (schemas/alert-action.v1.json) before it
applies it to the database; the notifier applies the same action again (idempotently, keyed by
``action_id``) and tells the receivers. The topic is the log, the database a view of it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

ActionKind = Literal["acknowledged", "silenced", "commented", "resolved", "rebaselined"]
ACTION_KINDS: tuple[str, ...] = ("acknowledged", "silenced", "commented", "resolved", "rebaselined")


class AlertAction(msgspec.Struct, kw_only=True):
    """One action by a person on an alert or on a (policy_label, vendor_id) pair."""

    schema_version: int = 1
    action_id: str
    action: ActionKind
    alert_id: str | None = None
    policy_label: str
    vendor_id: str
    rule: str | None = None
    actor: str
    key_id: str | None = None
    at: str
    until: str | None = None
    comment: str | None = None
    detail: str = ""


def now_iso() -> str:
    return datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")


def new_action(**fields: object) -> AlertAction:
    """An action with a fresh id, stamped now (fields as in AlertAction)."""
    return AlertAction(action_id=str(uuid.uuid4()), at=now_iso(), **fields)  # type: ignore[arg-type]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AlertAction)


def encode_action(action: AlertAction) -> bytes:
    return _encoder.encode(action)


def decode_action(data: bytes) -> AlertAction:
    return _decoder.decode(data)
