"""modq notifier: alert state changes from Kafka to the receivers, once per state change.

One lane per receiver (plus one that writes people's actions to the history), each its own
consumer group on ``quality.alerts`` and ``modq.alert-actions``, so a receiver that is down
holds back only its own lane. A lane delivers a record, retrying with capped exponential backoff
for as long as the receiver answers with something a retry can fix, records the delivery in the
``notification_deliveries`` ledger, and only then commits the offset. After a crash or restart
the lane re-reads from the last commit and the ledger skips what was already delivered; the one
window left is a crash between a receiver's 2xx and the ledger write (milliseconds), in which a
notice can go out twice (receivers deduplicate on the PagerDuty dedup_key, Alertmanager's labels,
and the webhook's X-Modq-Delivery header).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import msgspec
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.config import NotifierSettings
from services.common.db import DB_UNAVAILABLE, alerts, insert_for, make_engine, notification_deliveries, silences
from services.common.evidence import counted_to, of_alert
from services.common.history import (
    apply_action,
    parse_ts,
    record_alert_change,
    record_evidence,
    record_remediation,
)
from services.common.kafka import ensure_topics, make_consumer
from services.common.migrate import ensure_schema
from services.common.unreadable import ConsumerHealth
from services.contracts.actions import decode_action
from services.contracts.alerts import AlertEvent
from services.contracts.pairs import SCOPE_LABEL, SCOPE_REVIEWER, SCOPE_VENDOR
from services.contracts.remediations import Remediation, decode_remediation
from services.notifier.messages import Notice, notice_of_action, notice_of_alert
from services.notifier.receivers import (
    AlertmanagerReceiver,
    DeliveryError,
    PagerDutyReceiver,
    Receiver,
    SlackReceiver,
    WebhookReceiver,
)

log = logging.getLogger("modq.notifier")
T = TypeVar("T")
_alert_decoder = msgspec.json.Decoder(AlertEvent)


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "modq_notifier_deliveries",
            "Notices handled per receiver: sent, suppressed (silenced pair, or a follow-up of an alert not paged),"
            " rejected (permanent error), duplicate, historical (raised while catching up on old history),"
            " linked (a pair alert raised under a firing label- or vendor-wide alert, which was paged)",
            ["receiver", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "modq_notifier_delivery_failures",
            "Delivery attempts that failed and will be retried",
            ["receiver"],
            registry=registry,
        )
        self.bad_records = Counter(
            "modq_notifier_bad_records", "Records on the alert topics that could not be decoded", registry=registry
        )
        self.last_delivery = Gauge(
            "modq_notifier_last_delivery_timestamp_seconds",
            "Wall time of the last sent notice",
            ["receiver"],
            registry=registry,
        )
        self.receiver_up = Gauge(
            "modq_notifier_receiver_up",
            "1 while the receiver's last attempt succeeded",
            ["receiver"],
            registry=registry,
        )


def decode_notice(record: ConsumerRecord[bytes, bytes], settings: NotifierSettings) -> Notice:
    if record.topic == settings.topic_alert_actions:
        return notice_of_action(decode_action(record.value or b""))
    return notice_of_alert(_alert_decoder.decode(record.value or b""))


def _row_event(row: Any) -> AlertEvent:
    def iso(t: datetime | None) -> str | None:
        if t is None:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")

    fields = {f: row[f] for f in AlertEvent.__struct_fields__ if f in row and f not in ("status",)}
    fields.update(
        status="firing",
        started_at=iso(row["started_at"]),
        onset_at=iso(row["onset_at"]),
        resolved_at=iso(row["resolved_at"]),
    )
    return AlertEvent(**fields)


class Notifier:
    def __init__(self, settings: NotifierSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = NotifierMetrics(self.registry)
        self.health = ConsumerHealth(self.registry, retry_s=settings.consumer_retry_s)
        self.engine: AsyncEngine | None = None
        self.client: httpx.AsyncClient | None = None
        self.receivers: list[Receiver] = []
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[str, bool] = {}

    # -- set up ------------------------------------------------------------------------------
    def build_receivers(self) -> list[Receiver]:
        s, client, api = self.settings, self.client, self.settings.public_api_url
        assert client is not None
        out: list[Receiver] = []
        if s.alertmanager_url:
            out.append(AlertmanagerReceiver(client, s.alertmanager_url, api, s.alertmanager_resend_s))
        if s.pagerduty_routing_key:
            keys = {
                SCOPE_LABEL: s.pagerduty_routing_key_policy_label,
                SCOPE_VENDOR: s.pagerduty_routing_key_vendor,
                SCOPE_REVIEWER: s.pagerduty_routing_key_reviewer,
            }
            by_scope = {scope: key for scope, key in keys.items() if key}
            out.append(PagerDutyReceiver(client, s.pagerduty_url, s.pagerduty_routing_key, api, by_scope))
        if s.slack_webhook_url:
            urls = {
                SCOPE_LABEL: s.slack_webhook_url_policy_label,
                SCOPE_VENDOR: s.slack_webhook_url_vendor,
                SCOPE_REVIEWER: s.slack_webhook_url_reviewer,
            }
            out.append(SlackReceiver(client, s.slack_webhook_url, api, {k: v for k, v in urls.items() if v}))
        if s.webhook_url:
            out.append(WebhookReceiver(client, s.webhook_url, s.webhook_secret, api))
        return out

    async def start(self) -> None:
        self.engine = make_engine(self.settings.database_url)
        await ensure_schema(self.engine, auto_migrate=self.settings.auto_migrate)
        self.client = httpx.AsyncClient(timeout=self.settings.notify_timeout_s)
        self.receivers = self.build_receivers()
        log.info("receivers", extra={"receivers": [r.name for r in self.receivers]})

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.engine is not None:
            await self.engine.dispose()

    @property
    def lanes(self) -> list[str]:
        return ["history", "remediations", *(r.name for r in self.receivers)]

    async def run(self) -> None:
        """Run every lane until stop(); a lane that fails unexpectedly is restarted after a pause."""
        tasks = [asyncio.create_task(self._lane_forever(name), name=f"lane-{name}") for name in self.lanes]
        am = next((r for r in self.receivers if isinstance(r, AlertmanagerReceiver)), None)
        if am is not None:
            tasks.append(asyncio.create_task(self._resend_forever(am), name="alertmanager-resend"))
        try:
            await self._stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    # -- retries -----------------------------------------------------------------------------
    async def _pause(self, attempt: int) -> None:
        s = self.settings
        delay = min(s.notify_retry_max_s, s.notify_retry_initial_s * 2**attempt) * random.uniform(0.8, 1.2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        if self._stopping.is_set():
            raise asyncio.CancelledError

    async def _db(self, op: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await op()
            except DB_UNAVAILABLE as exc:
                log.warning("database unavailable, retrying", extra={"error": type(exc).__name__})
                await self._pause(attempt)
                attempt += 1

    # -- lanes -------------------------------------------------------------------------------
    async def _lane_forever(self, name: str) -> None:
        while not self._stopping.is_set():
            try:
                await self._lane(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lane failed; restarting it", extra={"lane": name})
                self._running[name] = False
                await self._pause(3)

    async def _lane(self, name: str) -> None:
        s = self.settings
        topics = (s.topic_remediations,) if name == "remediations" else (s.topic_alerts, s.topic_alert_actions)
        consumer = make_consumer(s, *topics, group_id=f"{s.notifier_group_id}-{name}", guard=self.health)
        handler: Callable[[Any], Awaitable[None]]
        if name == "remediations":
            handler, decode = self._record_remediation, lambda r: decode_remediation(r.value or b"")
        else:
            handler = self._record_history if name == "history" else self._deliver_to(name)
            decode = lambda r: decode_notice(r, s)  # noqa: E731
        attempt = 0
        while True:
            try:
                await consumer.start()
                break
            except KafkaError as exc:
                log.warning("broker unavailable, retrying", extra={"lane": name, "error": str(exc)})
                await self._pause(attempt)
                attempt += 1
        try:
            self._running[name] = True
            if all(self._running.get(n) for n in self.lanes):
                self.ready.set()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=200)
                for tp, records in batch.items():
                    for record in records:
                        try:
                            notice = decode(record)
                        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                            self.metrics.bad_records.inc()
                            log.error("undecodable alert record skipped", extra={"topic": tp.topic, "error": str(exc)})
                            continue
                        await handler(notice)
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            self._running[name] = False
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _record_history(self, notice: Notice) -> None:
        """The history lane: every alert change and every person's action into the alert history."""
        assert self.engine is not None
        engine, action, alert = self.engine, notice.action, notice.alert
        if action is not None:
            await self._db(lambda: apply_action(engine, action))
        elif alert is not None:
            await self._db(lambda: record_alert_change(engine, alert))
            await self._db(lambda: record_evidence(engine, alert))

    async def _record_remediation(self, remediation: Remediation) -> None:
        """The remediations lane: each finding into the ``remediations`` table (idempotent)."""
        assert self.engine is not None
        engine = self.engine
        await self._db(lambda: record_remediation(engine, remediation))

    def _deliver_to(self, name: str) -> Callable[[Notice], Awaitable[None]]:
        receiver = next(r for r in self.receivers if r.name == name)

        async def handle(notice: Notice) -> None:
            if notice.alert is not None and notice.alert.historical:
                # Raised while catching up on old history: it is in the alert history, nobody is paged.
                self.metrics.deliveries.labels(name, "historical").inc()
                return
            if notice.alert is not None and notice.state == "firing" and notice.alert.parent_alert_id:
                # Raised under a firing wider-scope alert that explains it: on-call hears of the wider
                # one. If that resolves first, the scorer announces this one on its own (no parent).
                self.metrics.deliveries.labels(name, "linked").inc()
                return
            if notice.action is not None and notice.state in ("acknowledged", "resolved") and notice.alert_id:
                # A person's action travels on another topic than the alert it acts on, so it can
                # arrive first; receivers must hear of the alert before they hear it acknowledged.
                fired = await self._db(lambda: self._firing_from_db(name, notice.alert_id or ""))
                if fired is not None:
                    await handle(fired)
            if await self._db(lambda: self._outcome(name, notice.key)) is not None:
                self.metrics.deliveries.labels(name, "duplicate").inc()
                return
            if await self._db(lambda: self._suppressed(name, notice)):
                outcome = "suppressed"
            else:
                if notice.alert is not None and notice.state in ("firing", "resolved"):
                    notice = await self._db(lambda: self._with_evidence(notice))
                outcome = await self._send(receiver, notice)
                if outcome == "skipped":
                    return
            await self._db(lambda: self._record(name, notice.key, outcome))
            self.metrics.deliveries.labels(name, outcome).inc()
            log.info(
                "notice delivered",
                extra={"receiver": name, "key": notice.key, "state": notice.state, "outcome": outcome},
            )

        return handle

    async def _with_evidence(self, notice: Notice) -> Notice:
        """The notice with its alert's attribution and impact, from the database's exact counts."""
        a = notice.alert
        assert a is not None and self.engine is not None
        alarm = parse_ts(a.started_at)
        assert alarm is not None
        # The alert can come before the scorer's last counts are written: wait (a little) until the
        # database counts up to the alarm's minute, so the evidence is complete.
        deadline = asyncio.get_running_loop().time() + self.settings.notifier_evidence_wait_s
        while a.scope != SCOPE_REVIEWER and asyncio.get_running_loop().time() < deadline:
            newest = await counted_to(self.engine, scope=a.scope, policy_label=a.policy_label, vendor_id=a.vendor_id)
            if newest is not None and newest >= alarm.replace(second=0, microsecond=0):
                break
            await asyncio.sleep(0.5)
        found = await of_alert(self.engine, a)
        return dataclasses.replace(notice, evidence=found)

    async def _send(self, receiver: Receiver, notice: Notice) -> str:
        attempt = 0
        while True:
            try:
                sent = await receiver.deliver(notice)
            except DeliveryError as exc:
                self.metrics.receiver_up.labels(receiver.name).set(0)
                if not exc.retryable:
                    log.error(
                        "receiver rejected a notice",
                        extra={"receiver": receiver.name, "key": notice.key, "error": str(exc)},
                    )
                    return "rejected"
                self.metrics.failures.labels(receiver.name).inc()
                log.warning(
                    "delivery failed, retrying", extra={"receiver": receiver.name, "key": notice.key, "error": str(exc)}
                )
                await self._pause(attempt)
                attempt += 1
                continue
            self.metrics.receiver_up.labels(receiver.name).set(1)
            if sent:
                self.metrics.last_delivery.labels(receiver.name).set_to_current_time()
            return "sent" if sent else "skipped"

    # -- ledger and silences -----------------------------------------------------------------
    async def _outcome(self, receiver: str, key: str) -> str | None:
        assert self.engine is not None
        d = notification_deliveries.c
        async with self.engine.connect() as conn:
            return (
                await conn.execute(select(d.outcome).where(d.receiver == receiver, d.delivery_key == key))
            ).scalar_one_or_none()

    async def _firing_from_db(self, receiver: str, alert_id: str) -> Notice | None:
        """The firing notice of an alert this receiver has not handled yet, rebuilt from the database."""
        if await self._outcome(receiver, f"{alert_id}:firing") is not None:
            return None
        assert self.engine is not None
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
        return notice_of_alert(_row_event(row)) if row is not None else None

    async def _record(self, receiver: str, key: str, outcome: str) -> None:
        assert self.engine is not None
        stmt = insert_for(self.engine, notification_deliveries).values(
            receiver=receiver, delivery_key=key, outcome=outcome, delivered_at=datetime.now(tz=UTC)
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["receiver", "delivery_key"]))

    async def _suppressed(self, receiver: str, notice: Notice) -> bool:
        """Firing notices of a silenced pair are held back, and so are the follow-ups of such an alert."""
        assert self.engine is not None
        if notice.state == "firing":
            sc = silences.c
            stmt = select(sc.until).where(
                sc.policy_label == notice.policy_label,
                sc.vendor_id == notice.vendor_id,
                sc.until > datetime.now(tz=UTC),
            )
            async with self.engine.connect() as conn:
                return (await conn.execute(stmt)).first() is not None
        if notice.state in ("acknowledged", "resolved") and notice.alert_id:
            # Follow-ups of an alert that was held back, or never paged (raised as history: the
            # firing notice always comes first, from its topic or from the database), are held back.
            return await self._outcome(receiver, f"{notice.alert_id}:firing") in ("suppressed", None)
        return False

    # -- Alertmanager re-sends ---------------------------------------------------------------
    async def firing_notices(self) -> list[Notice]:
        """Alerts still firing (acknowledged ones too) whose firing notice was sent, from the database."""
        assert self.engine is not None
        d = notification_deliveries.c
        sent = select(d.delivery_key).where(d.receiver == "alertmanager", d.outcome == "sent")
        stmt = select(alerts).where(
            alerts.c.status.in_(("firing", "acknowledged")),
            (alerts.c.alert_id + ":firing").in_(sent),
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [notice_of_alert(_row_event(r)) for r in rows]

    async def _resend_forever(self, am: AlertmanagerReceiver) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.alertmanager_resend_s)
            try:
                await am.resend(await self.firing_notices())
            except (DeliveryError, *DB_UNAVAILABLE) as exc:
                log.warning("re-sending firing alerts failed", extra={"error": str(exc)})


async def ensure_notifier_topics(settings: NotifierSettings) -> None:
    await ensure_topics(
        settings,
        {
            settings.topic_alerts: settings.partitions,
            settings.topic_alert_actions: settings.partitions,
            settings.topic_remediations: settings.partitions,
        },
    )
