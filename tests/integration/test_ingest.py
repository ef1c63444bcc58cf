"""Ingest against the real broker: validation, dead-lettering with reasons, dedup, HTTP batches."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import orjson
import pytest

from services.common.auth import create_key
from services.common.db import make_engine
from services.common.migrate import ensure_schema
from services.contracts.batches import WireDecision, WireVerdict, decode_batch
from services.ingest.http import create_ingest_app
from services.ingest.service import IngestService
from tests.support import factories
from tests.support.kafkautil import consume_all, produce
from tests.support.pipeline_util import ingest_settings as settings

pytestmark = pytest.mark.integration


async def run_for(service: IngestService, seconds: float) -> None:
    task = asyncio.create_task(service.run())
    await asyncio.sleep(seconds)
    await service.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_bad_records_go_to_the_dead_letter_topic_and_good_ones_pass_once(service_env: dict[str, str]) -> None:
    s = settings(service_env)
    service = IngestService(s)
    await service.start()
    good = [factories.decision(f"g{i}") for i in range(50)]
    verdicts = [factories.verdict(f"g{i}", error=i % 5 == 0) for i in range(50)]
    bad = [
        (s.topic_decisions, b"{broken"),
        (s.topic_decisions, orjson.dumps({**factories.decision("b1"), "action": "NUKE"})),
        (s.topic_verdicts, orjson.dumps({**factories.verdict("b2"), "schema_version": 9})),
        (s.topic_appeals, b"x" * (s.max_record_bytes + 1)),
        (s.topic_verdicts, b"\xff\xfe\xfd"),
    ]
    records: list[tuple[str, bytes | None, bytes]] = []
    for i, d in enumerate(good):
        records.append((s.topic_decisions, None, orjson.dumps(d)))
        records.append((s.topic_verdicts, None, orjson.dumps(verdicts[i])))
        if i < len(bad):
            records.append((bad[i][0], b"k", bad[i][1]))
    records += [(s.topic_decisions, None, orjson.dumps(d)) for d in good[:10]]  # redelivered
    await produce(s.kafka_bootstrap_servers, records)
    # A verdict a day behind the verdicts already seen: late (beyond the 6 h grace), however valid.
    late = orjson.dumps(factories.verdict("g1", event_time=factories.ts(-86_400)))
    task = asyncio.create_task(service.run())
    await asyncio.sleep(4)
    await produce(s.kafka_bootstrap_servers, [(s.topic_verdicts, None, late)])
    await asyncio.sleep(2)
    await service.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    bad.append((s.topic_verdicts, late))

    batches = await consume_all(s.kafka_bootstrap_servers, s.topic_events, 1)
    events = [ev for rec in batches for ev in decode_batch(rec.value)]
    assert Counter(type(e) for e in events) == {WireDecision: 50, WireVerdict: 50}
    assert len({e.event_id for e in events}) == 100

    dead = await consume_all(s.kafka_bootstrap_servers, s.topic_deadletter, len(bad))
    reasons = sorted(dict(r.headers)["modq.reason"].decode() for r in dead)
    assert reasons == sorted(
        ["invalid_json", "schema", "unsupported_schema_version", "oversized", "invalid_json", "late"]
    )
    assert {r.value for r in dead} == {b for _, b in bad}  # original bytes kept
    assert all(dict(r.headers)["modq.detail"] for r in dead)
    assert (
        service.metrics.registry.get_sample_value(
            "modq_ingest_events_total", {"type": "decision", "outcome": "duplicate"}
        )
        == 10
    )
    assert (
        service.metrics.registry.get_sample_value(
            "modq_ingest_deadletters_total", {"type": "verdict", "reason": "late"}
        )
        == 1
    )


async def test_http_batch_accepts_valid_events_and_reports_invalid_ones(
    service_env: dict[str, str], database_url: str
) -> None:
    s = settings(
        {
            **service_env,
            "MODQ_DATABASE_URL": database_url,
            "MODQ_INGEST_RATE_LIMIT_BURST": "8",
            "MODQ_INGEST_RATE_LIMIT_RPS": "1",
        }
    )
    engine = make_engine(database_url)
    await ensure_schema(engine, auto_migrate=True)
    _, key = await create_key(engine, "listing-service", "publisher")
    _, operator_key = await create_key(engine, "pm", "operator")
    await engine.dispose()
    service = IngestService(s)
    await service.start()
    try:
        app = create_ingest_app(service)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ingest", headers=headers
        ) as client:
            one = [factories.decision("h0")]
            assert (
                await client.post("/v1/events/decisions", json=one, headers={"Authorization": ""})
            ).status_code == 401
            forged = {"Authorization": f"Bearer {key[:-2]}xx"}
            assert (await client.post("/v1/events/decisions", json=one, headers=forged)).status_code == 401
            wrong_role = {"Authorization": f"Bearer {operator_key}"}
            assert (await client.post("/v1/events/decisions", json=one, headers=wrong_role)).status_code == 403
            huge = b"[" + b" " * s.ingest_http_max_body_bytes + b"]"
            assert (await client.post("/v1/events/decisions", content=huge)).status_code == 413

            body = [factories.decision("h1"), {**factories.decision("h2"), "market": None}, factories.decision("h3")]
            resp = await client.post("/v1/events/decisions", json=body)
            assert resp.status_code == 200
            result = resp.json()
            assert result["accepted"] == 2
            assert [(r["index"], r["reason"]) for r in result["rejected"]] == [(1, "schema")]
            assert "market" in result["rejected"][0]["detail"]
            assert (await client.post("/v1/events/decisions", content=b"{")).status_code == 400
            assert (await client.post("/v1/events/decisions", json={"a": 1})).status_code == 400
            assert (await client.post("/v1/events/nope", json=[])).status_code == 422
            # Past the burst of 8 (at 1 request/s) the key is held back, with a hint when to retry.
            answers = [await client.post("/v1/events/decisions", json=[]) for _ in range(8)]
            limited = [a for a in answers if a.status_code == 429]
            assert limited and all(a.status_code in (200, 429) for a in answers)
            assert int(limited[0].headers["retry-after"]) >= 1
    finally:
        await service.stop()
    # The valid events go straight onto the scorer's topic (validated once), not back upstream.
    batches = await consume_all(s.kafka_bootstrap_servers, s.topic_events, 1)
    assert sorted(ev.decision_id for r in batches for ev in decode_batch(r.value)) == ["h1", "h3"]
    assert await consume_all(s.kafka_bootstrap_servers, s.topic_decisions, 1, timeout=3) == []
