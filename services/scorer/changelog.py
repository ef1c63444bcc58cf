"""Reading a compacted changelog topic back into state, partition by partition."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

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
