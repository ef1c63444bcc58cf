"""The scorer as a Faust app around the pure pipeline.

- stage 1 (``services.scorer.stage``, a plain aiokafka consumer group in the worker):
  modq.events (batches, co-partitioned by decision_id) -> decision state and rate book, outcomes
  grouped by (policy_label, vendor_id) to modq.pair-outcomes.
- agent ``detect``: modq.pair-outcomes -> monitor table, alert state changes to quality.alerts.
- agent ``record_alerts``: quality.alerts -> alert history in the database (idempotent upserts).
Rate buckets reach the database from a timer that adds the changes since the last flush, each
partition's applied once by the events offset they go up to (``services.scorer.book``,
``DbSink.write_book``). All state lives in changelogs, so it survives restarts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections import Counter as Tally
from typing import Any

import faust
import msgspec
from aiokafka import TopicPartition
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.config import ScorerSettings
from services.common.db import make_engine
from services.common.unreadable import ConsumerHealth
from services.common.wire import ERROR_TYPES
from services.scorer.alerts import AlertEvent
from services.scorer.book import RateBook
from services.scorer.pipeline import Detection, detect
from services.scorer.sink import DbSink
from services.scorer.stage import DecisionStage

log = logging.getLogger("modq.scorer")


class ScorerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.batches = Counter("modq_scorer_batches", "Batch records processed", registry=registry)
        self.events = Counter("modq_scorer_events", "Events processed from batches", registry=registry)
        self.outcomes = Counter("modq_scorer_outcomes", "Judged verdicts fed to drift detectors", registry=registry)
        self.alert_changes = Counter(
            "modq_scorer_alert_changes", "Alert state changes raised", ["status"], registry=registry
        )
        self.flush_failures = Counter(
            "modq_scorer_db_write_failures", "Database writes that failed and will be retried", registry=registry
        )
        self.expired_decisions = Counter(
            "modq_scorer_expired_decisions",
            "Decision states expired on event time (MODQ_SCORER_STATE_RETENTION_S)",
            registry=registry,
        )
        self.database_wait = Counter(
            "modq_scorer_database_wait_seconds",
            "Time the scorer stopped taking records until rate-bucket writes caught up"
            " (MODQ_SCORER_MAX_PENDING_BUCKETS)",
            registry=registry,
        )
        self.dirty_buckets = Gauge(
            "modq_scorer_dirty_buckets", "Rate buckets awaiting a database write", registry=registry
        )
        self.last_processed = Gauge(
            "modq_scorer_last_processed_timestamp_seconds", "Wall time of the last processed batch", registry=registry
        )
        self.verdicts = Counter(
            "modq_scorer_verdicts",
            "Judged verdicts seen by the detectors, by error type (NONE: correct); bounded labels",
            ["policy_label", "vendor_id", "error_type"],
            registry=registry,
        )
        self.statistic = Gauge(
            "modq_scorer_detector_statistic",
            "Drift statistic of a pair's monitor: log of its Shiryaev-Roberts sum, alarms above log A; bounded labels",
            ["policy_label", "vendor_id", "rule"],
            registry=registry,
        )
        self.monitor_firing = Gauge(
            "modq_scorer_monitor_firing",
            "1 while a pair's monitor has an alert firing; bounded labels",
            ["policy_label", "vendor_id", "rule"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "modq_scorer_consumer_lag_records",
            "Records on the events topic not yet processed, per partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.lag = Histogram(
            "modq_scorer_processing_lag_seconds",
            "Event time to processing time of the newest event in each batch",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )


class Scorer:
    """Builds the Faust app and holds its runtime pieces (engine, sink, dirty set, metrics)."""

    def __init__(self, settings: ScorerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = s = settings
        self.metrics = ScorerMetrics(registry or CollectorRegistry())
        self.engine: AsyncEngine | None = None
        self.sink: DbSink | None = None
        self._sink_ready = asyncio.Event()  # set once on_start has made the sink
        self.book = RateBook()
        self.book_lock = asyncio.Lock()
        self.health = ConsumerHealth(self.metrics.registry, retry_s=s.consumer_retry_s)
        self.stage = DecisionStage(
            s,
            self.book,
            self.metrics,
            on_batch=self._on_batch,
            health=self.health,
            claim=self.claim,
            book_lock=self.book_lock,
        )
        self.stalled: list[int] = []
        self.ready = False
        self.policy = s.monitor_policy()
        self.label_budget, self.vendor_budget = s.metric_budgets()
        self.app = app = faust.App(
            s.scorer_app_id,
            broker=[f"kafka://{h}" for h in s.kafka_bootstrap_servers.split(",")],
            store=s.scorer_store,
            **({"datadir": s.scorer_data_dir} if s.scorer_data_dir else {}),
            topic_partitions=s.partitions,
            web_host=s.scorer_web_host,
            web_bind=s.scorer_web_host,  # Faust binds 0.0.0.0 unless told (web_host only names it)
            web_port=s.scorer_web_port,
            web_in_thread=False,
            broker_session_timeout=s.faust_session_timeout_s,
            broker_rebalance_timeout=s.faust_rebalance_timeout_s,
            broker_heartbeat_interval=3.0,
            producer_acks=-1,
            key_serializer="raw",
            value_serializer="raw",
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            consumer_group_instance_id=s.scorer_instance_id or None,
            broker_credentials=faust_credentials(s),
        )
        self.outcomes_topic = app.topic(
            s.topic_outcomes, value_serializer="raw", key_serializer="raw", partitions=s.partitions
        )
        self.alerts_topic = app.topic(
            s.topic_alerts, value_serializer="raw", key_serializer="raw", partitions=s.partitions
        )
        self.monitors = _raw_table(app, "monitors", s.partitions)
        self._wire()

    # -- metrics --------------------------------------------------------------------------

    def _observe(self, found: Detection) -> None:
        m = self.metrics
        label, vendor = self.label_budget.value(found.policy_label), self.vendor_budget.value(found.vendor_id)
        for code, n in Tally(code for _, _, code in found.outcomes).items():
            m.verdicts.labels(label, vendor, ERROR_TYPES[code]).inc(n)
        if (label, vendor) == (found.policy_label, found.vendor_id):  # "other" has no single statistic
            for rule, (statistic, firing) in found.statistics.items():
                m.statistic.labels(label, vendor, rule).set(statistic)
                m.monitor_firing.labels(label, vendor, rule).set(1 if firing else 0)

    def _on_batch(self, records: int, events: int, outcomes: int, newest_ms: int) -> None:
        m = self.metrics
        m.batches.inc(records)
        m.events.inc(events)
        m.outcomes.inc(outcomes)
        now = time.time()
        m.last_processed.set(now)
        if newest_ms:
            m.lag.observe(max(0.0, now - newest_ms / 1000))

    def observe_consumer_lag(self) -> None:
        consumer = self.stage.consumer
        if consumer is None:
            return
        for partition, (next_offset, _) in self.stage.progress.items():
            tp = TopicPartition(self.settings.topic_events, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not assigned (any more), or no fetch yet
                continue
            if highwater is not None and next_offset >= 0:
                lag = max(0, highwater - next_offset)
                self.metrics.consumer_lag.labels(tp.topic, str(partition)).set(lag)

    # -- agents ---------------------------------------------------------------------------

    def _wire(self) -> None:
        app, s, m = self.app, self.settings, self.metrics

        @app.agent(self.outcomes_topic, name="detect")
        async def run_detectors(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                found = detect(event.key, event.value, self.monitors.get, self.policy)
                self._observe(found)
                sent = []
                for change in found.changes:
                    m.alert_changes.labels(change.status).inc()
                    log.warning(
                        "alert " + change.status,
                        extra={"alert_id": change.alert_id, "dedup_key": change.dedup_key, "summary": change.summary},
                    )
                    sent.append(
                        await self.alerts_topic.send(key=change.dedup_key.encode(), value=_encode_alert(change))
                    )
                # Alerts are durable before the state that says they were raised (and which
                # source offsets were applied), and that state before the offset is committed.
                await asyncio.gather(*sent)
                await (await self._put(self.monitors, event.key, found.state, event.message.partition))

        @app.agent(self.alerts_topic, name="record_alerts")
        async def record_alerts(stream: faust.StreamT[bytes]) -> None:
            async for payload in stream:
                change = _decode_alert(payload)
                await self._sink_ready.wait()  # alerts can come in before on_start has run
                await self._retry_db(lambda change=change: self._sink().upsert_alert(change))

        @app.timer(interval=s.flush_interval_s)
        async def flush_buckets() -> None:
            await self.flush()

        @app.task
        async def on_start() -> None:
            self.engine = make_engine(s.database_url)
            self.sink = DbSink(self.engine)
            self._sink_ready.set()

        @app.on_before_shutdown.connect
        async def on_shutdown(sender: Any, **kwargs: Any) -> None:
            await self.stage.stop()

        @app.on_rebalance_complete.connect
        async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
            self.ready = True

        @app.timer(interval=5.0)
        async def watch_progress() -> None:
            await self.check_progress()

        scorer = self

        @app.page("/metrics")
        class Metrics(View):
            async def get(self, request: Request) -> Response:
                scorer.observe_consumer_lag()
                body = generate_latest(scorer.metrics.registry)
                # aiohttp refuses a charset inside content_type; Prometheus text is UTF-8 anyway.
                return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

        @app.page("/healthz")
        class Health(View):
            async def get(self, request: Request) -> Response:
                if scorer.stalled:
                    return self.json({"status": "stalled", "partitions": sorted(scorer.stalled)}, status=503)
                return self.json({"status": "ok"})

        @app.page("/debug/tasks")
        class Tasks(View):
            """Where every asyncio task of the worker is waiting: for diagnosing stalls."""

            async def get(self, request: Request) -> Response:
                out = io.StringIO()
                for task in asyncio.all_tasks():
                    out.write(f"--- {task.get_name()} {task.get_coro()!r}\n")
                    task.print_stack(limit=12, file=out)
                return self.text(out.getvalue())

        @app.page("/readyz")
        class Ready(View):
            async def get(self, request: Request) -> Response:
                if not scorer.health.ok:  # a partition waits at a batch that cannot be read
                    return self.json({"status": "partitions stuck", "stuck": scorer.health.report()}, status=503)
                if scorer.ready and scorer.stage.serving:
                    return self.json({"status": "ready"})
                return self.json({"status": "recovering"}, status=503)

    async def check_progress(self) -> None:
        """Liveness: a partition with records waiting and no progress for too long is a stall.

        The process reports unhealthy and, unless configured otherwise, exits so that its
        supervisor restarts it; everything it acknowledged is already durable, so a restart loses
        nothing.
        """
        stage, consumer = self.stage, self.stage.consumer
        if not stage.ready or not stage.progress or consumer is None:
            return
        if stage.db_wait_since is not None:
            self.stalled = []  # waiting for the database on purpose (its writes are retried)
            return
        tps = [TopicPartition(self.settings.topic_events, p) for p in stage.progress]
        try:
            ends = await consumer.end_offsets(tps)
            # Partitions not processed since the assignment: their committed offset is the progress.
            unstarted = [tp for tp in tps if stage.progress.get(tp.partition, (0, 0.0))[0] < 0]
            committed = {tp: await consumer.committed(tp) for tp in unstarted}
        except Exception:
            return
        now, stalled, unreadable = time.monotonic(), [], stage.unreadable()
        for tp in tps:
            if tp.partition not in stage.progress or tp.partition in unreadable:
                continue  # revoked meanwhile, or waiting at an unreadable batch (reported on its own)
            done, since = stage.progress[tp.partition]
            if done < 0:
                done = committed.get(tp) or 0
            end = ends.get(tp)
            if end is not None and end > done and now - since > self.settings.scorer_stall_timeout_s:
                stalled.append(tp.partition)
        self.stalled = stalled
        if stalled:
            log.error("scorer stalled", extra={"partitions": stalled, "topic": self.settings.topic_events})
            if self.settings.scorer_exit_on_stall:
                os._exit(70)  # a hung Faust shutdown must not keep a stalled worker alive

    async def _put(self, table: Any, key: bytes, value: bytes, partition: int) -> asyncio.Future[Any]:
        """Write a table entry and return the future of its changelog record.

        Faust's own path (``table[key] = value``) queues the changelog record in a buffer that its
        pre-commit flush does not reliably drain (it gives up after 0.1 s, and a record taken off
        the queue is not yet in the client), so a crash could commit an offset whose state was
        never written. Sending the changelog record ourselves, to the partition Faust recovers it
        from, and awaiting it before the event is acknowledged makes every committed offset's
        state durable.
        """
        table.data[key] = value
        fut: asyncio.Future[Any] = await table.changelog_topic.send(key=key, value=value, partition=partition)
        return fut

    # -- database -------------------------------------------------------------------------

    def _sink(self) -> DbSink:
        if self.sink is None:
            raise RuntimeError("database not initialised yet")
        return self.sink

    async def _retry_db(self, write: Any) -> None:
        delay = 0.2
        while True:
            try:
                await write()
                return
            except Exception:
                self.metrics.flush_failures.inc()
                log.exception("database write failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def claim(self, partitions: list[int]) -> dict[int, int]:
        """Claim partitions for this process's writes (retried while the database is away);
        returns how far each one's counts in the database go."""
        await self._sink_ready.wait()  # partitions can be assigned before on_start has run
        delay = 0.2
        while True:
            try:
                return await self._sink().claim(partitions)
            except Exception:
                self.metrics.flush_failures.inc()
                log.exception("claiming partitions failed; retrying", extra={"retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def flush(self) -> int:
        """Write the book's pending changes (or retry a failed write); returns the rows written."""
        if self.sink is None:
            return 0
        written = 0
        async with self.book_lock:
            write = self.book.take()
            if write is not None:
                try:
                    result = await self.sink.write_book(write)
                    self.book.written(write)
                    written = sum(len(write.parts[p][0]) for p in result.applied)
                except Exception:
                    self.book.failed(write)
                    self.metrics.flush_failures.inc()
                    log.exception("bucket flush failed; will retry", extra={"buckets": write.row_count()})
        self.metrics.dirty_buckets.set(self.book.pending_rows())
        return written


def _raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of bytes keys and values: our own codecs (msgpack) run inside the pure pipeline."""
    table = app.Table(name, key_type=bytes, value_type=bytes, partitions=partitions)
    # Faust derives serializers from model types only; the changelog and store are created
    # lazily from these attributes, so setting them here makes both raw.
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    return table


def faust_credentials(s: ScorerSettings) -> Any:
    """The scorer's Kafka security from the same MODQ_KAFKA_* settings as the other services."""
    protocol = s.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=s.kafka_ssl_cafile)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password,
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def _encode_alert(change: AlertEvent) -> bytes:
    return msgspec.json.encode(change)


def _decode_alert(payload: bytes) -> AlertEvent:
    return msgspec.json.decode(payload, type=AlertEvent)


def make_worker(scorer: Scorer, **options: Any) -> faust.Worker:
    """The Faust worker of a scorer; the events stage starts with it, before Faust's own consumer
    has joined its group, so the two group joins (each a wait on the broker) overlap."""

    class ScorerWorker(faust.Worker):  # type: ignore[misc]
        async def on_first_start(self) -> None:
            await super().on_first_start()
            await scorer.stage.start()

    return ScorerWorker(scorer.app, **options)
