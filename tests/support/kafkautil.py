"""Small aiokafka helpers for tests."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from confluent_kafka import Producer


async def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """Produce (topic, key, value) records and wait for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str, topic: str, expect_at_least: int, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the beginning until at least n records came, then drain a little longer."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_until = None
        while loop.time() < deadline:
            polled = await consumer.getmany(timeout_ms=300)
            got = [r for recs in polled.values() for r in recs]
            out.extend(got)
            if len(out) >= expect_at_least:
                if got or quiet_until is None:
                    quiet_until = loop.time() + 1.0
                elif loop.time() > quiet_until:
                    break
    finally:
        await consumer.stop()
    return out


async def librdkafka_produce(
    bootstrap: str, codec: str, records: list[tuple[str, bytes | None, bytes]], partitions: list[int] | None = None
) -> None:
    """Publish through librdkafka as production clients do: in compressed batches (``partitions``:
    each record's partition, else librdkafka's partitioner picks by key)."""

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 50})
        for i, (topic, key, value) in enumerate(records):
            if partitions is None:
                producer.produce(topic, value=value, key=key)
            else:
                producer.produce(topic, value=value, key=key, partition=partitions[i])
        assert producer.flush(60) == 0, f"{codec}: records left unsent"

    await asyncio.to_thread(run)
