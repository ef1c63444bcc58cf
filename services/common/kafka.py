"""Thin Kafka helpers: topic creation, client construction from settings, and the one translation
of the MODQ_KAFKA_* security settings (for aiokafka clients and for Faust)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.config import CommonSettings
from services.common.unreadable import ConsumerHealth, GuardedConsumer

log = logging.getLogger("modq.kafka")


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """Security options for aiokafka clients (SASL and TLS when configured)."""
    protocol = settings.kafka_security_protocol.upper()
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password
    return opts


def faust_credentials(settings: CommonSettings) -> Any:
    """The same security as ``client_options``, as Faust's broker credentials (None: plaintext)."""
    import faust

    opts = client_options(settings)
    protocol = opts["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=opts["sasl_plain_username"],
            password=opts["sasl_plain_password"],
            mechanism=opts["sasl_mechanism"],
            ssl_context=opts.get("ssl_context"),
        )
    return faust.SSLCredentials(opts["ssl_context"])


async def ensure_topics(
    settings: CommonSettings, topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> None:
    """Create topics that do not exist yet (name -> partitions, optional name -> topic configs);
    existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, n, 1, topic_configs=(configs or {}).get(name, {}))
            for name, n in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
    finally:
        await admin.close()


def make_producer(settings: CommonSettings, **overrides: object) -> AIOKafkaProducer:
    opts: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        "max_batch_size": 1_048_576,
        "max_request_size": 4_194_304,
        **client_options(settings),
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(
    settings: CommonSettings, *topics: str, guard: ConsumerHealth | None = None, **overrides: object
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to and starts a new group at the earliest offset.

    ``guard``: a ``GuardedConsumer`` reporting there, on which a partition whose record batch cannot
    be decoded waits while the others go on (see ``services.common.unreadable``)."""
    opts: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **client_options(settings),
    }
    opts.update(overrides)
    if guard is not None:
        return GuardedConsumer(*topics, health=guard, **opts)
    return AIOKafkaConsumer(*topics, **opts)


class Rebalanced(Protocol):
    """A consumer loop that takes part in its group's rebalances."""

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None: ...

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None: ...


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to a consumer loop (``Rebalanced``)."""

    def __init__(self, loop: Rebalanced) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.loop.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.loop.on_assigned(assigned)


async def log_end(reader: AIOKafkaConsumer, tp: TopicPartition, timeout_s: float = 30.0) -> int:
    """The offset after the last record of ``tp`` (assigned to ``reader``, whose position it moves).

    ListOffsets (``end_offsets``) alone is not enough: Tansu 0.6, the embedded broker, answers the
    base offset of the last record batch plus one, short of the end by the rest of that batch. A
    fetch from just before that offset reports the high watermark, right on both brokers.
    """
    end: int = (await reader.end_offsets([tp]))[tp]
    first: int = (await reader.beginning_offsets([tp]))[tp]
    if end <= first:
        return end
    reader.seek(tp, end - 1)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (highwater := reader.highwater(tp)) is None:
        await reader.getmany(tp, timeout_ms=500, max_records=1)
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"no fetch answer for {tp.topic} partition {tp.partition} in {timeout_s:.0f}s")
    return max(end, int(highwater))


async def seek_to_committed(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    """Consume ``tp`` again from its group's committed offset (from the beginning without one)."""
    committed = await consumer.committed(tp)
    if committed is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, committed)


class BrokerWatch:
    """Asks the cluster for metadata every few seconds, so an outage shows as not ready even
    when a service is idle (a consumer just sees no records; a producer only fails on a send)."""

    def __init__(self, producer: AIOKafkaProducer, service: str, interval_s: float = 3.0) -> None:
        self.producer, self.service, self.interval_s = producer, service, interval_s
        self.ok = True
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), self.interval_s)
                if not self.ok:
                    log.warning("broker reachable again", extra={"service": self.service})
                self.ok = True
            except (KafkaError, TimeoutError, OSError) as exc:
                if self.ok:
                    log.warning("broker unreachable", extra={"service": self.service, "error": str(exc)})
                self.ok = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopping.set()
