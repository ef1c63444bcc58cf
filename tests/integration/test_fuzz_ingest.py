"""Ten thousand malformed records through Kafka and through HTTP, around valid events.

Every malformed record lands on the dead-letter topic with a known reason (Kafka) or in the
4xx answer (HTTP); the valid events around them are counted exactly; ingest keeps running.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import orjson
import pytest

from services.common.auth import create_key
from services.common.config import IngestSettings
from services.common.db import make_engine
from services.common.migrate import ensure_schema
from services.contracts.batches import decode_batch
from services.ingest.http import create_ingest_app
from services.ingest.service import IngestService
from services.ingest.validate import REASONS, Rejected, validate_record
from tests.support import factories
from tests.support.kafkautil import consume_all, produce
from tests.support.malformed import malformed_batch
from tests.support.pipeline_util import ingest_settings as settings

pytestmark = pytest.mark.integration


def rejected_by_validation(kind: str, raw: bytes, s: IngestSettings) -> bool:
    limits = {"now_ms": int(time.time() * 1000), "max_bytes": s.max_record_bytes, "max_future_skew_ms": 300_000}
    return isinstance(validate_record(kind, raw, **limits), Rejected)


def too_deep(raw: bytes) -> bool:
    try:
        orjson.dumps(orjson.loads(raw))
    except TypeError:
        return True
    return False


async def test_ten_thousand_malformed_records_via_kafka(service_env: dict[str, str]) -> None:
    s = settings(service_env)
    bad = {"decision": malformed_batch("decision", 5_600, seed=1), "verdict": malformed_batch("verdict", 5_600, seed=2)}
    topic = {"decision": s.topic_decisions, "verdict": s.topic_verdicts}
    good = [factories.decision(f"ok{i}") for i in range(500)] + [factories.verdict(f"ok{i}") for i in range(500)]
    records: list[tuple[str, bytes | None, bytes]] = []
    for i in range(5_600):
        for kind in ("decision", "verdict"):
            records.append((topic[kind], None, bad[kind][i]))
        if i % 5 == 0 and i // 5 < 500:
            records.append((s.topic_decisions, None, orjson.dumps(good[i // 5])))
            records.append((s.topic_verdicts, None, orjson.dumps(good[500 + i // 5])))
    await produce(s.kafka_bootstrap_servers, records)

    # What the validation says of each malformed record (a mutation can leave a record valid).
    still_valid = {
        orjson.loads(raw)["event_id"]
        for kind, raws in bad.items()
        for raw in raws
        if not rejected_by_validation(kind, raw, s)
    }
    expected_dead = sum(len(raws) for raws in bad.values()) - len(still_valid)
    assert expected_dead >= 10_000

    service = IngestService(s)
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        dead = await consume_all(s.kafka_bootstrap_servers, s.topic_deadletter, expected_dead, timeout=120)
        assert not task.done(), task
        batches = await consume_all(s.kafka_bootstrap_servers, s.topic_events, 1, timeout=60)
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert len(dead) == expected_dead
    reasons = Counter(dict(r.headers)["modq.reason"].decode() for r in dead)
    assert set(reasons) <= set(REASONS) and {"invalid_json", "schema", "oversized", "future_event_time"} <= set(reasons)
    events = Counter(ev.event_id for rec in batches for ev in decode_batch(rec.value))
    assert all(n == 1 for n in events.values())
    assert set(events) == {g["event_id"] for g in good} | still_valid


async def test_ten_thousand_malformed_items_and_junk_bodies_via_http(
    service_env: dict[str, str], database_url: str
) -> None:
    s = settings({**service_env, "MODQ_DATABASE_URL": database_url, "MODQ_INGEST_RATE_LIMIT_RPS": "1000"})
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    _, key = await create_key(engine, "fuzzer", "publisher")
    await engine.dispose()
    service = IngestService(s)
    await service.start()
    items: list[bytes] = []  # the raw bytes of every malformed record that is JSON at all
    for raw in malformed_batch("verdict", 14_000, seed=3):
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        items.append(raw)
    good = [factories.verdict(f"http{i}") for i in range(300)]
    malformed_items = accepted = 0
    sent_good: list[str] = []
    accepted_ids: set[str] = set()
    try:
        app = create_ingest_app(service)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://ingest",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as client:
            for start in range(0, len(items), 1_000):
                valid = good[start // 1_000 * 20 : start // 1_000 * 20 + 20]
                sent_good += [g["event_id"] for g in valid]
                chunk = items[start : start + 1_000] + [orjson.dumps(g) for g in valid]
                resp = await client.post("/v1/events/verdicts", content=b"[" + b",".join(chunk) + b"]")
                assert resp.status_code == 200, resp.text[:500]
                result = resp.json()
                bad_index = {r["index"] for r in result["rejected"]}
                assert all(r["reason"] in REASONS and r["detail"] for r in result["rejected"])
                for i, raw in enumerate(chunk):
                    assert (i in bad_index) == (too_deep(raw) or rejected_by_validation("verdict", raw, s)), (i, raw)
                    if i not in bad_index:
                        accepted_ids.add(orjson.loads(raw)["event_id"])
                malformed_items += len(bad_index)
                accepted += result["accepted"]
            junk = [b"", b"{", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"a": 1}', b"null", b"[1, 2", b'"x"']
            for body in junk * 13:
                resp = await client.post("/v1/events/verdicts", content=body)
                assert 400 <= resp.status_code < 500 and resp.json()["detail"], (body[:20], resp.status_code)
                malformed_items += 1
    finally:
        await service.stop()
    assert malformed_items >= 10_000
    # Accepted items go straight onto the scorer's topic, each event id once (a repeated id is a
    # redelivery), and nothing else does.
    assert accepted >= len(accepted_ids) >= len(sent_good) >= 200
    batches = await consume_all(s.kafka_bootstrap_servers, s.topic_events, 1, timeout=60)
    appended = [ev.event_id for r in batches for ev in decode_batch(r.value)]
    assert len(appended) == len(accepted_ids) and set(appended) == accepted_ids
    assert set(sent_good) <= accepted_ids
