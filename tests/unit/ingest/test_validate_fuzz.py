"""Property: whatever bytes arrive, validation answers (an event or a reason) and never raises."""

from __future__ import annotations

import jsonschema
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts.events import Decision, Verdict
from services.ingest.validate import REASONS, Rejected, validate_record
from tests.support import factories
from tests.support.malformed import malformed

NOW = 1_795_000_000_000
LIMITS = {"now_ms": NOW, "max_bytes": 65_536, "max_future_skew_ms": 300_000}


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(kind=st.sampled_from(["decision", "verdict"]), data=st.data())
def test_malformed_records_are_rejected_with_a_known_reason(kind: str, data: st.DataObject) -> None:
    raw = data.draw(malformed(kind))
    result = validate_record(kind, raw, **LIMITS)
    if isinstance(result, Rejected):
        assert result.reason in REASONS and result.detail
    else:  # a mutation can leave a valid record (e.g. a wrong type in an optional field that is nullable)
        assert isinstance(result, Decision | Verdict)


LEAF = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=30)
VERDICT_FIELDS = [*factories.verdict("x"), "supersedes_verdict_id", "inclusion_probability", "extra"]


@settings(max_examples=2_000, deadline=None)
@given(doc=st.dictionaries(st.sampled_from(VERDICT_FIELDS), LEAF | st.lists(LEAF, max_size=3), max_size=12))
def test_any_json_object_with_verdict_fields_never_crashes_validation(doc: dict[str, object]) -> None:
    result = validate_record("verdict", orjson.dumps(doc), **LIMITS)
    assert isinstance(result, Rejected | Verdict)
    if isinstance(result, Rejected):
        assert result.reason in REASONS


def test_schema_rejections_agree_with_the_json_schema_on_a_sample() -> None:
    from pathlib import Path

    schema = orjson.loads((Path(__file__).resolve().parents[3] / "schemas" / "decision.v1.json").read_bytes())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    from tests.support.malformed import malformed_batch

    for raw in malformed_batch("decision", 300, seed=5):
        result = validate_record("decision", raw, **LIMITS)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            assert isinstance(result, Rejected)
            continue
        if isinstance(result, Rejected) and result.reason == "schema":
            assert not validator.is_valid(doc), raw[:200]
