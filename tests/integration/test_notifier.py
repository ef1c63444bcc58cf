"""The notifier against a real Alertmanager and local PagerDuty, Slack and webhook receivers.

Receivers down then up, and a kill -9 of the notifier in the middle: every state change reaches
every receiver exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from services.common.db import make_engine
from services.common.history import record_alert_change
from services.common.migrate import ensure_schema
from services.contracts.actions import AlertAction, encode_action, new_action
from services.contracts.alerts import AlertEvent
from tests.support.factories import alert_event
from tests.support.kafkautil import produce
from tests.support.processes import Service, eventually, free_port
from tests.support.receivers import Recorder, check_payloads

pytestmark = pytest.mark.integration

SECRET = "test-webhook-secret"
ROUTING_KEY = "R0UT1NGKEY"


def alert_record(env: dict[str, str], event: AlertEvent) -> tuple[str, bytes, bytes]:
    return env["MODQ_TOPIC_ALERTS"], event.dedup_key.encode(), msgspec.json.encode(event)


def action_record(env: dict[str, str], action: AlertAction) -> tuple[str, bytes, bytes]:
    return env["MODQ_TOPIC_ALERT_ACTIONS"], (action.alert_id or "").encode(), encode_action(action)


def manual(kind: str, alert_id: str, vendor: str = "V01") -> AlertAction:
    return new_action(
        action=kind, alert_id=alert_id, policy_label="SCAMS_AND_FRAUD", vendor_id=vendor, rule="error_rate", actor="pm"
    )


async def test_alertmanager_receives_firing_and_resolved(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service], alertmanager: Callable[..., Any]
) -> None:
    am_port, hook_port = free_port(), free_port()
    hook = await Recorder(hook_port).start()
    alertmanager(am_port, hook_port)
    env = {
        **service_env,
        "MODQ_DATABASE_URL": database_url,
        "MODQ_ALERTMANAGER_URL": f"http://127.0.0.1:{am_port}",
        "MODQ_ALERTMANAGER_RESEND_S": "2",
        "MODQ_NOTIFIER_PORT": str(free_port()),
    }
    try:
        notifier = spawn(["notifier"], env, "notifier")
        bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
        await eventually(lambda: _ready(env), 60)
        await produce(bootstrap, [alert_record(env, alert_event("a-1", "firing"))])

        async def in_alertmanager() -> list[dict[str, object]]:
            async with httpx.AsyncClient() as c:
                got = (await c.get(f"http://127.0.0.1:{am_port}/api/v2/alerts")).json()
            return [a for a in got if a["labels"].get("alert_id") == "a-1"]

        shown = await eventually(in_alertmanager, 60)
        assert shown[0]["labels"]["policy_label"] == "SCAMS_AND_FRAUD" and shown[0]["status"]["state"] == "active"
        assert "9.0%" in shown[0]["annotations"]["summary"] and "420 verdicts" in shown[0]["annotations"]["summary"]
        fired = await eventually(lambda: _statuses(hook, "firing"), 60)
        assert fired[0]["alerts"][0]["labels"]["alert_id"] == "a-1"

        await asyncio.sleep(5)  # two re-send periods: still one alert, still no second notification
        assert len(await in_alertmanager()) == 1 and len(hook.got("/am")) == 1

        await produce(bootstrap, [alert_record(env, alert_event("a-1", "resolved"))])
        resolved = await eventually(lambda: _statuses(hook, "resolved"), 60)
        assert resolved[0]["alerts"][0]["labels"]["alert_id"] == "a-1"
        assert notifier.proc is not None and notifier.proc.poll() is None, notifier.output()[-2000:]
    finally:
        await hook.stop()


async def _statuses(hook: Recorder, status: str) -> list[dict[str, object]]:
    return [p for p in hook.got("/am") if p["status"] == status]


async def test_receivers_down_then_up_and_a_crash_lose_nothing_and_repeat_nothing(
    service_env: dict[str, str], database_url: str, spawn: Callable[..., Service]
) -> None:
    port = free_port()
    pd_port = free_port()  # PagerDuty is down: nothing listens here yet
    check = check_payloads(SECRET, ROUTING_KEY)
    local = await Recorder(port, check).start()
    env = {
        **service_env,
        "MODQ_PARTITIONS": "1",  # one partition: a lane's records share one offset order
        "MODQ_DATABASE_URL": database_url,
        "MODQ_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "MODQ_PAGERDUTY_URL": f"http://127.0.0.1:{pd_port}/pd",
        "MODQ_SLACK_WEBHOOK_URL": f"http://127.0.0.1:{port}/slack",
        "MODQ_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook",
        "MODQ_WEBHOOK_SECRET": SECRET,
        "MODQ_NOTIFY_RETRY_MAX_S": "1",
        "MODQ_NOTIFIER_PORT": str(free_port()),
    }
    # Slack answers 503 to anything about alert b-1: its lane delivers a-1 and then sticks.
    local.failing = lambda path, body: path == "/slack" and "b-1" in str(body)
    pd: Recorder | None = None
    engine = make_engine(database_url)  # the scorer records its alerts before people can act on them
    await ensure_schema(engine, auto_migrate=True)
    for event in (alert_event("a-1", "firing"), alert_event("b-1", "firing", vendor="V02")):
        await record_alert_change(engine, event)
    await engine.dispose()
    try:
        notifier = spawn(["notifier"], env, "notifier")
        bootstrap = env["MODQ_KAFKA_BOOTSTRAP_SERVERS"]
        await eventually(lambda: _ready(env), 60)  # topics exist, with one partition
        await produce(
            bootstrap,
            [
                alert_record(env, alert_event("a-1", "firing")),
                alert_record(env, alert_event("b-1", "firing", vendor="V02")),
                alert_record(env, alert_event("b-1", "resolved", vendor="V02")),
            ],
        )
        await produce(bootstrap, [action_record(env, manual("acknowledged", "a-1"))])
        await eventually(lambda: _count(local, "/hook", 4), 60)
        await eventually(lambda: _count(local, "/slack", 1), 30)

        notifier.stop(kill=True)  # mid-delivery: Slack's lane has a-1 sent but not committed
        pd = await Recorder(pd_port, check).start()
        local.failing = lambda path, body: False
        notifier = spawn(["notifier"], env, "notifier-2")
        await eventually(lambda: _count(local, "/slack", 4), 60)
        await eventually(lambda: _count(pd, "/pd", 4), 60)

        # The person's manual resolve of b-1 repeats a state change receivers already heard; a-1's is new.
        await produce(
            bootstrap,
            [
                action_record(env, manual("resolved", "b-1", vendor="V02")),
                action_record(env, manual("resolved", "a-1")),
            ],
        )
        await eventually(lambda: _count(local, "/hook", 5), 60)
        await eventually(lambda: _count(pd, "/pd", 5), 60)
        await eventually(lambda: _count(local, "/slack", 5), 60)
        await asyncio.sleep(3)

        assert local.errors == [] and pd.errors == []
        pd_events = [(e["dedup_key"], e["event_action"]) for e in pd.got("/pd")]
        assert sorted(pd_events) == sorted(
            [("a-1", "trigger"), ("b-1", "trigger"), ("b-1", "resolve"), ("a-1", "acknowledge"), ("a-1", "resolve")]
        )
        assert pd_events.index(("a-1", "trigger")) < pd_events.index(("a-1", "acknowledge"))
        hook_keys = [b["delivery_key"] for b in local.got("/hook")]
        assert len(hook_keys) == len(set(hook_keys)) == 5  # the second "resolved" of b-1 never went out
        slack = [b["text"] for b in local.got("/slack")]
        assert len(slack) == 5 and sum("a-1" in t or "V01" in t for t in slack) == 3, slack
        assert notifier.proc is not None and notifier.proc.poll() is None, notifier.output()[-2000:]

        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{env['MODQ_NOTIFIER_PORT']}/metrics")).text
        assert 'modq_notifier_deliveries_total{outcome="duplicate",receiver="slack"}' in text
    finally:
        await local.stop()
        if pd is not None:
            await pd.stop()


async def _count(rec: Recorder | None, path: str, n: int) -> bool:
    return rec is not None and len(rec.got(path)) >= n


async def _ready(env: dict[str, str]) -> bool:
    try:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{env['MODQ_NOTIFIER_PORT']}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False
