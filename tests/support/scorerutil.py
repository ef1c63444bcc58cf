"""Helpers for tests of the scorer on its own input: the events topic, the database's counts and alerts."""

from __future__ import annotations

import asyncio

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from services.common.config import ScorerSettings
from services.common.db import make_engine
from services.common.kafka import ensure_topics
from tests.support.pipeline_util import Mismatch
from tests.support.processes import eventually
from tests.support.streams import DRIFT_PAIR, Key, Stream


async def put_on_events_topic(env: dict[str, str], stream: Stream) -> int:
    """Write the stream to modq.events as ingest would (batches co-partitioned by decision_id)."""
    partitions = int(env["MODQ_PARTITIONS"])
    settings = ScorerSettings(kafka_bootstrap_servers=env["MODQ_KAFKA_BOOTSTRAP_SERVERS"])
    await ensure_topics(settings, {env["MODQ_TOPIC_EVENTS"]: partitions})
    producer = AIOKafkaProducer(
        bootstrap_servers=env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], acks="all", linger_ms=5, max_request_size=4_194_304
    )
    await producer.start()
    try:
        batches = stream.batches(partitions)
        futures = [await producer.send(env["MODQ_TOPIC_EVENTS"], payload, partition=p) for p, payload in batches]
        await asyncio.gather(*futures)
        return len(batches)
    finally:
        await producer.stop()


async def counts(database_url: str) -> dict[Key, list[int]]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT policy_label, vendor_id, bucket_start, sum(decisions), sum(verdicts), sum(errors),"
                    " sum(appeals) FROM rate_buckets GROUP BY 1, 2, 3"
                )
            )
            return {
                (r[0], r[1], int(r[2].timestamp() * 1000)): [int(r[3]), int(r[4]), int(r[5]), int(r[6])]
                for r in rows
                if any(r[3:])
            }
    except Exception:  # schema not there yet
        return {}
    finally:
        await engine.dispose()


async def alert_rows(database_url: str) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            alerts = [
                tuple(r)
                for r in await conn.execute(text("SELECT alert_id, policy_label, vendor_id, rule, status FROM alerts"))
            ]
            history = [tuple(r) for r in await conn.execute(text("SELECT alert_id, action FROM alert_history"))]
            return alerts, history
    finally:
        await engine.dispose()


async def scorer_metric(port: str, name: str = "modq_scorer_events_total") -> float:
    try:
        async with httpx.AsyncClient() as web:
            text_ = (await web.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text_.splitlines() if ln.startswith(name))


async def exact(database_url: str, truth: dict[Key, list[int]]) -> object:
    got = await counts(database_url)
    if got == truth:
        return True
    wrong = {k: (got.get(k), v) for k, v in truth.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in truth}
    return Mismatch(wrong=dict(list(wrong.items())[:5]), n_wrong=len(wrong), extra=dict(list(extra.items())[:5]))


async def assert_one_alert_for_the_drifting_pair(database_url: str) -> None:
    async def some_alert() -> bool:
        return bool((await alert_rows(database_url))[0])

    await eventually(some_alert, 60)
    await asyncio.sleep(3.0)  # anything raised twice would be recorded by now
    alerts, history = await alert_rows(database_url)
    assert [(a[1], a[2], a[3], a[4]) for a in alerts] == [(*DRIFT_PAIR, "error_rate", "firing")], alerts
    assert sorted(history) == [(alerts[0][0], "fired")]
