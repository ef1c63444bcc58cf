"""Validation of upstream records against the event schemas. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from services.common.events import EVENT_TYPES, Appeal, Decision, Verdict
from services.common.wire import to_ms

REASONS: Final = (
    "oversized",
    "invalid_json",
    "schema",
    "unsupported_schema_version",
    "future_event_time",
    "inconsistent",
    "unknown_topic",
)

_decoders = {kind: msgspec.json.Decoder(tp) for kind, tp in EVENT_TYPES.items()}
_version_probe = msgspec.json.Decoder(dict[str, object])


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a record was refused; reason is a bounded label, detail a human-readable sentence."""

    reason: str
    detail: str


def validate_record(
    kind: str, raw: bytes, *, now_ms: int, max_bytes: int, max_future_skew_ms: int
) -> Decision | Verdict | Appeal | Rejected:
    """Decode and check one record of the given kind ("decision", "verdict", "appeal")."""
    if len(raw) > max_bytes:
        return Rejected("oversized", f"record is {len(raw)} bytes, the limit is {max_bytes}")
    decoder = _decoders.get(kind)
    if decoder is None:
        return Rejected("unknown_topic", f"no event type for {kind!r}")
    try:
        event: Decision | Verdict | Appeal = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _schema_rejection(raw, str(exc))
    except msgspec.DecodeError as exc:
        return Rejected("invalid_json", str(exc))
    if to_ms(event) > now_ms + max_future_skew_ms:
        return Rejected("future_event_time", f"event_time {event.event_time.isoformat()} is in the future")
    if (
        isinstance(event, Verdict)
        and event.verdict != "UNABLE_TO_JUDGE"
        and (event.verdict == "CORRECT") != (event.error_type == "NONE")
    ):
        return Rejected("inconsistent", f"verdict {event.verdict} does not agree with error_type {event.error_type}")
    return event


def _schema_rejection(raw: bytes, message: str) -> Rejected:
    if "schema_version" in message:
        try:
            version = _version_probe.decode(raw).get("schema_version")
        except msgspec.DecodeError:
            version = None
        if isinstance(version, int) and not isinstance(version, bool) and version != 1:
            return Rejected("unsupported_schema_version", f"schema_version {version} is not supported (1 is)")
    return Rejected("schema", message)
