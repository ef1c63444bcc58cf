"""Counts and alerts are exact whatever happens to the scorer's input or process.

- kill -9 (or SIGTERM) of the scorer in the middle of a 200k-event stream, then a restart;
- the same stream with every event delivered twice and shuffled within a few minutes.
Both end with the counts per (policy_label, vendor_id, one-minute bucket) equal to the ground
truth, and with exactly the alert the drifting pair should raise, recorded once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from services.common.config import ScorerSettings
from services.common.db import make_engine
from services.common.kafka import ensure_topics
from tests.conftest import Service, eventually
from tests.pipeline_util import Mismatch
from tests.streams import DRIFT_PAIR, Key, Stream, make_stream, redelivered_and_shuffled

pytestmark = pytest.mark.integration

EVENTS = 200_000
DECISIONS = int(EVENTS / (1 + 1 / 3 + 1 / 30))


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


@pytest.mark.parametrize(
    ("kill", "retention_s", "store"),
    [(True, None, None), (False, None, None), (True, 900, None), (True, 900, "rocksdb://")],
    ids=["kill-9", "sigterm", "kill-9-state-expiring", "kill-9-state-expiring-rocksdb"],
)
async def test_scorer_stopped_mid_stream_counts_exactly(
    service_env: dict[str, str],
    database_url: str,
    spawn: Callable[..., Service],
    tmp_path: Path,
    kill: bool,
    retention_s: int | None,
    store: str | None,
) -> None:
    """With ``retention_s`` (15 minutes of event time; the stream spans two hours, no event comes
    more than 10 minutes after its decision) decision state expires and buckets close all along,
    across the crash too, and the counts must still be exact; last, the same with the state in
    RocksDB instead of memory."""
    env = {**service_env, "MODQ_DATABASE_URL": database_url}
    if retention_s is not None:
        env["MODQ_SCORER_STATE_RETENTION_S"] = str(retention_s)
    if store is not None:
        env["MODQ_SCORER_STORE"] = store
        env["MODQ_SCORER_DATA_DIR"] = str(tmp_path / "scorer-data")
    stream = make_stream(DECISIONS)
    assert len(stream.events) >= EVENTS * 0.99
    await put_on_events_topic(env, stream)
    scorer = spawn(["scorer"], env, "scorer-1")
    port = env["MODQ_SCORER_WEB_PORT"]

    async def partly_done() -> bool:
        return await scorer_metric(port) >= len(stream.events) * 0.3

    await eventually(partly_done, 120, interval=0.05)
    done_at_kill = await scorer_metric(port)
    assert scorer.stop(kill=kill) == (-9 if kill else 0)  # SIGTERM: the round in flight is committed
    assert done_at_kill < len(stream.events), "killed too late to test anything"
    spawn(["scorer"], env, "scorer-2")
    await eventually(lambda: exact(database_url, stream.truth), 180, interval=1.0)
    await assert_one_alert_for_the_drifting_pair(database_url)
    if retention_s is not None:  # most of the state the second process recovered or built expired
        assert await scorer_metric(port, "modq_scorer_expired_decisions_total") > DECISIONS * 0.5
        assert await scorer_metric(port, "modq_scorer_closed_bucket_changes_total") == 0


async def test_every_event_twice_and_shuffled_counts_exactly(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    env = {**service_env, "MODQ_DATABASE_URL": database_url}
    stream = redelivered_and_shuffled(make_stream(DECISIONS), window=6000)
    await put_on_events_topic(env, stream)
    spawn(["scorer"], env, "scorer")
    await eventually(lambda: exact(database_url, stream.truth), 180, interval=1.0)
    await assert_one_alert_for_the_drifting_pair(database_url)
