"""A compacted changelog topic: state records written as whole record batches, and read back into
state, partition by partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

Sends = list[tuple[int, int, asyncio.Future[Any]]]
"""(partition, records in the batch, the broker's acknowledgement) per record batch sent."""


async def send_records(producer: AIOKafkaProducer, topic: str, p: int, writes: Mapping[bytes, bytes | None]) -> Sends:
    """State records as whole record batches (a C-level append per record, not a send); a value
    of None is a tombstone."""
    sends: Sends = []
    batch, count = producer.create_batch(), 0
    for key, value in writes.items():
        if batch.append(key=key, value=value, timestamp=None) is None:
            sends.append((p, count, await producer.send_batch(batch, topic, partition=p)))
            batch, count = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None)
        count += 1
    if count:
        sends.append((p, count, await producer.send_batch(batch, topic, partition=p)))
    return sends


Apply = Callable[[int, list[ConsumerRecord[bytes, bytes]]], None]
"""Takes a partition and the records read from it, in offset order."""


async def read_to_end(reader: AIOKafkaConsumer, topic: str, starts: dict[int, int], apply: Apply) -> dict[int, int]:
    """Read the partitions of ``topic`` in ``starts`` from those offsets until caught up; returns
    the position reached in each (where this process's own next writes will land).

    A fetch that comes back empty at or past the end offset ends a partition. The end offset
    alone is not enough: Tansu 0.6 reports it as the base offset of the last record batch plus
    one, short of the real end when that batch holds many records.
    """
    tps = [TopicPartition(topic, p) for p in sorted(starts)]
    if not tps:
        return {}
    reader.assign(tps)
    ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
    for tp in tps:
        reader.seek(tp, starts[tp.partition])
    todo = dict(ends)
    reached: dict[int, int] = {}
    while todo:
        batches = await reader.getmany(*todo, timeout_ms=300, max_records=50_000)
        for tp, messages in batches.items():
            apply(tp.partition, messages)
        for tp in list(todo):
            position = await reader.position(tp)
            reached[tp.partition] = position
            if not batches.get(tp) and position >= todo[tp]:
                del todo[tp]
    return reached


async def check_partitions(reader: AIOKafkaConsumer, topic: str, needed: Iterable[int], source: str) -> None:
    """Fail unless the changelog has every partition its source topic has."""
    await reader.topics()  # metadata
    available = reader.partitions_for_topic(topic) or set()
    wanted = set(needed)
    if not wanted <= available:
        raise RuntimeError(
            f"{topic} has partitions {sorted(available)}, {source} needs {sorted(wanted)}:"
            " a changelog must have as many partitions as its source topic"
        )
