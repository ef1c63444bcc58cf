"""schemas/*.json is the contract; the msgspec structs must agree with it field by field."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import msgspec
import pytest

from services.contracts.events import LABEL_FIELDS, Appeal, Decision, Verdict
from services.ingest.validate import Rejected, validate_record
from tests.support import factories

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
CASES = [
    ("decision", Decision, "decision.v1.json"),
    ("verdict", Verdict, "verdict.v1.json"),
    ("appeal", Appeal, "appeal.v1.json"),
]
NOW_MS = 1_900_000_000_000


def _load(name: str) -> dict[str, typing.Any]:
    return json.loads((SCHEMAS / name).read_text())


def _enum(prop: dict[str, typing.Any]) -> set[str] | None:
    if "enum" in prop:
        return {e for e in prop["enum"] if e is not None}
    return None


def _struct_enums(tp: type) -> dict[str, set[str]]:
    """Enum values per field, read from the Literal annotations of the struct."""
    out: dict[str, set[str]] = {}
    hints = typing.get_type_hints(tp, include_extras=True)
    for name, hint in hints.items():
        args = (
            typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)
            else (hint,)
        )
        for arg in args:
            if typing.get_origin(arg) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(arg)):
                out[name] = set(typing.get_args(arg))
    return out


@pytest.mark.parametrize(("kind", "tp", "schema_file"), CASES)
def test_fields_required_and_enums_agree(kind: str, tp: type[msgspec.Struct], schema_file: str) -> None:
    schema = _load(schema_file)
    info = msgspec.inspect.type_info(tp)
    assert isinstance(info, msgspec.inspect.StructType)
    assert {f.name for f in info.fields} == set(schema["properties"])
    assert {f.name for f in info.fields if f.required} == set(schema["required"])
    schema_enums = {k: e for k, p in schema["properties"].items() if (e := _enum(p)) is not None}
    assert _struct_enums(tp) == schema_enums


@pytest.mark.parametrize(("kind", "tp", "schema_file"), CASES)
def test_length_limits_agree(kind: str, tp: type[msgspec.Struct], schema_file: str) -> None:
    schema = _load(schema_file)
    info = msgspec.inspect.type_info(tp)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        prop = schema["properties"][f.name]
        types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        strings = [t for t in types if isinstance(t, msgspec.inspect.StrType)]
        if strings:
            assert strings[0].max_length == prop.get("maxLength"), f.name
            assert (strings[0].min_length or None) == prop.get("minLength"), f.name


def _samples(kind: str) -> list[dict[str, typing.Any]]:
    optional = {
        "decision": {
            "queue_id": "q1",
            "model_version": "m-3",
            "automated_decision": "PARTIALLY",
            "content_language": "de",
        },
        "verdict": {
            "inclusion_probability": 0.25,
            "error_severity": "MAJOR",
            "qa_tier": "GOLDEN",
            "supersedes_verdict_id": "v0",
        },
        "appeal": {"filed_at": factories.ts(10), "reversal_action": "REINSTATED", "channel": "app"},
    }[kind]
    make = {"decision": factories.decision, "verdict": factories.verdict, "appeal": factories.appeal}[kind]
    good = {**make("d1"), **optional}
    bad: list[dict[str, typing.Any]] = []
    for field in list(good):
        missing = dict(good)
        del missing[field]
        bad.append(missing)
        for wrong in (None, 12345, 0.5, 2.0, True, "NOT_AN_ENUM_VALUE", "", "x" * 200, [], {}, *NOT_TEXT):
            mutated = dict(good)
            mutated[field] = wrong
            bad.append(mutated)
    spelled = [{**good, **{f: label for f in good if f in LABEL_FIELDS}} for label in PLATFORM_LABELS]
    return [good, *spelled, *bad]


PLATFORM_LABELS = (
    "counterfeit_goods",
    "ip.trademark/counterfeit",
    "a|b%2F c",
    "Hassrede (DE) §130",
    "偽造品",
    "x" * 128,
)
"""Labels as platforms write them: kept as written, whatever their case and punctuation."""
NOT_TEXT = (" padded", "padded ", "tab\there", "newline\n", "nul\x00", "zero\u200bwidth", "\u202eevil", "x" * 129)
"""Not a label: control or formatting characters, surrounding whitespace, too long."""


@pytest.mark.parametrize(("kind", "tp", "schema_file"), CASES)
def test_schema_and_code_accept_and_reject_the_same_documents(kind: str, tp: type, schema_file: str) -> None:
    validator = jsonschema.Draft202012Validator(_load(schema_file), format_checker=jsonschema.FormatChecker())
    for doc in _samples(kind):
        by_schema = validator.is_valid(doc)
        result = validate_record(kind, json.dumps(doc).encode(), now_ms=NOW_MS, max_bytes=65536, max_future_skew_ms=0)
        by_code = not isinstance(result, Rejected) or result.reason == "inconsistent"
        assert by_schema == by_code, (doc, result)


def test_alert_events_validate_against_the_published_schema() -> None:
    import random

    from services.contracts.alerts import AlertEvent
    from services.domain.monitor import MonitorPolicy, PairMonitor

    m = PairMonitor("error_rate", "SCAMS_AND_FRAUD", "V01", MonitorPolicy(baseline_mode="sla", arl0=10_000))
    rng = random.Random(4)
    events: list[AlertEvent] = []
    for i in range(4000):
        if (ev := m.update(rng.random() < (0.2 if i < 2000 else 0.01), i * 1000)) is not None:
            events.append(ev)
    assert [e.status for e in events] == ["firing", "resolved"]
    validator = jsonschema.Draft202012Validator(_load("alert.v1.json"), format_checker=jsonschema.FormatChecker())
    for ev in events:
        validator.validate(json.loads(msgspec.json.encode(ev)))


def test_alert_actions_agree_with_their_published_schema() -> None:
    from services.contracts.actions import ACTION_KINDS, AlertAction, encode_action, new_action

    schema = _load("alert-action.v1.json")
    assert set(schema["properties"]) == set(AlertAction.__struct_fields__)
    assert set(schema["properties"]["action"]["enum"]) == set(ACTION_KINDS) == _struct_enums(AlertAction)["action"]
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for kind in ACTION_KINDS:
        action = new_action(action=kind, alert_id="a-1", policy_label="L", vendor_id="V", actor="pm", comment="c")
        validator.validate(json.loads(encode_action(action)))
    bad = json.loads(encode_action(new_action(action="commented", policy_label="L", vendor_id="V", actor="p")))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**bad, "action": "deleted"})


def test_label_fields_are_the_platforms_vocabulary() -> None:
    assert {
        "policy_label", "vendor_id", "market", "content_language", "policy_version", "category", "queue_id",
        "model_id", "model_version", "sampling_strategy", "expected_policy_label", "channel",
    } == LABEL_FIELDS  # fmt: skip


@pytest.mark.parametrize("label", PLATFORM_LABELS)
def test_labels_are_kept_as_written(label: str) -> None:
    doc = factories.decision("d1", policy_label=label, vendor_id=label, market=label)
    result = validate_record("decision", json.dumps(doc).encode(), now_ms=NOW_MS, max_bytes=65536, max_future_skew_ms=0)
    assert isinstance(result, Decision)
    assert (result.policy_label, result.vendor_id, result.market) == (label, label, label)


@pytest.mark.parametrize("label", NOT_TEXT)
def test_a_label_that_is_not_printable_text_is_refused_with_a_clear_reason(label: str) -> None:
    doc = factories.decision("d1", policy_label=label)
    result = validate_record("decision", json.dumps(doc).encode(), now_ms=NOW_MS, max_bytes=65536, max_future_skew_ms=0)
    assert isinstance(result, Rejected) and result.reason == "schema"
    assert "policy_label" in result.detail
    assert "regex" not in result.detail  # the reason in words, not the pattern
