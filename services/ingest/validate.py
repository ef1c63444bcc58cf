"""Validation of upstream records against the event schemas. Pure, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgspec

from services.contracts.batches import to_ms
from services.contracts.events import EVENT_TYPES, LABEL_FIELDS, Appeal, Decision, Verdict

REASONS: Final = (
    "oversized",
    "invalid_json",
    "schema",
    "unsupported_schema_version",
    "future_event_time",
    "inconsistent",
    "unknown_topic",
    "late",
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
    result = validate_timed(kind, raw, now_ms=now_ms, max_bytes=max_bytes, max_future_skew_ms=max_future_skew_ms)
    return result if isinstance(result, Rejected) else result[0]


def validate_timed(
    kind: str, raw: bytes, *, now_ms: int, max_bytes: int, max_future_skew_ms: int
) -> tuple[Decision | Verdict | Appeal, int] | Rejected:
    """``validate_record``, returning the event with its event time in epoch milliseconds
    (converted once: the conversion was a tenth of ingest's time when done three times)."""
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
    except RecursionError:  # msgspec's guard against deeply nested input (found by the fuzz test)
        return Rejected("invalid_json", "JSON nested too deeply")
    except UnicodeDecodeError as exc:  # invalid UTF-8 inside a string (found by the fuzz test)
        return Rejected("invalid_json", f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    t_ms = to_ms(event)
    if t_ms > now_ms + max_future_skew_ms:
        return Rejected("future_event_time", f"event_time {event.event_time.isoformat()} is in the future")
    if (
        isinstance(event, Verdict)
        and event.verdict != "UNABLE_TO_JUDGE"
        and (event.verdict == "CORRECT") != (event.error_type == "NONE")
    ):
        return Rejected("inconsistent", f"verdict {event.verdict} does not agree with error_type {event.error_type}")
    return event, t_ms


_NOT_TEXT = re.compile(r"Expected `str` matching regex '.*' - at `\$\.(\w+)`$", re.DOTALL)


def _is_wildcard(raw: bytes, field: str) -> bool:
    try:
        return bool(_version_probe.decode(raw).get(field) == "*")
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return False


def _schema_rejection(raw: bytes, message: str) -> Rejected:
    if (m := _NOT_TEXT.match(message)) is not None:  # msgspec names the whole pattern: say what it means
        field = m.group(1)
        if field in ("policy_label", "vendor_id") and _is_wildcard(raw, field):
            return Rejected(
                "schema",
                f'{field} must not be "*" (it stands for every vendor or label in a wider alert) - at `$.{field}`',
            )
        what = "an id" if field.endswith("_id") and field not in LABEL_FIELDS else "a label"
        return Rejected(
            "schema",
            f"{field} must be printable text ({what}: no control, zero-width or bidirectional-formatting characters"
            + ("" if what == "an id" else ", no leading or trailing whitespace")
            + f") - at `$.{field}`",
        )
    if "schema_version" in message:
        try:
            version = _version_probe.decode(raw).get("schema_version")
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            version = None
        if isinstance(version, int) and not isinstance(version, bool) and version != 1:
            return Rejected("unsupported_schema_version", f"schema_version {version} is not supported (1 is)")
    return Rejected("schema", message)


class Watermarks:
    """Per event type, the latest event time seen; events older than it by more than the grace are late.

    Measured on event time, not on the clock, so a replay of old data is not late as a whole;
    what is late is an event that falls behind its own stream by more than ``grace_ms``.

    >>> w = Watermarks(grace_ms=60_000)
    >>> w.observe("verdict", 1_000_000) is None
    True
    >>> w.observe("verdict", 1_000_000 - 30_000) is None  # within the grace
    True
    >>> w.observe("verdict", 1_000_000 - 61_000).reason
    'late'
    """

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms
        self.latest: dict[str, int] = {}

    def check(self, kind: str, t_ms: int) -> Rejected | None:
        latest = self.latest.get(kind)
        if latest is not None and t_ms < latest - self.grace_ms:
            behind = (latest - t_ms) / 1000
            return Rejected(
                "late",
                f"event_time is {behind:.0f} s behind the newest {kind} seen; the grace period is "
                f"{self.grace_ms / 1000:.0f} s (MODQ_LATE_GRACE_S)",
            )
        return None

    def observe(self, kind: str, t_ms: int) -> Rejected | None:
        """Check an event and advance the watermark with it when it is not late."""
        rejected = self.check(kind, t_ms)
        if rejected is None and t_ms > self.latest.get(kind, t_ms - 1):
            self.latest[kind] = t_ms
        return rejected
