"""Helpers for tests of the scorer on its own input: the events topic, the database's counts and alerts."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from services.common.config import ScorerSettings
from services.common.db import make_engine
from services.common.kafka import ensure_topics
from services.contracts.batches import WireAppeal, WireVerdict
from services.contracts.codes import INCORRECT, OVERTURNING_OUTCOMES
from services.contracts.remediations import decode_remediation, remediation_id
from tests.support.kafkautil import consume_all
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
    """The drifting pair's alert, and the wider ones its excess raises (its label across vendors, its
    vendor across labels), each exactly once with one ``fired`` row; nothing for any other pair."""
    label, vendor = DRIFT_PAIR

    async def pair_alert() -> bool:
        return any((a[1], a[2]) == DRIFT_PAIR for a in (await alert_rows(database_url))[0])

    await eventually(pair_alert, 60)
    await asyncio.sleep(3.0)  # anything raised twice would be recorded by now
    alerts, history = await alert_rows(database_url)
    assert len({a[0] for a in alerts}) == len(alerts), alerts  # every alert once
    assert {(a[1], a[2]) for a in alerts} <= {DRIFT_PAIR, (label, "*"), ("*", vendor)}, alerts
    assert {a[3] for a in alerts} == {"error_rate"}, alerts
    # The pair's own alert: one episode, still firing. A wider one may have resolved and fired again
    # (its excess is diluted by the members that did not move).
    assert [(a[1], a[2], a[4]) for a in alerts if (a[1], a[2]) == DRIFT_PAIR] == [(*DRIFT_PAIR, "firing")], alerts
    fired = sorted(h for h in history if h[1] == "fired")
    assert fired == sorted((a[0], "fired") for a in alerts)
    assert sorted(h for h in history if h[1] == "resolved") == sorted(
        (a[0], "resolved") for a in alerts if a[4] == "resolved"
    )
    assert {h[1] for h in history} <= {"fired", "resolved", "linked", "unlinked", "evidence"}


def expected_remediations(stream: Stream) -> set[str]:
    """The findings of a stream without supersessions: every INCORRECT verdict, every OVERTURNED appeal."""
    out = set()
    for ev in stream.events:
        if isinstance(ev, WireVerdict) and ev.code == INCORRECT:
            out.add(remediation_id("qa", ev.decision_id, ev.verdict_id))
        elif isinstance(ev, WireAppeal) and ev.outcome in OVERTURNING_OUTCOMES:
            out.add(remediation_id("appeal", ev.decision_id, ev.appeal_id))
    return out


async def assert_each_finding_once(env: dict[str, str], database_url: str, stream: Stream) -> None:
    """quality.remediations holds every finding exactly once, open (none twice, none missing), and the
    notifier's lane stored each once."""
    expected = expected_remediations(stream)
    records = await consume_all(env["MODQ_KAFKA_BOOTSTRAP_SERVERS"], env["MODQ_TOPIC_REMEDIATIONS"], len(expected))
    ids = [decode_remediation(r.value or b"").remediation_id for r in records]
    statuses = {decode_remediation(r.value or b"").status for r in records}
    assert statuses == {"open"}
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"{len(duplicated)} findings sent more than once"
    assert set(ids) == expected

    async def stored() -> bool:
        engine = make_engine(database_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT remediation_id, status FROM remediations"))).all()
        finally:
            await engine.dispose()
        return {r[0] for r in rows} == expected and {r[1] for r in rows} == {"open"}

    await eventually(stored, 60)
