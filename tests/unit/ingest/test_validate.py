"""Dead-letter reasons for bad input; valid input passes."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.validate import Rejected, validate_record
from tests.support import factories

NOW = 1_900_000_000_000


def check(kind: str, raw: bytes, max_bytes: int = 65536) -> object:
    return validate_record(kind, raw, now_ms=NOW, max_bytes=max_bytes, max_future_skew_ms=300_000)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1,2,3]", "schema"),
        (orjson.dumps({**factories.decision("d"), "action": "NUKE"}), "schema"),
        (orjson.dumps({k: v for k, v in factories.decision("d").items() if k != "vendor_id"}), "schema"),
        (orjson.dumps({**factories.decision("d"), "market": 7}), "schema"),
        (orjson.dumps({**factories.decision("d"), "schema_version": 2}), "unsupported_schema_version"),
        (orjson.dumps({**factories.decision("d"), "event_time": "2099-01-01T00:00:00Z"}), "future_event_time"),
        (orjson.dumps({**factories.decision("d"), "event_time": "2026-01-01T00:00:00"}), "schema"),
        (b"[" * 5000 + b"]" * 5000, "schema"),
    ],
)
def test_bad_decisions_are_rejected_with_a_reason(raw: bytes, reason: str) -> None:
    result = check("decision", raw)
    assert isinstance(result, Rejected) and result.reason == reason, result
    assert result.detail


def test_oversized_records_are_rejected_before_parsing() -> None:
    result = check("decision", orjson.dumps(factories.decision("d")), max_bytes=50)
    assert isinstance(result, Rejected) and result.reason == "oversized"


def test_verdict_must_agree_with_its_error_type() -> None:
    result = check("verdict", orjson.dumps(factories.verdict("d", error_type="UNDER_ENFORCEMENT")))
    assert isinstance(result, Rejected) and result.reason == "inconsistent"


def test_valid_events_pass_and_unknown_fields_are_ignored() -> None:
    for kind, doc in (
        ("decision", factories.decision("d")),
        ("verdict", factories.verdict("d")),
        ("appeal", factories.appeal("d")),
    ):
        assert not isinstance(check(kind, orjson.dumps({**doc, "x_extra": 1})), Rejected)
