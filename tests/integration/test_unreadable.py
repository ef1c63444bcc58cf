"""A record batch that cannot be read stops only its own partition, says so once, and is never skipped.

Ingest runs in-process against the real broker. First lz4 batches while this process has no lz4
codec (aiokafka's codec check patched out, as a build without cramjam would be): the other topics
and partitions go on, the service is not ready and names the partition, offset and cause once, the
metric counts it, no offset past the batch is committed; once the codec is back, every record is
read and counted once. Then a batch whose CRC does not match: it waits, and so does nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import aiokafka.codec
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka import Producer

from services.contracts.batches import WireDecision, WireVerdict, decode_batch
from services.ingest.http import create_ingest_app
from services.ingest.service import IngestService
from tests.support import factories
from tests.support.kafkautil import consume_all
from tests.support.pipeline_util import ingest_settings as settings
from tests.support.processes import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def without_lz4() -> Iterator[dict[str, bool]]:
    """This process cannot decode lz4 until ``state["missing"]`` is set to False."""
    state = {"missing": True}
    real = aiokafka.codec.has_lz4
    aiokafka.codec.has_lz4 = lambda: not state["missing"] and real()
    try:
        yield state
    finally:
        aiokafka.codec.has_lz4 = real


def metric(service: IngestService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def test_an_unreadable_partition_waits_alone_and_goes_on_once_it_can_be_read(
    service_env: dict[str, str], without_lz4: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    s = settings({**service_env, "MODQ_CONSUMER_RETRY_S": "1"})
    bootstrap = s.kafka_bootstrap_servers
    service = IngestService(s)
    await service.start()
    decisions = [factories.decision(f"d{i}") for i in range(200)]
    verdicts = [factories.verdict(f"d{i}") for i in range(200)]

    def publish() -> None:
        lz4 = Producer({"bootstrap.servers": bootstrap, "compression.type": "lz4", "linger.ms": 20})
        for d in decisions:  # every partition of the decisions topic gets lz4 batches
            lz4.produce(s.topic_decisions, value=orjson.dumps(d), key=str(d["decision_id"]).encode())
        assert lz4.flush(30) == 0
        plain = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for v in verdicts:
            plain.produce(s.topic_verdicts, value=orjson.dumps(v), key=str(v["decision_id"]).encode())
        assert plain.flush(30) == 0

    await asyncio.to_thread(publish)
    app = create_ingest_app(service)
    caplog.set_level(logging.INFO, logger="modq.kafka")
    task = asyncio.create_task(service.run())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as web:

            async def stuck() -> bool:
                return metric(service, "modq_consumer_stuck_partitions", topic=s.topic_decisions) == s.partitions

            await eventually(stuck, 30, interval=0.2)
            # The verdicts' topic is not held up by the decisions' partitions.
            batches = await consume_all(bootstrap, s.topic_events, 1, timeout=15)
            events = [e for r in batches for e in decode_batch(r.value)]
            assert sum(isinstance(e, WireVerdict) for e in events) == 200
            assert not any(isinstance(e, WireDecision) for e in events)
            ready = await web.get("/readyz")
            assert ready.status_code == 503
            report = ready.json()["stuck"]
            assert {(r["topic"], r["partition"], r["offset"]) for r in report} == {
                (s.topic_decisions, p, 0) for p in range(s.partitions)
            }
            assert all("lz4" in r["cause"] for r in report)
            await asyncio.sleep(3)  # a few retries: still stuck, still reported once
            logged = [r for r in caplog.records if r.getMessage().startswith("a record batch cannot be read")]
            assert sorted(r.partition for r in logged) == list(range(s.partitions))  # type: ignore[attr-defined]
            assert metric(service, "modq_consumer_unreadable_batches_total", topic=s.topic_decisions) == s.partitions
            for p in range(s.partitions):  # nothing past the batch is committed
                assert await committed(bootstrap, s.ingest_group_id, TopicPartition(s.topic_decisions, p)) in (None, 0)
            # HTTP publishing does not depend on a Kafka partition being readable.
            assert service.serving

            without_lz4["missing"] = False  # the cause is fixed: the partitions are read on the next try

            async def caught_up() -> object:
                batches = await consume_all(bootstrap, s.topic_events, 1, timeout=5)
                got = [e for r in batches for e in decode_batch(r.value)]
                return sorted(e.event_id for e in got if isinstance(e, WireDecision)) == sorted(
                    str(d["event_id"]) for d in decisions
                )

            await eventually(caught_up, 30)
            assert metric(service, "modq_consumer_stuck_partitions", topic=s.topic_decisions) == 0
            assert (await web.get("/readyz")).status_code == 200
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_corrupt_batch_holds_its_partition_at_its_offset_and_nothing_else(service_env: dict[str, str]) -> None:
    s = settings({**service_env, "MODQ_CONSUMER_RETRY_S": "1"})
    bootstrap = s.kafka_bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        good = [factories.decision(f"c{i}") for i in range(4)]
        await (await producer.send(s.topic_decisions, orjson.dumps(good[0]), partition=0))
        batch = producer.create_batch()
        batch.append(key=None, value=orjson.dumps(factories.decision(f"x-{uuid.uuid4()}")), timestamp=None)
        built = batch._build()  # the bytes as they go on the wire, CRC included
        built[-3] ^= 0xFF  # one flipped byte in the records: the CRC no longer matches
        await (await producer.send_batch(batch, s.topic_decisions, partition=0))
        await (await producer.send(s.topic_decisions, orjson.dumps(good[1]), partition=0))  # behind it: waits
        for d in good[2:]:
            await (await producer.send(s.topic_decisions, orjson.dumps(d), partition=1))
    finally:
        await producer.stop()
    service = IngestService(s)
    await service.start()
    task = asyncio.create_task(service.run())
    try:

        async def stuck() -> bool:
            return bool(service.health.report())

        await eventually(stuck, 30, interval=0.2)
        await asyncio.sleep(3)
        [report] = service.health.report()
        assert (report["topic"], report["partition"], report["offset"]) == (s.topic_decisions, 0, 1)
        assert "CRC" in str(report["cause"])
        batches = await consume_all(bootstrap, s.topic_events, 1, timeout=10)
        got = {e.decision_id for r in batches for e in decode_batch(r.value)}
        assert got == {"c0", "c2", "c3"}  # before the bad batch, and the other partition; never c1
        assert await committed(bootstrap, s.ingest_group_id, TopicPartition(s.topic_decisions, 0)) == 1
    finally:
        await service.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
