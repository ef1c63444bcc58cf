"""Malformed upstream records, as hypothesis strategies and as a seeded generator of many at once.

Kinds: not JSON, invalid UTF-8, wrong types, unknown enum values, missing fields, huge strings,
deep nesting, timestamps far in the future, unsupported schema versions, contradictory verdicts.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import strategies as st

from tests.support import factories

ENUM_FIELDS = {"decision": ("action", "actor_type", "entity_type"), "verdict": ("verdict", "error_type")}
JSON_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, 2**64 - 1]


def valid(kind: str, n: int) -> dict[str, Any]:
    return factories.decision(f"z{n}") if kind == "decision" else factories.verdict(f"z{n}", error=n % 3 == 0)


def _mutate(kind: str, doc: dict[str, Any], how: str, rnd: random.Random) -> bytes:
    field = rnd.choice(sorted(doc))
    if how == "wrong_type":
        doc[field] = rnd.choice([v for v in JSON_VALUES if not isinstance(v, type(doc[field]))])
    elif how == "unknown_enum":
        doc[rnd.choice(ENUM_FIELDS[kind])] = rnd.choice(["NUKE", "correct", "", "NONE ", "🙂"])
    elif how == "missing":
        del doc[rnd.choice(["event_id", "event_time", "decision_id", "schema_version"])]
    elif how == "huge":
        doc[rnd.choice(["event_id", "decision_id", "vendor_id" if kind == "decision" else "reviewer_id"])] = "x" * (
            rnd.choice([1_000, 70_000])
        )
    elif how == "deep":
        depth = rnd.choice([50, 600, 5_000])
        return orjson.dumps(doc)[:-1] + b',"nested":' + b"[" * depth + b"]" * depth + b"}"
    elif how == "future":
        doc["event_time"] = rnd.choice(["2099-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
    elif how == "version":
        doc["schema_version"] = rnd.choice([0, 2, 99, "1", None])
    elif how == "contradiction" and kind == "verdict":
        doc["verdict"], doc["error_type"] = "CORRECT", "OVER_ENFORCEMENT"
    elif how == "bad_time":
        doc["event_time"] = rnd.choice(["yesterday", "2026-13-45T00:00:00Z", "2026-11-01T12:00:00", 1700000000])
    else:
        doc["event_time"] = "2026-02-30T00:00:00Z"
    return orjson.dumps(doc)


HOWS = ("wrong_type", "unknown_enum", "missing", "huge", "deep", "future", "version", "contradiction", "bad_time")


def malformed_batch(kind: str, count: int, seed: int) -> list[bytes]:
    """count malformed records of a kind, every category represented, reproducible by seed."""
    rnd = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        choice = i % (len(HOWS) + 3)
        if choice == len(HOWS):
            out.append(rnd.choice([b"", b"{", b"null", b"[]", b"42", b'"x"', b"{'a': 1}", b"\x00\x01"]))
        elif choice == len(HOWS) + 1:
            out.append(orjson.dumps(valid(kind, i))[:-3] + b'\xff\xfe"}')  # invalid UTF-8
        elif choice == len(HOWS) + 2:
            out.append(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
        else:
            out.append(_mutate(kind, valid(kind, i), HOWS[choice], rnd))
    return out


@st.composite
def malformed(draw: st.DrawFn, kind: str = "decision") -> bytes:
    """One malformed record; hypothesis explores the mutations and shrinks failures."""
    how = draw(st.sampled_from([*HOWS, "binary", "text"]))
    if how == "binary":
        return draw(st.binary(max_size=200))
    if how == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    return _mutate(kind, valid(kind, draw(st.integers(0, 10**6))), how, random.Random(draw(st.integers())))
