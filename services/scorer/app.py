"""The scorer as a Faust worker around two stages of its own, each a plain aiokafka consumer group.

- stage 1 (``services.scorer.stage``): modq.events (batches, co-partitioned by decision_id) ->
  decision state and rate book, outcomes grouped by (policy_label, vendor_id) to modq.pair-outcomes.
- stage 2 (``services.scorer.detection``): modq.pair-outcomes -> the pairs' monitors, alert state
  changes to quality.alerts (the notifier writes them to the alert history).
Rate buckets reach the database from a loop that adds the changes since the last write, each
partition's applied once by the events offset they go up to (``services.domain.book``,
``DbSink.write_book``). Faust runs the worker, its web pages and the timers. All state lives in
changelogs, so it survives restarts.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.config import ScorerSettings
from services.common.db import make_engine
from services.common.kafka import faust_credentials
from services.common.metrics import metrics_response
from services.common.unreadable import ConsumerHealth
from services.contracts.alerts import AlertEvent, iso
from services.contracts.codes import ERROR_TYPES
from services.contracts.pairs import SCOPE_PAIR, SCOPE_REVIEWER
from services.domain.book import RateBook
from services.domain.catchup import CatchUp, CatchUpReport
from services.domain.detect import Detection
from services.scorer.detection import DetectionStage
from services.scorer.metrics import ScorerMetrics
from services.scorer.sink import DbSink
from services.scorer.stage import DecisionStage

log = logging.getLogger("modq.scorer")
CATCHUP_LOG_S = 10.0


class Scorer:
    """Builds the Faust app and holds its runtime pieces (engine, sink, dirty set, metrics)."""

    def __init__(
        self,
        settings: ScorerSettings,
        registry: CollectorRegistry | None = None,
        on_stall: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.settings = s = settings
        self.on_stall = on_stall  # called (by the process's owner) when partitions stall
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
        self.policy = s.monitor_policy()
        self.horizon_ms = int(s.alert_paging_horizon_s * 1000)
        self.catchup = CatchUp(behind_threshold_s=s.catchup_threshold_s)
        self.catchup_report: CatchUpReport | None = None
        self._catchup_logged = 0.0
        self.events_done = 0
        self.label_budget, self.vendor_budget = s.metric_budgets()
        self.app = faust.App(
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
        self.detection = DetectionStage(
            s, self.policy, self.horizon_ms, observe=self._observe, on_change=self._on_change, health=self.health
        )
        self._wire()

    # -- metrics --------------------------------------------------------------------------

    def _observe(self, found: Detection) -> None:
        if found.scope == SCOPE_REVIEWER:
            return  # a reviewer id is never a metric label
        m = self.metrics
        label, vendor = self.label_budget.value(found.policy_label), self.vendor_budget.value(found.vendor_id)
        if found.scope == SCOPE_PAIR:  # (a wider scope sees the same verdicts again)
            for code, n in Tally(code for _, _, code in found.outcomes).items():
                m.verdicts.labels(label, vendor, ERROR_TYPES[code]).inc(n)
        if (label, vendor) == (found.policy_label, found.vendor_id):  # "other" has no single statistic
            for rule, (statistic, firing) in found.statistics.items():
                m.statistic.labels(label, vendor, rule).set(statistic)
                m.monitor_firing.labels(label, vendor, rule).set(1 if firing else 0)

    def _on_change(self, change: AlertEvent) -> None:
        self.metrics.alert_changes.labels(change.status).inc()
        about = {"dedup_key": change.dedup_key, "summary": change.summary} if change.reviewer_id is None else {}
        # (a reviewer's alert names the reviewer: logs carry its id only)
        log.warning(
            "alert " + change.status,
            extra={"alert_id": change.alert_id, "scope": change.scope, "historical": change.historical, **about},
        )

    def _on_batch(self, records: int, events: int, outcomes: int, newest_ms: int) -> None:
        m = self.metrics
        self.events_done += events
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
            highwater = _highwater(consumer, TopicPartition(self.settings.topic_events, partition))
            if highwater is not None and next_offset >= 0:
                lag = max(0, highwater - next_offset)
                self.metrics.consumer_lag.labels(self.settings.topic_events, str(partition)).set(lag)

    # -- agents ---------------------------------------------------------------------------

    def _wire(self) -> None:
        app, s = self.app, self.settings

        @app.task
        async def flush_buckets() -> None:
            """Write the book every ``flush_interval_s``, or right after the last write when that took
            longer (a backfill's writes do)."""
            while True:
                started = time.monotonic()
                await self.flush()
                await asyncio.sleep(max(0.0, s.flush_interval_s - (time.monotonic() - started)))

        @app.task
        async def on_start() -> None:
            self.engine = make_engine(s.database_url)
            self.sink = DbSink(self.engine)
            self._sink_ready.set()

        @app.on_before_shutdown.connect
        async def on_shutdown(sender: Any, **kwargs: Any) -> None:
            await self.stage.stop()
            await self.detection.stop()

        @app.timer(interval=s.scorer_progress_interval_s)
        async def watch_progress() -> None:
            self.report_progress()
            await self.check_progress()

        scorer = self

        @app.page("/metrics")
        class Metrics(View):
            async def get(self, request: Request) -> Response:
                scorer.observe_consumer_lag()
                body, media_type = metrics_response(scorer.metrics.registry)
                # aiohttp refuses a charset inside content_type; Prometheus text is UTF-8 anyway.
                return self.bytes(body, content_type=media_type.split(";")[0] + "; version=0.0.4")

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
                progress = scorer.catchup_report.describe() if scorer.catchup_report else None
                if scorer.stage.serving and scorer.detection.ready:
                    return self.json({"status": "ready", "progress": progress})
                return self.json({"status": "recovering", "progress": progress}, status=503)

    def report_progress(self) -> CatchUpReport:
        """How far behind its input this worker is: metrics always, /readyz, and a log line every
        ``CATCHUP_LOG_S`` while catching up (and one when caught up)."""
        was = self.catchup_report
        report = self.catchup.observe(time.monotonic(), self.events_done, self.stage.lanes())
        self.catchup_report = report
        m = self.metrics
        m.event_time.set(report.event_time_ms / 1000)
        m.head_event_time.set(report.head_ms / 1000)
        m.remaining_events.set(report.remaining_events)
        m.catchup_eta.set(report.eta_s if report.eta_s is not None else float("nan"))
        now = time.monotonic()
        if report.catching_up and now - self._catchup_logged >= CATCHUP_LOG_S:
            self._catchup_logged = now
            log.info("catching up", extra=_progress_fields(report))
        elif was is not None and was.catching_up and not report.catching_up:
            log.info("caught up", extra=_progress_fields(report))
        return report

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
            if tp not in consumer.assignment():
                continue  # revoked while the offsets were read
            end = max(ends.get(tp) or 0, _highwater(consumer, tp) or 0)  # ListOffsets may fall short (``log_end``)
            if end > done and now - since > self.settings.scorer_stall_timeout_s:
                stalled.append(tp.partition)
        self.stalled = stalled
        if stalled:
            log.error("scorer stalled", extra={"partitions": stalled, "topic": self.settings.topic_events})
            if self.on_stall is not None:
                self.on_stall(stalled)

    # -- database -------------------------------------------------------------------------

    def _sink(self) -> DbSink:
        if self.sink is None:
            raise RuntimeError("database not initialised yet")
        return self.sink

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
            samples, judged = self.stage.take_samples()
            if samples or judged:
                try:
                    await self.sink.write_samples(samples, judged)
                except Exception:
                    self.stage.return_samples(samples, judged)
                    log.exception("re-review sample write failed; will retry", extra={"decisions": len(samples)})
        self.metrics.dirty_buckets.set(self.book.pending_rows())
        return written


def _progress_fields(report: CatchUpReport) -> dict[str, object]:
    return {
        "event_time": iso(report.event_time_ms) if report.event_time_ms else None,
        "head_event_time": iso(report.head_ms) if report.head_ms else None,
        "behind_s": round(report.behind_s),
        "events_per_s": round(report.events_per_s),
        "remaining_events": report.remaining_events,
        "eta_s": None if report.eta_s is None else round(report.eta_s),
    }


def make_worker(scorer: Scorer, **options: Any) -> faust.Worker:
    """The Faust worker of a scorer; the events stage starts with it, before Faust's own consumer
    has joined its group, so the two group joins (each a wait on the broker) overlap."""

    class ScorerWorker(faust.Worker):  # type: ignore[misc]
        async def on_first_start(self) -> None:
            await super().on_first_start()
            await scorer.stage.start()
            await scorer.detection.start()

    return ScorerWorker(scorer.app, **options)


def _highwater(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The high watermark of ``tp`` from the consumer's last fetch; None before one, or once the
    partition is no longer assigned (aiokafka raises then)."""
    try:
        highwater: int | None = consumer.highwater(tp)
    except Exception:
        return None
    return highwater
